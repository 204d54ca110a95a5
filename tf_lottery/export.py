"""Ship a ticket: SavedModel and TFLite files, a size report and a parity check.

    tf_lottery.export.export_saved_model(ticket, "out/saved_model", representative_data=x[:500])
    tf_lottery.export.export_tflite(ticket, "out/int8.tflite", quantize="int8", representative_data=x[:500])

Both take a masked or a plain Keras model; a masked one's pruned weights are
zeroed first (`tf_lottery.apply_masks`), so they are exactly zero in every
file. Its masks live beside the model, not in it, so no file holds them. TFLite files are converted with TFLite's sparsity
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

Block-sparse tickets and the fastest file. TFLite runs a fully-connected layer
faster than dense only when its weight tensor (TFLite layout `[out, in]`) is
stored in blocks along `in` that its sparse kernels read: 1x4 blocks in float
files, 1x16 in int8 and dynamic-range files (`KERNEL_BLOCKS`). The converter
picks that storage by itself for a weight tensor whose zeros come in such
blocks and which is at most `SPARSE_STORAGE_MAX_DENSITY` nonzero; any other
sparse tensor is stored unstructured and expanded to dense when the file is
loaded (a DENSIFY op), so it runs at dense speed. Tickets searched with
`PruningPlan(block=(1, 4))` or `(1, 16)` (`find_ticket.py --block=1x16`) have
such zeros in every Dense kernel:

* `export_tflite(..., block="auto")` (the default) reads the ticket's block
  structure from the zeros of its Dense kernels (`block_structure`): `(1, 16)`
  or `(1, 4)` if every Dense kernel's zeros fill whole blocks of that shape
  (the largest that fits), else `None`. Pass `block=(1, 16)` / `"1x16"` to
  insist (an error names a kernel that does not fit), or `None`.
* `quantize="fastest"` picks the quantization whose kernel matches that
  structure (`FASTEST_QUANTIZE`): float for 1x4, `"int8"` for 1x16 (which needs
  `representative_data`), and for unstructured tickets, which run at dense
  speed in every format, `"dynamic"`, the fastest of those in
  `benchmarks/block_tickets.py`.
* TFLite's block-sparse kernels (TF 2.21) compute wrong outputs when a layer's
  input size is not a multiple of the block width (LeNet-300-100's 300 and
  100 inputs for 1x16: the partial last block reads past the input). So before
  converting, every such Dense layer whose kernel is block-structured reads its
  input zero-padded to the next multiple (its kernel gets zero rows that are
  never stored). When a Dense layer that feeds nothing else computes that
  input, it gets the extra output units, with zero weights and bias, and the
  padding costs nothing; otherwise one PAD op pads the input. The outputs are
  unchanged (the parity check compares them with the unpadded model); the
  entry lists the padded layers (`padded_inputs`) and the widened ones
  (`widened_outputs`).
* After conversion, the file's flatbuffer is read (`tflite_file.weight_storage`): every
  weight tensor of a FULLY_CONNECTED or convolution op is reported with its
  storage (`"dense"`, `"sparse"` or `"block_sparse"` and the block), whether
  a DENSIFY op expands it at load, and its density. For a ticket whose block
  structure fits the kernel of a FULLY_CONNECTED weight's stored type
  (`STORED_BLOCKS`: float32 1x4, int8 1x16), the weight must be stored
  block-sparse in that block (or dense, if denser than
  `SPARSE_STORAGE_MAX_DENSITY`); each weight's `expected_block` and the
  entry's `block_sparse_check` (`expected_block`: the quantization's kernel
  block, `met`, `problems`) give the outcome, and a file that
  misses it raises a `BlockSparsityWarning` (it is still written: its outputs
  are right, only its speed is not). Convolution kernels have no block-sparse
  TFLite kernel; they are reported, never expected block-sparse.
"""

import gzip
import os
import pathlib
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from tf_lottery import masking, parity, pruning, registry, run_store, storage, tflite_file, tfmot_bridge
from tf_lottery.parity import PARITY_SAMPLES, TOLERANCES, ParityError  # noqa: F401 (part of this module's API)

REPORT_NAME = "export_report.json"
QUANTIZE_MODES = (None, "dynamic", "int8", "pqat")
FASTEST = "fastest"

#: The block (`[out, in]` layout) of TFLite's fast sparse fully-connected kernel for each quantization:
#: the converter stores a weight tensor in these blocks when its zeros fill whole blocks.
KERNEL_BLOCKS = {None: (1, 4), "dynamic": (1, 16), "int8": (1, 16), "pqat": (1, 16)}
#: The same by the stored weight's type ("dynamic" keeps weights under 1,024 values in float32).
STORED_BLOCKS = {"float32": (1, 4), "int8": (1, 16)}
#: The block structures `block_structure` recognizes, largest first.
BLOCK_SHAPES = ((1, 16), (1, 4))
#: What `quantize="fastest"` exports, by the ticket's block structure (`None`: unstructured).
FASTEST_QUANTIZE = {(1, 16): "int8", (1, 4): None, None: "dynamic"}
#: TFLite's converter (TF 2.21) stores a weight tensor sparse only when at most this fraction of it is nonzero.
SPARSE_STORAGE_MAX_DENSITY = 0.7

#: The TFLite files `examples/export_ticket.py` writes, as `export_tflite` arguments.
#: `float` is the dense baseline the others are compared with.
VARIANTS = {
    "float": {"quantize": None, "sparse": False},
    "sparse_float": {"quantize": None, "sparse": True},
    "dynamic": {"quantize": "dynamic", "sparse": True},
    "int8": {"quantize": "int8", "sparse": True},
    "pqat": {"quantize": "pqat", "sparse": True},
}

CALIBRATION_SAMPLES = 500
PQAT_EPOCHS = 3


class BlockSparsityWarning(UserWarning):
    """A TFLite file does not store its fully-connected weights in the block-sparse format its ticket allows."""


def export_saved_model(model, path, *, representative_data=None):
    """Writes `model` as a SavedModel folder at `path` (a masked one with its pruned weights zeroed).

    `tf.saved_model.load(path)` serves it through the signature
    `serving_default` (and the function `serve`).

    Args:
        model: a masked or plain Keras model with one output.
        path: the SavedModel folder; an existing one is replaced.
        representative_data: real inputs for the parity check (a batch of
            them, or `{input name: batch}` for a model of several inputs; see
            `tf_lottery.parity`); without them the check is skipped with a
            warning.

    Returns:
        The file's entry in `export_report.json`.
    """
    plain = _plain(model)
    data = parity.inputs_of(plain, representative_data)
    with storage.atomic_folder(path) as temporary:
        plain.export(temporary, format="tf_saved_model", verbose=False)
        serve = tf.saved_model.load(temporary).signatures["serving_default"]
        names = list(serve.structured_input_signature[1])

        def predict(x):
            feeds = x if isinstance(x, dict) else {names[0]: x}
            return next(iter(serve(**{name: tf.constant(value) for name, value in feeds.items()}).values())).numpy()

        result = _parity(plain, predict, data, "saved_model")
    return _record(path, {"format": "saved_model", "density": density(plain), **_sizes(path), "parity": result})


def export_tflite(model, path, *, quantize=None, representative_data=None, sparse=True, pqat_epochs=PQAT_EPOCHS,
                  block="auto"):
    """Writes `model` as a TFLite file at `path` (a masked one with its pruned weights zeroed).

    Args:
        model: a masked or plain Keras model with one output (and one input
            for `"pqat"`).
        path: the `.tflite` file; an existing one is replaced.
        quantize: `None`, `"dynamic"`, `"int8"` or `"pqat"` (see the module
            docstring), or `"fastest"`: the one `FASTEST_QUANTIZE` gives for
            the ticket's block structure (`block`).
        representative_data: real inputs, a few hundred or more (a batch, or
            `{input name: batch}` for a model of several inputs): calibration
            data for `"int8"`, fine-tuning data for `"pqat"` (both need them),
            and the parity check's inputs.
        sparse: store mostly-zero weight tensors in TFLite's sparse format.
        pqat_epochs: fine-tuning epochs over `representative_data` for `"pqat"`.
        block: the ticket's block structure in TFLite's `[out, in]` layout:
            `"auto"` reads it from the zeros of the Dense kernels
            (`block_structure`); `(1, 4)`, `(1, 16)` (or `"1x4"`, `"1x16"`)
            insists on it; `None` means unstructured. It decides
            `quantize="fastest"` and the block-sparse check.

    Returns:
        The file's entry in `export_report.json`.
    """
    if quantize not in QUANTIZE_MODES + (FASTEST,):
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES + (FASTEST,)}; got {quantize!r}.")
    plain = _plain(model)
    block = _ticket_block(plain, block)
    requested, quantize = quantize, FASTEST_QUANTIZE[block] if quantize == FASTEST else quantize
    if quantize in ("int8", "pqat") and representative_data is None:
        chosen = f"quantize='fastest' picks {quantize!r} for this {_block_name(block)} ticket; it" \
            if requested == FASTEST else f"quantize={quantize!r}"
        raise ValueError(f"{chosen} needs representative_data: a few hundred real inputs, "
                         "e.g. representative_data=x_train[:500].")
    data = parity.inputs_of(plain, representative_data)
    if quantize == "pqat" and len(plain.inputs) > 1:
        raise ValueError(f"quantize='pqat' handles models of one input; model '{plain.name}' has "
                         f"{len(plain.inputs)}. Use quantize='int8' or 'dynamic'.")
    kernel_width = KERNEL_BLOCKS[quantize][1]
    # TFLite's block-sparse kernels need whole blocks: pad the inputs of the layers they would run.
    converted, padded, widened = _pad_dense_inputs(plain, kernel_width, standard_layers=quantize == "pqat") \
        if sparse else (plain, {}, {})
    with tempfile.TemporaryDirectory() as folder:
        if quantize == "pqat":
            qat_model = tfmot_bridge.prune_preserving_qat(converted, data, epochs=pqat_epochs)
            converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
        else:
            converted.export(folder, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = ([tf.lite.Optimize.DEFAULT] if quantize else []) + (
            [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else [])
        if quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: _calibration_samples(data)
        content = _convert(converter, plain, sparse)
    with storage.atomic_path(path, ".tflite") as temporary:
        with open(temporary, "wb") as f:
            f.write(content)
        interpreter = load_interpreter(temporary)
        result = _parity(plain, lambda x: run_tflite(interpreter, x), data, quantize or "float")
    sparse_tensors = sum(bool(t["sparsity_parameters"]) for t in interpreter.get_tensor_details())
    stored = _name_layers(tflite_file.weight_storage(content), plain, padded, widened)
    check = _block_check(stored, block if sparse else None, quantize)
    if check["met"] is False:
        warnings.warn(f"{os.fspath(path)} does not store all its fully-connected weights in the blocks TFLite's "
                      "sparse kernels read, so those run at dense speed: " + "; ".join(check["problems"]),
                      BlockSparsityWarning, stacklevel=2)
    return _record(path, {"format": "tflite", "quantize": quantize, "requested_quantize": requested,
                          "sparse": sparse, "density": density(plain), "block": list(block) if block else None,
                          **_sizes(path), "sparse_tensors": sparse_tensors, "padded_inputs": padded,
                          "widened_outputs": widened,
                          "block_sparse_check": check, "weights": stored, "parity": result})


def _convert(converter, model, sparse):
    """`converter.convert()`, with an error that names the fix when TFLite's converter fails."""
    with warnings.catch_warnings():  # A QAT model carries its input ranges; TFLite warns all the same.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        try:
            return converter.convert()
        except Exception as error:  # The converter raises bare RuntimeErrors and prints its reasons itself.
            reason = f"{type(error).__name__}: {error}".rstrip(": ") + " (the converter's log above says more)"
            fix = ("Export it with sparse=False: the weights are then stored dense, with the same outputs. "
                   if sparse else "") + "Its SavedModel (export_saved_model) serves it with TensorFlow."
            raise ValueError(f"TFLite's converter cannot convert model '{model.name}'"
                             f"{' with its sparsity optimization (sparse=True)' if sparse else ''}: {reason}. "
                             f"{fix}") from error


def block_structure(model):
    """The TFLite block (`[out, in]` layout) that the zeros of `model`'s Dense kernels come in.

    `(1, 16)` or `(1, 4)` (the largest of `BLOCK_SHAPES` that fits) if, in every
    Dense kernel, each block of that many consecutive inputs of one output is
    all zero or all nonzero (a partial block at the edge counts as a block),
    and some block is zero; else `None` (unstructured, or no zeros at all).
    Other layers (convolutions) are not looked at: TFLite has no block-sparse
    kernel for them.
    """
    return _block_structure(_plain(model))


def _block_name(block):
    return "x".join(map(str, block)) if block else "unstructured"


def _dense_kernels(plain):
    """`{layer name: kernel}` of the Dense layers of a plain model (nested models included)."""
    return {prefix + layer.name: keras.ops.convert_to_numpy(layer.kernel) for prefix, layer in _leaf_layers(plain)
            if isinstance(layer, keras.layers.Dense) and len(layer.kernel.shape) == 2}


def _leaf_layers(model, prefix=""):
    """Yields `(prefix, layer)` for every layer of `model` but nested models, which add `"<name>/"` to the prefix."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, f"{prefix}{layer.name}/")
        else:
            yield prefix, layer


def _fresh_copy(layer):
    """A new, built, untrained layer of `layer`'s class and configuration."""
    copy = layer.__class__.from_config(layer.get_config())
    build_config = layer.get_build_config()
    if build_config:
        copy.build_from_config(build_config)
    return copy


def _in_blocks(kernel, width):
    """Whether the zeros of a Keras `[in, out]` kernel fill whole blocks of `width` consecutive inputs."""
    nonzero = (kernel != 0).astype(np.int32)
    starts = np.arange(0, kernel.shape[0], width)
    counts = np.add.reduceat(nonzero, starts, axis=0)
    sizes = np.diff(np.append(starts, kernel.shape[0]))[:, None]
    return bool(np.all((counts == 0) | (counts == sizes)))


def _block_structure(plain):
    kernels = list(_dense_kernels(plain).values())
    if all(np.all(kernel) for kernel in kernels):
        return None
    return next((block for block in BLOCK_SHAPES if all(_in_blocks(k, block[1]) for k in kernels)), None)


def _ticket_block(plain, block):
    """The ticket's block structure from the `block` argument of `export_tflite`."""
    if isinstance(block, str) and block == "auto":
        return _block_structure(plain)
    if block is None:
        return None
    try:
        parsed = pruning.parse_block(block) if isinstance(block, str) else tuple(block)
    except (TypeError, ValueError):
        parsed = None
    if parsed not in BLOCK_SHAPES:
        raise ValueError(f"block must be 'auto', None, (1, 4), (1, 16), '1x4' or '1x16'; got {block!r}.")
    misfits = [name for name, kernel in _dense_kernels(plain).items() if not _in_blocks(kernel, parsed[1])]
    if misfits:
        raise ValueError(f"block={parsed}, but the zeros of Dense layer(s) {misfits} do not fill whole "
                         f"1x{parsed[1]} blocks of consecutive inputs. Export the ticket a block search found "
                         f"(find_ticket.py --block={_block_name(parsed)}), or pass block='auto'.")
    return parsed


class _PadFeatures(keras.layers.Layer):
    """Zero-pads the last axis of a batch of vectors by `amount` (one TFLite PAD op)."""

    def __init__(self, amount, **kwargs):
        super().__init__(**kwargs)
        self.amount = amount

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, self.amount]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.amount)

    def get_config(self):
        return {**super().get_config(), "amount": self.amount}


def _simple_dense(layer):
    """Whether `layer` is a Dense layer with only a 2-D kernel (and bias), called once: what padding rebuilds."""
    return (isinstance(layer, keras.layers.Dense) and len(layer.kernel.shape) == 2
            and len(layer.get_weights()) == (2 if layer.use_bias else 1) and len(layer._inbound_nodes) == 1)


def _widenable_producer(layer, model_outputs):
    """The Dense layer whose output only `layer` reads (and no model returns), or `None`.

    Such a producer can get extra output units with zero weights: the padding
    that `layer` needs then costs no op.
    """
    parents = layer._inbound_nodes[0].parent_nodes
    producer = parents[0].operation if len(parents) == 1 else None
    if not (_simple_dense(producer) and len(producer._outbound_nodes) == 1
            and id(producer.output) not in model_outputs):
        return None
    return producer


def _models(model):
    """`model` and every model nested in it."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _models(layer)


def _pad_dense_inputs(plain, width, *, standard_layers=False):
    """A copy of `plain` in which block-structured Dense layers read whole blocks of `width` inputs.

    Every Dense layer of 2-D inputs whose input size is not a multiple of
    `width` and whose kernel's zeros fill whole 1 x `width` blocks (so that
    TFLite would store it block-sparse) reads its input zero-padded to the next
    multiple, with zero rows added to its kernel: the outputs are unchanged.
    If a Dense layer that feeds nothing else computes that input, it gets the
    extra output units instead (zero weights and bias; the padded layer
    ignores them), which costs no op; otherwise a PAD op pads the input.
    `standard_layers` pads with Reshape/ZeroPadding2D/Reshape (which
    `tfmot_bridge` translates) instead of one `_PadFeatures` layer.

    Returns:
        `(model, {layer name: [inputs, padded inputs]}, {widened layer name: [units, widened units]})`;
        `plain` itself (and empty dicts) if no layer needs it.
    """
    targets, widened = {}, {}  # id(layer) -> (name, inputs, padded inputs); id(producer) -> (name, units, widened)
    model_outputs = {id(output) for model in _models(plain) for output in model.outputs}
    for prefix, layer in _leaf_layers(plain):
        if not (_simple_dense(layer) and len(layer.input.shape) == 2):
            continue
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        if kernel.shape[0] % width and not np.all(kernel) and _in_blocks(kernel, width):
            targets[id(layer)] = (prefix + layer.name, kernel.shape[0], -(-kernel.shape[0] // width) * width)
            producer = _widenable_producer(layer, model_outputs)
            if producer is not None:
                widened[id(producer)] = (prefix + producer.name, producer.units, targets[id(layer)][2])
    if not targets:
        return plain, {}, {}
    copies = []

    def padded_call(copy, size, amount):
        def call(x, **kwargs):
            if standard_layers:
                x = keras.layers.Reshape((1, size, 1))(x)
                x = keras.layers.ZeroPadding2D(((0, 0), (0, amount)))(x)
                x = keras.layers.Reshape((size + amount,))(x)
            else:
                x = _PadFeatures(amount)(x)
            return copy(x, **kwargs)
        return call

    def rebuild(model):
        made = {}

        def operation_fn(layer):
            if id(layer) not in made:
                if isinstance(layer, keras.Model):
                    made[id(layer)] = rebuild(layer)
                elif id(layer) in targets or id(layer) in widened:
                    units = widened[id(layer)][2] if id(layer) in widened else layer.units
                    copy = layer.__class__.from_config({**layer.get_config(), "units": units})  # Built when called.
                    kernel, *bias = layer.get_weights()
                    rows = targets[id(layer)][2] - kernel.shape[0] if id(layer) in targets else 0
                    columns = units - layer.units
                    copies.append((copy, [np.pad(kernel, ((0, rows), (0, columns))),
                                          *(np.pad(b, (0, columns)) for b in bias)]))
                    parent = layer._inbound_nodes[0].parent_nodes
                    fed_wide = len(parent) == 1 and id(parent[0].operation) in widened
                    made[id(layer)] = padded_call(copy, kernel.shape[0], rows) if rows and not fed_wide else copy
                else:
                    copy = _fresh_copy(layer)
                    copies.append((copy, layer.get_weights()))
                    made[id(layer)] = copy
            return made[id(layer)]

        inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype) for x in model.inputs]
        graph = keras.Model(model.inputs, model.outputs)  # Sequential models too.
        outputs = graph._run_through_graph(inputs, operation_fn=operation_fn)  # As keras.models.clone_model does.
        return keras.Model(inputs, outputs, name=model.name)

    padded = rebuild(plain)
    for copy, values in copies:
        copy.set_weights(values)
    return (padded, {name: [inputs, size] for name, inputs, size in targets.values()},
            {name: [units, size] for name, units, size in widened.values()})


def _name_layers(stored, plain, padded, widened):
    """Adds `layer`: the Dense layer whose kernel a FULLY_CONNECTED weight is, when its shape tells it uniquely."""
    by_shape = {}
    for name, kernel in _dense_kernels(plain).items():
        inputs = padded[name][1] if name in padded else kernel.shape[0]
        units = widened[name][1] if name in widened else kernel.shape[1]
        by_shape.setdefault((units, inputs), []).append(name)
    for weight in stored:
        names = by_shape.get(tuple(weight["shape"]), []) if weight["op"] == "FULLY_CONNECTED" else []
        weight["layer"] = names[0] if len(names) == 1 else None
    return stored


def _block_check(stored, block, quantize):
    """Whether every FULLY_CONNECTED weight is stored as a ticket in `block`s allows; sets each one's `expected_block`.

    A weight can be expected in the block of the kernel for its stored type
    (`STORED_BLOCKS`) when the ticket's blocks are made of such blocks; it then
    must be stored so, or dense if it is denser than `SPARSE_STORAGE_MAX_DENSITY`.
    `met` is `None` when no weight can be expected in blocks.
    """
    problems, checked = [], 0
    for weight in stored:
        expected = STORED_BLOCKS.get(weight["dtype"]) if weight["op"] == "FULLY_CONNECTED" and block else None
        weight["expected_block"] = list(expected) if expected and block[1] % expected[1] == 0 else None
        if weight["expected_block"] is None:
            continue
        checked += 1
        fast = weight["storage"] == "block_sparse" and weight["block"] == weight["expected_block"] \
            and not weight["densified"]
        kept_dense = weight["storage"] == "dense" and (weight["density"] or 1.0) > SPARSE_STORAGE_MAX_DENSITY
        if not (fast or kept_dense):
            stored = f"{weight['storage']}{' ' + _block_name(weight['block']) if weight['block'] else ''}" + (
                ", expanded by DENSIFY at load" if weight["densified"] else "")
            density = "unknown" if weight["density"] is None else f"{weight['density']:.3f}"
            problems.append(f"'{weight['layer'] or weight['tensor']}' ({'x'.join(map(str, weight['shape']))}, "
                            f"density {density}) is stored {stored}, not block_sparse "
                            f"{_block_name(weight['expected_block'])}")
    kernel = KERNEL_BLOCKS[quantize]
    return {"expected_block": list(kernel) if block and block[1] % kernel[1] == 0 else None,
            "met": not problems if checked else None, "problems": problems}


def load_interpreter(path, *, preserve_all_tensors=False, num_threads=None):
    """A LiteRT interpreter for the TFLite file at `path`, tensors allocated.

    It uses the built-in kernels without TFLite's default XNNPACK delegate,
    which cannot prepare sparse int8 files.
    `preserve_all_tensors` keeps intermediate tensors (e.g. densified weights)
    readable after `invoke()`; `num_threads` (default: LiteRT's) caps the
    threads its kernels use (1 for latency measurements).
    """
    interpreter = litert.Interpreter(
        model_path=os.fspath(path), experimental_preserve_all_tensors=preserve_all_tensors, num_threads=num_threads,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(interpreter, x):
    """The output of a one-output LiteRT interpreter for the batch `x` (`{input name: batch}` for several inputs)."""
    if isinstance(x, dict):
        (output,) = interpreter.get_signature_runner()(**x).values()
        return output.copy()
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    if tuple(inputs["shape"]) != x.shape:
        interpreter.resize_tensor_input(inputs["index"], x.shape)
        interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x.astype(inputs["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"]).copy()


def density(model):
    """The fraction of nonzero entries in the masked weights of a masked model, or the prunable ones of a plain model.

    A plain model's prunable weights are those `tf_lottery.mask` would mask by default.
    """
    if masking.is_masked(model):
        masks = masking.get_masks(model)
        values = [np.where(masks[key] > 0, value, 0) for key, value in masking.get_prunable_weights(model).items()]
    else:
        values = [variable.numpy() for variable in registry.find_prunable(model).weights.values()]
    total = sum(value.size for value in values)
    return sum(int(np.count_nonzero(value)) for value in values) / total if total else 1.0


def load_ticket(run_dir, round_index):
    """The masked, trained model of round `round_index` of a ticket search in `run_dir`.

    The model is the run's `model.keras` (or, for runs started before it was
    kept, its `best_ticket.keras`), set to the masks and trained weights of
    the round (`round_NNN/masks.npz`, `trained_weights.npz`).
    """
    store = run_store.RunStore(run_dir)
    store.require_run()
    if os.path.exists(store.path(run_store.MODEL_FILE)):
        return store.load_model(round_index)
    ticket = store.path(run_store.TICKET_FILE)
    if not os.path.exists(ticket):
        raise FileNotFoundError(f"{run_dir} has no {run_store.TICKET_FILE}, which a search writes when it ends. "
                                "Finish the run first (examples/find_ticket.py --resume).")
    return store.restore_round(masking.load_model(ticket), round_index)


def _plain(model):
    """`model` as the plain network it exports to: a masked model's pruned weights zeroed (its masks stay beside it)."""
    if len(model.outputs) != 1:
        raise ValueError(f"tf_lottery.export handles models of one output; model '{model.name}' has "
                         f"{len(model.outputs)}. Export a model that returns the output to serve, e.g. "
                         "keras.Model(model.inputs, model.outputs[0]).")
    if masking.is_masked(model):
        masking.apply_masks(model)
    return model


def _parity(model, predict, data, kind):
    """`parity.check`, or a warning and `None` without representative data."""
    if data is None:
        warnings.warn(f"No parity check for this {kind} export: pass representative_data (a few hundred real "
                      "inputs) to compare the file with the Keras model.", stacklevel=3)
        return None
    return parity.check(model, predict, data, kind)


def _calibration_samples(data):
    """Single inputs of `data` for the int8 converter's calibration, as lists (one input) or dicts (several)."""
    for index in range(min(parity.count(data), CALIBRATION_SAMPLES)):
        sample = parity.take(data, index, index + 1)
        yield sample if isinstance(sample, dict) else [sample]


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
