"""tf_lottery.tuning and examples/tune_ticket.py: keras-tuner over ticket searches."""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import keras_tuner
import numpy as np
import pytest

import tf_lottery
from tf_lottery import datasets, models, storage
from tf_lottery.search import SearchConfig, TicketSearch, best_round
from tf_lottery.tuning import LotteryTuner, build_search_space

DATA = datasets.load("digits", seed=0)
CONFIG = SearchConfig(rounds=None, target_density=0.7, epochs=1, batch_size=64)
ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# Raised inside keras-tuner's oracle lock (threading.currentThread), not by this package.
pytestmark = pytest.mark.filterwarnings("ignore:(currentThread|getName):DeprecationWarning")


def _build():
    return models.lenet300_100(DATA.input_shape, DATA.num_classes)


def _tuner(directory, config=CONFIG, **kwargs):
    hp = keras_tuner.HyperParameters()
    hp.Float("prune_rate", 0.4, 0.5, step=0.1)  # One pruning round reaches the target: fast trials.
    options = {"max_trials": 2, "hyperparameters": hp, "directory": str(directory), "project_name": "project",
               **kwargs}
    return LotteryTuner(_build, DATA, config, **options)


class _Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C / a kill: keras-tuner does not catch it."""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 2-trial run cut off inside trial 0's round 1, resumed, then resumed once more.

    Returns (tuner, trained): `trained[session]` lists the (trial, round) pairs each
    session trained.
    """
    directory = tmp_path_factory.mktemp("tuning")
    trained = []
    train_round = TicketSearch._train_round

    def recording(search, index, masks):
        trial = pathlib.Path(search.run_dir).parent.name
        if len(trained) == 1 and (trial, index) == ("trial_0", 1):
            raise _Interrupted
        trained[-1].append((trial, index))
        return train_round(search, index, masks)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TicketSearch, "_train_round", recording)
        for session in range(3):
            trained.append([])
            tuner = _tuner(directory)
            if session == 0:
                with pytest.raises(_Interrupted):
                    tuner.search(verbose=0)
            else:
                tuner.search(verbose=0)
    return tuner, trained


def test_tuning_writes_one_search_and_ticket_per_trial(tuned):
    tuner, _ = tuned
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
    _, (first, second, third) = tuned
    assert first == [("trial_0", 0)]
    assert second == [("trial_0", 1), ("trial_1", 0), ("trial_1", 1)]  # trial_0 resumed after its round 0.
    assert third == []  # Nothing finished is run again.


def test_the_best_ticket_loads_at_the_target_density_and_scores_its_objective(tuned):
    tuner, _ = tuned
    best = tuner.best_result()
    assert best["objective"] == max(row["objective"] for row in tuner.results())
    ticket = tf_lottery.load_model(best["ticket"])
    assert tf_lottery.sparsity_report(ticket)["density"] <= CONFIG.target_density
    accuracy = np.mean(np.argmax(ticket.predict(DATA.x_val, verbose=0), axis=1) == DATA.y_val)
    assert accuracy == pytest.approx(best["objective"], abs=1e-6)
    assert len(tuner.get_best_models(1)[0].weights) == len(ticket.weights)


def test_resuming_with_other_settings_names_the_difference(tuned):
    tuner, _ = tuned
    other = SearchConfig(rounds=None, target_density=0.7, epochs=2, batch_size=64)
    with pytest.raises(ValueError, match=r"Cannot resume .*epochs: project has 1, now 2"):
        _tuner(pathlib.Path(tuner.project_dir).parent, config=other)


def test_density_objective_scores_the_sparsest_round_within_tolerance(tmp_path):
    config = SearchConfig(rounds=2, epochs=1, batch_size=64)
    tuner = _tuner(tmp_path, config, objective="density", tolerance=0.05, max_trials=1)
    tuner.search(verbose=0)
    [row] = tuner.results()
    history = storage.read_json(os.path.join(row["run_dir"], "history.json"))
    assert row["round"] == best_round(history["rounds"], 0.05)
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
    return subprocess.run([sys.executable, str(ROOT / "examples" / "tune_ticket.py"), "--dataset=digits", *args],
                          capture_output=True, text=True, env=ENV, timeout=600)


def test_binary_prints_the_results_table_and_the_best_ticket(tmp_path):
    result = _binary("--max_trials=1", "--epochs=1", "--target_density=0.8", f"--output_dir={tmp_path / 'tune'}")
    assert result.returncode == 0, result.stderr
    assert re.search(r"trial +status +val_accuracy +hyperparameters\n0 +COMPLETED +0\.\d+ +prune_rate=", result.stdout)
    ticket = tmp_path / "tune" / "trial_0" / "ticket.keras"
    assert f": {ticket}\nExport it: python examples/export_ticket.py --run_dir={ticket.parent / 'search'} --round=" \
        in result.stdout and ticket.is_file()


@pytest.mark.parametrize("flag, message", [
    ("--oracle=grid", r"value should be one of <bayesian\|hyperband\|random>"),
    ("--target_density=1.5", r"target_density must be in \(0, 1\]"),
])
def test_binary_rejects_bad_flags_with_a_usage_error(tmp_path, flag, message):
    result = _binary(flag, f"--output_dir={tmp_path}")
    assert result.returncode != 0 and re.search(message, result.stderr)
