"""Shared test set-up: quiet TensorFlow logs, two logical CPU devices, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# tf.distribute tests replicate over two logical CPUs; this must happen before
# TensorFlow initializes its devices. Everything else runs on the first one.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


#: A small keras-hub BERT, built from its constructor (presets need a download).
TINY_BERT = {"vocabulary_size": 500, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
             "max_sequence_length": 16}


@pytest.fixture
def tiny_bert():
    """`(build, inputs)`: a builder of a keras-hub BERT text classifier (2 classes), and `inputs(n, seed)` for it."""
    import keras_hub  # Imported here: only the tests that use it pay for the import.
    import numpy as np

    def build():
        backbone = keras_hub.models.BertBackbone(**TINY_BERT)
        return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)

    def inputs(n, seed=0):
        rng, length = np.random.default_rng(seed), TINY_BERT["max_sequence_length"]
        return {"token_ids": rng.integers(1, TINY_BERT["vocabulary_size"], (n, length)).astype("int32"),
                "segment_ids": np.zeros((n, length), "int32"), "padding_mask": np.ones((n, length), "int32")}

    return build, inputs
