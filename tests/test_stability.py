"""The error barrier of `tf_lottery.stability` on hand-made paths and on small trained networks."""

import keras
import pytest

import tf_lottery
from tf_lottery import models, stability, weights
from tf_lottery.search import SearchConfig

from conftest import DIGITS as DATA

CONFIG = SearchConfig(epochs=None, iterations=60, batch_size=64, learning_rate=1e-2)


def _linear():
    return keras.Sequential([keras.Input(DATA.input_shape), keras.layers.Flatten(), keras.layers.Dense(10)])


def _trained(seed):
    keras.utils.set_random_seed(seed)
    model = models.lenet300_100(DATA.input_shape, DATA.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(DATA.x_train, DATA.y_train, batch_size=64, epochs=4, verbose=0)
    return model


def test_the_barrier_is_the_worst_rise_above_the_mean_of_the_ends():
    assert stability.barrier([0.9, 0.5, 0.8]) == pytest.approx(0.35)  # Errors 0.1, 0.5, 0.2.
    assert stability.barrier([1.0, 3.0, 2.0], mode="min") == pytest.approx(1.5)  # A loss.
    assert stability.barrier([0.8, 0.9, 0.95, 0.8]) == 0.0  # Better in between: no barrier.


def test_identical_copies_have_no_barrier_and_independently_trained_networks_have_one():
    first, second = _trained(0), _trained(1)
    a, b = weights.snapshot(first), weights.snapshot(second)
    split = (DATA.x_val, DATA.y_val)
    alphas, same = stability.linear_path(first, a, a, split, points=5)
    assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert stability.barrier(same) == 0.0 and same[0] > 0.9
    _, independent = stability.linear_path(first, a, b, split, points=5)
    assert independent[0] == pytest.approx(same[0])  # The path starts at the first network ...
    assert independent[-1] == pytest.approx(second.evaluate(*split, verbose=0, return_dict=True)["accuracy"])
    assert stability.barrier(independent) > 0.1  # ... and its middle is far worse than either end.


def test_a_linear_classifier_is_stable_from_initialization(capsys):
    curves = stability.instability(_linear, DATA, CONFIG, rewind_iterations=(20, 0), points=4, verbose=1)
    assert [curve["rewind_iteration"] for curve in curves] == [0, 20]
    for curve in curves:
        assert curve["metric"] == "accuracy" and len(curve["values"]) == 4 and curve["values"][0] > 0.8
        assert curve["barrier"] < stability.THRESHOLD
    assert stability.earliest_stable(curves) == 0
    assert "Rewind iteration 20: accuracy barrier" in capsys.readouterr().out


def test_the_copies_are_trained_from_the_rewind_point_on_two_data_orders():
    curves = stability.instability(_linear, DATA, CONFIG, rewind_iterations=(0,), points=2)
    assert curves[0]["values"][0] != curves[0]["values"][1]  # Two data orders: two different networks.
    again = stability.instability(_linear, DATA, CONFIG, rewind_iterations=(0,), points=2)
    assert again == curves  # One seed: the same copies.


def test_a_masked_network_keeps_its_zeros_on_the_path():
    model = tf_lottery.mask(_linear())
    masks = tf_lottery.get_masks(model)
    (key,) = masks
    masks[key][::2] = 0
    build = lambda: model  # noqa: E731 (the masked model itself, as a pretrained model would be given)
    curves = stability.instability(build, DATA, CONFIG, masks=masks, points=3)
    assert curves[0]["barrier"] < stability.THRESHOLD
    assert not tf_lottery.get_prunable_weights(model)[key][::2].any()  # Held at the end of the path.


@pytest.mark.parametrize("kwargs, message", [
    ({"rewind_iterations": (0, 61)}, r"Rewind iterations \[61\] lie outside the round's 60 iterations"),
    ({"split": "train"}, r"split='train' is not a set of this data; choose one of \['test', 'val'\]"),
    ({"metric": "auc"}, r"monitor='val_auc' is not a validation metric"),
])
def test_bad_settings_fail_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stability.instability(_linear, DATA, CONFIG, **kwargs)
