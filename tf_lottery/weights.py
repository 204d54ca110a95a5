"""Snapshots of a model's weights by variable path: what rewinding restores."""

import numpy as np

from tf_lottery import masking
from tf_lottery.registry import weights_by_path


def snapshot(model):
    """`{variable path: array}` of every weight of `model` (masks are not weights; see `tf_lottery.mask`)."""
    return {path: np.asarray(variable.numpy()) for path, variable in weights_by_path(model).items()}


def restore(model, values):
    """Sets the weights of `model` to a `snapshot`, then zeroes its pruned weights if it is masked."""
    variables = weights_by_path(model)
    if set(variables) != set(values):
        raise ValueError(
            f"These weights do not belong to model '{model.name}': missing "
            f"{sorted(set(variables) - set(values))}, unknown {sorted(set(values) - set(variables))}."
        )
    for path, variable in variables.items():
        if tuple(variable.shape) != np.shape(values[path]):
            raise ValueError(
                f"Weight '{path}' has shape {np.shape(values[path])}, the model expects {tuple(variable.shape)}."
            )
        variable.assign(values[path])
    if masking.is_masked(model):
        masking.apply_masks(model)


def by_position(values, like):
    """`values` (a snapshot of another instance of `like`'s architecture) under the keys of `like`, matched in
    model order: two instances of an architecture with unnamed layers have the same weights under other names."""
    shapes, expected = [np.shape(v) for v in values.values()], [np.shape(v) for v in like.values()]
    if shapes != expected:
        raise ValueError(f"These weights belong to another architecture: shapes {shapes}, expected {expected}.")
    return dict(zip(like, values.values()))


def reinitialized(model):
    """A new instance of `model`'s architecture, freshly initialized: rebuilt from `model.get_config()`."""
    try:
        return type(model).from_config(model.get_config())
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(f"Model '{model.name}' cannot be rebuilt from its configuration ({error}), so it cannot be "
                         "freshly initialized: give the search a build_model that initializes a new model on each "
                         "call.") from error
