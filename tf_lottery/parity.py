"""Does an exported file compute what the Keras model computes? Representative inputs and the parity check.

Representative data is a batch of real inputs: an array for a model of one
input, `{input name: array}` (the names of `model.inputs`, as `model(x)`
accepts them) for a model of several, e.g. a keras-hub text model's
`token_ids`, `segment_ids` and `padding_mask`.
"""

from collections.abc import Mapping

import keras
import numpy as np

#: Parity tolerances per kind of file: the largest allowed max |file output -
#: Keras output|, as a fraction of max |Keras output|, and the smallest allowed
#: fraction of outputs (over the last axis) on which both pick the same top-1 entry.
TOLERANCES = {
    "saved_model": {"max_abs_diff": 1e-5, "top1_agreement": 0.99},
    "compact": {"max_abs_diff": 1e-5, "top1_agreement": 0.99},
    "float": {"max_abs_diff": 1e-4, "top1_agreement": 0.99},
    "dynamic": {"max_abs_diff": 0.05, "top1_agreement": 0.97},
    "int8": {"max_abs_diff": 0.2, "top1_agreement": 0.95},
    "pqat": {"max_abs_diff": 0.2, "top1_agreement": 0.95},
}
PARITY_SAMPLES = 1000
_BATCH = 256


class ParityError(ValueError):
    """An exported file's outputs differ from the Keras model's beyond `TOLERANCES`."""


def inputs_of(model, data):
    """`data` checked against `model.inputs` and cast to their dtypes: an array, or a dict for several inputs.

    Raises:
        ValueError: naming the expected names and shapes, if `data` does not fit.
    """
    if data is None:
        return None
    specs = {tensor.name: tensor for tensor in model.inputs}
    single = len(specs) == 1
    if single and not isinstance(data, Mapping):
        data = {next(iter(specs)): data}
    if not isinstance(data, Mapping) or set(data) != set(specs):
        raise ValueError(f"representative_data must be {_expected(specs)}; got "
                         f"{sorted(data) if isinstance(data, Mapping) else type(data).__name__}.")
    checked = {}
    for name, tensor in specs.items():
        array = np.asarray(data[name], dtype=tensor.dtype)
        fits = array.ndim == len(tensor.shape) and all(
            expected is None or size == expected for size, expected in zip(array.shape[1:], tensor.shape[1:]))
        if not fits or not len(array):
            raise ValueError(f"representative_data must be {_expected(specs)}; got shape {array.shape}"
                             f"{'' if single else f' for {name!r}'}.")
        checked[name] = array
    if len({len(array) for array in checked.values()}) > 1:
        raise ValueError(f"The arrays of representative_data hold different numbers of inputs: "
                         f"{ {name: len(array) for name, array in checked.items()} }.")
    return next(iter(checked.values())) if single else checked


def _expected(specs):
    def shape(tensor):
        return f"(N, {', '.join(map(str, tensor.shape[1:]))})"

    if len(specs) == 1:
        return f"a batch of the model's inputs, of shape {shape(next(iter(specs.values())))}"
    return "a dict of batches of the model's inputs, " + ", ".join(
        f"{name!r}: {shape(tensor)}" for name, tensor in specs.items())


def count(data):
    """The number of inputs in `data` (as `inputs_of` returns it)."""
    return len(next(iter(data.values())) if isinstance(data, dict) else data)


def take(data, start, stop):
    """Inputs `start` to `stop` of `data`."""
    if isinstance(data, dict):
        return {name: array[start:stop] for name, array in data.items()}
    return data[start:stop]


def check(model, predict, data, kind):
    """Compares `predict(x)` with `model(x)` on up to `PARITY_SAMPLES` inputs of `data`.

    Returns:
        `{"samples", "max_abs_diff", "output_scale", "top1_agreement", "tolerance"}`.

    Raises:
        ParityError: beyond `TOLERANCES[kind]`.
    """
    x = take(data, 0, PARITY_SAMPLES)
    samples = count(x)
    # Eager calls: model.predict would trace a new function for every exported copy.
    expected = np.concatenate([keras.ops.convert_to_numpy(model(take(x, i, i + _BATCH), training=False))
                               for i in range(0, samples, _BATCH)])
    actual = predict(x)
    tolerance = TOLERANCES[kind]
    scale = float(np.abs(expected).max()) or 1.0
    result = {"samples": samples, "max_abs_diff": float(np.abs(actual - expected).max()), "output_scale": scale,
              "top1_agreement": float(np.mean(actual.argmax(-1) == expected.argmax(-1))), "tolerance": tolerance}
    if result["max_abs_diff"] > tolerance["max_abs_diff"] * scale or \
            result["top1_agreement"] < tolerance["top1_agreement"]:
        raise ParityError(
            f"The {kind} export differs from the Keras model on {samples} inputs: max |difference| "
            f"{result['max_abs_diff']:.3g} (allowed {tolerance['max_abs_diff'] * scale:.3g}), top-1 agreement "
            f"{result['top1_agreement']:.2%} (needed {tolerance['top1_agreement']:.0%}). The file was not written. "
            "Check that representative_data are real inputs preprocessed as in training; for int8, pass more of "
            "them or use quantize='pqat' or 'dynamic'.")
    return result
