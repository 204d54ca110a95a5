"""How a TFLite file stores its weights, read from its flatbuffer.

`tf.lite.Interpreter` reports a tensor's sparsity parameters but not whether a
DENSIFY op expands it at load, nor the density of the values the file holds;
the flatbuffer says both. `export` uses this to check that a block-sparse
ticket's file really stores its fully-connected weights in the blocks TFLite's
sparse kernels read.
"""

import os
import pathlib

import numpy as np
# TFLite's flatbuffer schema, compiled for Python; TensorFlow ships it (it has no public name).
from tensorflow.lite.python import schema_py_generated as tflite_schema

#: Ops whose input 1 is a weight tensor, reported by `weight_storage`.
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV")


def weight_storage(tflite_file):
    """How a TFLite file stores the weights of its FULLY_CONNECTED and convolution ops, read from its flatbuffer.

    Args:
        tflite_file: a `.tflite` path, or the file's bytes.

    Returns:
        One dict per weight tensor (input 1 of an op in `WEIGHT_OPS`), in op order:
        `tensor` (name), `op`, `shape` (TFLite layout: `[out, in]` for
        FULLY_CONNECTED), `dtype`, `storage` (`"dense"`, `"sparse"`:
        unstructured, or `"block_sparse"`), `block` (`[rows, cols]` of a
        block-sparse tensor, else `None`), `densified` (a DENSIFY op expands it
        to dense at load, so the op runs at dense speed), `density` (nonzero
        values over the dense size; `None` if the values are not in the file).
    """
    content = pathlib.Path(tflite_file).read_bytes() if isinstance(tflite_file, (str, os.PathLike)) \
        else bytes(tflite_file)
    model = tflite_schema.Model.GetRootAs(content, 0)
    op_names = {code: name for name, code in vars(tflite_schema.BuiltinOperator).items() if not name.startswith("_")}
    type_names = {code: name for name, code in vars(tflite_schema.TensorType).items() if not name.startswith("_")}
    opcodes = [op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
               for code in map(model.OperatorCodes, range(model.OperatorCodesLength()))]
    found = []
    for graph in map(model.Subgraphs, range(model.SubgraphsLength())):
        operators = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        densified = {int(op.Outputs(0)): int(op.Inputs(0)) for op in operators
                     if opcodes[op.OpcodeIndex()] == "DENSIFY"}
        for op in operators:
            name = opcodes[op.OpcodeIndex()]
            if name not in WEIGHT_OPS or op.InputsLength() < 2 or op.Inputs(1) < 0:
                continue
            index = densified.get(int(op.Inputs(1)), int(op.Inputs(1)))
            tensor = graph.Tensors(index)
            shape = [int(n) for n in tensor.ShapeAsNumpy()]
            block = _stored_block(tensor.Sparsity(), len(shape))
            dtype = type_names.get(tensor.Type(), str(tensor.Type())).lower()
            found.append({
                "tensor": tensor.Name().decode(), "op": name, "shape": shape, "dtype": dtype,
                "storage": "dense" if tensor.Sparsity() is None else "block_sparse" if block else "sparse",
                "block": block, "densified": index != int(op.Inputs(1)),
                "density": _stored_density(model.Buffers(tensor.Buffer()), content, dtype, shape)})
    return found


def _stored_block(sparsity, rank):
    """`[rows, cols]` of a block-sparse tensor's blocks, or `None` (dense, or sparse without blocks)."""
    if sparsity is None or sparsity.BlockMapLength() == 0:
        return None
    block = [1] * rank
    for k in range(sparsity.BlockMapLength()):
        block[sparsity.BlockMap(k)] = int(sparsity.DimMetadata(rank + k).DenseSize())
    return block


def _stored_density(buffer, content, dtype, shape):
    """Nonzero stored values over the dense size of a tensor; `None` if its values are not in the file."""
    if buffer.DataLength():
        raw = buffer.DataAsNumpy().tobytes()
    elif buffer.Offset() > 1:  # Values stored after the flatbuffer (files over 2 GB).
        raw = content[buffer.Offset():buffer.Offset() + buffer.Size()]
    else:
        return None
    try:
        values = np.frombuffer(raw, np.dtype(dtype))
    except TypeError:  # A type NumPy lacks (int4, bfloat16).
        return None
    return int(np.count_nonzero(values)) / max(1, int(np.prod(shape)))
