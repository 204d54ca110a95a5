"""tf_lottery.tfmot_bridge: Keras 3 models rebuilt in tf_keras, and a process that stays on Keras 3."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

import tf_lottery
from tf_lottery import tfmot_bridge


def _every_supported_layer():
    """A functional model with a nested Sequential that uses each of SUPPORTED_LAYERS."""
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", kernel_regularizer="l2", name="conv")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    branch = layers.DepthwiseConv2D(3, padding="same")(x)
    branch = layers.SeparableConv2D(8, 3, padding="same", activation="relu")(branch)
    x = layers.Add()([x, branch])
    x = layers.MaxPooling2D()(layers.ZeroPadding2D(1)(x))
    pooled = layers.GlobalAveragePooling2D()(layers.AveragePooling2D(2)(x))
    x = layers.Dense(16, activation="relu")(layers.Dropout(0.5)(layers.Flatten()(x)))
    x = layers.Flatten()(layers.Reshape((3, 8))(layers.Concatenate()([x, pooled])))
    head = keras.Sequential([keras.Input((24,)), layers.Dense(10), layers.Activation("tanh"), layers.Dense(5)],
                            name="head")
    model = keras.Model(inputs, layers.Softmax()(head(x)))
    assert {type(layer).__name__ for layer in model._flatten_layers()} >= set(tfmot_bridge.SUPPORTED_LAYERS)
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in w.path else
                       rng.normal(0, 0.2, w.shape).astype("float32") for w in model.weights])
    return model


def test_every_supported_layer_translates_with_its_weights():
    model = _every_supported_layer()
    rebuilt = tfmot_bridge.to_tf_keras(model)
    x = np.random.default_rng(1).random((4, 12, 12, 3), dtype=np.float32)
    np.testing.assert_allclose(rebuilt(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)
    assert type(rebuilt).__module__.startswith("tf_keras")
    assert rebuilt.get_layer("conv").kernel_regularizer.get_config()["l2"] == pytest.approx(0.01)
    assert rebuilt.get_layer("head").get_layer(index=2).activation.__name__ == "tanh"


@pytest.mark.parametrize("layer, message", [
    (layers.LayerNormalization(name="norm"), r"layer 'norm' \(LayerNormalization\).*Supported layers: Activation"),
    (layers.Lambda(lambda t: 2 * t, name="double"), r"layer 'double' \(Lambda\)"),
])
def test_an_untranslatable_layer_is_named(layer, message):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2)(layer(inputs)))
    with pytest.raises(ValueError, match=message + ".*without quantize='pqat'"):
        tfmot_bridge.to_tf_keras(model)


def test_masked_models_translate_and_subclassed_models_get_the_fix():
    model = tf_lottery.mask(keras.Sequential([keras.Input((4,)), layers.Dense(2, name="fc")]))
    tf_lottery.set_masks(model, {key: np.array([[1, 0]] * 4) for key in tf_lottery.get_masks(model)})
    translated = tfmot_bridge.to_tf_keras(model)
    np.testing.assert_array_equal(translated.get_weights()[0], model.get_weights()[0])
    assert not np.any(translated.get_weights()[0][:, 1])

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model .* Sequential or functional"):
        tfmot_bridge.to_tf_keras(Subclassed())


def test_the_process_stays_on_keras_3_after_the_bridge():
    code = ("import os, tensorflow as tf\n"
            "from tf_lottery import tfmot_bridge\n"
            "tfmot, tf_keras = tfmot_bridge.modules()\n"
            "assert tf_keras.__version__.startswith('2.'), tf_keras.__version__\n"
            "assert tf.keras.version().startswith('3.'), tf.keras.version()\n"
            "assert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
            "assert tfmot.quantization.keras.quantize_annotate_model\n")
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
