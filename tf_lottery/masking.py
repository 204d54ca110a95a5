"""Masks on any built Keras model, in place: one boolean mask per prunable weight.

`mask(model)` finds every registered prunable weight of the model wherever it
sits (see `tf_lottery.registry`), gives it a boolean mask variable (one byte
per weight, all ones to start), and installs a constraint on the weight that
zeroes its pruned entries. Keras optimizers apply every variable's constraint
after each update, in `fit` and in `optimizer.apply_gradients` of a custom
loop, under `jit_compile` too, so pruned weights are exactly zero in the
variables themselves after every step, whatever momentum, Adam moments or
weight decay would do to them. The forward pass is the model's own: masking
adds no work to it, and no layer is wrapped or cloned.

A mask key is the Keras variable path of its weight relative to the model, e.g.
`"dense/kernel"` or `"transformer_layer_0/self_attention_layer/query/kernel"`
(a Sequential or subclassed model's own name is left out, so two instances of
one architecture share their keys).

The masks live beside the model rather than in it: `model.weights`,
`get_weights()`, `summary()` and exported SavedModels are those of the plain
model. `model.save()` and `save_weights()` write the masks too;
`load_model` restores them (plain `keras.saving.load_model` ignores them and
returns the plain model, pruned weights at zero).
"""

import contextlib
import json
import warnings

import keras
import numpy as np
from keras import ops

from tf_lottery.registry import DENSE_BY_DEFAULT, find_prunable, registration_hint, weights_by_path

# The model attribute that holds its masks. It is set without Keras' attribute
# tracking, so the masks stay out of `model.weights`; Keras saving still finds
# them, as it walks every attribute that can be saved.
_ATTRIBUTE = "_tf_lottery_masks"


def _zeroed(weight, mask):
    """`weight` with the entries that `mask` prunes set to exactly zero."""
    return ops.where(mask, weight, 0.0)


class _MaskConstraint(keras.constraints.Constraint):
    """Zeroes the pruned entries of a weight after the weight's own constraint, if any."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, weight):
        if self.inner is not None:
            weight = self.inner(weight)
        return _zeroed(weight, self.mask)


def _write_masks(store, keys, arrays):
    store["keys"] = np.frombuffer(json.dumps(list(keys)).encode(), np.uint8)
    for index, array in enumerate(arrays):
        store[str(index)] = array


def _read_masks(store):
    """`{key: bool array}` from a store written by `_write_masks`; `None` if it holds no masks."""
    if "keys" not in store.keys():
        return None
    keys = json.loads(np.asarray(store["keys"], np.uint8).tobytes().decode())
    return {key: np.asarray(store[str(index)], bool) for index, key in enumerate(keys)}


def _strategy_scope(variable):
    """The scope of the `tf.distribute` strategy that holds `variable` (a null context outside one)."""
    strategy = getattr(variable.value, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


class _MaskSet(keras.layers.Layer):
    """The mask variables of one model, in the order of their keys; saved and loaded with the model."""

    def __init__(self, weights):
        super().__init__(name="tf_lottery_masks", trainable=False)
        self.mask_keys = tuple(weights)
        with _strategy_scope(next(iter(weights.values()))):
            # Replicas never write masks themselves: they are set from the host between steps.
            self.masks = [self.add_weight(shape=weight.shape, dtype="bool", initializer="ones", trainable=False,
                                          aggregation="only_first_replica", name=f"mask_{index}")
                          for index, weight in enumerate(weights.values())]

    def save_own_variables(self, store):
        _write_masks(store, self.mask_keys, (mask.numpy() for mask in self.masks))

    def load_own_variables(self, store):
        loaded = _read_masks(store)
        if loaded is None:  # Weights saved without masks: the masks stay as they are.
            return
        if list(loaded) != list(self.mask_keys):
            raise ValueError(f"The file holds masks for other weights ({_difference(self.mask_keys, loaded)}): "
                             "it was saved from another model.")
        for mask, value in zip(self.masks, loaded.values()):
            mask.assign(value)


class _MaskReader(keras.layers.Layer):
    """Reads the masks of a saved model without knowing their keys beforehand (see `load_model`)."""

    def __init__(self):
        super().__init__(name="tf_lottery_masks", trainable=False)
        self.loaded = None

    def load_own_variables(self, store):
        self.loaded = _read_masks(store)


def _difference(expected, given):
    missing, unknown = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    return f"missing {missing}, unknown {unknown}"


def is_masked(model):
    """Whether `model` has masks (see `mask`)."""
    return isinstance(getattr(model, _ATTRIBUTE, None), _MaskSet)


def mask(model, *, skip=DENSE_BY_DEFAULT, registry=None):
    """Masks `model` in place: every registered prunable weight gets a mask of ones.

    Works for any built Keras 3 model: Sequential, functional, subclassed,
    nested, with custom layers holding sublayers at any depth (keras-hub
    backbones and task models, `keras.applications`). The model keeps its
    weights, pretrained or not: they are the rewind point of a
    `LotteryCallback(rewind_at=0)` that starts training it.

    By default the kernels of dense, convolution, `EinsumDense` and attention
    layers, recurrent kernels and token embeddings are masked (see
    `register_prunable`); biases, normalization weights and position and
    segment embeddings stay dense. Layers with trainable weights the registry
    does not know are left dense and listed in one warning, with the
    `register_prunable` call that would cover them.

    Pruned weights are zeroed after every optimizer step; after changing
    weights any other way (`set_weights`, `assign`), call `apply_masks`.

    Args:
        model: a built `keras.Model`.
        skip: fnmatch patterns of weights to leave dense, matched against each
            weight's variable path or a run of its components, so a layer name
            skips that layer wherever it sits (`"classifier"`), and a glob
            matches whole paths (`"*/query/*"`). Defaults to
            `tf_lottery.DENSE_BY_DEFAULT` (position and segment embeddings);
            extend it to keep those dense too
            (`skip=(*tf_lottery.DENSE_BY_DEFAULT, "classifier")`), or pass `()`
            to mask every registered weight.
        registry: optional `{layer class: weight paths}` that extends and
            overrides the global registry, e.g. `{keras.layers.Dense: ("kernel",
            "bias")}` to mask biases too.

    Returns:
        `model`, now masked.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"tf_lottery.mask expects a keras.Model, got {model!r}.")
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built: call it on a batch of data (or build it) before "
                         "masking it, so that its weights exist.")
    if is_masked(model):
        raise ValueError(f"Model '{model.name}' is already masked. tf_lottery.strip(model) removes its masks.")
    found = find_prunable(model, skip, registry)
    if not found.weights:
        raise ValueError(f"Model '{model.name}' has no prunable weights: none of its layers is registered (or all "
                         "are skipped). Register your layers with tf_lottery.register_prunable(LayerClass, "
                         "weights=(...)).")
    shared = sorted(key for key, weight in found.weights.items() if isinstance(weight.constraint, _MaskConstraint))
    if shared:
        raise ValueError(f"Weights {shared} of model '{model.name}' are already masked through another model that "
                         "shares its layers. Mask one of the two models, or strip the other first.")
    if found.unregistered:
        listed = "; ".join(f"'{layer.path or layer.name}' ({type(layer).__name__}): {sorted(paths.values())}, "
                           f"covered by {registration_hint(layer, paths)}" for layer, paths in found.unregistered)
        warnings.warn(f"tf_lottery.mask left these layers dense because no prunable weights are registered for "
                      f"them: {listed}. Register them before masking to prune them.", stacklevel=2)
    _attach(model, found.weights)
    return model


def _attach(model, weights):
    mask_set = _MaskSet(weights)
    for weight, mask_variable in zip(weights.values(), mask_set.masks):
        weight.constraint = _MaskConstraint(mask_variable, weight.constraint)
    object.__setattr__(model, _ATTRIBUTE, mask_set)


def _mask_set(model):
    if model is None or not is_masked(model):
        name = f"Model '{model.name}'" if isinstance(model, keras.Model) else f"{model!r}"
        raise ValueError(f"{name} has no masks. Mask it first: tf_lottery.mask(model).")
    return getattr(model, _ATTRIBUTE)


def _items(model):
    """`(key, mask variable, weight variable)` for every masked weight, in model order."""
    mask_set = _mask_set(model)
    weights = weights_by_path(model)
    return [(key, mask, weights[key]) for key, mask in zip(mask_set.mask_keys, mask_set.masks)]


def strip(model):
    """Removes the masks of `model`, in place; pruned weights stay exactly zero. Returns `model`.

    The result is the plain model: nothing of tf_lottery remains in it.
    """
    for _, mask_variable, weight in _items(model):
        weight.assign(_zeroed(weight, mask_variable))
        weight.constraint = weight.constraint.inner
    object.__delattr__(model, _ATTRIBUTE)
    return model


def load_model(path, **kwargs):
    """Loads a `.keras` file saved from a masked model, masks included.

    Args:
        path: the `.keras` file (`model.save(path)` of a masked model).
        **kwargs: passed to `keras.saving.load_model` (e.g. `custom_objects`,
            `compile`).
    """
    try:
        model = keras.saving.load_model(path, **kwargs)
    except TypeError as error:
        if "tf_lottery>Masked" not in str(error):
            raise
        raise ValueError(f"{path} was saved by tf_lottery 0.1, whose Masked layers this version replaced with "
                         "tf_lottery.mask (see 'Migrating from wrap and Masked' in the README). A search run "
                         "rewrites its best_ticket.keras when resumed once (examples/find_ticket.py --resume).") \
            from None
    reader = _MaskReader()
    object.__setattr__(model, _ATTRIBUTE, reader)
    try:
        with warnings.catch_warnings():  # Keras warns again about the optimizer it did not restore the first time.
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
            model.load_weights(path)  # Everything again, and now the masks too.
    finally:
        object.__delattr__(model, _ATTRIBUTE)
    if reader.loaded is None:
        raise ValueError(f"{path} holds no masks: it was saved from a model that was not masked. Load it with "
                         "keras.saving.load_model, then tf_lottery.mask(model).")
    weights = weights_by_path(model)
    unknown = sorted(set(reader.loaded) - set(weights))
    if unknown:
        raise ValueError(f"{path} holds masks for weights its model does not have: {unknown}.")
    _attach(model, {key: weights[key] for key in reader.loaded})
    set_masks(model, reader.loaded)
    return model


def get_masks(model):
    """`{mask key: 0/1 float32 array}` for every masked weight of `model`."""
    return {key: mask.numpy().astype(np.float32) for key, mask, _ in _items(model)}


def get_prunable_weights(model, weight_values=None):
    """`{mask key: weight array}` for every masked weight of `model`.

    Args:
        model: a masked model.
        weight_values: optional `{variable path: array}` (e.g. rewind weights,
            `tf_lottery.weights.snapshot`) to take the values from; default: the
            current values.
    """
    if weight_values is None:
        return {key: weight.numpy() for key, _, weight in _items(model)}
    return {key: weight_values[key] for key, _, _ in _items(model)}


def get_prunable_variables(model):
    """`{mask key: weight variable}` for every masked weight of `model`."""
    return {key: weight for key, _, weight in _items(model)}


def get_mask_variables(model):
    """`{mask key: mask variable}` (boolean, one byte per weight) for every masked weight of `model`."""
    return {key: mask for key, mask, _ in _items(model)}


def layer_of(key):
    """The layer path of a mask key (`"encoder/dense/kernel"` -> `"encoder/dense"`)."""
    return key.rsplit("/", 1)[0]


def output_layer(model):
    """The layer path of the last masked weight: the output layer that `PruningPlan.output_rate` applies to."""
    return layer_of(_mask_set(model).mask_keys[-1])


def set_masks(model, masks):
    """Sets the masks of `model` and zeroes the newly pruned weights.

    Args:
        model: a masked model (see `mask`).
        masks: `{mask key: array of 0/1 (or bool)}` with exactly the keys of
            `get_masks(model)`.
    """
    if masks is None:
        raise ValueError("set_masks needs masks, {mask key: 0/1 array}; tf_lottery.get_masks(model) gives the "
                         "model's current ones.")
    items = _items(model)
    keys = [key for key, _, _ in items]
    if set(keys) != set(masks):
        raise ValueError(f"These masks do not belong to model '{model.name}': {_difference(keys, masks)}. "
                         "Pass the masks of this model (tf_lottery.get_masks(model) lists its keys).")
    checked = {}
    for key, mask_variable, _ in items:
        value = np.asarray(masks[key])
        if value.shape != tuple(mask_variable.shape):
            raise ValueError(f"Mask '{key}' has shape {value.shape}, but the weight has shape "
                             f"{tuple(mask_variable.shape)}; these masks come from another model or another input "
                             "shape.")
        if not np.isin(value, (0, 1)).all():
            raise ValueError(f"Mask '{key}' must hold only 0 and 1.")
        checked[key] = value.astype(bool)
    for key, mask_variable, weight in items:
        mask_variable.assign(checked[key])
        weight.assign(_zeroed(weight, mask_variable))


def apply_masks(model):
    """Sets every pruned weight of `model` to exactly zero.

    Optimizer steps do this by themselves (each masked weight carries a mask
    constraint); call it after changing weights any other way, e.g. with
    `set_weights` or by assigning variables in a custom training loop.
    """
    for _, mask_variable, weight in _items(model):
        weight.assign(_zeroed(weight, mask_variable))


def density(masks):
    """The fraction of weights that survive in a `{key: mask}` dict, over all of its masks."""
    return sum(float(np.sum(mask)) for mask in masks.values()) / sum(np.size(mask) for mask in masks.values())


def sparsity_report(model):
    """Per-weight and global density of the masked weights of `model`.

    Returns:
        `{"layers": {mask key: {"total", "remaining", "density"}}, "total",
        "remaining", "density"}`, where `remaining` counts unpruned weights.
    """
    layers = {}
    for key, mask in get_masks(model).items():
        remaining = int(mask.sum())
        layers[key] = {"total": int(mask.size), "remaining": remaining, "density": remaining / mask.size}
    total = sum(entry["total"] for entry in layers.values())
    remaining = sum(entry["remaining"] for entry in layers.values())
    return {"layers": layers, "total": total, "remaining": remaining, "density": remaining / total}
