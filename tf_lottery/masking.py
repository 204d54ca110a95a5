"""Masked layers: one non-trainable 0/1 mask per prunable weight.

`Masked` wraps a Keras layer. It applies its masks in the forward pass (the
wrapped layer reads `weight * mask` inside a `keras.StatelessScope`) and
installs a constraint on each masked weight, so every optimizer step ends with
`weight = weight * mask` inside the compiled train step. Pruned weights are
therefore exactly zero in the variables themselves, whatever the optimizer
(momentum, Adam moments, weight decay) would otherwise do to them.

A mask key names one masked weight: `"<layer name>/<weight path>"`, e.g.
`"dense/kernel"` or `"lstm/cell.recurrent_kernel"`; layers inside nested models
are prefixed with the nested model's name (`"encoder/dense/kernel"`).
"""

import warnings

import keras
import numpy as np
from keras import ops
# Keras exports neither the accessor for the active StatelessScope nor the
# Functional class that tells clonable models from subclassed ones.
from keras.src.backend import get_stateless_scope
from keras.src.models.functional import Functional

_REGISTRY = {}

# Layers whose weights are never pruned, so they do not trigger the
# "left dense" warning: normalization layers (their weights are scales and
# offsets, not connections).
_DENSE_BY_DESIGN = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
)


def register_prunable(layer_class, weights):
    """Declares which weights of `layer_class` are prunable.

    Args:
        layer_class: a subclass of `keras.layers.Layer`. Subclasses of it are
            covered too, unless they have an entry of their own.
        weights: attribute paths of the prunable weights, relative to the layer,
            e.g. `("kernel",)` or `("cell.kernel", "cell.recurrent_kernel")`.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"register_prunable expects a keras.layers.Layer subclass, got {layer_class!r}.")
    weights = (weights,) if isinstance(weights, str) else tuple(weights)
    if not weights or not all(isinstance(w, str) and w for w in weights):
        raise ValueError(
            f"register_prunable({layer_class.__name__}, weights=...) needs a non-empty sequence of "
            f"attribute names such as ('kernel',); got {weights!r}."
        )
    _REGISTRY[layer_class] = weights


def _register_defaults():
    layers = keras.layers
    for cls in (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Conv2DTranspose,
                layers.DepthwiseConv2D, layers.EinsumDense):
        register_prunable(cls, ("kernel",))
    register_prunable(layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel"))
    register_prunable(layers.Embedding, ("embeddings",))
    register_prunable(layers.MultiHeadAttention, tuple(
        f"{projection}_dense.kernel" for projection in ("query", "key", "value", "output")))
    for cls in (layers.SimpleRNN, layers.LSTM, layers.GRU):
        register_prunable(cls, ("cell.kernel", "cell.recurrent_kernel"))


_register_defaults()


def prunable_weight_names(layer, registry=None):
    """The registered prunable weight paths of `layer`, or `None` if its class is unregistered.

    `registry` (a mapping from layer class to weight paths) takes precedence over
    the global registry.
    """
    for cls in type(layer).__mro__:
        if registry and cls in registry:
            return tuple(registry[cls])
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def resolve_weight(layer, path):
    """The variable at dotted attribute `path` of `layer` (e.g. `"cell.kernel"`); raises if none."""
    obj = layer
    for attribute in path.split("."):
        obj = getattr(obj, attribute, None)
    if not isinstance(obj, keras.Variable):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has no weight variable at '{path}'. "
            f"Register the right attribute paths with "
            f"tf_lottery.register_prunable({type(layer).__name__}, weights=(...))."
        )
    return obj


def _write(variable, value):
    """Assigns `value`, or records it in the enclosing StatelessScope if there is one."""
    scope = get_stateless_scope()
    if scope is not None:
        scope.add_update((variable, value))
    else:
        variable.assign(value)


class _MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by its mask after the layer's own constraint, if any."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, weight):
        if self.inner is not None:
            weight = self.inner(weight)
        return weight * ops.cast(self.mask, weight.dtype)


@keras.saving.register_keras_serializable(package="tf_lottery")
class Masked(keras.layers.Wrapper):
    """Wraps a layer and holds one non-trainable 0/1 mask per prunable weight.

    Args:
        layer: the layer to wrap. Layers whose `build` takes several shapes
            (e.g. `MultiHeadAttention`) must be built before they are wrapped;
            `tf_lottery.wrap` does this for you.
        weight_names: attribute paths of the weights to mask. Defaults to the
            registry's entry for the layer's class (see `register_prunable`).
        **kwargs: passed to `keras.layers.Layer`; the default name is
            `"masked_<layer name>"`.
    """

    def __init__(self, layer, weight_names=None, **kwargs):
        if weight_names is None:
            weight_names = prunable_weight_names(layer)
            if weight_names is None:
                raise ValueError(
                    f"Layer '{layer.name}' ({type(layer).__name__}) has no registered prunable weights. "
                    f"Register them first, e.g. tf_lottery.register_prunable({type(layer).__name__}, "
                    f"weights=('kernel',)), or pass Masked(layer, weight_names=('kernel',))."
                )
        kwargs.setdefault("name", f"masked_{layer.name}")
        super().__init__(layer, **kwargs)
        self.weight_names = tuple(weight_names)
        self._targets = []
        self._masks = []

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._create_masks()
        self.built = True

    def get_build_config(self):
        return self.layer.get_build_config()

    def build_from_config(self, config):
        if not self.layer.built and config:
            self.layer.build_from_config(config)
        self.build()

    def _create_masks(self):
        if self._masks:
            return
        self._targets = [resolve_weight(self.layer, path) for path in self.weight_names]
        for path, target in zip(self.weight_names, self._targets):
            mask = self.add_weight(
                name=f"{path.replace('.', '_')}_mask",
                shape=target.shape,
                dtype=target.dtype,
                initializer="ones",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
            target.constraint = _MaskConstraint(mask, target.constraint)
            self._masks.append(mask)

    @property
    def masks(self):
        """`{weight path: mask variable}` for the wrapped layer."""
        return dict(zip(self.weight_names, self._masks))

    @property
    def masked_weights(self):
        """`{weight path: weight variable}` of the weights this wrapper masks."""
        return dict(zip(self.weight_names, self._targets))

    def apply_masks(self):
        """Sets every pruned weight of the wrapped layer to exactly zero."""
        for target, mask in zip(self._targets, self._masks):
            target.assign(target * ops.cast(mask, target.dtype))

    def call(self, inputs, *args, **kwargs):
        masked = {id(t): t.value * ops.cast(m, t.dtype) for t, m in zip(self._targets, self._masks)}
        # Every variable of the wrapped layer is mapped, so an enclosing
        # StatelessScope (if any) still provides the values it holds.
        given = {id(v): masked.get(id(v), v.value) for v in self.layer.variables}
        mapping = [(v, given[id(v)]) for v in self.layer.variables]
        with keras.StatelessScope(mapping, collect_losses=True) as scope:
            outputs = self.layer(inputs, *args, **kwargs)
        for variable in self.layer.variables:
            updated = scope.get_current_value(variable)
            if id(variable) not in masked and updated is not given[id(variable)]:
                _write(variable, updated)
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs

    def get_config(self):
        return {**super().get_config(), "weight_names": list(self.weight_names)}


def _is_container(layer):
    return isinstance(layer, keras.Model)


def walk_layers(model, prefix=""):
    """Yields `(prefix, layer)` for every leaf layer; nested models add `"<name>/"` to the prefix."""
    for layer in model.layers:
        if _is_container(layer):
            yield from walk_layers(layer, f"{prefix}{layer.name}/")
        else:
            yield prefix, layer


def masked_layers(model):
    """`{qualified layer name: Masked}` in model order; raises if `model` has none."""
    found = {}
    for prefix, layer in walk_layers(model):
        if isinstance(layer, Masked):
            found[prefix + layer.layer.name] = layer
    if not found:
        raise ValueError(
            f"Model '{model.name}' has no tf_lottery.Masked layers. Wrap it first: "
            "model = tf_lottery.wrap(model) (or wrap layers of a subclassed model with tf_lottery.Masked)."
        )
    return found


def _masked_items(model):
    for layer_name, layer in masked_layers(model).items():
        for path in layer.weight_names:
            yield f"{layer_name}/{path}", layer.masks[path], layer.masked_weights[path]


def get_masks(model):
    """`{mask key: 0/1 float array}` for every masked weight of a wrapped model."""
    return {key: np.asarray(mask.numpy()) for key, mask, _ in _masked_items(model)}


def get_prunable_weights(model, weight_values=None):
    """`{mask key: weight array}` for every masked weight of a wrapped model.

    Args:
        model: a wrapped model.
        weight_values: optional `get_weight_values` result (e.g. rewind
            weights) to take the values from; default: the current values.
    """
    if weight_values is None:
        return {key: np.asarray(weight.numpy()) for key, _, weight in _masked_items(model)}
    return {key: weight_values[weight.path] for key, _, weight in _masked_items(model)}


def get_prunable_variables(model):
    """`{mask key: weight variable}` for every masked weight of a wrapped model."""
    return {key: weight for key, _, weight in _masked_items(model)}


def layer_of(key):
    """The qualified layer name of a mask key (`"encoder/dense/kernel"` -> `"encoder/dense"`)."""
    return key.rsplit("/", 1)[0]


def set_masks(model, masks):
    """Sets the masks of a wrapped model and zeroes the newly pruned weights.

    Args:
        model: a model wrapped with `tf_lottery.wrap` (or holding `Masked` layers).
        masks: `{mask key: array of 0/1}` with exactly the keys of `get_masks(model)`.
    """
    items = {key: (mask, weight) for key, mask, weight in _masked_items(model)}
    missing, unknown = sorted(set(items) - set(masks)), sorted(set(masks) - set(items))
    if missing or unknown:
        raise ValueError(
            f"These masks do not belong to model '{model.name}': missing {missing}, unknown {unknown}. "
            "Pass the masks of this model (tf_lottery.get_masks(model) lists its keys)."
        )
    checked = {}
    for key, (mask, _) in items.items():
        value = np.asarray(masks[key])
        if value.shape != tuple(mask.shape):
            raise ValueError(
                f"Mask '{key}' has shape {value.shape}, but the weight has shape {tuple(mask.shape)}; "
                "these masks come from another model or another input shape."
            )
        if not np.isin(value, (0, 1)).all():
            raise ValueError(f"Mask '{key}' must hold only 0 and 1.")
        checked[key] = value
    for key, (mask, weight) in items.items():
        mask.assign(checked[key].astype(mask.dtype))
        weight.assign(weight * ops.cast(mask, weight.dtype))


def apply_masks(model):
    """Sets every pruned weight of a wrapped model to exactly zero.

    Optimizer steps do this by themselves (each masked weight carries a mask
    constraint); call it after changing weights any other way, e.g. in a custom
    training loop that assigns variables directly.
    """
    for layer in masked_layers(model).values():
        layer.apply_masks()


def _mask_variable_ids(model):
    return {id(mask) for layer in masked_layers(model).values() for mask in layer.masks.values()}


def get_weight_values(model):
    """`{variable path: array}` for every weight of a wrapped model except the masks.

    This is the state that rewinding restores (see `LotteryCallback`).
    """
    masks = _mask_variable_ids(model)
    values = {}
    for variable in model.weights:
        if id(variable) in masks:
            continue
        if variable.path in values:
            raise ValueError(
                f"Two weights of model '{model.name}' share the path '{variable.path}'; give the layers unique names."
            )
        values[variable.path] = np.asarray(variable.numpy())
    return values


def set_weight_values(model, values):
    """Restores weights saved by `get_weight_values`, then re-applies the current masks."""
    masks = _mask_variable_ids(model)
    variables = {v.path: v for v in model.weights if id(v) not in masks}
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
    apply_masks(model)


def density(masks):
    """The fraction of weights that survive in a `{key: mask}` dict, over all of its masks."""
    return sum(float(mask.sum()) for mask in masks.values()) / sum(mask.size for mask in masks.values())


def sparsity_report(model):
    """Per-weight and global density of the masked weights of a wrapped model.

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


def _unprunable_with_weights(layer):
    return bool(layer.trainable_weights) and not isinstance(layer, _DENSE_BY_DESIGN)


def fresh_copy(layer):
    """A new, built, untrained layer of `layer`'s class and configuration."""
    copy = layer.__class__.from_config(layer.get_config())
    build_config = layer.get_build_config()
    if build_config:
        copy.build_from_config(build_config)
    return copy


def _clone(model, clone_layer):
    """Clones a Sequential/functional model (recursively) and copies every weight.

    `clone_layer(layer) -> (new layer, weight source, weight target)`: after
    cloning, the target layer receives the source layer's weights.
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model, which cannot be cloned. "
            "Wrap its layers yourself with tf_lottery.Masked(layer) inside the model."
        )
    copies = []

    def clone_function(layer):
        if _is_container(layer) and not isinstance(layer, (keras.Sequential, Functional)):
            raise ValueError(
                f"Nested model '{layer.name}' is a subclassed model, which cannot be cloned. "
                "Wrap its layers yourself with tf_lottery.Masked(layer) inside that model."
            )
        new, source, target = clone_layer(layer)
        copies.append((source, target))
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for source, target in copies:
        target.set_weights(source.get_weights())
    return clone


def wrap(model, *, skip=(), registry=None):
    """Returns a clone of `model` with every prunable layer wrapped in `Masked`.

    Weights are copied from `model`; every mask starts at ones. Works for
    Sequential and functional models, including nested ones.

    Args:
        model: a built Sequential or functional `keras.Model`.
        skip: names of layers to leave dense.
        registry: optional `{layer class: weight paths}` that extends and
            overrides the global registry (see `register_prunable`).

    Layers with trainable weights that no registry entry covers (other than
    normalization layers) are left dense and listed in one warning.
    """
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built; call it on data or build it before wrap().")
    skip = set(skip)
    unknown_skips = skip - {layer.name for _, layer in walk_layers(model)}
    if unknown_skips:
        raise ValueError(f"skip names layers that model '{model.name}' does not have: {sorted(unknown_skips)}.")
    left_dense = []

    def clone_layer(layer):
        copy = fresh_copy(layer)
        if isinstance(layer, Masked):
            raise ValueError(f"Model '{model.name}' is already wrapped (layer '{layer.name}').")
        names = prunable_weight_names(layer, registry)
        if names is None or layer.name in skip:
            if names is None and _unprunable_with_weights(layer):
                left_dense.append(f"{layer.name} ({type(layer).__name__})")
            return copy, layer, copy
        masked = Masked(copy, weight_names=names)
        masked.build()
        return masked, layer, copy

    clone = _clone(model, clone_layer)
    if left_dense:
        warnings.warn(
            "tf_lottery.wrap left these layers dense because no prunable weights are registered for "
            f"them: {', '.join(left_dense)}. To prune them, call tf_lottery.register_prunable(LayerClass, "
            "weights=(...)) first.",
            stacklevel=2,
        )
    return clone


def strip(model):
    """Returns a plain copy of a wrapped model, with masks folded into the weights.

    Pruned weights are exactly zero, and the copy computes the same outputs as
    the wrapped model.
    """
    masked_layers(model)  # A clear error if the model is not wrapped.

    def clone_layer(layer):
        if isinstance(layer, Masked):
            layer.apply_masks()
            layer = layer.layer
        copy = fresh_copy(layer)
        return copy, layer, copy

    return _clone(model, clone_layer)
