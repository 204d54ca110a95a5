"""The one module that uses the legacy Keras 2 (`tf_keras`) and TF Model Optimization.

TF Model Optimization 0.8 (tfmot) runs only on `tf_keras`, while tf_lottery is
written for Keras 3. This module rebuilds a plain (stripped) Keras 3 model in
`tf_keras` (`to_tf_keras`: layer configs translated, weights copied) and runs
tfmot's sparsity-preserving quantization-aware training on it
(`prune_preserving_qat`). Only the layers in `SUPPORTED_LAYERS` translate.

tfmot and tf_keras (the `pqat` extra: `pip install 'tf-lottery[pqat]'`) are
imported when a function here is first called, never when tf_lottery is
imported. Importing tfmot sets `TF_USE_LEGACY_KERAS=1`, which makes `tf.keras`
Keras 2 for the rest of the process; `modules()` pins `tf.keras` to what it
was before and restores the variable, so code that runs after it in the same
process (Keras 3, `tf.keras`, subprocesses) is unaffected.
"""

import os
import warnings

import keras
import tensorflow as tf
# Keras exports no class that tells functional models from subclassed ones.
from keras.src.models.functional import Functional

from tf_lottery import extras

#: Keras 3 layer classes (exact classes, not subclasses) that `to_tf_keras` translates.
SUPPORTED_LAYERS = (
    "Activation", "Add", "AveragePooling2D", "BatchNormalization", "Concatenate", "Conv2D", "Dense",
    "DepthwiseConv2D", "Dropout", "Flatten", "GlobalAveragePooling2D", "MaxPooling2D", "ReLU", "Reshape",
    "SeparableConv2D", "Softmax", "ZeroPadding2D",
)

_LEGACY_KERAS = "TF_USE_LEGACY_KERAS"
_FEATURE = 'quantize="pqat" (tf_lottery.tfmot_bridge)'
# tfmot's variables holding the range of a quantized layer output.
_ACTIVATION_RANGES = ("post_activation_min", "post_activation_max", "output_min", "output_max")


def modules():
    """Imports and returns `(tfmot, tf_keras)`, leaving `tf.keras` and the environment as they were."""
    previous = os.environ.get(_LEGACY_KERAS)
    getattr(tf.keras, "version", None)  # Resolves the lazy tf.keras now, as tfmot would after changing the setting.
    try:
        with warnings.catch_warnings():  # tfmot still uses distutils' version classes.
            warnings.simplefilter("ignore", DeprecationWarning)
            tfmot = extras.require("tensorflow_model_optimization", "pqat", _FEATURE)
        tf_keras = extras.require("tf_keras", "pqat", _FEATURE)
    finally:
        if previous is None:
            os.environ.pop(_LEGACY_KERAS, None)
        else:
            os.environ[_LEGACY_KERAS] = previous
    return tfmot, tf_keras


def to_tf_keras(model):
    """Rebuilds a plain Sequential or functional Keras 3 model in `tf_keras`, weights copied.

    Nested models are rebuilt as nested `tf_keras` models. Initializers are not
    carried over (the weights are); regularizers and constraints are.

    Raises:
        ValueError: naming the first layer that cannot be translated.
    """
    _, tf_keras = modules()
    copies = []
    rebuilt = _rebuild(model, tf_keras, copies)
    for source, target in copies:
        target.set_weights(source.get_weights())
    return rebuilt


def prune_preserving_qat(model, representative_data, *, epochs, batch_size=32, learning_rate=1e-4):
    """A `tf_keras` quantization-aware copy of `model` that keeps its zero weights.

    The copy uses tfmot's `Default8BitPrunePreserveQuantizeScheme` and is
    fine-tuned for `epochs` on `representative_data` to reproduce `model`'s own
    outputs (mean squared error), so no labels are needed. Convert it with
    `tf.lite.TFLiteConverter.from_keras_model` and `tf.lite.Optimize.DEFAULT`.
    """
    tfmot, tf_keras = modules()
    float_model = to_tf_keras(model)
    qat_model = tfmot.quantization.keras.quantize_apply(
        tfmot.quantization.keras.quantize_annotate_model(float_model),
        tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    _start_ranges_at_data(qat_model, float_model, representative_data, tf_keras)
    qat_model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss="mse")
    targets = float_model.predict(representative_data, batch_size=256, verbose=0)
    qat_model.fit(representative_data, targets, epochs=epochs, batch_size=batch_size, verbose=0)
    return qat_model


def _start_ranges_at_data(qat_model, float_model, data, tf_keras):
    """Sets tfmot's activation ranges to the ranges the float layers produce on `data`.

    tfmot starts them at [-6, 6] and moves them 0.1% of the way to each batch's
    range per training step, too slowly for a short fine-tuning.
    """
    ranges = {}
    for wrapper in qat_model.layers:
        for variable in wrapper.weights:
            if variable.name.rsplit("/", 1)[-1].split(":")[0] in _ACTIVATION_RANGES:
                ranges.setdefault(wrapper.layer.name, []).append(variable)
    probe = tf_keras.Model(float_model.inputs, {name: float_model.get_layer(name).output for name in ranges})
    for name, output in probe.predict(data, batch_size=256, verbose=0).items():
        for variable in ranges[name]:
            variable.assign(min(0.0, output.min()) if variable.name.endswith("min:0") else max(0.0, output.max()))


def _rebuild(model, tf_keras, copies):
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(f"tf_lottery.tfmot_bridge cannot translate the subclassed model '{model.name}' to "
                         "tf_keras; build it as a Sequential or functional model.")
    translated = {}

    def translate(layer):
        if id(layer) not in translated:
            if isinstance(layer, keras.Model):
                translated[id(layer)] = _rebuild(layer, tf_keras, copies)
            else:
                translated[id(layer)] = _translate_layer(layer, tf_keras)
                copies.append((layer, translated[id(layer)]))
        return translated[id(layer)]

    inputs = [tf_keras.Input(shape=x.shape[1:], dtype=x.dtype) for x in model.inputs]
    graph = keras.Model(model.inputs, model.outputs)  # Sequential models too.
    outputs = graph._run_through_graph(inputs, operation_fn=translate)  # As keras.models.clone_model does.
    return tf_keras.Model(inputs, outputs, name=model.name)


def _translate_layer(layer, tf_keras):
    name = type(layer).__name__
    if name not in SUPPORTED_LAYERS or type(layer) is not getattr(keras.layers, name):
        raise ValueError(f"tf_lottery.tfmot_bridge cannot translate layer '{layer.name}' ({name}) to tf_keras. "
                         f"Supported layers: {', '.join(SUPPORTED_LAYERS)}. Export this model without "
                         "quantize='pqat' (float, dynamic and int8 need no bridge).")
    config = {key: _legacy_value(value) for key, value in layer.get_config().items()
              if not key.endswith("_initializer") and not (key == "quantization_config" and value is None)}
    config["dtype"] = layer.dtype_policy.name
    try:
        return getattr(tf_keras.layers, name).from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"tf_lottery.tfmot_bridge cannot translate the configuration of layer '{layer.name}' "
                         f"({name}) to tf_keras: {error}") from None


def _legacy_value(value):
    """A Keras 3 serialized object (regularizer, constraint) in the form tf_keras reads."""
    if isinstance(value, dict) and "class_name" in value and "module" in value:
        return {"class_name": value["class_name"], "config": value["config"]}
    return value
