import json
import zipfile

import numpy as np
import keras
import pytest
import tensorflow as tf

import tf_lottery
from tf_lottery import masking, registry

L = keras.layers

# One small model per prunable layer type: (input shape, input dtype, layer factory, masked weights of that layer).
LAYER_CASES = {
    "Dense": ((6,), "float32", lambda: L.Dense(5, name="t"), ["t/kernel"]),
    "Conv1D": ((8, 3), "float32", lambda: L.Conv1D(4, 3, name="t"), ["t/kernel"]),
    "Conv2D": ((6, 6, 2), "float32", lambda: L.Conv2D(4, 3, name="t"), ["t/kernel"]),
    "Conv3D": ((4, 4, 4, 2), "float32", lambda: L.Conv3D(3, 2, name="t"), ["t/kernel"]),
    "Conv2DTranspose": ((4, 4, 2), "float32", lambda: L.Conv2DTranspose(3, 3, name="t"), ["t/kernel"]),
    "DepthwiseConv2D": ((6, 6, 3), "float32", lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="t"),
                        ["t/kernel"]),
    "SeparableConv2D": ((6, 6, 3), "float32", lambda: L.SeparableConv2D(4, 3, depth_multiplier=2, name="t"),
                        ["t/depthwise_kernel", "t/pointwise_kernel"]),
    "Embedding": ((5,), "int32", lambda: L.Embedding(20, 6, name="t"), ["t/embeddings"]),
    "EinsumDense": ((6,), "float32", lambda: L.EinsumDense("ab,bc->ac", output_shape=5, name="t"), ["t/kernel"]),
    "SimpleRNN": ((5, 4), "float32", lambda: L.SimpleRNN(6, name="t"),
                  ["t/simple_rnn_cell/kernel", "t/simple_rnn_cell/recurrent_kernel"]),
    "LSTM": ((5, 4), "float32", lambda: L.LSTM(6, name="t"), ["t/lstm_cell/kernel", "t/lstm_cell/recurrent_kernel"]),
    "GRU": ((5, 4), "float32", lambda: L.GRU(6, name="t"), ["t/gru_cell/kernel", "t/gru_cell/recurrent_kernel"]),
}


def _model_with(shape, dtype, factory):
    inputs = keras.Input(shape, dtype=dtype)
    x = factory()(inputs)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, name="output")(x))


def _inputs(shape, dtype, n=16):
    rng = np.random.default_rng(1)
    if dtype == "int32":
        return rng.integers(0, 20, (n, *shape)).astype("int32")
    return rng.standard_normal((n, *shape)).astype("float32")


def _random_masks(model, density=0.5, seed=2):
    rng = np.random.default_rng(seed)
    return {k: (rng.random(v.shape) < density).astype("float32") for k, v in tf_lottery.get_masks(model).items()}


def _train(model, x, steps=3, optimizer=None):
    y = np.arange(len(x)) % 3
    model.compile(optimizer=optimizer or keras.optimizers.AdamW(0.05, weight_decay=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, verbose=0)


def _assert_pruned_zero(model, masks):
    for key, weight in tf_lottery.get_prunable_weights(model).items():
        assert np.all(weight[masks[key] == 0] == 0), key
        assert np.any(weight[masks[key] == 1] != 0), key


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_every_listed_layer_is_masked_in_place_trains_sparse_and_strips(name):
    shape, dtype, factory, keys = LAYER_CASES[name]
    model = _model_with(shape, dtype, factory)
    x = _inputs(shape, dtype)
    before, weights_before = model.predict(x, verbose=0), model.get_weights()
    assert tf_lottery.mask(model) is model
    assert list(tf_lottery.get_masks(model)) == keys + ["output/kernel"]
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert len(model.get_weights()) == len(weights_before)  # The masks are not weights of the model.
    masks = _random_masks(model)
    tf_lottery.set_masks(model, masks)
    _train(model, x)
    _assert_pruned_zero(model, masks)
    trained = model.predict(x, verbose=0)
    assert tf_lottery.strip(model) is model and not tf_lottery.is_masked(model)
    np.testing.assert_array_equal(model.predict(x, verbose=0), trained)
    _assert_pruned_zero_in(model, masks)


def _assert_pruned_zero_in(model, masks):
    values = {v.path: v.numpy() for v in model.weights}
    for key, mask in masks.items():
        assert np.all(values[key][mask == 0] == 0), key


def test_masks_are_booleans_one_byte_per_weight():
    model = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    for mask_variable in masking._mask_set(model).masks:
        assert mask_variable.dtype == "bool" and mask_variable.value.dtype == tf.bool
    assert {k: v.dtype for k, v in tf_lottery.get_masks(model).items()} == {
        "hidden/kernel": np.float32, "output/kernel": np.float32}


def test_registry_covers_the_documented_weights():
    expected = {"SeparableConv2D": 2, "LSTMCell": 2, "GRUCell": 2, "SimpleRNNCell": 2, "Dense": 1, "EinsumDense": 1,
                "Embedding": 1, "Conv2DTranspose": 1}
    for name, count in expected.items():
        assert len(registry._REGISTRY[getattr(L, name)]) == count
    assert registry.prunable_weight_names(L.BatchNormalization()) is None


def test_multi_head_attention_projections_are_found_inside_it():
    inputs = keras.Input((4, 6))
    x = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(inputs, inputs)
    model = tf_lottery.mask(keras.Model(inputs, L.Dense(3, name="output")(L.Flatten()(x))))
    assert list(tf_lottery.get_masks(model)) == [f"mha/{p}/kernel" for p in ("query", "key", "value",
                                                                              "attention_output")] + ["output/kernel"]
    masks = _random_masks(model)
    tf_lottery.set_masks(model, masks)
    _train(model, _inputs((4, 6), "float32"))
    _assert_pruned_zero(model, masks)


def test_nested_models_are_masked_under_their_variable_paths():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(4, name="d1")], name="encoder")
    inputs = keras.Input((6,))
    model = tf_lottery.mask(keras.Model(inputs, L.Dense(3, name="output")(inner(inputs))))
    assert list(tf_lottery.get_masks(model)) == ["encoder/d1/kernel", "output/kernel"]
    assert masking.output_layer(model) == "output"


class Block(L.Layer):
    """A custom layer holding sublayers, two levels deep, as keras-hub's transformer blocks do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = Feedforward(name="feedforward")
        self.norm = L.LayerNormalization(name="norm")

    def call(self, x):
        return self.norm(x + self.inner(x))


class Feedforward(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.up, self.down = L.Dense(8, name="up"), L.Dense(6, name="down")

    def call(self, x):
        return self.down(self.up(x))


class Net(keras.Model):
    def __init__(self):
        super().__init__(name="net")
        self.block = Block(name="block")
        self.head = L.Dense(3, name="head")

    def call(self, x):
        return self.head(self.block(x))


def test_subclassed_models_and_sublayers_of_custom_layers_are_masked_at_any_depth():
    net = Net()
    x = _inputs((6,), "float32")
    net(x)
    tf_lottery.mask(net)
    # Keys are paths relative to the model: a subclassed model's own name ("net") is left out.
    assert list(tf_lottery.get_masks(net)) == ["block/feedforward/up/kernel", "block/feedforward/down/kernel",
                                               "head/kernel"]
    assert [v.path for v in net.weights][0] == "net/block/feedforward/up/kernel"
    masks = _random_masks(net)
    tf_lottery.set_masks(net, masks)
    _train(net, x)
    _assert_pruned_zero(net, masks)


def test_unbuilt_models_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="not built: call it on a batch of data"):
        tf_lottery.mask(Net())


def test_skip_takes_layer_names_at_any_depth_and_globs():
    net = Net()
    net(_inputs((6,), "float32"))
    assert list(tf_lottery.get_masks(tf_lottery.mask(net, skip=["up"]))) == [
        "block/feedforward/down/kernel", "head/kernel"]
    tf_lottery.strip(net)
    assert list(tf_lottery.get_masks(tf_lottery.mask(net, skip=["feedforward"]))) == ["head/kernel"]
    tf_lottery.strip(net)
    assert list(tf_lottery.get_masks(tf_lottery.mask(net, skip=["*/head/*"]))) == [
        "block/feedforward/up/kernel", "block/feedforward/down/kernel"]
    tf_lottery.strip(net)
    with pytest.raises(ValueError, match="no prunable weights"):
        tf_lottery.mask(net, skip=["block", "head"])


@pytest.mark.parametrize("pattern, matched", [
    ("query", True), ("mha/query", True), ("encoder/mha/query/kernel", True), ("*/query/*", True),
    ("quer", False), ("mha/key", False), ("*key*", False), ("*query", True), ("encoder", True),
])
def test_skip_patterns_match_paths_and_runs_of_their_components(pattern, matched):
    assert registry.matches("encoder/mha/query/kernel", pattern) is matched


def test_unknown_skip_patterns_are_errors():
    model = _model_with((6,), "float32", lambda: L.Dense(5, name="hidden"))
    with pytest.raises(ValueError, match=r"does not have: \['nope'\]"):
        tf_lottery.mask(model, skip=["nope"])
    assert not tf_lottery.is_masked(model)


def _embeddings_model():
    """Token, position and segment embeddings named as keras-hub names them."""
    tokens, segments = keras.Input((5,), dtype="int32"), keras.Input((5,), dtype="int32")
    x = L.Embedding(20, 4, name="token_embedding")(tokens) + L.Embedding(2, 4, name="segment_embedding")(segments)
    x = x + L.Embedding(5, 4, name="position_embedding")(keras.ops.zeros_like(tokens) + keras.ops.arange(5))
    return keras.Model([tokens, segments], L.Dense(3, name="output")(L.Flatten()(x)))


def test_position_and_segment_embeddings_stay_dense_by_default_unless_skip_says_otherwise():
    model = tf_lottery.mask(_embeddings_model())
    assert list(tf_lottery.get_masks(model)) == ["token_embedding/embeddings", "output/kernel"]
    everything = tf_lottery.mask(_embeddings_model(), skip=())
    assert sorted(tf_lottery.get_masks(everything)) == [
        "output/kernel", "position_embedding/embeddings", "segment_embedding/embeddings", "token_embedding/embeddings"]
    extended = tf_lottery.mask(_embeddings_model(), skip=(*tf_lottery.DENSE_BY_DEFAULT, "output"))
    assert list(tf_lottery.get_masks(extended)) == ["token_embedding/embeddings"]


class Scale(L.Layer):
    """A custom layer with a weight the registry does not know."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_unregistered_layer_is_left_dense_with_one_warning_naming_paths_and_the_call():
    model = _model_with((6,), "float32", lambda: Scale(name="scale"))
    with pytest.warns(UserWarning) as caught:
        tf_lottery.mask(model)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'scale' (Scale): ['scale/scale']" in message
    assert "tf_lottery.register_prunable(Scale, weights=('scale',)) with Scale from test_masking" in message
    assert list(tf_lottery.get_masks(model)) == ["output/kernel"]


def test_normalization_layers_and_sublayer_holders_raise_no_warning(recwarn):
    net = Net()
    net(_inputs((6,), "float32"))
    tf_lottery.mask(net)
    assert not [w for w in recwarn if "left these layers dense" in str(w.message)]


def test_registry_argument_and_register_prunable_extend_pruning(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    model = _model_with((6,), "float32", lambda: Scale(name="scale"))
    assert "scale/scale" in tf_lottery.get_masks(tf_lottery.mask(model, registry={Scale: ("scale",)}))
    tf_lottery.strip(model)
    tf_lottery.register_prunable(Scale, weights=("scale",))
    assert "scale/scale" in tf_lottery.get_masks(tf_lottery.mask(model))
    with pytest.raises(ValueError, match="non-empty"):
        tf_lottery.register_prunable(Scale, weights=())


def test_biases_and_normalization_weights_can_be_masked_through_the_registry():
    net = Net()
    net(_inputs((6,), "float32"))
    tf_lottery.mask(net, registry={L.Dense: ("kernel", "bias"), L.LayerNormalization: ("gamma",)})
    assert "head/bias" in tf_lottery.get_masks(net) and "block/norm/gamma" in tf_lottery.get_masks(net)


def test_keras_round_trip_keeps_masks_and_plain_keras_reads_the_plain_ticket(tmp_path):
    model = tf_lottery.mask(_model_with((6, 6, 2), "float32", lambda: L.Conv2D(4, 3)))
    masks = _random_masks(model)
    tf_lottery.set_masks(model, masks)
    path = str(tmp_path / "ticket.keras")
    model.save(path)
    x = _inputs((6, 6, 2), "float32")
    loaded = tf_lottery.load_model(path)
    for key, mask in tf_lottery.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[key])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    _train(loaded, x)
    _assert_pruned_zero(loaded, masks)
    plain = keras.saving.load_model(path)
    assert not tf_lottery.is_masked(plain)
    np.testing.assert_array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="holds no masks.*tf_lottery.mask\\(model\\)"):
        plain.save(str(tmp_path / "plain.keras"))
        tf_lottery.load_model(str(tmp_path / "plain.keras"))


def test_weights_files_carry_the_masks(tmp_path):
    model = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = _random_masks(model)
    tf_lottery.set_masks(model, masks)
    model.save_weights(str(tmp_path / "ticket.weights.h5"))
    other = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    other.load_weights(str(tmp_path / "ticket.weights.h5"))
    for key, mask in tf_lottery.get_masks(other).items():
        np.testing.assert_array_equal(mask, masks[key])
    different = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")), skip=["output"])
    with pytest.raises(ValueError, match=r"masks for other weights \(missing \[\], unknown \['output/kernel'\]\)"):
        different.load_weights(str(tmp_path / "ticket.weights.h5"))


def test_sparsity_report_counts_remaining_weights():
    model = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = tf_lottery.get_masks(model)
    masks["hidden/kernel"][:3] = 0  # 3 of 6 rows: 15 of 30 weights
    tf_lottery.set_masks(model, masks)
    report = tf_lottery.sparsity_report(model)
    assert report["layers"]["hidden/kernel"] == {"total": 30, "remaining": 15, "density": 0.5}
    assert report["total"] == 45 and report["remaining"] == 30
    assert report["density"] == pytest.approx(30 / 45)


def test_unmasked_models_and_none_are_rejected_with_the_fix():
    model = _model_with((6,), "float32", lambda: L.Dense(5))
    for call in (tf_lottery.strip, tf_lottery.get_masks, tf_lottery.apply_masks,
                 lambda m: tf_lottery.set_masks(m, {})):
        with pytest.raises(ValueError, match=r"has no masks. Mask it first: tf_lottery.mask\(model\)"):
            call(model)
        with pytest.raises(ValueError, match=r"None has no masks"):
            call(None)
    with pytest.raises(TypeError, match="expects a keras.Model, got None"):
        tf_lottery.mask(None)
    tf_lottery.mask(model)
    with pytest.raises(ValueError, match=r"set_masks needs masks"):
        tf_lottery.set_masks(model, None)
    with pytest.raises(ValueError, match=r"already masked. tf_lottery.strip\(model\) removes"):
        tf_lottery.mask(model)


def test_models_sharing_masked_layers_cannot_both_be_masked():
    shared = L.Dense(4, name="shared")
    first = keras.Sequential([keras.Input((6,)), shared, L.Dense(2, name="a")])
    second = keras.Sequential([keras.Input((6,)), shared, L.Dense(2, name="b")])
    tf_lottery.mask(first)
    with pytest.raises(ValueError, match=r"\['sequential\w*/shared/kernel'\].*already masked through another model"):
        tf_lottery.mask(second)


def test_the_replaced_api_names_its_successor():
    with pytest.raises(AttributeError, match=r"replaced by tf_lottery.mask\(model\).*Migrating from wrap"):
        tf_lottery.wrap  # noqa: B018
    with pytest.raises(AttributeError, match="Masked was replaced"):
        tf_lottery.Masked  # noqa: B018


def test_set_masks_rejects_masks_of_another_model():
    model = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = tf_lottery.get_masks(model)
    with pytest.raises(ValueError, match=r"missing \['output/kernel'\], unknown \['other/kernel'\]"):
        tf_lottery.set_masks(model, {"hidden/kernel": masks["hidden/kernel"], "other/kernel": masks["output/kernel"]})
    with pytest.raises(ValueError, match=r"'hidden/kernel' has shape \(5, 6\).*another model"):
        tf_lottery.set_masks(model, {**masks, "hidden/kernel": np.ones((5, 6))})
    with pytest.raises(ValueError, match="only 0 and 1"):
        tf_lottery.set_masks(model, {**masks, "hidden/kernel": masks["hidden/kernel"] * 0.5})


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(0.05),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adamw": lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),
    "clipnorm": lambda: keras.optimizers.Adam(0.05, clipnorm=0.1),
    "global_clipnorm": lambda: keras.optimizers.SGD(0.05, momentum=0.9, global_clipnorm=0.1),
}


class _ZerosAfterEveryStep(keras.callbacks.Callback):
    def __init__(self, masks):
        super().__init__()
        self.masks, self.steps = masks, 0

    def on_train_batch_end(self, batch, logs=None):
        _assert_pruned_zero(self.model, self.masks)
        self.steps += 1


# Every optimizer in graph mode; under XLA, the two whose updates touch every weight at once.
STEPS = [*((name, False) for name in sorted(OPTIMIZERS)), ("adamw", True), ("global_clipnorm", True)]


@pytest.mark.parametrize("optimizer, jit_compile", STEPS)
def test_pruned_weights_stay_zero_after_every_step_of_fit(optimizer, jit_compile):
    model = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = _random_masks(model)
    tf_lottery.set_masks(model, masks)
    x = _inputs((6,), "float32", n=24)
    model.compile(optimizer=OPTIMIZERS[optimizer](), jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    check = _ZerosAfterEveryStep(masks)
    model.fit(x, np.arange(24) % 3, batch_size=4, epochs=1, verbose=0, callbacks=[check])
    assert check.steps == 6


@pytest.mark.parametrize("optimizer, jit_compile", STEPS)
def test_pruned_weights_stay_zero_after_every_step_of_a_custom_loop(optimizer, jit_compile):
    model = tf_lottery.mask(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = _random_masks(model)
    tf_lottery.set_masks(model, masks)
    opt = OPTIMIZERS[optimizer]()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(gradients, model.trainable_variables))

    x = _inputs((6,), "float32", n=24)
    for start in range(0, 24, 4):
        step(x[start:start + 4], np.arange(start, start + 4) % 3)
        _assert_pruned_zero(model, masks)


def test_a_file_of_the_replaced_wrapper_names_the_migration(tmp_path):
    model = _model_with((6,), "float32", lambda: L.Dense(5, name="hidden"))
    model.save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras") as plain, zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        for item in plain.infolist():
            content = plain.read(item)
            if item.filename == "config.json":  # What tf_lottery 0.1 wrote: the layer inside a Masked wrapper.
                config = json.loads(content)
                layer = next(entry for entry in config["config"]["layers"] if entry["config"]["name"] == "hidden")
                layer.update(module="tf_lottery.masking", class_name="Masked", registered_name="tf_lottery>Masked")
                content = json.dumps(config)
            old.writestr(item, content)
    with pytest.raises(ValueError, match=r"saved by tf_lottery 0.1.*Migrating from wrap and Masked.*--resume"):
        tf_lottery.load_model(tmp_path / "old.keras")
