import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lottery
from tf_lottery import masking, models, pruning, stability, storage, weights
from tf_lottery.pruning import compounded_plan
from tf_lottery.run_store import RunStore
from tf_lottery.search import SearchConfig, TicketSearch, read_run_config

from conftest import DIGITS, round_arrays

DATA = DIGITS
HISTORY_FIELDS = {"round", "density", "layer_density", "test_accuracy", "val_accuracy", "early_stop_iteration",
                  "early_stop_test_accuracy", "seconds", "train_accuracy", "curve"}


def _build():
    return models.lenet300_100(DATA.input_shape, DATA.num_classes)


def _search(run_dir, **kwargs):
    options = {"verbose": 0} | {key: kwargs.pop(key) for key in ("replay_masks_from", "resume", "overwrite", "verbose")
                                if key in kwargs}
    config = SearchConfig(**{"rounds": 2, "epochs": 1, "batch_size": 64, **kwargs})
    return TicketSearch(_build, DATA, config, str(run_dir), **options)


def _assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def ticket_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ticket")
    return run_dir, _search(run_dir).run()


def test_history_and_round_folders_are_written(ticket_run):
    run_dir, history = ticket_run
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert HISTORY_FIELDS <= set(history["rounds"][0])
    assert json.loads((run_dir / "history.json").read_text())["rounds"][2]["density"] == history["rounds"][2]["density"]
    for index in range(3):
        names = sorted(os.listdir(run_dir / f"round_{index:03d}"))
        assert names == ["masks.npz", "metrics.json", "rewind_weights.npz", "trained_weights.npz"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["seed"] == 0 and run["versions"]["keras"] == keras.__version__


def test_rounds_prune_hidden_and_output_layers_at_their_rates(ticket_run):
    _, history = ticket_run
    layers = history["rounds"][2]["layer_density"]
    assert layers["fc1/kernel"] == pytest.approx(0.64, abs=1e-3)
    assert layers["output/kernel"] == pytest.approx(0.81, abs=1e-2)
    assert history["rounds"][0]["density"] == 1.0 > history["rounds"][1]["density"] > history["rounds"][2]["density"]
    early = history["rounds"][1]
    assert early["early_stop_iteration"] in [point["iteration"] for point in early["curve"]]


def test_rewinding_to_init_restarts_survivors_from_the_initial_weights(ticket_run):
    run_dir, _ = ticket_run
    initial = round_arrays(run_dir, 0, "rewind")
    rewound = round_arrays(run_dir, 2, "rewind")
    masks = round_arrays(run_dir, 2, "masks")
    kernel = next(path for path in initial if path.endswith("fc1/kernel"))
    np.testing.assert_array_equal(rewound[kernel], initial[kernel] * masks["fc1/kernel"])


def test_best_ticket_is_saved_with_its_masks(ticket_run):
    run_dir, history = ticket_run
    ticket = tf_lottery.load_model(run_dir / "best_ticket.keras")
    _assert_same(tf_lottery.get_masks(ticket), round_arrays(run_dir, history["best_round"], "masks"))


def test_same_seed_gives_identical_masks_and_another_seed_does_not(ticket_run, tmp_path):
    run_dir, _ = ticket_run
    _search(tmp_path / "again").run()
    _assert_same(round_arrays(tmp_path / "again", 2, "masks"), round_arrays(run_dir, 2, "masks"))
    _search(tmp_path / "other", seed=1, rounds=1).run()
    assert not np.array_equal(round_arrays(tmp_path / "other", 1, "masks")["fc1/kernel"],
                              round_arrays(run_dir, 1, "masks")["fc1/kernel"])


def test_resume_continues_from_the_last_round_and_equals_an_uninterrupted_run(ticket_run, tmp_path):
    run_dir, _ = ticket_run
    _search(tmp_path, rounds=1).run()
    history = _search(tmp_path, resume=True).run()
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    _assert_same(round_arrays(tmp_path, 2, "masks"), round_arrays(run_dir, 2, "masks"))
    _assert_same(round_arrays(tmp_path, 2, "trained"), round_arrays(run_dir, 2, "trained"))


@pytest.mark.parametrize("rewind", ["step:5", "epoch:1", "lr", "finetune"])
def test_every_rewinding_mode_runs(rewind, tmp_path):
    history = _search(tmp_path, rewind=rewind, rounds=1, epochs=2, lr_schedule="cosine").run()
    assert len(history["rounds"]) == 2
    keras.utils.set_random_seed(0)
    initial = weights.snapshot(_build())
    rewind_point = round_arrays(tmp_path, 0, "rewind")
    trained = round_arrays(tmp_path, 0, "trained")
    masks = round_arrays(tmp_path, 1, "masks")["fc1/kernel"]
    kernel = next(path for path in initial if path.endswith("fc1/kernel"))
    start = round_arrays(tmp_path, 1, "rewind")[kernel]
    assert not np.array_equal(round_arrays(tmp_path, 1, "trained")[kernel], start)  # Round 1 trains.
    if rewind in ("lr", "finetune"):
        np.testing.assert_array_equal(start, trained[kernel] * masks)
    else:  # Late rewinding: to the weights captured during round 0, neither initial nor trained.
        np.testing.assert_array_equal(start, rewind_point[kernel] * masks)
        assert not np.array_equal(rewind_point[kernel], initial[kernel])
        assert not np.array_equal(rewind_point[kernel], trained[kernel])


def test_controls_replay_the_tickets_densities(ticket_run, tmp_path):
    run_dir, _ = ticket_run
    _search(tmp_path / "reinit", control="reinit", replay_masks_from=str(run_dir)).run()
    _assert_same(round_arrays(tmp_path / "reinit", 2, "masks"), round_arrays(run_dir, 2, "masks"))
    reinit_start = round_arrays(tmp_path / "reinit", 2, "rewind")
    ticket_start = round_arrays(run_dir, 2, "rewind")
    assert any(not np.array_equal(reinit_start[k], ticket_start[k]) for k in ticket_start)
    _search(tmp_path / "random", control="random_mask", replay_masks_from=str(run_dir)).run()
    random_masks = round_arrays(tmp_path / "random", 2, "masks")
    ticket_masks = round_arrays(run_dir, 2, "masks")
    for key in ticket_masks:
        assert random_masks[key].sum() == ticket_masks[key].sum()
    assert not np.array_equal(random_masks["fc1/kernel"], ticket_masks["fc1/kernel"])
    # Random masks are not nested: every survivor restarts from its initial value, none from 0.
    initial, start = (round_arrays(tmp_path / "random", index, "rewind") for index in (0, 2))
    kernel = next(path for path in initial if path.endswith("fc1/kernel"))
    np.testing.assert_array_equal(start[kernel], initial[kernel] * random_masks["fc1/kernel"])


def test_one_shot_prunes_to_the_target_in_one_round(tmp_path):
    history = _search(tmp_path, one_shot=True, rounds=None, target_density=0.3).run()
    assert len(history["rounds"]) == 2
    assert history["rounds"][1]["density"] <= 0.3
    assert history["rounds"][1]["density"] > 0.2


def test_erk_scope_gives_each_layer_its_erk_density(tmp_path):
    history = _search(tmp_path, one_shot=True, rounds=None, target_density=0.3, scope="erk",
                      output_prune_rate=None).run()
    final = history["rounds"][1]
    assert final["density"] == pytest.approx(0.8 ** 6, abs=1e-3)  # Six rounds' worth of 20%, at once.
    model = tf_lottery.mask(_build())
    shapes = {key: tuple(mask.shape) for key, mask in masking.get_masks(model).items()}
    for key, density in pruning.erk_densities(shapes, final["density"]).items():
        assert final["layer_density"][key] == pytest.approx(density, abs=1e-3), key


def test_rounds_to_target_reaches_the_target_in_that_many_equal_rounds(tmp_path):
    """Six rounds of the plan (20% per round; 10% for the output layer) reach 30%; two rounds do it in halves."""
    history = _search(tmp_path / "two", rounds=None, target_density=0.3, rounds_to_target=2).run()
    iterated = _search(tmp_path / "six", rounds=None, target_density=0.3).run()
    assert len(history["rounds"]) == 3 and len(iterated["rounds"]) == 7
    halfway, final = (round_arrays(tmp_path / "two", index, "masks") for index in (1, 2))
    iterated_final = round_arrays(tmp_path / "six", 6, "masks")
    for key, mask in final.items():
        first_rate = 0.1 if key.startswith("output") else 0.2
        assert halfway[key].mean() == pytest.approx((1 - first_rate) ** 3, abs=0.01), key
        assert mask.sum() == pytest.approx(iterated_final[key].sum(), rel=0.01), key
        assert np.all(mask <= halfway[key]), key  # Nested: the second round prunes survivors only.
    assert history["rounds"][2]["density"] == pytest.approx(iterated["rounds"][6]["density"], abs=0.002)
    # Stopped after round 1 (rounds=1) and resumed, it prunes round 2 as the run that went through did.
    _search(tmp_path / "resumed", rounds=1, target_density=0.3, rounds_to_target=2).run()
    _search(tmp_path / "resumed", rounds=None, target_density=0.3, rounds_to_target=2, resume=True).run()
    _assert_same(round_arrays(tmp_path / "resumed", 2, "masks"), final)


def test_interim_rounds_are_shorter_and_the_last_round_trains_in_full(tmp_path):
    """The last round is found by `rounds` or by the density that reaches target_density."""
    short = {"epochs": None, "iterations": 40, "interim_iterations": 10, "eval_every": 10, "output_prune_rate": None}
    by_count = _search(tmp_path / "count", **short).run()
    by_target = _search(tmp_path / "target", rounds=None, target_density=0.7, **short).run()
    for history in (by_count, by_target):
        assert [r["iterations"] for r in history["rounds"]] == [10, 10, 40]
    # Killed during its last round, the search resumes to the same ticket.
    finished = round_arrays(tmp_path / "count", 2, "trained")
    shutil.rmtree(tmp_path / "count" / "round_002")
    resumed = _search(tmp_path / "count", resume=True, **short).run()
    assert resumed["rounds"][2]["iterations"] == 40
    _assert_same(round_arrays(tmp_path / "count", 2, "trained"), finished)


def test_gradual_pruning_reaches_the_plans_survivors_during_the_round_and_resumes_exactly(tmp_path):
    """A dense round of 10 iterations, then one of 40 that prunes to one-shot's survivors over its first 20."""
    gradual = {"epochs": None, "iterations": 40, "interim_iterations": 10, "eval_every": 10, "rounds": None,
               "target_density": 0.3, "rounds_to_target": 1, "rewind": "lr", "gradual_iterations": 20,
               "gradual_every": 5}
    history = _search(tmp_path / "gradual", **gradual).run()
    _search(tmp_path / "one_shot", **{**gradual, "gradual_iterations": None}).run()
    assert [r["iterations"] for r in history["rounds"]] == [10, 40]
    steps = history["rounds"][1]["gradual_pruning"]
    assert [step for step, _ in steps] == [5, 10, 15, 20]
    densities = [density for _, density in steps]
    assert densities == sorted(densities, reverse=True) and densities[-1] == history["rounds"][1]["density"]
    masks, one_shot = (round_arrays(tmp_path / name, 1, "masks") for name in ("gradual", "one_shot"))
    assert pruning.count_survivors(masks) == pruning.count_survivors(one_shot)
    assert any((masks[key] != one_shot[key]).any() for key in masks)  # Chosen as the weights trained.
    trained = round_arrays(tmp_path / "gradual", 1, "trained")
    # Killed during its gradual round, the search resumes to the same masks and weights.
    shutil.rmtree(tmp_path / "gradual" / "round_001")
    _search(tmp_path / "gradual", resume=True, **gradual).run()
    _assert_same(round_arrays(tmp_path / "gradual", 1, "masks"), masks)
    _assert_same(round_arrays(tmp_path / "gradual", 1, "trained"), trained)


def test_a_round_shorter_than_gradual_iterations_fails_before_it_trains(tmp_path):
    """One epoch of digits is 20 steps of 64 images: too short to prune over 30."""
    with pytest.raises(ValueError, match="over 30 steps needs at least that long a training run; this one has 20"):
        _search(tmp_path, gradual_iterations=30).run()
    assert os.path.isdir(tmp_path / "round_000") and not os.path.exists(tmp_path / "round_001")


def test_target_density_stops_the_search(tmp_path):
    history = _search(tmp_path, rounds=None, target_density=0.7, output_prune_rate=None).run()
    assert [round(r["density"], 2) for r in history["rounds"]] == [1.0, 0.8, 0.64]


def test_an_existing_run_is_never_clobbered(ticket_run):
    run_dir, _ = ticket_run
    with pytest.raises(FileExistsError, match="Pass resume to continue it, overwrite to start again"):
        _search(run_dir).run()


def test_resuming_with_another_setup_names_the_difference(ticket_run):
    run_dir, _ = ticket_run
    with pytest.raises(ValueError, match=r"prune_rate: run has 0.2, now 0.5"):
        _search(run_dir, resume=True, prune_rate=0.5).run()


def test_a_damaged_round_folder_is_reported_and_kept(tmp_path):
    _search(tmp_path, rounds=1).run()
    damaged = tmp_path / "round_001" / "masks.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(storage.CorruptFileError, match=r"round_001 is damaged.*truncated"):
        _search(tmp_path, resume=True).run()
    assert damaged.stat().st_size == 100


def test_replaying_masks_of_another_model_is_an_error(ticket_run, tmp_path):
    run_dir, _ = ticket_run
    config = SearchConfig(rounds=1, epochs=1)
    conv = TicketSearch(lambda: models.conv2(DATA.input_shape, DATA.num_classes), DATA, config, str(tmp_path),
                        replay_masks_from=str(run_dir), verbose=0)
    with pytest.raises(ValueError, match="belong to another model"):
        conv.run()


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 1, "iterations": 10}, "exactly one of epochs or iterations"),
    ({"rewind": "later"}, "rewind must be one of"),
    ({"control": "shuffle"}, r"control must be one of \('reinit', 'random_mask'\)"),
    ({"prune_rate": 1.2}, r"rate must be a fraction in \(0, 1\)"),
    ({"rounds": None}, "Give rounds, target_density, or both"),
    ({"epochs": None, "iterations": 150, "eval_every": 100}, r"iterations \(150\) must be a multiple"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"block": "4"}, "block must look like '1x4'"),
    ({"block": "1x0"}, r"block must be None or \(rows, cols\)"),
    ({"early_bird": 1.5}, r"early_bird must be a mask distance in \(0, 1\]"),
    ({"early_bird_patience": 0}, "early_bird_patience must be a positive integer"),
    ({"movement_every": "batch"}, r"movement_every must be one of \('step', 'epoch'\)"),
    ({"rounds_to_target": 2}, "rounds_to_target needs target_density"),
    ({"rounds_to_target": 2, "target_density": 0.1, "one_shot": True}, "excludes one_shot and early_bird"),
    ({"rounds_to_target": 0, "target_density": 0.1}, "rounds_to_target must be a positive integer"),
    ({"interim_iterations": 0}, "interim_iterations must be a positive integer"),
    ({"interim_iterations": 30, "eval_every": 20}, r"interim_iterations \(30\) must be a multiple of eval_every"),
    ({"interim_iterations": 5, "rewind": "step:10"}, "lies beyond round 0, which trains for 5 steps"),
    ({"epochs": 1, "rewind": "epoch:5"}, "lies beyond round 0, which trains for 1 epoch:"),
    ({"epochs": None, "iterations": 20, "rewind": "step:30"}, "lies beyond round 0, which trains for 20 steps"),
    ({"epochs": None, "iterations": 40, "gradual_iterations": 50}, r"gradual_iterations \(50\) exceeds a round's"),
    ({"gradual_iterations": 10, "control": "reinit"}, "cannot prune gradually"),
    ({"gradual_every": 0}, "gradual_every must be a positive integer"),
    ({"rewind": "auto", "rewind_candidates": "0,ten"}, "rewind_candidates must look like '0,100,500'"),
    ({"rewind": "auto", "rewind_candidates": "-5,0"}, "rewind_candidates must look like '0,100,500'"),
    ({"rewind": "auto", "interim_iterations": 5}, "rewind='auto' .* excludes interim_iterations"),
    ({"stability_threshold": 0.0}, r"stability_threshold must be in \(0, 1\)"),
])
def test_bad_configurations_fail_with_their_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**{"rounds": 2, "epochs": 5, **kwargs})


def test_resume_is_exact_for_models_with_dropout(tmp_path):
    def build():
        inputs = keras.Input(DATA.input_shape)
        x = keras.layers.Dense(32, activation="relu", name="fc1")(keras.layers.Flatten()(inputs))
        x = keras.layers.Dropout(0.5)(x)
        return keras.Model(inputs, keras.layers.Dense(DATA.num_classes, name="output")(x))

    def search(run_dir, rounds, resume=False):
        config = SearchConfig(rounds=rounds, epochs=1, batch_size=64)
        return TicketSearch(build, DATA, config, str(run_dir), resume=resume, verbose=0).run()

    search(tmp_path / "whole", 2)
    search(tmp_path / "split", 1)
    search(tmp_path / "split", 2, resume=True)
    _assert_same(round_arrays(tmp_path / "split", 2, "trained"),
                 round_arrays(tmp_path / "whole", 2, "trained"))


@pytest.mark.parametrize("criterion", ["snip", "synflow"])
def test_pruning_at_initialization_prunes_by_the_scores_of_the_initial_weights(criterion, tmp_path):
    history = _search(tmp_path, criterion=criterion, one_shot=True, rounds=None, target_density=0.3,
                      scope="global").run()
    assert len(history["rounds"]) == 2 and history["rounds"][1]["density"] <= 0.3
    scores = round_arrays(tmp_path, 0, "statistics")
    model = tf_lottery.mask(_build())
    start = masking.get_prunable_weights(model, round_arrays(tmp_path, 0, "rewind"))
    if criterion == "snip":  # Recomputed on round 0's first batch, from the initial weights.
        data = tf_lottery.SearchData(train=(DATA.x_train, DATA.y_train), validation=(DATA.x_val, DATA.y_val))
        x, y = next(iter(data.train_batches(tf_lottery.search.round_seed(0, 0), 1, 64)))
        masking.set_masks(model, masking.get_masks(model))
        weights.restore(model, round_arrays(tmp_path, 0, "rewind"))
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        expected = tf_lottery.saliency.snip(model, x, y)
        for key in scores:
            np.testing.assert_allclose(scores[key], expected[key], rtol=1e-4, atol=1e-9)
    masks = round_arrays(tmp_path, 1)
    for key, mask in masks.items():  # The survivors are the best-scored weights (globally; output: its own rate).
        if key != "output/kernel":
            assert scores[key][mask == 0].max() <= min(scores[k][masks[k] == 1].min() for k in masks
                                                       if k != "output/kernel"), key
    assert all(np.isfinite(value).all() for value in start.values())


def _curves(barriers):
    """`stability.instability` as a stand-in: one curve per candidate with the given barriers."""
    calls = []

    def instability(build_model, data, config, candidates, **kwargs):
        calls.append(list(candidates))
        return [{"rewind_iteration": k, "barrier": barriers[k], "alphas": [0.0, 1.0], "values": [0.9, 0.9],
                 "metric": "accuracy"} for k in candidates]
    return instability, calls


def test_rewind_auto_rewinds_to_the_earliest_stable_candidate_and_resumes_with_it(tmp_path, monkeypatch, capsys):
    instability, calls = _curves({0: 0.3, 8: 0.01, 12: 0.0})
    monkeypatch.setattr(stability, "instability", instability)
    settings = dict(rewind="auto", rewind_candidates="12,0,8", epochs=None, iterations=16, eval_every=8, verbose=1)
    _search(tmp_path, rounds=1, **settings).run()
    assert calls == [[0, 8, 12]]
    record = json.loads((tmp_path / "instability.json").read_text())
    assert record["rewind_iteration"] == 8 and record["stable"] and record["threshold"] == 0.02
    assert "rewind='auto' rewinds to iteration 8 (error barrier by iteration: 0: 0.300, 8: 0.010" in \
        capsys.readouterr().out
    assert read_run_config(tmp_path).rewind == "auto"
    start = weights.snapshot(RunStore(tmp_path).load_model())
    rewind = round_arrays(tmp_path, 0, "rewind")
    assert any(not np.array_equal(rewind[key], start[key]) for key in start)  # The weights after step 8.
    history = _search(tmp_path, rounds=2, resume=True, **settings).run()
    assert calls == [[0, 8, 12]] and len(history["rounds"]) == 3  # Read back, not measured again.
    replay = _search(tmp_path / "control", rounds=2, replay_masks_from=str(tmp_path), control="reinit",
                     **settings).run()
    assert calls == [[0, 8, 12]] and len(replay["rounds"]) == 3  # A replay rewinds where its source did.


def test_rewind_auto_falls_back_to_the_latest_candidate_when_none_is_stable(tmp_path, monkeypatch, capsys):
    instability, _ = _curves({0: 0.3, 5: 0.2})
    monkeypatch.setattr(stability, "instability", instability)
    _search(tmp_path, rounds=1, rewind="auto", rewind_candidates="0,5", epochs=None, iterations=10, eval_every=5,
            verbose=1).run()
    record = json.loads((tmp_path / "instability.json").read_text())
    assert record["rewind_iteration"] == 5 and not record["stable"]
    assert "No candidate is stable" in capsys.readouterr().out


def test_rewind_auto_chooses_initialization_where_training_is_stable_from_the_start(tmp_path):
    def linear():  # A convex problem: copies from any point meet in one basin.
        return keras.Sequential([keras.Input(DATA.input_shape), keras.layers.Flatten(), keras.layers.Dense(10)])
    config = SearchConfig(rounds=1, rewind="auto", epochs=None, iterations=40, eval_every=20, batch_size=64,
                          learning_rate=1e-2)
    history = TicketSearch(linear, DATA, config, str(tmp_path), verbose=0).run()
    record = json.loads((tmp_path / "instability.json").read_text())
    assert [curve["rewind_iteration"] for curve in record["curves"]] == [0, 1, 2, 4]  # 0, 1%, 2%, 5%, 10% of 40.
    assert all(len(curve["values"]) == stability.POINTS for curve in record["curves"])
    assert record["curves"][0]["barrier"] < 0.02 and record["rewind_iteration"] == 0 and record["stable"]
    start, rewind = weights.snapshot(RunStore(tmp_path).load_model()), round_arrays(tmp_path, 0, "rewind")
    _assert_same(rewind, start)  # Rewinds to the initialization.
    assert len(history["rounds"]) == 2


def test_tensorboard_gets_one_scalar_per_round(tmp_path):
    config = SearchConfig(rounds=1, epochs=1, batch_size=64)
    TicketSearch(_build, DATA, config, str(tmp_path), verbose=0, tensorboard=True).run()
    densities = dict(sorted(
        (event.step, float(tf.make_ndarray(value.tensor)))
        for path in (tmp_path / "tensorboard").iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value if value.tag == "density"))
    assert list(densities) == [0, 1] and densities[0] == 1.0 > densities[1]


def test_block_search_and_its_random_mask_control_prune_whole_blocks(tmp_path):
    _search(tmp_path / "ticket", rounds=1, block="1x4").run()
    _search(tmp_path / "random", rounds=1, block="1x4", control="random_mask",
            replay_masks_from=str(tmp_path / "ticket")).run()
    kernels = [round_arrays(tmp_path / run, 1, "masks")["fc1/kernel"].T for run in ("ticket", "random")]
    for kernel in kernels:  # [out, in]: 64 inputs in blocks of 4
        blocks = kernel.reshape(kernel.shape[0], -1, 4)
        assert np.all(blocks.min(axis=2) == blocks.max(axis=2))
        assert kernel.mean() == pytest.approx(0.8, abs=0.01)
    assert kernels[0].sum() == kernels[1].sum() and not np.array_equal(*kernels)


def test_early_bird_ends_the_dense_round_early_and_prunes_to_the_target(tmp_path):
    history = _search(tmp_path, early_bird=0.1, early_bird_patience=3, rounds=None, target_density=0.3, epochs=None,
                      iterations=200, eval_every=10).run()
    dense, ticket = history["rounds"]
    assert dense["iterations"] == dense["early_bird"]["stopped_at"] < 200 and ticket["iterations"] == 200
    distances = [distance for _, distance in dense["early_bird"]["distances"]]
    first_stable = next(end for end in range(3, len(distances) + 1) if max(distances[end - 3:end]) < 0.1)
    assert first_stable == len(distances)  # Stopped at the first check after three stable ones.
    assert 0.2 < ticket["density"] <= 0.3
    trained = masking.get_prunable_weights(tf_lottery.mask(_build()), round_arrays(tmp_path, 0, "trained"))
    plan = compounded_plan(tf_lottery.PruningPlan(rate=0.2, output_rate=0.1, target_density=0.3),
                           round_arrays(tmp_path, 0, "masks"), "output")
    _assert_same(round_arrays(tmp_path, 1, "masks"), plan.prune(round_arrays(tmp_path, 0, "masks"),
                                                                 tf_lottery.criteria.magnitude(trained, None),
                                                                 output_layer="output"))


def test_early_bird_and_gradual_pruning_exclude_replayed_masks(ticket_run, tmp_path):
    run_dir, _ = ticket_run
    for setting in ({"early_bird": 0.1}, {"gradual_iterations": 5}):
        with pytest.raises(ValueError, match="early_bird, rounds_to_target and gradual_iterations exclude"):
            _search(tmp_path, replay_masks_from=str(run_dir), **setting)


def test_movement_rate_prunes_by_the_saved_statistics_and_resumes_exactly(tmp_path):
    _search(tmp_path / "whole", criterion="movement_rate").run()
    statistics = round_arrays(tmp_path / "whole", 0, "statistics")
    masks = round_arrays(tmp_path / "whole", 0, "masks")
    expected = tf_lottery.PruningPlan(rate=0.2, output_rate=0.1).prune(masks, statistics, output_layer="output")
    _assert_same(round_arrays(tmp_path / "whole", 1, "masks"), expected)
    kept = round_arrays(tmp_path / "whole", 1, "masks")["fc1/kernel"] == 1
    assert statistics["fc1/kernel"][~kept].max() <= statistics["fc1/kernel"][kept].min()
    _search(tmp_path / "split", criterion="movement_rate", rounds=1).run()
    _search(tmp_path / "split", criterion="movement_rate", resume=True).run()
    for name in ("masks", "statistics"):
        _assert_same(round_arrays(tmp_path / "split", 2, name), round_arrays(tmp_path / "whole", 2, name))


def test_runs_started_before_a_setting_existed_resume_with_its_default(tmp_path):
    _search(tmp_path, rounds=1).run()
    run = storage.read_json(tmp_path / "run.json")
    for name in ("early_bird", "early_bird_patience", "movement_every", "gradual_iterations", "gradual_every"):
        del run["config"][name]
    storage.write_json(tmp_path / "run.json", run)
    assert read_run_config(tmp_path) == SearchConfig(rounds=1, epochs=1, batch_size=64)
    assert len(_search(tmp_path, resume=True).run()["rounds"]) == 3


def test_layer_rates_override_the_plan_per_layer():
    plan = SearchConfig(rounds=1, layer_rates="conv1=0.1, conv2=0.15").plan()
    assert plan.layer_rates == {"conv1": 0.1, "conv2": 0.15}
    assert plan.rate_for("conv1/kernel") == 0.1 and plan.rate_for("dense/kernel") == 0.2
    with pytest.raises(ValueError, match="layer=rate"):
        SearchConfig(rounds=1, layer_rates="conv1:0.1")
    with pytest.raises(ValueError, match="fraction"):
        SearchConfig(rounds=1, layer_rates="conv1=2")


def test_a_pretrained_model_rewinds_to_the_weights_it_was_built_with(tmp_path):
    """Round 0 starts from the built model's weights (pretrained or not); later rounds rewind there."""
    keras.utils.set_random_seed(7)
    pretrained = [w + 0.01 for w in _build().get_weights()]  # Stands in for a preset's weights.

    def build():
        model = _build()
        model.set_weights(pretrained)
        return model

    config = SearchConfig(rounds=1, epochs=1, batch_size=64)
    TicketSearch(build, DATA, config, str(tmp_path), verbose=0).run()
    expected = {v.path: value for v, value in zip(build().weights, pretrained)}
    masks = round_arrays(tmp_path, 1, "masks")
    for index in (0, 1):
        rewound = round_arrays(tmp_path, index, "rewind")
        for path, value in expected.items():
            kept = masks[path] if index and path in masks else 1
            np.testing.assert_array_equal(rewound[path], value * kept, err_msg=f"round {index} {path}")


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(32, activation="relu", name="hidden")
        self.out = keras.layers.Dense(DATA.num_classes, name="output")

    def call(self, x):
        return self.out(self.hidden(keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))))


def test_a_subclassed_model_is_searched_and_resumed(tmp_path):
    def build():
        model = _Subclassed()
        model(DATA.x_train[:1])
        return model

    config = SearchConfig(rounds=1, epochs=1, batch_size=64)
    TicketSearch(build, DATA, config, str(tmp_path), verbose=0).run()
    history = TicketSearch(build, DATA, dataclasses.replace(config, rounds=2), str(tmp_path), verbose=0,
                           resume=True).run()
    assert [round(r["density"], 2) for r in history["rounds"]] == [1.0, 0.81, 0.66]
    assert set(round_arrays(tmp_path, 2, "masks")) == {"hidden/kernel", "output/kernel"}


def test_rounds_with_one_optimizer_setting_compile_the_model_once(tmp_path):
    compiles = []

    def build():
        model = _build()
        compile = model.compile
        model.compile = lambda **kwargs: compiles.append(kwargs["optimizer"].get_config()) or compile(**kwargs)
        return model

    config = SearchConfig(rounds=3, epochs=None, iterations=20, batch_size=64)
    TicketSearch(build, DATA, config, str(tmp_path / "constant"), verbose=0).run()
    assert len(compiles) == 1  # Later rounds reset the optimizer's state instead.
    compiles.clear()
    config = dataclasses.replace(config, interim_iterations=10, lr_schedule="cosine")
    TicketSearch(build, DATA, config, str(tmp_path / "cosine"), verbose=0).run()
    assert [c["learning_rate"]["config"]["decay_steps"] for c in compiles] == [10, 20]  # Interim, then full.
