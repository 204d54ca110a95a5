import numpy as np
import keras
import pytest

import tf_lottery
from tf_lottery import masking

L = keras.layers

# One small model per prunable layer type: (input shape, input dtype, layer factory).
LAYER_CASES = {
    "Dense": ((6,), "float32", lambda: L.Dense(5)),
    "Conv1D": ((8, 3), "float32", lambda: L.Conv1D(4, 3)),
    "Conv2D": ((6, 6, 2), "float32", lambda: L.Conv2D(4, 3)),
    "Conv3D": ((4, 4, 4, 2), "float32", lambda: L.Conv3D(3, 2)),
    "Conv2DTranspose": ((4, 4, 2), "float32", lambda: L.Conv2DTranspose(3, 3)),
    "DepthwiseConv2D": ((6, 6, 3), "float32", lambda: L.DepthwiseConv2D(3, depth_multiplier=2)),
    "SeparableConv2D": ((6, 6, 3), "float32", lambda: L.SeparableConv2D(4, 3, depth_multiplier=2)),
    "Embedding": ((5,), "int32", lambda: L.Embedding(20, 6)),
    "EinsumDense": ((6,), "float32", lambda: L.EinsumDense("ab,bc->ac", output_shape=5)),
    "SimpleRNN": ((5, 4), "float32", lambda: L.SimpleRNN(6)),
    "LSTM": ((5, 4), "float32", lambda: L.LSTM(6)),
    "GRU": ((5, 4), "float32", lambda: L.GRU(6)),
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


def _train(model, x, steps=3):
    y = np.arange(len(x)) % 3
    model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, verbose=0)


def _assert_pruned_zero(model, masks):
    for key, weight in tf_lottery.get_prunable_weights(model).items():
        assert np.all(weight[masks[key] == 0] == 0), key
        assert np.any(weight[masks[key] == 1] != 0), key


def _assert_trains_sparse_and_strips(wrapped, x):
    """Random masks, a few AdamW steps: pruned weights stay 0, and `strip` computes the same outputs."""
    masks = _random_masks(wrapped)
    tf_lottery.set_masks(wrapped, masks)
    _train(wrapped, x)
    _assert_pruned_zero(wrapped, masks)
    plain = tf_lottery.strip(wrapped)
    assert not any(isinstance(layer, tf_lottery.Masked) for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), wrapped.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_every_listed_layer_wraps_trains_and_strips(name):
    shape, dtype, factory = LAYER_CASES[name]
    model = _model_with(shape, dtype, factory)
    wrapped = tf_lottery.wrap(model)
    x = _inputs(shape, dtype)
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    _assert_trains_sparse_and_strips(wrapped, x)


def test_registry_covers_the_documented_weights():
    expected = {
        "SeparableConv2D": 2, "MultiHeadAttention": 4, "LSTM": 2, "GRU": 2, "SimpleRNN": 2, "Dense": 1,
    }
    for name, count in expected.items():
        assert len(masking._REGISTRY[getattr(L, name)]) == count
    assert masking.prunable_weight_names(L.BatchNormalization()) is None


def test_multi_head_attention_wraps_trains_and_strips():
    inputs = keras.Input((4, 6))
    x = L.MultiHeadAttention(num_heads=2, key_dim=3)(inputs, inputs)
    model = keras.Model(inputs, L.Dense(3, name="output")(L.Flatten()(x)))
    wrapped = tf_lottery.wrap(model)
    assert {k for k in tf_lottery.get_masks(wrapped) if k.startswith("multi_head_attention/")} == {
        f"multi_head_attention/{p}_dense.kernel" for p in ("query", "key", "value", "output")}
    x = _inputs((4, 6), "float32")
    _assert_trains_sparse_and_strips(wrapped, x)


def test_wrap_copies_weights_and_leaves_the_original_alone():
    model = _model_with((6,), "float32", lambda: L.Dense(5, name="hidden"))
    before = [w.copy() for w in model.get_weights()]
    wrapped = tf_lottery.wrap(model)
    tf_lottery.set_masks(wrapped, _random_masks(wrapped))
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(wrapped.get_layer("masked_hidden").layer.bias.numpy(),
                                  model.get_layer("hidden").bias.numpy())


def test_forward_pass_applies_masks_even_if_a_pruned_weight_is_written():
    wrapped = tf_lottery.wrap(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = _random_masks(wrapped)
    tf_lottery.set_masks(wrapped, masks)
    x = _inputs((6,), "float32")
    expected = wrapped.predict(x, verbose=0)
    kernel = wrapped.get_layer("masked_hidden").layer.kernel
    kernel.assign(kernel.numpy() + (1 - masks["hidden/kernel"]) * 100.0)
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), expected, atol=1e-6)


def test_nested_models_are_wrapped_with_prefixed_keys():
    inner = keras.Sequential([keras.Input((6,)), L.Dense(4, name="d1")], name="encoder")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(3, name="output")(inner(inputs)))
    wrapped = tf_lottery.wrap(model)
    assert list(tf_lottery.get_masks(wrapped)) == ["encoder/d1/kernel", "output/kernel"]
    x = _inputs((6,), "float32")
    _assert_trains_sparse_and_strips(wrapped, x)


def test_skip_leaves_named_layers_dense():
    model = _model_with((6,), "float32", lambda: L.Dense(5, name="hidden"))
    assert list(tf_lottery.get_masks(tf_lottery.wrap(model, skip=["hidden"]))) == ["output/kernel"]
    with pytest.raises(ValueError, match="does not have: \\['nope'\\]"):
        tf_lottery.wrap(model, skip=["nope"])


class Scale(L.Layer):
    """A custom layer with a weight the registry does not know."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_unregistered_layer_is_left_dense_with_one_warning():
    model = _model_with((6,), "float32", Scale)
    with pytest.warns(UserWarning, match=r"left these layers dense.*scale \(Scale\).*register_prunable"):
        wrapped = tf_lottery.wrap(model)
    assert list(tf_lottery.get_masks(wrapped)) == ["output/kernel"]


def test_naming_an_unregistered_layer_explains_how_to_register():
    with pytest.raises(ValueError, match=r"register_prunable\(Scale, weights=\('kernel',\)\)"):
        tf_lottery.Masked(Scale())


def test_registry_argument_and_register_prunable_extend_pruning(monkeypatch):
    monkeypatch.setattr(masking, "_REGISTRY", dict(masking._REGISTRY))
    model = _model_with((6,), "float32", lambda: Scale(name="scale"))
    assert "scale/scale" in tf_lottery.get_masks(tf_lottery.wrap(model, registry={Scale: ("scale",)}))
    tf_lottery.register_prunable(Scale, weights=("scale",))
    assert "scale/scale" in tf_lottery.get_masks(tf_lottery.wrap(model))
    with pytest.raises(ValueError, match="non-empty"):
        tf_lottery.register_prunable(Scale, weights=())


def test_subclassed_models_wrap_their_own_layers():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = tf_lottery.Masked(L.Dense(5, name="hidden"))
            self.out = tf_lottery.Masked(L.Dense(3, name="output"))

        def call(self, x):
            return self.out(self.hidden(x))

    net = Net()
    x = _inputs((6,), "float32")
    net(x)
    masks = _random_masks(net)
    tf_lottery.set_masks(net, masks)
    _train(net, x)
    _assert_pruned_zero(net, masks)
    with pytest.raises(ValueError, match="subclassed model"):
        tf_lottery.wrap(net)


def test_keras_round_trip_keeps_masks_and_outputs(tmp_path):
    wrapped = tf_lottery.wrap(_model_with((6, 6, 2), "float32", lambda: L.Conv2D(4, 3)))
    masks = _random_masks(wrapped)
    tf_lottery.set_masks(wrapped, masks)
    path = str(tmp_path / "ticket.keras")
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    for key, mask in tf_lottery.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[key])
    x = _inputs((6, 6, 2), "float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), wrapped.predict(x, verbose=0))
    _train(loaded, x)
    _assert_pruned_zero(loaded, masks)


def test_sparsity_report_counts_remaining_weights():
    wrapped = tf_lottery.wrap(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = tf_lottery.get_masks(wrapped)
    masks["hidden/kernel"][:3] = 0  # 3 of 6 rows: 15 of 30 weights
    tf_lottery.set_masks(wrapped, masks)
    report = tf_lottery.sparsity_report(wrapped)
    assert report["layers"]["hidden/kernel"] == {"total": 30, "remaining": 15, "density": 0.5}
    assert report["total"] == 45 and report["remaining"] == 30
    assert report["density"] == pytest.approx(30 / 45)


def test_unwrapped_models_are_rejected_with_the_fix():
    model = _model_with((6,), "float32", lambda: L.Dense(5))
    for call in (tf_lottery.strip, tf_lottery.get_masks, lambda m: tf_lottery.set_masks(m, {})):
        with pytest.raises(ValueError, match=r"no tf_lottery.Masked layers.*tf_lottery.wrap\(model\)"):
            call(model)
    with pytest.raises(ValueError, match="already wrapped"):
        tf_lottery.wrap(tf_lottery.wrap(model))


def test_set_masks_rejects_masks_of_another_model():
    wrapped = tf_lottery.wrap(_model_with((6,), "float32", lambda: L.Dense(5, name="hidden")))
    masks = tf_lottery.get_masks(wrapped)
    with pytest.raises(ValueError, match=r"missing \['output/kernel'\], unknown \['other/kernel'\]"):
        tf_lottery.set_masks(wrapped, {"hidden/kernel": masks["hidden/kernel"], "other/kernel": masks["output/kernel"]})
    with pytest.raises(ValueError, match=r"'hidden/kernel' has shape \(5, 6\).*another model"):
        tf_lottery.set_masks(wrapped, {**masks, "hidden/kernel": np.ones((5, 6))})
    with pytest.raises(ValueError, match="only 0 and 1"):
        tf_lottery.set_masks(wrapped, {**masks, "hidden/kernel": masks["hidden/kernel"] * 0.5})
