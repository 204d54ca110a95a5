import numpy as np
import pytest

from tf_lottery import criteria

FINAL = {"a/kernel": np.array([[-3.0, 1.0], [0.5, -0.1]]), "b/kernel": np.array([2.0, -4.0])}
INITIAL = {"a/kernel": np.array([[-1.0, 2.0], [0.5, 0.3]]), "b/kernel": np.array([1.0, -5.0])}


def _assert_scores(scores, expected):
    assert set(scores) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(scores[key], value, rtol=0, atol=1e-12, err_msg=key)


def test_magnitude_scores_each_weight_by_its_final_absolute_value():
    expected = {"a/kernel": [[3.0, 1.0], [0.5, 0.1]], "b/kernel": [2.0, 4.0]}
    _assert_scores(criteria.magnitude(FINAL, INITIAL), expected)
    _assert_scores(criteria.magnitude(FINAL, None), expected)  # The initial weights play no part.


def test_magnitude_increase_scores_final_minus_initial_absolute_value():
    _assert_scores(criteria.magnitude_increase(FINAL, INITIAL),
                   {"a/kernel": [[2.0, -1.0], [0.0, -0.2]], "b/kernel": [1.0, -1.0]})


def test_movement_scores_the_distance_from_the_initial_weight():
    _assert_scores(criteria.movement(FINAL, INITIAL), {"a/kernel": [[2.0, 1.0], [0.0, 0.4]], "b/kernel": [1.0, 1.0]})


def test_random_is_seeded_and_differs_between_layers():
    first = criteria.get("random", seed=3)(FINAL, INITIAL)
    again = criteria.get("random", seed=3)(FINAL, INITIAL)
    other = criteria.get("random", seed=4)(FINAL, INITIAL)
    assert {key: np.shape(value) for key, value in first.items()} == {"a/kernel": (2, 2), "b/kernel": (2,)}
    assert all(((0 <= value) & (value < 1)).all() for value in first.values())
    _assert_scores(again, first)
    assert not np.array_equal(first["a/kernel"], other["a/kernel"])
    assert first["a/kernel"].ravel()[0] != first["b/kernel"][0]


def test_get_accepts_names_and_callables():
    assert criteria.get("magnitude") is criteria.magnitude
    assert criteria.get(criteria.movement) is criteria.movement
    with pytest.raises(ValueError, match=r"Unknown criterion 'size'; choose one of \['grasp', 'magnitude'"):
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
    _assert_scores(criteria.score(criteria.magnitude, FINAL, INITIAL),
                   {"a/kernel": [[3.0, 1.0], [0.5, 0.1]], "b/kernel": [2.0, 4.0]})


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
