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
