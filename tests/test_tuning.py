"""tf_lottery.tuning and examples/tune_ticket.py: keras-tuner over ticket searches."""

import dataclasses
import json
import os
import pathlib
import re

import keras
import keras_tuner
import numpy as np
import pytest

import tf_lottery
from tf_lottery import models, storage
from tf_lottery.search import SearchConfig, best_round
from tf_lottery.tuning import LotteryTuner, build_search_space

from conftest import DIGITS as DATA, run_script

CONFIG = SearchConfig(rounds=None, target_density=0.7, epochs=1, batch_size=64)
# Raised inside keras-tuner's oracle lock (threading.currentThread), not by this package.
pytestmark = pytest.mark.filterwarnings("ignore:(currentThread|getName):DeprecationWarning")


def _build():
    return models.lenet300_100(DATA.input_shape, DATA.num_classes)


def _tuner(directory, config=CONFIG, tuner=LotteryTuner, **kwargs):
    hp = keras_tuner.HyperParameters()
    hp.Float("prune_rate", 0.4, 0.5, step=0.1)  # One pruning round reaches the target: fast trials.
    options = {"max_trials": 2, "hyperparameters": hp, "directory": str(directory), "project_name": "project",
               **kwargs}
    return tuner(_build, DATA, config, **options)


class _Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C / a kill: keras-tuner does not catch it."""


class _RecordingTuner(LotteryTuner):
    """Calls `on_round(trial_id, round)` whenever one of its trials starts training a round.

    `round` is the number of rounds the trial's run directory holds then. `on_round` may return Keras
    callbacks to add to that round's training. (A trial's `TicketSearch` trains the model `build_model`
    returns, with one `fit` per round.)
    """

    def __init__(self, build_model, *args, on_round, **kwargs):
        self.on_round = on_round
        super().__init__(lambda: self.record_rounds(build_model()), *args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        self.current_trial = trial
        return super().run_trial(trial, *args, **kwargs)

    def record_rounds(self, model):
        fit = model.fit

        def recording_fit(*args, callbacks=(), **kwargs):
            history = os.path.join(self.result(self.current_trial)["run_dir"], "history.json")
            index = len(storage.read_json(history)["rounds"]) if os.path.exists(history) else 0
            extra = self.on_round(self.current_trial.trial_id, index) or []
            return fit(*args, callbacks=[*callbacks, *extra], **kwargs)

        model.fit = recording_fit
        return model


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 2-trial run cut off after the first batch of trial 0's round 1, resumed, then resumed once more.

    Returns (tuner, trained, histories): `trained[session]` lists the (trial, round) pairs each session
    started to train, and `histories[session]` maps each trial to its run's history after that session.
    """
    directory = tmp_path_factory.mktemp("tuning")
    trained, histories = [], []

    def interrupt(batch, logs):
        raise _Interrupted

    def on_round(trial, index):
        trained[-1].append((trial, index))
        if len(trained) == 1 and (trial, index) == ("0", 1):
            return [keras.callbacks.LambdaCallback(on_train_batch_end=interrupt)]
        return None

    for session in range(3):
        trained.append([])
        tuner = _tuner(directory, tuner=_RecordingTuner, on_round=on_round)
        if session == 0:
            with pytest.raises(_Interrupted):
                tuner.search(verbose=0)
        else:
            tuner.search(verbose=0)
        histories.append({row["trial"]: storage.read_json(os.path.join(row["run_dir"], "history.json"))
                          for row in tuner.results()})
    return tuner, trained, histories


def test_tuning_writes_one_search_and_ticket_per_trial(tuned):
    tuner, *_ = tuned
    rows = tuner.results()
    assert [row["trial"] for row in rows] == ["0", "1"]
    for row in rows:
        assert row["status"] == "COMPLETED" and 0 < row["objective"] <= 1
        assert set(row["hyperparameters"]) == {"prune_rate", "output_prune_rate", "scope", "rewind",
                                               "learning_rate", "criterion"}
        assert row["hyperparameters"]["prune_rate"] in (0.4, 0.5)
        trial_json = pathlib.Path(tuner.project_dir) / f"trial_{row['trial']}" / "trial.json"
        assert json.loads(trial_json.read_text())["status"] == "COMPLETED"
        history = storage.read_json(os.path.join(row["run_dir"], "history.json"))
        assert row["round"] == len(history["rounds"]) - 1  # The ticket at the target density.
        assert history["rounds"][-1]["val_accuracy"] == row["objective"]
        run = storage.read_json(os.path.join(row["run_dir"], "run.json"))
        assert run["config"] == {**dataclasses.asdict(CONFIG), **row["hyperparameters"]}  # Same seed too.
        assert pathlib.Path(row["ticket"]).is_file()


def test_resuming_finishes_the_cut_off_search_and_redoes_no_finished_work(tuned):
    _, (first, second, third), histories = tuned
    assert first == [("0", 0), ("0", 1)]  # Cut off in round 1, which is not saved.
    assert second == [("0", 1), ("1", 0), ("1", 1)]  # trial_0 resumed after its round 0.
    assert third == []  # Nothing finished is run again.
    after_cut, resumed, again = histories
    assert {trial: [r["round"] for r in history["rounds"]] for trial, history in after_cut.items()} == {"0": [0]}
    assert {trial: [r["round"] for r in history["rounds"]] for trial, history in resumed.items()} == \
        {"0": [0, 1], "1": [0, 1]}
    assert resumed["0"]["rounds"][0] == after_cut["0"]["rounds"][0]  # Round 0 was kept as it was.
    assert again == resumed


def test_the_best_ticket_loads_at_the_target_density_and_scores_its_objective(tuned):
    tuner, *_ = tuned
    best = tuner.best_result()
    assert best["objective"] == max(row["objective"] for row in tuner.results())
    ticket = tf_lottery.load_model(best["ticket"])
    assert tf_lottery.sparsity_report(ticket)["density"] <= CONFIG.target_density
    accuracy = np.mean(np.argmax(ticket.predict(DATA.x_val, verbose=0), axis=1) == DATA.y_val)
    assert accuracy == pytest.approx(best["objective"], abs=1e-6)
    assert len(tuner.get_best_models(1)[0].weights) == len(ticket.weights)


def test_resuming_with_other_settings_names_the_difference(tuned):
    tuner, *_ = tuned
    other = SearchConfig(rounds=None, target_density=0.7, epochs=2, batch_size=64)
    with pytest.raises(ValueError, match=r"Cannot resume .*epochs: project has 1, now 2"):
        _tuner(pathlib.Path(tuner.project_dir).parent, config=other)


def test_density_objective_scores_the_sparsest_round_within_tolerance(tmp_path):
    config = SearchConfig(rounds=2, epochs=1, batch_size=64)
    tuner = _tuner(tmp_path, config, objective="density", tolerance=0.05, max_trials=1)
    tuner.search(verbose=0)
    [row] = tuner.results()
    history = storage.read_json(os.path.join(row["run_dir"], "history.json"))
    assert row["round"] == best_round(history["rounds"], 0.05, "val_accuracy")
    scored = history["rounds"][row["round"]]
    assert row["objective"] == scored["density"]
    assert tf_lottery.sparsity_report(tf_lottery.load_model(row["ticket"]))["density"] == \
        pytest.approx(scored["density"])


def test_one_seed_fixes_the_oracles_proposals(tmp_path):
    def first_proposal(name, seed):
        config = SearchConfig(rounds=None, target_density=0.5, seed=seed)
        tuner = LotteryTuner(_build, DATA, config, oracle="bayesian", directory=str(tmp_path), project_name=name)
        return tuner.oracle.create_trial("tuner0").hyperparameters.values

    assert first_proposal("a", 3) == first_proposal("b", 3) != first_proposal("c", 4)


def test_user_hyperparameters_narrow_and_extend_the_space(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("scope", "global")
    hp.Choice("optimizer", ["momentum"])
    tuner = LotteryTuner(_build, DATA, CONFIG, hyperparameters=hp, directory=str(tmp_path))
    space = tuner.oracle.get_space()
    assert {p.name for p in space.space} == {"prune_rate", "output_prune_rate", "scope", "rewind", "learning_rate",
                                             "criterion", "optimizer"}
    config = tuner.trial_config(space)
    assert (config.scope, config.optimizer, config.prune_rate, config.rewind) == ("global", "momentum", 0.2, "init")


def test_hyperband_budgets_epochs_per_round(tmp_path):
    tuner = LotteryTuner(_build, DATA, CONFIG, oracle="hyperband", directory=str(tmp_path))
    hp = build_search_space(keras_tuner.HyperParameters())
    hp.values["tuner/epochs"] = 3
    assert tuner.trial_config(hp).epochs == 3
    with pytest.raises(ValueError, match="give the config epochs"):
        LotteryTuner(_build, DATA, SearchConfig(target_density=0.5, epochs=None, iterations=10), oracle="hyperband",
                     directory=str(tmp_path), project_name="iterations")


@pytest.mark.parametrize("config, kwargs, message", [
    (CONFIG, {"objective": "loss"}, r"objective must be one of \['accuracy', 'density'\]"),
    (SearchConfig(rounds=3), {}, "scores the ticket at config.target_density"),
    (CONFIG, {"oracle": "grid"}, "oracle must be one of"),
    (CONFIG, {"oracle": keras_tuner.oracles.RandomSearchOracle(objective="val_loss")},
     r"needs keras_tuner.Objective\('val_accuracy', 'max'\)"),
])
def test_bad_settings_fail_with_their_messages(tmp_path, config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LotteryTuner(_build, DATA, config, directory=str(tmp_path), **kwargs)


def test_hyperparameters_that_set_no_config_field_are_an_error(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 10, 100)
    with pytest.raises(ValueError, match=r"Hyperparameters \['units'\] set no SearchConfig field"):
        LotteryTuner(_build, DATA, CONFIG, hyperparameters=hp, directory=str(tmp_path))


def _binary(*args):
    return run_script("examples/tune_ticket.py", "--dataset=digits", *args, check=False)


def test_binary_prints_the_results_table_and_the_best_ticket(tmp_path):
    result = _binary("--max_trials=1", "--epochs=1", "--target_density=0.8", f"--output_dir={tmp_path / 'tune'}")
    assert result.returncode == 0, result.stderr
    assert re.search(r"trial +status +val_accuracy +hyperparameters\n0 +COMPLETED +0\.\d+ +prune_rate=", result.stdout)
    ticket = tmp_path / "tune" / "trial_0" / "ticket.keras"
    assert f": {ticket}\nExport it: python examples/export_ticket.py --run_dir={ticket.parent / 'search'} --round=" \
        in result.stdout and ticket.is_file()


def test_binary_tunes_a_saved_model_on_npz_data(tmp_path):
    keras.utils.set_random_seed(1)  # A compiled digits classifier with its own optimizer, saved as a user saves one.
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, "relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "digits.npz", **{f"{kind}_{split}": getattr(DATA, f"{kind}_{split}")
                                         for kind in "xy" for split in ("train", "val")})  # No test set.
    result = run_script("examples/tune_ticket.py", f"--model={tmp_path / 'model.keras'}",
                        f"--data=npz:{tmp_path / 'digits.npz'}", "--max_trials=2", "--epochs=1",
                        "--target_density=0.8", f"--output_dir={tmp_path / 'tune'}", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Data: npz:{tmp_path / 'digits.npz'}:" in result.stdout
    table = re.search(r"trial +status +val_accuracy +hyperparameters\n((?:\d+ .*\n)+)", result.stdout)
    assert table and len(re.findall(r"^\d +COMPLETED +0\.\d+ +prune_rate=", table[1], re.M)) == 2, result.stdout
    assert "learning_rate" not in table[1]  # The saved model's AdamW trains it: not tuned.
    ticket = re.search(r"Best ticket: trial \d, round \d+ of .*: (.*ticket\.keras)\n", result.stdout)
    assert ticket and pathlib.Path(ticket[1]).is_file()


@pytest.mark.parametrize("flag, message", [
    ("--oracle=grid", r"value should be one of <bayesian\|hyperband\|random>"),
    ("--target_density=1.5", r"target_density must be in \(0, 1\]"),
])
def test_binary_rejects_bad_flags_with_a_usage_error(tmp_path, flag, message):
    result = _binary(flag, f"--output_dir={tmp_path}")
    assert result.returncode != 0 and re.search(message, result.stderr)
