"""SNIP, GraSP and SynFlow scores of `tf_lottery.saliency` against values computed by hand on a tiny network."""

import keras
import numpy as np
import pytest

import tf_lottery
from tf_lottery import criteria, saliency

W1 = np.array([[1.0, 2.0], [3.0, 4.0]])
W2 = np.array([[1.0], [-1.0]])
X = np.array([[1.0, 2.0]])
Y = np.array([[0.0]])


def _tiny(compiled=True):
    """x -> x W1 -> (x W1) W2, no biases, squared error: small enough to differentiate by hand."""
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(2, use_bias=False, name="a")(inputs)
    model = tf_lottery.mask(keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="b")(hidden)))
    model.get_layer("a").kernel.assign(W1)
    model.get_layer("b").kernel.assign(W2)
    if compiled:
        model.compile(loss="mse")
    return model


def _gradient(w1, w2):
    """dL/dW1, dL/dW2 of L = (x W1 W2 - y)^2."""
    hidden = X @ w1
    error = 2 * (hidden @ w2 - Y)
    return X.T @ (error @ w2.T), hidden.T @ error


def test_snip_is_the_gradient_times_the_weight():
    scores = saliency.snip(_tiny(), X, Y)
    # h = [7, 10], output -3, dL/doutput = -6: dL/dW2 = [[-42], [-60]], dL/dW1 = [[-6, 6], [-12, 12]].
    np.testing.assert_allclose(scores["a/kernel"], [[6, 12], [36, 48]], rtol=1e-6)
    np.testing.assert_allclose(scores["b/kernel"], [[42], [60]], rtol=1e-6)


def test_grasp_is_the_weight_times_the_hessian_gradient_product():
    g1, g2 = _gradient(W1, W2)
    step = 1e-5  # Hg by central differences of the exact gradient along g.
    plus, minus = _gradient(W1 + step * g1, W2 + step * g2), _gradient(W1 - step * g1, W2 - step * g2)
    hg1, hg2 = ((p - m) / (2 * step) for p, m in zip(plus, minus))
    scores = saliency.grasp(_tiny(), X, Y, temperature=1.0)
    np.testing.assert_allclose(scores["a/kernel"], W1 * hg1, rtol=1e-4)
    np.testing.assert_allclose(scores["b/kernel"], W2 * hg2, rtol=1e-4)


def test_synflow_is_the_flow_of_the_absolute_network_and_leaves_the_weights_alone():
    model = _tiny(compiled=False)
    scores = saliency.synflow(model)
    # |W1|, |W2| on ones: hidden [4, 6], R = 10; dR/dW2 = [[4], [6]], dR/dW1 = 1 everywhere.
    np.testing.assert_allclose(scores["a/kernel"], [[1, 2], [3, 4]], rtol=1e-6)
    np.testing.assert_allclose(scores["b/kernel"], [[4], [6]], rtol=1e-6)
    np.testing.assert_array_equal(model.get_layer("b").kernel.numpy(), W2)


def test_iterative_synflow_ranks_by_survival_and_restores_masks_and_weights():
    model = _tiny(compiled=False)
    ranks = saliency.synflow_ranks(model, density=0.5, iterations=10)
    survivors = {key: value > 10 for key, value in ranks.items()}
    assert sum(int(mask.sum()) for mask in survivors.values()) == 3  # Half of 6 weights, in 10 steps.
    assert survivors["b/kernel"].all()  # Each output weight carries the flow of a whole hidden unit.
    kept = tf_lottery.PruningPlan(rate=0.5, output_rate=None, scope="global").prune(
        tf_lottery.get_masks(model), ranks)
    for key in ranks:
        np.testing.assert_array_equal(kept[key] > 0, survivors[key])
    assert all(mask.all() for mask in tf_lottery.get_masks(model).values())
    np.testing.assert_array_equal(model.get_layer("a").kernel.numpy(), W1)


def test_scores_feed_the_search_through_statistics_and_need_a_compiled_model():
    callback = saliency.InitializationScores("snip", (X, Y))
    model = _tiny()
    callback.set_model(model)
    callback.on_train_begin()
    statistics = callback.statistics()
    final = tf_lottery.get_prunable_weights(model)
    assert criteria.score(criteria.get("snip"), final, final, statistics)["b/kernel"].tolist() == [[42], [60]]
    with pytest.raises(ValueError, match="need statistics"):
        criteria.get("grasp")(final, final, None)
    with pytest.raises(ValueError, match=r"compile the model first"):
        saliency.snip(_tiny(compiled=False), X, Y)
    with pytest.raises(ValueError, match="method must be one of"):
        saliency.InitializationScores("obd")
