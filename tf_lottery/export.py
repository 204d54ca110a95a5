"""Ship a ticket: SavedModel and TFLite files, a size report and a parity check.

    tf_lottery.export.export_saved_model(ticket, "out/saved_model", representative_data=x[:500])
    tf_lottery.export.export_tflite(ticket, "out/int8.tflite", quantize="int8", representative_data=x[:500])

Both take a wrapped or a plain Keras model of one input and one output; a
wrapped one is stripped first (`tf_lottery.strip`), so pruned weights are
exactly zero in every file. TFLite files are converted with TFLite's sparsity
optimization (`sparse=True`, `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), which
stores weight tensors with many zeros in a sparse format (values plus an
index per nonzero): the file is smaller (`benchmarks/export_size.py` measures
by how much, and the speed).

Quantization (`quantize=`):

* `None`: float32 weights and activations.
* `"dynamic"`: int8 weights, float activations (no data needed).
* `"int8"`: full integer quantization, calibrated on `representative_data`;
  every op runs in int8, inputs and outputs stay float32.
* `"pqat"`: sparsity-preserving quantization-aware training with TF Model
  Optimization (`tf_lottery.tfmot_bridge`): the model is fine-tuned briefly
  in int8 simulation to reproduce its own float outputs on
  `representative_data`, keeping its zeros, then converted like `"int8"`.

Every export adds an entry for its file to `export_report.json` in the same
folder: the model's density, the file's size in bytes raw and gzip-compressed,
and a parity check of the file against the Keras model on (up to
`PARITY_SAMPLES` of) `representative_data`, run with TensorFlow
(SavedModel) or the LiteRT interpreter (TFLite). A file outside `TOLERANCES`
raises `ParityError` and is not written. Every file is written under a
temporary name and renamed into place.
"""

import contextlib
import gzip
import os
import pathlib
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from tf_lottery import masking, storage, tfmot_bridge

REPORT_NAME = "export_report.json"
QUANTIZE_MODES = (None, "dynamic", "int8", "pqat")

#: The TFLite files `examples/export_ticket.py` writes, as `export_tflite` arguments.
#: `float` is the dense baseline the others are compared with.
VARIANTS = {
    "float": {"quantize": None, "sparse": False},
    "sparse_float": {"quantize": None, "sparse": True},
    "dynamic": {"quantize": "dynamic", "sparse": True},
    "int8": {"quantize": "int8", "sparse": True},
    "pqat": {"quantize": "pqat", "sparse": True},
}

#: Parity tolerances per kind of file: the largest allowed max |file output -
#: Keras output|, as a fraction of max |Keras output|, and the smallest allowed
#: fraction of inputs on which both pick the same top-1 class.
TOLERANCES = {
    "saved_model": {"max_abs_diff": 1e-5, "top1_agreement": 0.99},
    "float": {"max_abs_diff": 1e-4, "top1_agreement": 0.99},
    "dynamic": {"max_abs_diff": 0.05, "top1_agreement": 0.97},
    "int8": {"max_abs_diff": 0.2, "top1_agreement": 0.95},
    "pqat": {"max_abs_diff": 0.2, "top1_agreement": 0.95},
}
PARITY_SAMPLES = 1000
CALIBRATION_SAMPLES = 500
PQAT_EPOCHS = 3


class ParityError(ValueError):
    """An exported file's outputs differ from the Keras model's beyond `TOLERANCES`."""


def export_saved_model(model, path, *, representative_data=None):
    """Strips `model` and writes it as a SavedModel folder at `path`.

    `tf.saved_model.load(path)` serves it through the signature
    `serving_default` (and the function `serve`).

    Args:
        model: a wrapped or plain Keras model with one input and one output.
        path: the SavedModel folder; an existing one is replaced.
        representative_data: real inputs (an array of a batch of them) for the
            parity check; without them the check is skipped with a warning.

    Returns:
        The file's entry in `export_report.json`.
    """
    plain = _plain(model)
    data = _as_inputs(plain, representative_data)
    with _atomic_folder(path) as temporary:
        plain.export(temporary, format="tf_saved_model", verbose=False)
        serve = tf.saved_model.load(temporary).signatures["serving_default"]
        (name,) = serve.structured_input_signature[1]
        parity = _parity(plain, lambda x: next(iter(serve(**{name: tf.constant(x)}).values())).numpy(),
                         data, "saved_model")
    return _record(path, {"format": "saved_model", "density": density(plain), **_sizes(path), "parity": parity})


def export_tflite(model, path, *, quantize=None, representative_data=None, sparse=True, pqat_epochs=PQAT_EPOCHS):
    """Strips `model` and writes it as a TFLite file at `path`.

    Args:
        model: a wrapped or plain Keras model with one input and one output.
        path: the `.tflite` file; an existing one is replaced.
        quantize: `None`, `"dynamic"`, `"int8"` or `"pqat"` (see the module
            docstring).
        representative_data: real inputs, a few hundred or more: calibration
            data for `"int8"`, fine-tuning data for `"pqat"` (both need them),
            and the parity check's inputs.
        sparse: store mostly-zero weight tensors in TFLite's sparse format.
        pqat_epochs: fine-tuning epochs over `representative_data` for `"pqat"`.

    Returns:
        The file's entry in `export_report.json`.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}; got {quantize!r}.")
    if quantize in ("int8", "pqat") and representative_data is None:
        raise ValueError(f"quantize={quantize!r} needs representative_data: a few hundred real inputs, "
                         "e.g. representative_data=x_train[:500].")
    plain = _plain(model)
    data = _as_inputs(plain, representative_data)
    with tempfile.TemporaryDirectory() as folder:
        if quantize == "pqat":
            qat_model = tfmot_bridge.prune_preserving_qat(plain, data, epochs=pqat_epochs)
            converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
        else:
            plain.export(folder, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = ([tf.lite.Optimize.DEFAULT] if quantize else []) + (
            [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else [])
        if quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: ([x[None]] for x in data[:CALIBRATION_SAMPLES])
        with warnings.catch_warnings():  # A QAT model carries its input ranges; TFLite warns all the same.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
            content = converter.convert()
    with storage.atomic_path(path, ".tflite") as temporary:
        with open(temporary, "wb") as f:
            f.write(content)
        interpreter = load_interpreter(temporary)
        parity = _parity(plain, lambda x: run_tflite(interpreter, x), data, quantize or "float")
    sparse_tensors = sum(bool(t["sparsity_parameters"]) for t in interpreter.get_tensor_details())
    return _record(path, {"format": "tflite", "quantize": quantize, "sparse": sparse, "density": density(plain),
                          **_sizes(path), "sparse_tensors": sparse_tensors, "parity": parity})


def load_interpreter(path, *, preserve_all_tensors=False):
    """A LiteRT interpreter for the TFLite file at `path`, tensors allocated.

    It uses the built-in kernels without TFLite's default XNNPACK delegate,
    which cannot prepare sparse int8 files.
    `preserve_all_tensors` keeps intermediate tensors (e.g. densified weights)
    readable after `invoke()`.
    """
    interpreter = litert.Interpreter(
        model_path=os.fspath(path), experimental_preserve_all_tensors=preserve_all_tensors,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(interpreter, x):
    """The output of a one-input, one-output LiteRT interpreter for the batch `x`."""
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    if tuple(inputs["shape"]) != x.shape:
        interpreter.resize_tensor_input(inputs["index"], x.shape)
        interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x.astype(inputs["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"]).copy()


def density(model):
    """The fraction of nonzero entries in the prunable weights (see `register_prunable`) of a plain or wrapped model."""
    values = [masking._resolve(layer, path).numpy() for _, layer in masking._walk(_plain(model))
              for path in masking.prunable_weight_names(layer) or ()]
    total = sum(value.size for value in values)
    return sum(int(np.count_nonzero(value)) for value in values) / total if total else 1.0


def load_ticket(run_dir, round_index):
    """The wrapped, trained model of round `round_index` of a ticket search in `run_dir`.

    The model is `best_ticket.keras` of the run, with the masks and trained
    weights of the round (`round_NNN/masks.npz`, `trained_weights.npz`).
    """
    ticket = os.path.join(run_dir, "best_ticket.keras")
    if not os.path.exists(ticket):
        raise FileNotFoundError(f"{run_dir} has no best_ticket.keras, which a search writes when it ends. "
                                "Finish the run first (examples/find_ticket.py --resume).")
    model = keras.models.load_model(ticket)
    folder = os.path.join(run_dir, f"round_{round_index:03d}")
    masking.set_masks(model, storage.read_arrays(os.path.join(folder, "masks.npz")))
    masking.set_weight_values(model, storage.read_arrays(os.path.join(folder, "trained_weights.npz")))
    return model


def _plain(model):
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"tf_lottery.export handles models of one input and one output; model '{model.name}' "
                         f"has {len(model.inputs)} and {len(model.outputs)}.")
    if any(isinstance(layer, masking.Masked) for _, layer in masking._walk(model)):
        return masking.strip(model)
    return model


def _as_inputs(model, data):
    if data is None:
        return None
    data = np.asarray(data, dtype=model.inputs[0].dtype)
    if data.shape[1:] != tuple(model.inputs[0].shape[1:]) or not len(data):
        raise ValueError(f"representative_data must be a batch of the model's inputs, of shape "
                         f"(N, {', '.join(map(str, model.inputs[0].shape[1:]))}); got shape {data.shape}.")
    return data


def _parity(model, predict, data, kind):
    """Compares `predict(x)` with `model(x)`; raises `ParityError` beyond `TOLERANCES[kind]`."""
    if data is None:
        warnings.warn(f"No parity check for this {kind} export: pass representative_data (a few hundred real "
                      "inputs) to compare the file with the Keras model.", stacklevel=3)
        return None
    x = data[:PARITY_SAMPLES]
    # Eager calls: model.predict would trace a new function for every exported copy.
    expected = np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + 256], training=False))
                               for i in range(0, len(x), 256)])
    actual = predict(x)
    tolerance = TOLERANCES[kind]
    scale = float(np.abs(expected).max()) or 1.0
    result = {"samples": len(x), "max_abs_diff": float(np.abs(actual - expected).max()), "output_scale": scale,
              "top1_agreement": float(np.mean(actual.argmax(-1) == expected.argmax(-1))), "tolerance": tolerance}
    if result["max_abs_diff"] > tolerance["max_abs_diff"] * scale or \
            result["top1_agreement"] < tolerance["top1_agreement"]:
        raise ParityError(
            f"The {kind} export differs from the Keras model on {len(x)} inputs: max |difference| "
            f"{result['max_abs_diff']:.3g} (allowed {tolerance['max_abs_diff'] * scale:.3g}), top-1 agreement "
            f"{result['top1_agreement']:.2%} (needed {tolerance['top1_agreement']:.0%}). The file was not written. "
            "Check that representative_data are real inputs preprocessed as in training; for int8, pass more of "
            "them or use quantize='pqat' or 'dynamic'.")
    return result


@contextlib.contextmanager
def _atomic_folder(path):
    """Yields a temporary folder next to `path`; swaps it in for `path` if the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        yield temporary
        previous = temporary + ".previous"
        if os.path.exists(path):
            os.replace(path, previous)
        os.replace(temporary, path)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _sizes(path):
    files = [path] if os.path.isfile(path) else [os.path.join(folder, name)
                                                  for folder, _, names in os.walk(path) for name in names]
    contents = [pathlib.Path(file).read_bytes() for file in files]
    return {"bytes": sum(map(len, contents)), "gzip_bytes": sum(len(gzip.compress(c)) for c in contents)}


def _record(path, entry):
    """Adds `entry` for `path` to the export report beside it; returns it."""
    report_path = os.path.join(os.path.dirname(os.path.abspath(path)), REPORT_NAME)
    report = storage.read_json(report_path) if os.path.exists(report_path) else {"files": {}}
    report["files"][os.path.basename(os.path.normpath(path))] = entry
    storage.write_json(report_path, report)
    return entry
