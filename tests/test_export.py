"""tf_lottery.export: stripped and exported tickets keep their zeros and agree with Keras.

The "pqat" variant imports TF Model Optimization in this process; that is safe
because `tfmot_bridge.modules()` keeps `tf.keras` and the environment as they
were (tests/test_tfmot_bridge.py checks this in a fresh process).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lottery
from tf_lottery import export, models

from conftest import DIGITS as DATA

SAMPLE = DATA.x_train[:500]


@pytest.fixture(scope="module")
def ticket():
    """LeNet-300-100 on digits at ~10% density, trained with its mask."""
    keras.utils.set_random_seed(0)
    model = tf_lottery.mask(models.lenet300_100(DATA.input_shape, DATA.num_classes))
    rng = np.random.default_rng(0)
    tf_lottery.set_masks(model, {key: (rng.random(mask.shape) < 0.1).astype("float32")
                                 for key, mask in tf_lottery.get_masks(model).items()})
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(DATA.x_train, DATA.y_train, epochs=8, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(ticket, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    entries = {"saved_model": export.export_saved_model(ticket, folder / "saved_model", representative_data=SAMPLE)}
    for name, options in export.VARIANTS.items():
        entries[name] = export.export_tflite(ticket, folder / f"{name}.tflite", representative_data=SAMPLE, **options)
    return folder, entries


def _pruned(ticket):
    """`{layer name: boolean array of the pruned kernel entries}`."""
    return {key.split("/")[0]: mask == 0 for key, mask in tf_lottery.get_masks(ticket).items()}


def test_strip_keeps_every_pruned_weight_at_exactly_zero(ticket):
    copy = keras.models.clone_model(ticket)  # A plain copy with the ticket's weights and masks: strip works in place.
    copy.set_weights(ticket.get_weights())
    tf_lottery.set_masks(tf_lottery.mask(copy), tf_lottery.get_masks(ticket))
    density = export.density(copy)
    plain = tf_lottery.strip(copy)
    for name, pruned in _pruned(ticket).items():
        kernel = plain.get_layer(name).kernel.numpy()
        assert np.all(kernel[pruned] == 0) and np.all(kernel[~pruned] != 0), name
    assert density == export.density(plain) == export.density(ticket) == pytest.approx(0.1, abs=0.01)


def test_saved_model_serves_the_ticket_with_its_zeros(ticket, exported):
    folder, _ = exported
    loaded = tf.saved_model.load(str(folder / "saved_model"))
    outputs = next(iter(loaded.signatures["serving_default"](tf.constant(DATA.x_test)).values()))
    np.testing.assert_allclose(outputs.numpy(), ticket.predict(DATA.x_test, verbose=0), atol=1e-5)
    kernels = {tuple(v.shape): v.numpy() for v in loaded.variables if v.shape.rank == 2}
    for name, pruned in _pruned(ticket).items():
        assert np.all(kernels[pruned.shape][pruned] == 0), name


@pytest.mark.parametrize("variant", list(export.VARIANTS))
def test_every_tflite_variant_agrees_with_keras_and_keeps_its_zeros(ticket, exported, variant):
    folder, entries = exported
    parity, tolerance = entries[variant]["parity"], export.TOLERANCES[variant.replace("sparse_", "")]
    assert parity["samples"] == len(SAMPLE)
    assert parity["top1_agreement"] >= tolerance["top1_agreement"]
    assert parity["max_abs_diff"] <= tolerance["max_abs_diff"] * parity["output_scale"]
    assert (entries[variant]["sparse_tensors"] > 0) == export.VARIANTS[variant]["sparse"]
    interpreter = export.load_interpreter(folder / f"{variant}.tflite", preserve_all_tensors=True)
    export.run_tflite(interpreter, DATA.x_test[:2])  # Densifies the sparse weights.
    tensors = [interpreter.get_tensor(t["index"]) for t in interpreter.get_tensor_details() if len(t["shape"]) == 2]
    for name, pruned in _pruned(ticket).items():  # TFLite stores Dense kernels transposed.
        assert any(t.shape == pruned.T.shape and np.all(t[pruned.T] == 0) and np.any(t) for t in tensors), name


def test_sparse_and_quantized_files_are_smaller_and_reported(exported):
    folder, entries = exported
    report = json.loads((folder / export.REPORT_NAME).read_text())["files"]
    assert set(report) == {"saved_model", *(f"{name}.tflite" for name in export.VARIANTS)}
    assert report["int8.tflite"] == json.loads(json.dumps(entries["int8"]))
    size = {name: entry["bytes"] for name, entry in entries.items()}
    assert size["sparse_float"] < 0.3 * size["float"]
    assert size["int8"] < 0.2 * size["float"] and size["pqat"] < 0.2 * size["float"]
    for entry in report.values():
        assert 0 < entry["gzip_bytes"] < entry["bytes"] and entry["density"] == pytest.approx(0.1, abs=0.01)
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]


def test_a_parity_failure_raises_and_writes_nothing(ticket, tmp_path, monkeypatch):
    monkeypatch.setitem(export.TOLERANCES, "dynamic", {"max_abs_diff": 0.0, "top1_agreement": 1.0})
    with pytest.raises(export.ParityError, match="dynamic export differs .* The file was not written"):
        export.export_tflite(ticket, tmp_path / "dynamic.tflite", quantize="dynamic", representative_data=SAMPLE)
    assert os.listdir(tmp_path) == []


def test_missing_or_wrong_data_and_unknown_modes_are_named(ticket, tmp_path):
    with pytest.raises(ValueError, match="quantize='int8' needs representative_data"):
        export.export_tflite(ticket, tmp_path / "a.tflite", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        export.export_tflite(ticket, tmp_path / "a.tflite", quantize="int4")
    with pytest.raises(ValueError, match=r"of shape \(N, 8, 8, 1\); got shape \(3, 64\)"):
        export.export_tflite(ticket, tmp_path / "a.tflite", representative_data=np.zeros((3, 64)))
    with pytest.warns(UserWarning, match="No parity check"):
        entry = export.export_tflite(ticket, tmp_path / "a.tflite")
    assert entry["parity"] is None
