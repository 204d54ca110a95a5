import keras
import numpy as np
import pytest

import tf_lottery
from tf_lottery import criteria, export, models, structure
from tf_lottery.pruning import PruningPlan
from tf_lottery.search import SearchConfig, TicketSearch

from conftest import DIGITS, round_arrays

layers = keras.layers


def _masked(inputs, outputs, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Model(inputs, outputs)
    _randomize_batch_norm(model, seed)
    return tf_lottery.mask(model)


def _randomize_batch_norm(model, seed):
    """Non-trivial BatchNorm statistics, so a channel left in the wrong place changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            for variable in layer.weights:
                variable.assign(rng.uniform(0.5, 1.5, variable.shape))


def _groups(model):
    return {group.name: group for group in structure.analyze(model).groups}


def _drop(model, name, units):
    """Removes `units` of group `name` from the masks of `model`."""
    st = structure.analyze(model)
    keep = {group.name: np.ones(group.size, bool) for group in st.prunable}
    keep[name][units] = False
    tf_lottery.set_masks(model, st.with_units(tf_lottery.get_masks(model), keep))


def _assert_compact_matches(model, x, removed):
    small = tf_lottery.compact(model)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert model.count_params() - small.count_params() == removed
    return small


def test_a_residual_add_joins_its_branches_into_one_group():
    inputs = keras.Input((4, 4, 2))
    a = layers.ReLU()(layers.BatchNormalization(name="a_bn")(layers.Conv2D(3, 3, padding="same", name="a")(inputs)))
    b = layers.Conv2D(3, 3, padding="same", name="b")(a)
    shortcut = layers.Conv2D(3, 1, name="shortcut")(inputs)
    c = layers.Conv2D(2, 1, name="c")(layers.ReLU()(layers.Add()([b, shortcut])))
    model = _masked(inputs, layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(c)))
    groups = _groups(model)
    assert {name: g.producers for name, g in groups.items()} == {
        "a": ("a",), "b": ("b", "shortcut"), "c": ("c",), "out": ("out",)}
    assert groups["out"].reason == "it reaches the model's outputs"
    _drop(model, "b", [1])
    masks = tf_lottery.get_masks(model)
    assert not masks["b/kernel"][..., 1].any() and not masks["shortcut/kernel"][..., 1].any()
    assert not masks["c/kernel"][:, :, 1, :].any()  # The row that reads the joined channel.
    assert masks["a/kernel"].all() and masks["b/kernel"][..., [0, 2]].all()
    # b and shortcut lose a filter (3*3*3 + 1*1*2 weights and two biases), c one input row (2 weights).
    x = np.random.default_rng(0).random((3, 4, 4, 2), np.float32)
    small = _assert_compact_matches(model, x, removed=27 + 1 + 2 + 1 + 2)
    assert small.get_layer("b").filters == small.get_layer("shortcut").filters == 2


def test_a_depthwise_block_removes_a_channel_from_every_layer_on_its_way():
    inputs = keras.Input((5, 5, 2))
    x = layers.ReLU()(layers.BatchNormalization(name="expand_bn")(layers.Conv2D(4, 1, name="expand")(inputs)))
    x = layers.BatchNormalization(name="dw_bn")(layers.DepthwiseConv2D(3, padding="same", name="dw")(x))
    x = layers.Conv2D(2, 1, name="project")(layers.ReLU()(x))
    model = _masked(inputs, layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(x)))
    assert _groups(model)["expand"].producers == ("expand",)
    _drop(model, "expand", [0, 3])
    masks = tf_lottery.get_masks(model)
    assert not masks["dw/kernel"][:, :, [0, 3], :].any() and masks["dw/kernel"][:, :, [1, 2], :].all()
    assert not masks["project/kernel"][:, :, [0, 3], :].any()
    x = np.random.default_rng(1).random((3, 5, 5, 2), np.float32)
    # Two filters of expand (2+1 each), two BatchNorm channels twice (4 each), two depthwise filters (9+1),
    # two rows of project (2 each).
    small = _assert_compact_matches(model, x, removed=2 * 3 + 2 * 4 * 2 + 2 * 10 + 2 * 2)
    assert small.get_layer("dw").kernel.shape == (3, 3, 2, 1)


def test_a_concatenation_and_a_flatten_map_channels_to_the_rows_that_read_them():
    inputs = keras.Input((2, 2, 1))
    left = layers.Conv2D(3, 1, name="left")(inputs)
    right = layers.Conv2D(2, 1, name="right")(inputs)
    flat = layers.Flatten()(layers.Concatenate()([left, right]))
    model = _masked(inputs, layers.Dense(3, name="out")(layers.Dense(4, name="hidden")(flat)))
    _drop(model, "right", [1])
    rows = tf_lottery.get_masks(model)["hidden/kernel"].any(axis=1)
    # Flattened (2, 2, 5): position p, channel c at row 5p + c; right's unit 1 is channel 3 + 1.
    assert np.flatnonzero(~rows).tolist() == [4, 9, 14, 19]
    x = np.random.default_rng(2).random((3, 2, 2, 1), np.float32)
    _assert_compact_matches(model, x, removed=(1 + 1) + 4 * 4)


@pytest.mark.parametrize("name, build, input_shape", [
    ("lenet300_100", lambda: models.lenet300_100((28, 28, 1), 10), (28, 28, 1)),
    ("conv2", lambda: models.conv2((28, 28, 1), 10), (28, 28, 1)),
    ("conv4", lambda: models.conv4((28, 28, 1), 10), (28, 28, 1)),
    ("conv6", lambda: models.conv6((32, 32, 3), 10), (32, 32, 3)),
    ("resnet20", lambda: models.resnet20((32, 32, 3), 10), (32, 32, 3)),
    ("mobilenet_v2", lambda: keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                                            classes=10), (32, 32, 3)),
])
def test_compact_after_a_unit_plan_computes_what_the_masked_model_does(name, build, input_shape):
    keras.utils.set_random_seed(0)
    model = build()
    _randomize_batch_norm(model, 0)
    tf_lottery.mask(model)
    st = structure.analyze(model)
    scores = st.unit_scores(criteria.magnitude(tf_lottery.get_prunable_weights(model), None))
    tf_lottery.set_masks(model, st.prune(PruningPlan(rate=0.5), tf_lottery.get_masks(model), scores))
    alive = st.alive_units(tf_lottery.get_masks(model))
    assert all(flags.sum() == flags.size - int(flags.size * 0.5 + 0.5) or flags.size == 1
               for flags in alive.values()), name
    x = np.random.default_rng(0).random((2, *input_shape), np.float32)
    small = tf_lottery.compact(model)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert small.count_params() < 0.6 * model.count_params()
    assert [layer.name for layer in small.layers] == [layer.name for layer in model.layers]


def test_compact_removes_units_no_layer_reads_after_unstructured_pruning():
    keras.utils.set_random_seed(0)
    model = tf_lottery.mask(keras.Sequential([keras.Input((3,)), layers.Dense(4, name="hidden"),
                                              layers.Dense(2, name="out")]))
    masks = tf_lottery.get_masks(model)
    masks["out/kernel"][2] = 0  # Nothing reads hidden unit 2 any more; its own weights still live.
    masks["hidden/kernel"][:, 1] = 0  # Unit 1 gets no input, but its bias still reaches out: it stays.
    tf_lottery.set_masks(model, masks)
    small = _assert_compact_matches(model, np.ones((2, 3), np.float32), removed=3 + 1 + 2)
    assert small.get_layer("hidden").units == 3


def test_compact_exports_to_tflite_with_parity(tmp_path):
    model = models.lenet300_100((28, 28, 1), 10)
    tf_lottery.mask(model)
    _drop(model, "fc1", np.arange(200))
    x = np.random.default_rng(0).random((16, 28, 28, 1), np.float32)
    small = tf_lottery.compact(model)
    entry = export.export_tflite(small, tmp_path / "small.tflite", representative_data=x)  # Raises if it differs.
    assert entry["parity"]["top1_agreement"] == 1.0 and entry["parity"]["samples"] == 16
    dense = export.export_tflite(model, tmp_path / "dense.tflite", representative_data=x, sparse=False)
    assert entry["bytes"] < 0.5 * dense["bytes"]


def test_structures_the_planner_cannot_shrink_are_left_whole_and_say_why():
    inputs = keras.Input((6,))
    reshaped = layers.Dense(2, name="after")(layers.Reshape((6,))(layers.Dense(6, name="before")(inputs)))
    mixed = layers.Dense(2, name="after_softmax")(layers.Softmax()(layers.Dense(4, name="scored")(inputs)))
    model = _masked(inputs, layers.Dense(1, name="out")(layers.Concatenate()([reshaped, mixed])))
    report = structure.analyze(model).report()
    assert report["before"] == "'reshape' (Reshape) reads them and the planner cannot follow that layer"
    assert report["scored"] == "'softmax' (Softmax) reads them and the planner cannot follow that layer"
    assert set(structure.analyze(model).report()) == {"before", "scored", "out"}
    assert structure.analyze(model).summary() == (
        "Units pruned in 2 groups: after (2), after_softmax (2). Left whole: scored: 'softmax' (Softmax) reads them "
        "and the planner cannot follow that layer; before: 'reshape' (Reshape) reads them and the planner cannot "
        "follow that layer; out: it reaches the model's outputs.")
    plan = PruningPlan(layer_rates={"before": 0.5})
    with pytest.raises(ValueError, match=r"Layer 'before' of model .* cannot lose units: 'reshape' \(Reshape\)"):
        structure.analyze(model).check_plan(plan, tf_lottery.get_masks(model))


def test_unit_plans_need_a_layer_graph_and_masked_weights():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = layers.Dense(4), layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Subclassed()
    model(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="has no layer graph to follow: unit plans and compact need a functional"):
        structure.analyze(model)
    inputs = keras.Input((3,))
    plain = keras.Model(inputs, layers.Dense(2, name="out")(layers.Dense(4, name="hidden")(inputs)))
    tf_lottery.mask(plain, skip=("out",))
    st = structure.analyze(plain)
    assert st.report()["hidden"] == "weight 'out/kernel' holds these channels but is not masked"
    with pytest.raises(ValueError, match="has no units a plan can prune"):
        st.check_plan(PruningPlan(), tf_lottery.get_masks(plain))


def test_batch_norm_scales_rank_units_when_asked():
    inputs = keras.Input((2, 2, 1))
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(3, 1, name="conv")(inputs))
    model = _masked(inputs, layers.Dense(2, name="out")(layers.Flatten()(x)))
    model.get_layer("bn").gamma.assign([0.1, -3.0, 2.0])
    st = structure.analyze(model)
    scores = criteria.magnitude(tf_lottery.get_prunable_weights(model), None)
    trained = tf_lottery.weights.snapshot(model)
    np.testing.assert_allclose(st.unit_scores(scores, trained, "bn_scale")["conv"], [0.1, 3.0, 2.0])
    np.testing.assert_allclose(st.unit_scores(scores)["conv"],
                               np.abs(model.get_layer("conv").kernel.numpy()).reshape(-1, 3).mean(axis=0))
    with pytest.raises(ValueError, match="unit_score must be one of"):
        st.unit_scores(scores, trained, "gamma")


def _small_resnet():
    inputs = keras.Input(DIGITS.input_shape)
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(x))
    y = layers.BatchNormalization(name="block_bn")(layers.Conv2D(8, 3, padding="same", name="block")(x))
    x = layers.MaxPooling2D()(layers.ReLU()(layers.Add()([x, y])))
    x = layers.Dense(16, activation="relu", name="fc")(layers.Flatten()(x))
    return keras.Model(inputs, layers.Dense(DIGITS.num_classes, name="output")(x))


def _unit_search(run_dir, **kwargs):
    options = {key: kwargs.pop(key) for key in ("replay_masks_from", "resume") if key in kwargs}
    config = SearchConfig(**{"rounds": 2, "epochs": None, "iterations": 8, "eval_every": 4, "batch_size": 64,
                             "granularity": "unit", **kwargs})
    return TicketSearch(_small_resnet, DIGITS, config, str(run_dir), verbose=0, **options)


def test_a_unit_search_prunes_whole_units_resumes_exactly_and_runs_its_controls(tmp_path):
    history = _unit_search(tmp_path / "ticket", unit_score="bn_scale").run()
    masks = round_arrays(tmp_path / "ticket", 2, "masks")
    model = _small_resnet()
    tf_lottery.mask(model)
    alive = structure.analyze(model).alive_units(masks)
    # 20% of the survivors per round: 8 -> 6 -> 5 filters (stem and block share theirs), 16 -> 13 -> 10 units.
    assert {name: int(flags.sum()) for name, flags in alive.items()} == {"stem": 5, "fc": 10}
    assert not masks["block/kernel"][..., ~alive["stem"]].any() and not masks["fc/kernel"][:, ~alive["fc"]].any()
    assert history["rounds"][2]["density"] < history["rounds"][1]["density"] < 1
    _unit_search(tmp_path / "resumed", unit_score="bn_scale", rounds=1).run()
    _unit_search(tmp_path / "resumed", unit_score="bn_scale", resume=True).run()
    for name in ("masks", "trained"):
        resumed, whole = (round_arrays(tmp_path / run, 2, name) for run in ("resumed", "ticket"))
        assert all(np.array_equal(resumed[key], whole[key]) for key in whole), name
    _unit_search(tmp_path / "random", control="random_mask", replay_masks_from=str(tmp_path / "ticket")).run()
    random_alive = structure.analyze(model).alive_units(round_arrays(tmp_path / "random", 2, "masks"))
    assert {name: int(flags.sum()) for name, flags in random_alive.items()} == {"stem": 5, "fc": 10}
    assert any((random_alive[name] != alive[name]).any() for name in alive)


def test_unit_searches_refuse_the_settings_they_cannot_honour(tmp_path):
    with pytest.raises(ValueError, match="granularity='unit' prunes each layer's units round by round"):
        SearchConfig(granularity="unit", block="1x4")
    search = TicketSearch(lambda: models.lenet300_100(DIGITS.input_shape, DIGITS.num_classes), DIGITS,
                          SearchConfig(granularity="unit", layer_rates="output=0.5"), str(tmp_path), verbose=0)
    with pytest.raises(ValueError, match="Layer 'output' of model 'lenet300_100' cannot lose units: it reaches"):
        search.run()
    assert not list(tmp_path.iterdir())


def test_attention_heads_are_pruned_and_compacted_whole():
    inputs = keras.Input((4, 6))
    attended = layers.MultiHeadAttention(3, 2, name="mha")(inputs, inputs)
    model = _masked(inputs, layers.Dense(2, name="out")(layers.Flatten()(attended)))
    groups = _groups(model)
    assert groups["mha"].size == 3 and groups["mha"].prunable
    assert groups["out"].reason == "it reaches the model's outputs"
    _drop(model, "mha", [1])
    masks = tf_lottery.get_masks(model)
    for name in ("query", "key", "value"):  # Kernels [input, heads, size].
        assert not masks[f"mha/{name}/kernel"][:, 1].any() and masks[f"mha/{name}/kernel"][:, [0, 2]].all()
    assert not masks["mha/attention_output/kernel"][1].any()
    # Each of query, key and value loses 6*2 weights and 2 biases; the output projection 2*6 weights.
    x = np.random.default_rng(3).random((2, 4, 6), np.float32)
    small = _assert_compact_matches(model, x, removed=3 * (12 + 2) + 12)
    assert small.get_layer("mha").num_heads == 2


def test_a_keras_hub_bert_classifier_loses_heads_and_feed_forward_units():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=6)
    model = tf_lottery.mask(keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None))
    st = structure.analyze(model)
    scores = st.unit_scores(criteria.magnitude(tf_lottery.get_prunable_weights(model), None))
    tf_lottery.set_masks(model, st.prune(PruningPlan(rate=0.5), tf_lottery.get_masks(model), scores))
    alive = {name: int(units.sum()) for name, units in st.alive_units(tf_lottery.get_masks(model)).items()}
    assert alive == {"transformer_layer_0/self_attention_layer": 1, "transformer_layer_1/self_attention_layer": 1,
                     "transformer_layer_0/feedforward_intermediate_dense": 8,
                     "transformer_layer_1/feedforward_intermediate_dense": 8}
    x = {"token_ids": np.random.default_rng(0).integers(1, 50, (3, 6)), "segment_ids": np.zeros((3, 6), int),
         "padding_mask": np.ones((3, 6), int)}
    small = tf_lottery.compact(model)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    layer = small.get_layer("bert_backbone").get_layer("transformer_layer_0")
    assert layer.intermediate_dim == 8 and layer.num_heads == 2  # keras-hub sizes heads by their number.
    # Per block, 8 feed-forward units: 8*8 + 8 weights in, 8*8 out.
    assert model.count_params() - small.count_params() == 2 * (64 + 8 + 64)
