import numpy as np
import keras
import pytest

import tf_lottery
from tf_lottery import PruningPlan, criteria, pruning
from tf_lottery.pruning import erk_densities, random_masks_like

L = keras.layers


def _masks_and_scores(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"fc1/kernel": (100, 50), "fc2/kernel": (50, 20), "output/kernel": (20, 10)}
    masks = {k: np.ones(s, np.float32) for k, s in shapes.items()}
    scores = {k: rng.random(s) for k, s in shapes.items()}
    return masks, scores


def _density(mask):
    return mask.sum() / mask.size


def test_layerwise_rounds_compound_per_layer():
    plan = PruningPlan(rate=0.2, output_rate=0.1)
    masks, scores = _masks_and_scores()
    for _ in range(2):
        masks = plan.prune(masks, scores, output_layer="output")
    assert _density(masks["fc1/kernel"]) == pytest.approx(0.64)
    assert _density(masks["fc2/kernel"]) == pytest.approx(0.64)
    assert _density(masks["output/kernel"]) == pytest.approx(0.81)


def test_layerwise_removes_the_lowest_scores():
    masks, scores = _masks_and_scores()
    new = PruningPlan(rate=0.5).prune(masks, scores)["fc1/kernel"]
    assert scores["fc1/kernel"][new == 0].max() < scores["fc1/kernel"][new == 1].min()


def test_already_pruned_weights_stay_pruned_whatever_their_score():
    masks, scores = _masks_and_scores()
    masks["fc1/kernel"][:10] = 0
    scores["fc1/kernel"][:10] = 99.0
    new = PruningPlan(rate=0.2).prune(masks, scores)
    assert not new["fc1/kernel"][:10].any()
    assert new["fc1/kernel"].sum() == round(0.8 * 4500)


def test_global_scope_ranks_pooled_layers_together():
    masks, scores = _masks_and_scores()
    scores["fc2/kernel"] = scores["fc2/kernel"] * 0.1  # fc2's weights all rank low
    new = PruningPlan(rate=0.2, output_rate=0.1, scope="global").prune(masks, scores, output_layer="output")
    pooled = new["fc1/kernel"].sum() + new["fc2/kernel"].sum()
    assert pooled == round(0.8 * (5000 + 1000))
    pooled_scores = np.concatenate([scores[k].ravel() for k in ("fc1/kernel", "fc2/kernel")])
    pooled_masks = np.concatenate([new[k].ravel() for k in ("fc1/kernel", "fc2/kernel")])
    assert pooled_scores[pooled_masks == 0].max() < pooled_scores[pooled_masks == 1].min()
    assert _density(new["fc2/kernel"]) < 0.3 and _density(new["fc1/kernel"]) > 0.9
    assert _density(new["output/kernel"]) == pytest.approx(0.9)


def test_erk_densities_follow_the_formula_and_keep_the_global_density():
    shapes = {"conv/kernel": (3, 3, 16, 32), "fc/kernel": (512, 100), "out/kernel": (100, 10)}
    densities = erk_densities(shapes, 0.1)
    sizes = {key: np.prod(shape) for key, shape in shapes.items()}
    assert sum(densities[key] * sizes[key] for key in shapes) == pytest.approx(0.1 * sum(sizes.values()))
    # Proportional to (sum of the dimensions) / (their product): one scale for every layer.
    scales = {key: densities[key] / (sum(shape) / sizes[key]) for key, shape in shapes.items()}
    assert max(scales.values()) == pytest.approx(min(scales.values()))
    assert densities["out/kernel"] > densities["fc/kernel"] > densities["conv/kernel"]


def test_erk_densities_keep_small_layers_dense_and_share_the_rest():
    shapes = {"big/kernel": (1000, 1000), "small/kernel": (10, 2)}
    densities = erk_densities(shapes, 0.5)
    assert densities["small/kernel"] == 1.0  # (10 + 2) / 20 times the scale would exceed 1.
    assert densities["big/kernel"] == pytest.approx((0.5 * 1_000_020 - 20) / 1_000_000)
    assert erk_densities(shapes, 1.0) == {"big/kernel": 1.0, "small/kernel": 1.0}
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        erk_densities(shapes, 0.0)


def test_erk_scope_prunes_each_layer_to_its_erk_share():
    masks, scores = _masks_and_scores()
    plan = PruningPlan(rate=0.5, output_rate=0.1, scope="erk")
    new = plan.prune(masks, scores, output_layer="output")
    pooled = {key: masks[key].shape for key in ("fc1/kernel", "fc2/kernel")}
    expected = erk_densities(pooled, 0.5)
    for key in pooled:
        assert _density(new[key]) == pytest.approx(expected[key], abs=1e-3)
        assert scores[key][new[key] == 0].max() < scores[key][new[key] == 1].min()  # The layer's best survive.
    assert new["fc1/kernel"].sum() + new["fc2/kernel"].sum() == pytest.approx(0.5 * 6000, abs=1)
    assert _density(new["output/kernel"]) == pytest.approx(0.9)
    again = plan.prune(new, scores, output_layer="output")  # The next round: ERK at a quarter.
    for key, density in erk_densities(pooled, 0.25).items():
        assert _density(again[key]) == pytest.approx(density, abs=1e-3)


def test_layer_rates_and_skip_override_the_default():
    masks, scores = _masks_and_scores()
    plan = PruningPlan(rate=0.2, output_rate=None, layer_rates={"fc2": 0.5}, skip=("output/kernel",))
    new = plan.prune(masks, scores, output_layer="output")
    assert _density(new["fc1/kernel"]) == pytest.approx(0.8)
    assert _density(new["fc2/kernel"]) == pytest.approx(0.5)
    assert _density(new["output/kernel"]) == 1.0


def test_pruning_is_deterministic_with_ties():
    masks = {"a/kernel": np.ones((10, 10), np.float32)}
    scores = {"a/kernel": np.zeros((10, 10))}
    first = PruningPlan(rate=0.3).prune(masks, scores)
    np.testing.assert_array_equal(first["a/kernel"], PruningPlan(rate=0.3).prune(masks, scores)["a/kernel"])
    assert first["a/kernel"].sum() == 70


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0.0}, r"rate must be a fraction in \(0, 1\)"),
    ({"rate": 1.5}, r"rate must be a fraction in \(0, 1\)"),
    ({"output_rate": 1.0}, r"output_rate must be a fraction"),
    ({"layer_rates": {"fc1": -0.1}}, r"layer_rates\['fc1'\] must be a fraction"),
    ({"scope": "local"}, r"scope must be one of \('layerwise', 'global', 'erk'\)"),
    ({"target_density": 0.0}, r"target_density must be in \(0, 1\]"),
])
def test_bad_plans_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningPlan(**kwargs)


def test_a_rate_that_empties_a_layer_is_an_error_naming_the_fix():
    masks = {"tiny/kernel": np.array([[1.0, 0.0]], np.float32)}
    with pytest.raises(ValueError, match=r"leave 'tiny/kernel' with no weights.*layer_rates.*skip"):
        PruningPlan(rate=0.6).prune(masks, {"tiny/kernel": np.ones((1, 2))})


def test_unknown_layer_names_and_scores_are_errors():
    masks, scores = _masks_and_scores()
    with pytest.raises(ValueError, match=r"does not have: \['fc9'\]"):
        PruningPlan(layer_rates={"fc9": 0.5}).prune(masks, scores)
    with pytest.raises(ValueError, match="Scores are for"):
        PruningPlan().prune(masks, {"fc1/kernel": scores["fc1/kernel"]})


def test_apply_prunes_a_masked_model_and_finds_its_output_layer():
    inputs = keras.Input((20,))
    x = L.Dense(30, name="fc1")(inputs)
    model = tf_lottery.mask(keras.Model(inputs, L.Dense(10, name="output")(x)))
    scores = criteria.magnitude(tf_lottery.get_prunable_weights(model), None)
    masks = PruningPlan(rate=0.2, output_rate=0.1).apply(model, scores)
    assert _density(masks["fc1/kernel"]) == pytest.approx(0.8)
    assert _density(masks["output/kernel"]) == pytest.approx(0.9)


def test_nan_scores_from_diverged_weights_are_an_error():
    masks, scores = _masks_and_scores()
    scores["fc2/kernel"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"'fc2/kernel' contain NaN: the weights diverged.*Lower the learning rate"):
        PruningPlan().prune(masks, scores)
    with pytest.raises(ValueError, match="have shape"):
        PruningPlan().prune(masks, {**scores, "fc2/kernel": np.ones(3)})


@pytest.mark.parametrize("block", [(1, 4), (1, 16), (2, 4)])
def test_block_masks_are_whole_blocks_along_the_input_dimension(block):
    rows, cols = block
    masks = {"fc/kernel": np.ones((100, 30), np.float32), "conv/kernel": np.ones((3, 3, 2, 4), np.float32)}
    scores = {k: np.random.default_rng(0).random(v.shape) for k, v in masks.items()}
    plan = PruningPlan(rate=0.5, output_rate=None, block=block)
    for _ in range(2):
        masks = plan.prune(masks, scores)
    kernel = masks["fc/kernel"].T  # TFLite layout [out, in]
    full = kernel[: 30 // rows * rows, : 100 // cols * cols]
    blocks = full.reshape(30 // rows, rows, 100 // cols, cols)
    assert np.all((blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))))  # Every block all-0 or all-1.
    edge = kernel[:, 100 // cols * cols:]  # A partial block where 100 is not a multiple of cols.
    if edge.size:
        assert np.all(edge.reshape(30 // rows, rows, -1).min(axis=(1, 2)) == edge.reshape(30 // rows, rows, -1).max(axis=(1, 2)))
    assert 0.2 < masks["fc/kernel"].mean() < 0.3
    assert masks["conv/kernel"].mean() == pytest.approx(0.25, abs=0.02)  # Unstructured.


def test_random_masks_keep_exact_counts():
    masks = {"a/kernel": (np.arange(100).reshape(10, 10) % 3 == 0).astype(np.float32)}
    random = random_masks_like(masks, seed=5)
    assert random["a/kernel"].sum() == masks["a/kernel"].sum()
    assert not np.array_equal(random["a/kernel"], masks["a/kernel"])
    np.testing.assert_array_equal(random["a/kernel"], random_masks_like(masks, seed=5)["a/kernel"])


def test_random_masks_of_a_block_ticket_are_whole_blocks_of_the_same_count():
    masks, scores = _masks_and_scores()
    masks = PruningPlan(rate=0.7, output_rate=None, block=(1, 16)).prune(masks, scores)
    random = random_masks_like(masks, seed=3, block=(1, 16))
    kernel = random["fc1/kernel"]  # 100 inputs: six whole blocks of 16 and a partial one of 4 per output unit.
    whole = kernel[:96].T.reshape(50, 6, 16)
    assert np.all(whole.min(axis=2) == whole.max(axis=2))
    assert np.all(kernel[96:].min(axis=0) == kernel[96:].max(axis=0))
    for key, mask in masks.items():
        grid_counts = [np.add.reduceat(m, np.arange(0, m.shape[0], 16), axis=0).astype(bool).sum()
                       for m in (mask, random[key])]
        assert grid_counts[0] == grid_counts[1], key
    assert not np.array_equal(kernel, masks["fc1/kernel"])


def test_blocks_are_ranked_by_their_mean_score():
    scores = {"fc/kernel": np.zeros((8, 1))}
    scores["fc/kernel"][4:, 0] = [1, 1, 1, -2]  # Block 2: mean 0.25 > block 1: mean 0.
    mask = PruningPlan(rate=0.5, block=(1, 4)).prune({"fc/kernel": np.ones((8, 1), np.float32)}, scores)
    np.testing.assert_array_equal(mask["fc/kernel"][:, 0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_bad_block_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"block must be None or \(rows, cols\)"):
        PruningPlan(block=(1, 0))


@pytest.mark.parametrize("block", [None, (1, 16)])
def test_the_output_layer_keeps_every_output_unit(block):
    """A class whose weights all rank lowest keeps its best weight (or block); the others prune as usual."""
    rng = np.random.default_rng(0)
    fresh = {"fc/kernel": np.ones((40, 100), np.float32), "output/kernel": np.ones((100, 10), np.float32)}
    scores = {key: rng.random(mask.shape) for key, mask in fresh.items()}
    scores["output/kernel"][:, 9] *= 0.01  # class 9's weights are the weakest of the layer
    plan = PruningPlan(rate=0.2, output_rate=0.5, block=block)
    masks = plan.prune(fresh, scores, output_layer="output")
    assert masks["output/kernel"].sum() == 500 if block is None else masks["output/kernel"].sum() < 1000
    for _ in range(7):
        masks = plan.prune(masks, scores, output_layer="output")
    output = masks["output/kernel"]
    assert output.sum(axis=0).min() > 0
    kept = np.flatnonzero(output[:, 9])
    if block is None:
        assert list(kept) == [np.argmax(scores["output/kernel"][:, 9])]
    else:  # one block of 16 inputs (or the partial block of the last 4)
        assert 0 < len(kept) <= 16 and kept[0] // 16 == kept[-1] // 16
    # Only the output layer is guarded: hidden units may lose all their inputs.
    hidden = PruningPlan(rate=0.99, skip=("output",)).prune(fresh, scores, output_layer="output")["fc/kernel"]
    assert (hidden.sum(axis=0) == 0).any()


def test_prune_to_counts_keeps_the_best_weights_or_blocks_of_each_mask():
    masks = {"a/kernel": np.ones((4, 2), np.float32), "b/kernel": np.ones(3, np.float32)}
    scores = {"a/kernel": np.array([[8, 1], [7, 2], [3, 6], [4, 5]], np.float32), "b/kernel": np.array([3, 1, 2.0])}
    kept = pruning.prune_to_counts(masks, scores, {"a/kernel": 3})
    np.testing.assert_array_equal(kept["a/kernel"], [[1, 0], [1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(kept["b/kernel"], masks["b/kernel"])  # Not in counts: left as it is.
    # Blocks of 2 inputs of one output (TFLite's 1x2): mean scores 7.5, 1.5 / 3.5, 5.5; keep two of four.
    blocks = pruning.prune_to_counts(masks, scores, {"a/kernel": 2}, block=(1, 2))
    np.testing.assert_array_equal(blocks["a/kernel"], [[1, 0], [1, 0], [0, 1], [0, 1]])
    assert pruning.count_survivors(blocks, block=(1, 2)) == {"a/kernel": 2, "b/kernel": 3}
    assert pruning.count_survivors(kept) == {"a/kernel": 3, "b/kernel": 3}


def test_compounded_plan_matches_iterated_rounds():
    masks = {"a/kernel": np.ones((50, 40), np.float32), "output/kernel": np.ones((40, 10), np.float32)}
    plan = PruningPlan(rate=0.2, output_rate=0.1)
    one_shot = pruning.compounded_plan(plan, masks, "output", rounds=3).prune(
        masks, {k: np.ones_like(v) for k, v in masks.items()}, output_layer="output")
    assert one_shot["a/kernel"].mean() == pytest.approx(0.8 ** 3, abs=1e-3)
    assert one_shot["output/kernel"].mean() == pytest.approx(0.9 ** 3, abs=3e-3)
