import numpy as np
import pytest

from tf_lottery import criteria

FINAL = {"a/kernel": np.array([[-3.0, 1.0], [0.5, -0.1]]), "b/kernel": np.array([2.0, -4.0])}
INITIAL = {"a/kernel": np.array([[-1.0, 2.0], [0.5, 0.3]]), "b/kernel": np.array([1.0, -5.0])}


def test_magnitude():
    np.testing.assert_array_equal(criteria.magnitude(FINAL, INITIAL)["a/kernel"], [[3.0, 1.0], [0.5, 0.1]])


def test_magnitude_increase():
    np.testing.assert_allclose(criteria.magnitude_increase(FINAL, INITIAL)["b/kernel"], [1.0, -1.0])


def test_movement():
    np.testing.assert_allclose(criteria.movement(FINAL, INITIAL)["a/kernel"], [[2.0, 1.0], [0.0, 0.4]])


def test_random_is_seeded_and_differs_between_layers():
    first = criteria.get("random", seed=3)(FINAL, INITIAL)
    again = criteria.get("random", seed=3)(FINAL, INITIAL)
    other = criteria.get("random", seed=4)(FINAL, INITIAL)
    np.testing.assert_array_equal(first["a/kernel"], again["a/kernel"])
    assert not np.array_equal(first["a/kernel"], other["a/kernel"])
    assert first["a/kernel"].ravel()[0] != first["b/kernel"][0]


def test_get_accepts_names_and_callables():
    assert criteria.get("magnitude") is criteria.magnitude
    assert criteria.get(criteria.movement) is criteria.movement
    with pytest.raises(ValueError, match=r"Unknown criterion 'size'; choose one of \['magnitude'"):
        criteria.get("size")


def test_score_rejects_diverged_weights():
    bad = {**FINAL, "b/kernel": np.array([np.nan, 1.0])}
    with pytest.raises(ValueError, match=r"'b/kernel' holds NaN or infinite values.*Lower the learning rate"):
        criteria.score(criteria.magnitude, bad, INITIAL)


def test_score_checks_what_a_custom_criterion_returns():
    with pytest.raises(ValueError, match="expected"):
        criteria.score(lambda f, i, s: {"a/kernel": f["a/kernel"]}, FINAL, INITIAL)
    with pytest.raises(ValueError, match="have shape"):
        criteria.score(lambda f, i, s: {k: np.ones(3) for k in f}, FINAL, INITIAL)
    scores = criteria.score(criteria.magnitude, FINAL, INITIAL)
    assert set(scores) == set(FINAL)


def test_movement_rate_keeps_the_weights_that_moved_most():
    moved = {"a/kernel": np.array([[0.5, 0.0], [2.0, 0.1]]), "b/kernel": np.array([3.0, 0.2])}
    scores = criteria.get("movement_rate")(FINAL, INITIAL, moved)
    np.testing.assert_array_equal(scores["a/kernel"], [[0.5, 0.0], [2.0, 0.1]])
    np.testing.assert_array_equal(scores["b/kernel"], [3.0, 0.2])
    assert scores["a/kernel"] is not moved["a/kernel"]


def test_movement_rate_without_statistics_names_the_fix():
    with pytest.raises(ValueError, match="train with tf_lottery.MovementTracker and pass tracker.statistics"):
        criteria.movement_rate(FINAL, INITIAL)
    with pytest.raises(ValueError, match=r"no movement for \['b/kernel'\]"):
        criteria.movement_rate(FINAL, INITIAL, {"a/kernel": np.ones((2, 2))})
