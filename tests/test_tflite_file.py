"""tf_lottery.tflite_file: the storage of each weight, read from the flatbuffer of files converted here."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_lottery import tflite_file


def _convert(kernel, *, sparse):
    """A one-Dense-layer float TFLite file with `kernel` (Keras layout [in, out]), as bytes."""
    model = keras.Sequential([keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1])])
    model.layers[0].set_weights([kernel, np.zeros(kernel.shape[1], np.float32)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    return converter.convert()


@pytest.fixture(scope="module")
def kernel():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 8)).astype(np.float32) + 3.0  # No zeros by chance.


def test_a_dense_file_reports_dense_weights(kernel):
    [weight] = tflite_file.weight_storage(_convert(kernel, sparse=False))
    assert weight["op"] == "FULLY_CONNECTED" and weight["shape"] == [8, 32] and weight["dtype"] == "float32"
    assert weight["storage"] == "dense" and weight["block"] is None and not weight["densified"]
    assert weight["density"] == 1.0


def test_zeros_in_1x4_blocks_are_stored_block_sparse(kernel):
    blocked = kernel.copy()
    keep = np.random.default_rng(1).random((8, 8)) < 0.25           # 25% of the 1x4 blocks of the [out, in] layout.
    blocked *= np.repeat(keep, 4, axis=1).T.astype(np.float32)      # Keras layout [in, out].
    [weight] = tflite_file.weight_storage(_convert(blocked, sparse=True))
    assert weight["storage"] == "block_sparse" and weight["block"] == [1, 4] and not weight["densified"]
    assert weight["density"] == pytest.approx(np.count_nonzero(blocked) / blocked.size)


def test_scattered_zeros_are_stored_sparse_and_densified_at_load(kernel):
    scattered = kernel * (np.random.default_rng(2).random(kernel.shape) < 0.2)
    [weight] = tflite_file.weight_storage(_convert(scattered.astype(np.float32), sparse=True))
    assert weight["storage"] == "sparse" and weight["block"] is None and weight["densified"]
