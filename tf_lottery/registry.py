"""Which weights are prunable, and where they sit in a model.

The registry maps layer classes to the attribute paths of their prunable
weights. `find_prunable` walks every layer of a built model at any depth
(nested models, and custom layers holding `Dense`/`EinsumDense`/attention
sublayers, as keras-hub's transformer blocks do) and returns each registered
weight under its Keras variable path, e.g.
`"transformer_layer_0/self_attention_layer/query/kernel"`.
"""

import dataclasses
import fnmatch

import keras

_REGISTRY = {}

#: Weights left dense unless `skip` says otherwise: position and segment embeddings
#: (keras-hub names them so), which encode where a token sits rather than connections.
DENSE_BY_DEFAULT = ("*position_embedding*", "*segment_embedding*")

# Layers whose weights are never pruned, so they do not trigger the "left dense"
# warning: normalization layers (their weights are scales and offsets, not connections).
_DENSE_BY_DESIGN = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
    keras.layers.RMSNormalization,
)


def register_prunable(layer_class, weights):
    """Declares which weights of `layer_class` are prunable.

    Args:
        layer_class: a subclass of `keras.layers.Layer`. Subclasses of it are
            covered too, unless they have an entry of their own.
        weights: attribute paths of the prunable weights, relative to the layer,
            e.g. `("kernel",)`, `("kernel", "bias")` or `("cell.kernel",)`.
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
    for cls in (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Conv1DTranspose,
                layers.Conv2DTranspose, layers.Conv3DTranspose, layers.DepthwiseConv1D, layers.DepthwiseConv2D,
                layers.EinsumDense):
        register_prunable(cls, ("kernel",))
    for cls in (layers.SeparableConv1D, layers.SeparableConv2D):
        register_prunable(cls, ("depthwise_kernel", "pointwise_kernel"))
    register_prunable(layers.Embedding, ("embeddings",))
    for cls in (layers.SimpleRNNCell, layers.LSTMCell, layers.GRUCell):
        register_prunable(cls, ("kernel", "recurrent_kernel"))


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


def all_layers(model):
    """`model` and every layer in it at any depth (nested models, sublayers of custom layers), each once."""
    # Keras has no public accessor for the sublayers of a custom layer; this is the one it uses itself.
    return model._flatten_layers(include_self=True)


def matches(path, pattern):
    """Whether `pattern` (fnmatch) matches variable `path` or a run of consecutive components of it.

    So a layer name matches every weight of that layer wherever it sits
    (`"query"` matches `"encoder/mha/query/kernel"`), and a glob matches the
    whole path (`"*position_embedding*"`).
    """
    return any(fnmatch.fnmatchcase(path, candidate)
               for candidate in (pattern, f"{pattern}/*", f"*/{pattern}", f"*/{pattern}/*"))


@dataclasses.dataclass(frozen=True)
class Found:
    """What `find_prunable` found in a model.

    Attributes:
        weights: `{variable path: variable}` of the weights to mask, in
            `model.weights` order.
        unregistered: `[(layer, {attribute name: variable path})]`, the layers
            with trainable weights of their own that the registry does not
            cover (normalization layers and skipped weights aside).
    """

    weights: dict
    unregistered: list


def find_prunable(model, skip=DENSE_BY_DEFAULT, registry=None):
    """The registered prunable weights of a built `model`, wherever they sit.

    Args:
        model: a built `keras.Model` (or layer) of any structure.
        skip: fnmatch patterns of weights to leave dense, matched as in
            `matches` (layer names, variable paths, globs).
        registry: optional `{layer class: weight paths}` that extends and
            overrides the global registry (see `register_prunable`).

    Raises:
        ValueError: if two weights share a variable path, or a pattern of `skip`
            (other than `DENSE_BY_DEFAULT`'s) matches no weight of the model.
    """
    order = weights_by_path(model)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    paths = {id(variable): (key, variable.path) for key, variable in order.items()}  # Relative and full.

    def named(variable, pattern):
        return any(matches(path, pattern) for path in paths.get(id(variable), (variable.path,)))

    unused = sorted(set(skip) - set(DENSE_BY_DEFAULT) - {p for p in skip for v in order.values() if named(v, p)})
    if unused:
        raise ValueError(f"skip names weights that model '{model.name}' does not have: {unused}. Patterns match "
                         "variable paths (see [v.path for v in model.weights]) or layer names in them.")

    def kept(variable):
        return not any(named(variable, pattern) for pattern in skip)

    chosen, unregistered = {}, []
    for layer in all_layers(model):
        names = prunable_weight_names(layer, registry)
        if names is not None:
            for name in names:
                variable = resolve_weight(layer, name)
                if kept(variable):
                    chosen[id(variable)] = variable
        elif not isinstance(layer, _DENSE_BY_DESIGN):
            own = {name: variable.path for name, variable in _own_trainable_weights(layer).items() if kept(variable)}
            if own:
                unregistered.append((layer, own))
    weights = {key: variable for key, variable in order.items() if id(variable) in chosen}
    return Found(weights, unregistered)


def weights_by_path(model):
    """`{key: variable}` of `model.weights`, each keyed by its variable path relative to `model`.

    A Sequential or subclassed model creates its weights inside its own name
    scope ("sequential_3/dense/kernel"), and Keras numbers the names of models
    it names itself; the model's own name is left out of the key ("dense/kernel"),
    so two instances of one architecture have the same keys. Raises if two
    weights share a key.
    """
    prefix = f"{model.name}/"
    relative = all(variable.path.startswith(prefix) for variable in model.weights)
    paths = {}
    for variable in model.weights:
        key = variable.path.removeprefix(prefix) if relative else variable.path
        if paths.setdefault(key, variable) is not variable:
            raise ValueError(f"Two weights of model '{model.name}' share the path '{key}', so masks "
                             "and rewind points cannot tell them apart: give their layers unique names.")
    return paths


def _own_trainable_weights(layer):
    """`{attribute name or variable name: variable}` of the trainable weights `layer` holds itself."""
    inherited = {id(v) for sublayer in layer._flatten_layers(include_self=False) for v in sublayer.weights}
    own = [v for v in layer.trainable_weights if id(v) not in inherited]
    attributes = {id(value): name for name, value in vars(layer).items() if isinstance(value, keras.Variable)}
    return {attributes.get(id(v), v.name): v for v in own}


def registration_hint(layer, attributes):
    """The `register_prunable` call that would cover `attributes` of `layer`."""
    cls = type(layer)
    return (f"tf_lottery.register_prunable({cls.__name__}, weights={tuple(attributes)!r}) "
            f"with {cls.__name__} from {cls.__module__}")
