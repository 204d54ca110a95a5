import numpy as np
import keras
import pytest

import tf_lottery
from tf_lottery import callbacks, masking, weights

L = keras.layers


def _masked(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = L.Dense(8, activation="relu", name="hidden")(inputs)
    model = tf_lottery.mask(keras.Model(inputs, L.Dense(3, name="output")(x)))
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6)).astype("float32"), rng.integers(0, 3, n)


class Recorder(keras.callbacks.Callback):
    """Records all weights after every batch and epoch."""

    def __init__(self):
        super().__init__()
        self.after_step, self.after_epoch = {}, {}

    def on_train_batch_end(self, batch, logs=None):
        self.after_step[int(self.model.optimizer.iterations.numpy())] = weights.snapshot(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch[epoch + 1] = weights.snapshot(self.model)


def _assert_equal(values, expected):
    assert set(values) == set(expected)
    for path in values:
        np.testing.assert_array_equal(values[path], expected[path])


def test_rewind_to_initialization_restores_survivors_bit_for_bit():
    model = _masked()
    initial = weights.snapshot(model)
    callback = tf_lottery.LotteryCallback()
    x, y = _data()
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
    masks = tf_lottery.PruningPlan().apply(
        model, tf_lottery.criteria.magnitude(tf_lottery.get_prunable_weights(model), None))
    tf_lottery.set_masks(model, masks)
    callback.rewind()
    rewound = weights.snapshot(model)
    for key, weight in tf_lottery.get_prunable_weights(model).items():  # Mask keys are variable paths.
        np.testing.assert_array_equal(weight, initial[key] * masks[key])
        assert np.array_equal(rewound[key][masks[key] == 1], initial[key][masks[key] == 1])
    bias = model.get_layer("hidden").bias.path
    np.testing.assert_array_equal(rewound[bias], initial[bias])


@pytest.mark.parametrize("rewind_at, recorded", [(3, ("after_step", 3)), ("step:5", ("after_step", 5)),
                                                 ("step:12", ("after_step", 12)),  # The last step.
                                                 ("epoch:1", ("after_epoch", 1))])
def test_late_rewinding_captures_the_weights_at_that_point(rewind_at, recorded):
    model = _masked()
    callback, recorder = tf_lottery.LotteryCallback(rewind_at), Recorder()
    x, y = _data()
    model.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[callback, recorder])
    attribute, at = recorded
    _assert_equal(callback.rewind_weights, getattr(recorder, attribute)[at])
    callback.rewind()
    _assert_equal(weights.snapshot(model), getattr(recorder, attribute)[at])


def test_capture_happens_once_across_rounds():
    model = _masked()
    callback = tf_lottery.LotteryCallback()
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    first = callback.rewind_weights
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert callback.rewind_weights is first


def test_callback_zeroes_pruned_weights_at_train_begin():
    model = _masked()
    masks = tf_lottery.get_masks(model)
    masks["hidden/kernel"][0] = 0
    tf_lottery.set_masks(model, masks)
    kernel = model.get_layer("hidden").kernel
    kernel.assign(np.ones(kernel.shape))  # e.g. weights loaded from elsewhere
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[tf_lottery.LotteryCallback()])
    assert not kernel.numpy()[0].any()


def test_rewind_beyond_the_training_run_is_an_error():
    x, y = _data()
    with pytest.raises(ValueError, match=r"step:100 lies beyond this training run of 8 steps"):
        _masked().fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[tf_lottery.LotteryCallback(100)])
    with pytest.raises(ValueError, match=r"epoch:5 lies beyond this training run of 2 epochs"):
        _masked().fit(x, y, epochs=2, verbose=0, callbacks=[tf_lottery.LotteryCallback("epoch:5")])


def test_steps_per_execution_that_skips_the_rewind_step_is_an_error():
    model = _masked()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)
    x, y = _data()
    with pytest.raises(ValueError, match="steps_per_execution that divides the rewind step"):
        model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[tf_lottery.LotteryCallback(3)])


def test_steps_per_execution_that_divides_the_rewind_step_captures_the_weights_after_it():
    model = _masked()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)
    initial = weights.snapshot(model)
    callback, recorder = tf_lottery.LotteryCallback(2), Recorder()
    x, y = _data()
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[callback, recorder])
    assert sorted(recorder.after_step) == [2, 4]  # One callback call per execution of two steps.
    _assert_equal(callback.rewind_weights, recorder.after_step[2])
    kernel = model.get_layer("hidden").kernel.path
    assert not np.array_equal(callback.rewind_weights[kernel], initial[kernel])
    assert not np.array_equal(callback.rewind_weights[kernel], recorder.after_step[4][kernel])


@pytest.mark.parametrize("bad", [-1, "step:-2", "iteration:3", "epoch:x", 1.5, True])
def test_bad_rewind_points_are_rejected(bad):
    with pytest.raises(ValueError, match="Rewind point must be"):
        tf_lottery.LotteryCallback(bad)


def test_rewind_before_training_and_unmasked_models_are_errors():
    with pytest.raises(ValueError, match="train with this callback first"):
        tf_lottery.LotteryCallback().rewind(_masked())
    plain = keras.Sequential([keras.Input((6,)), L.Dense(3)])
    plain.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match=r"has no masks.*tf_lottery.mask\(model\)"):
        plain.fit(np.zeros((4, 6)), np.zeros((4, 3)), verbose=0, callbacks=[tf_lottery.LotteryCallback()])


class StepRecorder(keras.callbacks.Callback):
    """Records the masked weights at the start of training and after every step and epoch."""

    def on_train_begin(self, logs=None):
        self.steps = [tf_lottery.get_prunable_weights(self.model)]
        self.epochs = list(self.steps)

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(tf_lottery.get_prunable_weights(self.model))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(tf_lottery.get_prunable_weights(self.model))


def _path_length(snapshots, key):
    return sum(np.abs(after[key] - before[key]) for before, after in zip(snapshots, snapshots[1:]))


@pytest.mark.parametrize("every", ["step", "epoch"])
def test_movement_tracker_adds_up_how_far_each_weight_moved(every):
    model = _masked()
    masks = tf_lottery.get_masks(model)
    masks["hidden/kernel"][:, :2] = 0
    tf_lottery.set_masks(model, masks)
    tracker, recorder = tf_lottery.MovementTracker(every), StepRecorder()
    x, y = _data()
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[tracker, recorder])
    statistics = tracker.statistics()
    assert set(statistics) == {"hidden/kernel", "output/kernel"}
    snapshots = recorder.steps if every == "step" else recorder.epochs
    for key, moved in statistics.items():
        np.testing.assert_allclose(moved, _path_length(snapshots, key), rtol=1e-5, atol=1e-7)
    assert not statistics["hidden/kernel"][:, :2].any() and statistics["hidden/kernel"][:, 2:].all()


def test_movement_tracker_checks_its_arguments_and_state():
    with pytest.raises(ValueError, match=r"every must be one of \('step', 'epoch'\)"):
        tf_lottery.MovementTracker("batch")
    with pytest.raises(ValueError, match="train with this callback first"):
        tf_lottery.MovementTracker().statistics()


def test_mask_distance_is_the_share_of_survivors_that_changed():
    first = {"a/kernel": np.array([1, 1, 0, 0], np.float32), "b/kernel": np.array([1, 0], np.float32)}
    assert callbacks.mask_distance(first, first) == 0
    assert callbacks.mask_distance(first, {**first, "a/kernel": np.array([0, 1, 1, 0], np.float32)}) == 2 / 6
    assert callbacks.mask_distance(first, {key: 1 - mask for key, mask in first.items()}) == 1
    with pytest.raises(ValueError, match="different weights"):
        callbacks.mask_distance(first, {"a/kernel": first["a/kernel"]})


def test_early_bird_stops_once_the_mask_was_stable_for_patience_checks_and_not_before():
    model = _masked()
    kernel = model.get_layer("hidden").kernel
    rising = np.arange(48, dtype=np.float32).reshape(6, 8)
    early_bird = tf_lottery.EarlyBirdStopping(tf_lottery.PruningPlan(rate=0.5, output_rate=None), patience=2)
    early_bird.set_model(model)
    early_bird.on_train_begin()
    stopped = []
    for epoch, values in enumerate([rising, -rising[::-1], rising[::-1], rising, rising, rising]):
        kernel.assign(values)  # Top halves: the last 24 weights, the first 24, the first, the last, ...
        early_bird.on_epoch_end(epoch)
        stopped.append(model.stop_training)
    assert stopped == [False, False, False, False, False, True]
    assert [distance for _, distance in early_bird.distances] == pytest.approx([48 / 72, 0, 48 / 72, 0, 0])
    kept = early_bird.masks["hidden/kernel"].ravel()
    assert kept[24:].all() and not kept[:24].any()


@pytest.mark.parametrize("learning_rate, epochs_run", [(0.0, 3), (1.0, 8)])
def test_early_bird_ends_training_only_when_the_mask_settles(learning_rate, epochs_run):
    model = _masked()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    early_bird = tf_lottery.EarlyBirdStopping(tf_lottery.PruningPlan(rate=0.5), threshold=0.01, patience=2)
    x, y = _data()
    history = model.fit(x, y, batch_size=4, epochs=8, verbose=0, callbacks=[early_bird])
    assert len(history.history["loss"]) == epochs_run
    assert (early_bird.stopped_at is not None) == (epochs_run < 8)


def test_early_bird_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        tf_lottery.EarlyBirdStopping(tf_lottery.PruningPlan(), threshold=0)
    with pytest.raises(ValueError, match="patience must be a positive integer"):
        tf_lottery.EarlyBirdStopping(tf_lottery.PruningPlan(), patience=0)


def test_gradual_pruning_follows_the_cubic_schedule_and_keeps_the_largest_weights():
    model = _masked()
    model.compile(optimizer=keras.optimizers.SGD(0.0),  # The weights stay put: magnitude ranks the initial ones.
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    initial = masking.get_prunable_weights(model)
    final_masks = {"hidden/kernel": np.zeros((6, 8), np.float32), "output/kernel": np.zeros((8, 3), np.float32)}
    final_masks["hidden/kernel"].flat[:6] = 1
    final_masks["output/kernel"].flat[:9] = 1
    gradual = tf_lottery.GradualPruning(final_masks, iterations=10, every=3)
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[gradual])

    def kept(step):  # Zhu & Gupta: n_end + (n_start - n_end) (1 - t / iterations)^3, per weight.
        return round(6 + 42 * (1 - step / 10) ** 3) + round(9 + 15 * (1 - step / 10) ** 3)

    assert [step for step, _ in gradual.steps] == [3, 6, 9, 10]
    assert [density for _, density in gradual.steps] == pytest.approx([kept(step) / 72 for step in (3, 6, 9, 10)])
    masks = masking.get_masks(model)
    assert masks["hidden/kernel"].sum() == 6 and masks["output/kernel"].sum() == 9
    magnitudes = np.abs(initial["hidden/kernel"]).ravel()
    np.testing.assert_array_equal(np.flatnonzero(masks["hidden/kernel"]), np.sort(np.argsort(-magnitudes)[:6]))
    for key, weight in masking.get_prunable_weights(model).items():
        assert not weight[masks[key] == 0].any(), key


def test_gradual_pruning_rejects_what_it_cannot_reach():
    model = _masked()
    masks = masking.get_masks(model)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        tf_lottery.GradualPruning(masks, iterations=10, every=0)
    x, y = _data()
    with pytest.raises(ValueError, match="needs at least that long a training run"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[tf_lottery.GradualPruning(masks, 20)])
    pruned = {key: np.zeros_like(mask) for key, mask in masks.items()}
    for mask in pruned.values():
        mask.flat[:3] = 1
    tf_lottery.set_masks(model, pruned)
    with pytest.raises(ValueError, match="cannot revive weights"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[tf_lottery.GradualPruning(masks, 5)])
    with pytest.raises(ValueError, match=r"final_masks are for \['hidden/kernel'\]"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                  callbacks=[tf_lottery.GradualPruning({"hidden/kernel": pruned["hidden/kernel"]}, 5)])


def test_gradual_pruning_stopped_before_its_final_masks_is_an_error():
    model = _masked()
    stop = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: setattr(model, "stop_training",
                                                                                           batch == 2))
    x, y = _data()
    gradual = tf_lottery.GradualPruning(masking.get_masks(model), iterations=8, every=2)
    with pytest.raises(ValueError, match="Training ended before gradual pruning reached its final masks at step 8 "
                                         r"\(last pruned at step 2\)"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[gradual, stop])
