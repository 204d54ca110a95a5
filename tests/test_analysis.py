"""Weight noise and adversarial attacks of `tf_lottery.analysis` on a small trained network."""

import keras
import numpy as np
import pytest

import tf_lottery
from tf_lottery import analysis, models, storage

from conftest import DIGITS as DATA


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = tf_lottery.mask(models.lenet300_100(DATA.input_shape, DATA.num_classes))
    masks = tf_lottery.get_masks(model)
    masks["fc1/kernel"][::2] = 0
    tf_lottery.set_masks(model, masks)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(DATA.x_train, DATA.y_train, batch_size=64, epochs=5, verbose=0)
    return model


def test_accuracy_counts_top_1_hits(trained):
    clean = analysis.accuracy(trained, DATA.x_test, DATA.y_test, batch_size=100)
    expected = np.mean(np.argmax(trained.predict(DATA.x_test, verbose=0), -1) == DATA.y_test)
    assert clean == pytest.approx(expected) and clean > 0.8


def test_weight_noise_lowers_accuracy_keeps_pruned_weights_and_restores_the_weights(trained):
    before = tf_lottery.get_prunable_weights(trained)
    result = analysis.weight_noise_accuracy(trained, DATA.x_test, DATA.y_test, scales=(0, 0.5, 4), repeats=2)
    assert list(result) == [0.0, 0.5, 4.0]
    assert result[0.0] == analysis.accuracy(trained, DATA.x_test, DATA.y_test)
    assert result[4.0] < result[0.0] - 0.2
    after = tf_lottery.get_prunable_weights(trained)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize("attack_name", sorted(analysis.ATTACKS))
def test_attacks_lower_accuracy_and_epsilon_zero_changes_nothing(trained, attack_name):
    images, labels = DATA.x_test[:200], DATA.y_test[:200]
    result = analysis.adversarial_accuracy(trained, images, labels, (0.0, 0.05, 0.2), attack_name, batch_size=64)
    assert result[0.0] == analysis.accuracy(trained, images, labels)
    assert result[0.2] < result[0.05] < result[0.0]
    adversarial = analysis.attack(trained, images, labels, 0.0, **analysis.ATTACKS[attack_name])
    np.testing.assert_array_equal(adversarial, images)
    moved = analysis.attack(trained, images, labels, 0.1, **analysis.ATTACKS[attack_name])
    assert np.abs(moved - images).max() <= 0.1 + 1e-6 and moved.min() >= 0 and moved.max() <= 1


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    images, labels = DATA.x_test[:200], DATA.y_test[:200]
    fgsm = analysis.adversarial_accuracy(trained, images, labels, (0.1,), "fgsm")
    pgd = analysis.adversarial_accuracy(trained, images, labels, (0.1,), "pgd")
    assert pgd[0.1] <= fgsm[0.1]


def test_unknown_attacks_are_named():
    with pytest.raises(ValueError, match=r"Unknown attack 'cw'; choose one of \['fgsm', 'pgd'\]"):
        analysis.adversarial_accuracy(None, DATA.x_test, DATA.y_test, attack_name="cw")


def test_transfer_needs_datasets_of_one_input_shape(tmp_path):
    storage.write_json(tmp_path / "run.json", {"signature": {"dataset": {
        "name": "mnist_subset", "shapes": {"train": [10, 28, 28, 1], "val": [5, 28, 28, 1], "test": [5, 28, 28, 1]}}}})
    with pytest.raises(ValueError, match=r"transfer between datasets of one input shape, e.g. mnist_subset"):
        analysis.transfer(tmp_path, tmp_path, tmp_path / "out", None, DATA, rounds=1)
