"""Units of a model and the dependencies between them: what a unit plan may remove, and `compact`.

A *unit* is one output of a layer: a `Dense` unit, a convolution filter. Its
channel does not belong to that layer alone. A `BatchNormalization` layer
scales it, a depthwise convolution filters it, every layer that reads the
tensor has a row of weights for it, and a residual `Add` joins it with the same
channel of the other branch, so the two branches' producers share one set of
channels. `analyze` follows a functional or Sequential model's graph and
gathers each such set into a `UnitGroup`: the channels that are removed
together, with every weight that holds a slice of them. The heads of an
attention layer and the feed-forward units of a keras-hub transformer block are
groups too, found in a model of any structure: nothing outside their layer
reads them.

A group is left whole (never pruned) when removing one of its channels could
change what the network computes or cannot be done safely: it reaches the
model's outputs (an output layer never loses an output), a layer the planner
does not follow reads it (`Reshape`, `Softmax`, custom layers, nested models),
or a weight that holds it is not masked. `UnitGroup.reason` says which.

Pruning a unit zeroes its producers' kernel columns, the depthwise filters on
its way, and the rows of every layer that reads it, so the masked network
computes what the narrower network computes; `compact` builds that narrower
network.
"""

import collections
import dataclasses

import keras
import numpy as np

from tf_lottery import masking
from tf_lottery.registry import all_layers, weights_by_path

layers = keras.layers

#: Layers whose output channel c depends only on input channel c (and keeps its index).
_CHANNELWISE = (
    layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Dropout, layers.SpatialDropout1D,
    layers.SpatialDropout2D, layers.SpatialDropout3D, layers.GaussianNoise, layers.GaussianDropout,
    layers.AlphaDropout, layers.ActivityRegularization, layers.Identity, layers.MaxPooling1D, layers.MaxPooling2D,
    layers.MaxPooling3D, layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D, layers.ZeroPadding1D,
    layers.ZeroPadding2D, layers.ZeroPadding3D, layers.Cropping1D, layers.Cropping2D, layers.Cropping3D,
    layers.UpSampling1D, layers.UpSampling2D, layers.UpSampling3D,
)
#: Layers that combine their inputs channel by channel; their inputs' channels are one set.
_MERGES = (layers.Add, layers.Subtract, layers.Average, layers.Maximum, layers.Minimum, layers.Multiply)
_CONVOLUTIONS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_PRODUCERS = (layers.Dense, *_CONVOLUTIONS)
_SIZE_ARGUMENT = {layers.Dense: "units", **{cls: "filters" for cls in _CONVOLUTIONS}}
_PRUNABLE_KINDS = "the units of Dense and Conv1D/2D/3D layers, attention heads and keras-hub feed-forward units"


@dataclasses.dataclass
class _Slice:
    """The entries of `variable` that hold the channels of a group: index `offset + c + period * r` on `axis`,
    for channel c and every r < `repeat` (a `Flatten` repeats the channels once per spatial position)."""

    variable: object
    axis: int
    role: str  # "producer" (kernel columns), "reader" (kernel rows), "scale" (BatchNorm gamma) or "carrier".
    offset: int = 0
    period: int = 0
    repeat: int = 1

    def indices(self, channels):
        channels = np.asarray(channels, int)
        return (self.offset + channels[None, :] + self.period * np.arange(self.repeat)[:, None]).ravel()


class _Space:
    """A set of channels that are removed together (a union-find node)."""

    def __init__(self, size, name=None):
        self.size, self.name = size, name
        self.parent = self
        # `resizes`: (layer, config argument) pairs that set how many of these channels a layer has.
        self.slices, self.reasons, self.resizes = [], [], []

    def root(self):
        while self.parent is not self:
            self.parent = self.parent.parent
            self = self.parent
        return self


def _merge(first, second):
    first, second = first.root(), second.root()
    if first is not second:
        second.parent = first
        first.slices += second.slices
        first.reasons += second.reasons
        first.resizes += second.resizes


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What the last axis of a tensor holds: segments `(space or None, size)` (None: channels that are not
    prunable, such as the model's inputs), repeated `repeat` times when a `Flatten` folded space into it."""

    segments: tuple
    repeat: int = 1

    @property
    def channels(self):
        return sum(size for _, size in self.segments)

    def spaces(self):
        return [space for space, _ in self.segments if space is not None]

    def block(self, reason):
        for space in self.spaces():
            space.root().reasons.append(reason)


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Channels removed together: the units of `producers`, and every weight that holds them.

    Attributes:
        name: the layer path of the first producer (of the attention layer, for
            its heads), which `PruningPlan.layer_rates` and `skip` name to set
            the group's rate.
        size: number of units (heads, for an attention layer).
        producers: layer paths of the layers whose outputs are these channels
            (several when a residual `Add` joins branches).
        reason: why the group is left whole, or `None` if it can be pruned.
    """

    name: str
    size: int
    producers: tuple
    reason: str | None
    slices: tuple = dataclasses.field(repr=False, compare=False)
    keys: tuple = dataclasses.field(default=(), repr=False, compare=False)  # The producers' kernel mask keys.
    resizes: tuple = dataclasses.field(default=(), repr=False, compare=False)  # See `_Space`.

    def rate(self, plan):
        """The fraction of surviving units `plan` removes from this group per round; `None` if it skips it.

        `plan.skip` and `plan.layer_rates` name the group by any of its
        producers (layer path or kernel mask key); otherwise it is `plan.rate`.
        """
        for name in (self.name, *self.keys, *self.producers):
            if name in plan.skip:
                return None
            if name in plan.layer_rates:
                return plan.layer_rates[name]
        return plan.rate

    @property
    def prunable(self):
        return self.reason is None


class Structure:
    """The unit groups of one model (see `analyze`), and unit masks in terms of its weight masks."""

    def __init__(self, model_name, groups, keys, paths):
        self.model_name, self.groups = model_name, groups
        self._keys, self._paths = keys, paths  # id(variable) -> mask key; id(variable) -> weight path.

    @property
    def prunable(self):
        """The groups a unit plan may prune."""
        return [group for group in self.groups if group.prunable]

    def report(self):
        """`{group name: why it is left whole}` for every group that is."""
        return {group.name: group.reason for group in self.groups if not group.prunable}

    def summary(self):
        """One paragraph: the groups a unit plan prunes, with their sizes, and those left whole, with why."""
        pruned = ", ".join(f"{group.name} ({group.size})" for group in self.prunable)
        whole = "; ".join(f"{name}: {reason}" for name, reason in self.report().items())
        count = len(self.prunable)
        return f"Units pruned in {count} group{'s' * (count != 1)}: {pruned}." + (
            f" Left whole: {whole}." if whole else "")

    def group(self, name):
        """The group called `name` (a producer's layer path); a `ValueError` that says why if it is left whole."""
        for group in self.groups:
            if name == group.name or name in group.producers:
                if not group.prunable:
                    raise ValueError(f"Layer '{name}' of model '{self.model_name}' cannot lose units: "
                                     f"{group.reason}.")
                return group
        raise ValueError(f"Model '{self.model_name}' has no layer '{name}' whose units a plan can prune; those it "
                         f"has are {[g.name for g in self.prunable]}. Unit plans prune {_PRUNABLE_KINDS}.")

    def _slices(self, group, role):
        return [item for item in group.slices if item.role == role]

    def alive_units(self, masks):
        """`{group name: bool array}`: the units of each prunable group with a surviving producer weight."""
        alive = {}
        for group in self.prunable:
            flags = np.zeros(group.size, bool)
            for item in self._slices(group, "producer"):
                mask = np.moveaxis(np.asarray(masks[self._keys[id(item.variable)]]), item.axis, 0)
                flags |= mask.reshape(mask.shape[0], -1).any(axis=1)
            alive[group.name] = flags
        return alive

    def read_units(self, masks):
        """`{group name: bool array}`: the units of every group that some layer still reads.

        A unit no layer reads is removed by `compact` without changing what the
        network computes; groups left whole count every unit as read.
        """
        read = {}
        for group in self.groups:
            flags = np.zeros(group.size, bool) if group.prunable else np.ones(group.size, bool)
            for item in self._slices(group, "reader") if group.prunable else ():
                mask = np.moveaxis(np.asarray(masks[self._keys[id(item.variable)]]), item.axis, 0)
                rows = mask.reshape(mask.shape[0], -1).any(axis=1)
                flags |= rows[item.indices(np.arange(group.size))].reshape(item.repeat, group.size).any(axis=0)
            read[group.name] = flags
        return read

    def unit_scores(self, scores, weight_values=None, method="weights"):
        """`{group name: score per unit}` for every prunable group; higher survives.

        Args:
            scores: `{mask key: per-weight scores}` from a criterion.
            weight_values: `{variable path: array}`, e.g. the trained weights
                (needed by `"bn_scale"`).
            method: `"weights"`, the mean of the criterion's scores over the
                unit's producer weights (with `magnitude`, its L1 norm per
                weight); or `"bn_scale"`, the summed |gamma| of the unit's
                BatchNormalization layers (network slimming, Liu et al. 2017),
                falling back to `"weights"` in groups without one.
        """
        if method not in UNIT_SCORES:
            raise ValueError(f"unit_score must be one of {UNIT_SCORES}; got {method!r}.")
        result = {}
        for group in self.prunable:
            scales = self._slices(group, "scale") if method == "bn_scale" else []
            if scales:
                result[group.name] = sum(np.abs(np.asarray(weight_values[self._paths[id(item.variable)]],
                                                           np.float64)) for item in scales)
                continue
            total, count = np.zeros(group.size), 0
            for item in self._slices(group, "producer"):
                values = np.moveaxis(np.asarray(scores[self._keys[id(item.variable)]], np.float64), item.axis, 0)
                total += values.reshape(group.size, -1).sum(axis=1)
                count += values[0].size
            result[group.name] = total / count
        return result

    def with_units(self, masks, keep):
        """`masks` with the units that `keep` (`{group name: bool array}`) drops removed from every weight."""
        new_masks = {key: np.asarray(mask, np.float32).copy() for key, mask in masks.items()}
        for group in self.prunable:
            dropped = np.flatnonzero(~np.asarray(keep[group.name], bool))
            if dropped.size == 0:
                continue
            for item in group.slices:
                key = self._keys.get(id(item.variable))
                if key is not None:
                    index = [slice(None)] * new_masks[key].ndim
                    index[item.axis] = item.indices(dropped)
                    new_masks[key][tuple(index)] = 0
        return new_masks

    def check_plan(self, plan, masks):
        """Raises a `ValueError` if the model has no units to prune, or `plan` names a layer that cannot lose any."""
        if not self.prunable:
            reasons = "; ".join(f"'{name}': {reason}" for name, reason in self.report().items())
            raise ValueError(f"Model '{self.model_name}' has no units a plan can prune ({reasons}). Unit plans "
                             f"prune {_PRUNABLE_KINDS}, where only known layers read them.")
        for name in (*plan.skip, *plan.layer_rates):
            self.group(masking.layer_of(name) if name in masks else name)

    def prune(self, plan, masks, unit_scores):
        """The masks after `plan` removes its rate of each prunable group's surviving units.

        Each group has its `UnitGroup.rate` and keeps at least one unit. Ties
        are broken by position, so the result is deterministic.
        """
        self.check_plan(plan, masks)
        keep = {}
        for group, alive in zip(self.prunable, self.alive_units(masks).values()):
            name = group.name
            rate = group.rate(plan)
            keep[name] = alive.copy()
            if rate is None:
                continue
            survivors = np.flatnonzero(alive)
            count = min(int(np.floor(rate * survivors.size + 0.5)), survivors.size - 1)
            order = survivors[np.argsort(unit_scores[name][survivors], kind="stable")]
            keep[name][order[:count]] = False
        return self.with_units(masks, keep)

    def random_like(self, masks, seed):
        """Random units with each group's number of surviving units in `masks`: the random-mask control."""
        rng = np.random.default_rng(seed)
        keep = {}
        for name, alive in sorted(self.alive_units(masks).items()):
            keep[name] = np.zeros(alive.size, bool)
            keep[name][rng.choice(alive.size, size=int(alive.sum()), replace=False)] = True
        ones = {key: np.ones_like(mask, np.float32) for key, mask in masks.items()}
        return self.with_units(ones, keep)


UNIT_SCORES = ("weights", "bn_scale")


def analyze(model):
    """The unit groups of a built `model` (see the module docstring).

    The channels of a functional or Sequential model's layer graph, and, in a
    model of any structure, the heads of every `MultiHeadAttention` layer
    (keras-hub's attention layers among them) and the feed-forward units of
    keras-hub's transformer blocks, which no layer outside them reads.

    Raises:
        ValueError: for a model with neither a layer graph nor attention layers.
    """
    paths = {id(variable): path for path, variable in weights_by_path(model).items()}
    keys = {}
    if masking.is_masked(model):
        keys = {id(variable): key for key, variable in masking.get_prunable_variables(model).items()}
    graph = _graph(model)
    spaces = (_graph_spaces(graph) if graph is not None else []) + _composite_spaces(model, paths)
    if not spaces:
        raise ValueError(f"Model '{model.name}' ({type(model).__name__}) has no layer graph to follow: unit plans "
                         "and compact need a functional or Sequential model (or attention layers, whose heads "
                         "they prune). Build it with keras.Input and the functional API, or prune it weight by "
                         "weight (granularity='weight').")
    groups = []
    for space in spaces:
        if space.root() is not space:
            continue
        kernels = [item.variable for item in space.slices if item.role == "producer"]
        producers = tuple(dict.fromkeys(masking.layer_of(paths[id(kernel)]) for kernel in kernels))
        reason = space.reasons[0] if space.reasons else None
        unmasked = [paths[id(item.variable)] for item in space.slices
                    if item.role in ("producer", "reader") and id(item.variable) not in keys]
        if reason is None and not any(item.role == "reader" for item in space.slices):
            reason = "no layer reads them"
        if reason is None and unmasked:
            reason = f"weight '{unmasked[0]}' holds these channels but is not masked"
        groups.append(UnitGroup(space.name or producers[0], space.size, producers, reason, tuple(space.slices),
                                tuple(keys[id(kernel)] for kernel in kernels if id(kernel) in keys),
                                tuple(space.resizes)))
    return Structure(model.name, groups, keys, paths)


def _graph(model):
    """The functional graph of `model` (a Sequential model's inner one); `None` for a subclassed model."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    # Keras has no public accessor for a functional model's nodes; `_nodes_by_depth` is what it runs them from.
    return graph if isinstance(graph, keras.Model) and getattr(graph, "_nodes_by_depth", None) else None


def _graph_spaces(graph):
    """The channel sets of a functional graph, whose every call of a layer is a node."""
    layouts = {id(tensor): _Layout(((None, tensor.shape[-1]),)) for tensor in graph.inputs}
    nodes = [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]
             if not node.is_input]
    calls = collections.Counter(id(node.operation) for node in nodes)
    spaces = []
    for node in nodes:
        layer, inputs, outputs = node.operation, list(node.input_tensors), list(node.output_tensors)
        in_layouts = [layouts[id(tensor)] for tensor in inputs]
        if calls[id(layer)] > 1:
            out_layouts = _unknown(layer, in_layouts, outputs,
                                   f"'{layer.name}' is called more than once, and shared layers are left whole")
        else:
            out_layouts = _propagate(layer, inputs, in_layouts, outputs, spaces)
        layouts.update(zip(map(id, outputs), out_layouts))
    for tensor in graph.outputs:
        layouts[id(tensor)].block("it reaches the model's outputs")
    return spaces


#: keras-hub's TransformerEncoder and TransformerDecoder hold their feed-forward network under these attributes:
#: a Dense of `intermediate_dim` units (activation inside), dropout, and a Dense back to the hidden size.
_FEED_FORWARD = ("_feedforward_intermediate_dense", "_feedforward_output_dense")


def _composite_spaces(model, paths):
    """Channel sets inside layers, which nothing outside the layer reads: attention heads and feed-forward units."""
    spaces = []
    for layer in all_layers(model):
        if isinstance(layer, layers.MultiHeadAttention) and layer.built:
            query = layer.query_dense
            space = _Space(layer.num_heads, paths[id(query.kernel)].rsplit("/", 2)[0])
            for dense in (query, layer.key_dense, layer.value_dense):  # Kernels [input, heads, size].
                space.slices.append(_Slice(dense.kernel, 1, "producer"))
                if dense.bias is not None:
                    space.slices.append(_Slice(dense.bias, 0, "carrier"))
            space.slices.append(_Slice(layer.output_dense.kernel, 0, "reader"))  # [heads, size, output].
            space.resizes.append((layer, "num_heads"))
            spaces.append(space)
        intermediate, output = (getattr(layer, name, None) for name in _FEED_FORWARD)
        if isinstance(intermediate, layers.Dense) and isinstance(output, layers.Dense) and intermediate.built:
            space = _Space(intermediate.units)
            space.slices += [_Slice(intermediate.kernel, 1, "producer"), _Slice(output.kernel, 0, "reader")]
            if intermediate.bias is not None:
                space.slices.append(_Slice(intermediate.bias, 0, "carrier"))
            if "intermediate_dim" in layer.get_config():
                space.resizes.append((layer, "intermediate_dim"))
            spaces.append(space)
    return spaces


def _unknown(layer, in_layouts, outputs, why=None):
    reason = why or f"'{layer.name}' ({type(layer).__name__}) reads them and the planner cannot follow that layer"
    for layout in in_layouts:
        layout.block(reason)
    return [_Layout(((None, tensor.shape[-1]),)) for tensor in outputs]


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in ("channels_last", None)


def _propagate(layer, inputs, in_layouts, outputs, spaces):
    """The layouts of `layer`'s outputs, recording its slices of the spaces it touches."""
    if not _channels_last(layer):
        return _unknown(layer, in_layouts, outputs, f"'{layer.name}' is channels_first, which the planner does "
                                                    "not follow")
    if isinstance(layer, _PRODUCERS) and getattr(layer, "groups", 1) == 1 and len(inputs) == 1:
        _read(layer.kernel, in_layouts[0])
        space = _Space(layer.kernel.shape[-1])
        space.resizes.append((layer, next(name for cls, name in _SIZE_ARGUMENT.items() if isinstance(layer, cls))))
        if _mixes_channels(layer):
            space.reasons.append(f"'{layer.name}' normalizes its outputs together (softmax)")
        space.slices.append(_Slice(layer.kernel, layer.kernel.ndim - 1, "producer"))
        if layer.bias is not None:
            space.slices.append(_Slice(layer.bias, 0, "carrier"))
        spaces.append(space)
        return [_Layout(((space, space.size),))]
    if isinstance(layer, _DEPTHWISE) and layer.depth_multiplier == 1:
        _carry(in_layouts[0], layer, [(layer.kernel, layer.kernel.ndim - 2, "carrier"), (layer.bias, 0, "carrier")])
        return [in_layouts[0]]
    if isinstance(layer, layers.BatchNormalization) and layer.axis in (-1, len(inputs[0].shape) - 1):
        weights = [(layer.gamma, 0, "scale"), (layer.beta, 0, "carrier"), (layer.moving_mean, 0, "carrier"),
                   (layer.moving_variance, 0, "carrier")]
        _carry(in_layouts[0], layer, weights)
        return [in_layouts[0]]
    if isinstance(layer, _CHANNELWISE) and not _mixes_channels(layer) and len(inputs) == 1 \
            and in_layouts[0].repeat == 1:
        return [in_layouts[0]]
    if isinstance(layer, _MERGES):
        first = in_layouts[0]
        if any([size for _, size in layout.segments] != [size for _, size in first.segments] or layout.repeat != 1
               for layout in in_layouts):
            return _unknown(layer, in_layouts, outputs, f"'{layer.name}' joins tensors whose channels are laid out "
                                                        "differently")
        for layout in in_layouts[1:]:
            for (a, _), (b, _) in zip(first.segments, layout.segments):
                if a is not None and b is not None:
                    _merge(a, b)
                elif a is not None or b is not None:
                    (a or b).root().reasons.append(f"'{layer.name}' joins them with channels that cannot be "
                                                   "pruned (e.g. the model's inputs)")
        return [first]
    if isinstance(layer, layers.Concatenate) and layer.axis in (-1, len(inputs[0].shape) - 1) \
            and all(layout.repeat == 1 for layout in in_layouts):
        return [_Layout(tuple(segment for layout in in_layouts for segment in layout.segments))]
    if isinstance(layer, layers.Flatten) and in_layouts[0].repeat == 1:
        positions = int(np.prod(inputs[0].shape[1:-1], dtype=int))
        return [_Layout(in_layouts[0].segments, in_layouts[0].repeat * positions)]
    return _unknown(layer, in_layouts, outputs)


def _mixes_channels(layer):
    """Whether `layer`'s activation couples its channels (softmax), so removing one changes the others."""
    activation = getattr(layer, "activation", None)
    return isinstance(layer, layers.Softmax) or getattr(activation, "__name__", None) in ("softmax", "log_softmax")


def _read(kernel, layout):
    """Records the kernel rows (axis -2) with which a layer reads each channel of `layout`."""
    offset = 0
    for space, size in layout.segments:
        if space is not None:
            space.root().slices.append(_Slice(kernel, kernel.ndim - 2, "reader", offset, layout.channels,
                                              layout.repeat))
        offset += size


def _carry(layout, layer, weights):
    """Records per-channel weights of a channelwise layer (`[(variable, axis, role)]`, `None` variables skipped)."""
    if layout.repeat != 1:
        return _unknown(layer, [layout], [])
    offset = 0
    for space, size in layout.segments:
        if space is None:
            offset += size
            continue
        for variable, axis, role in weights:
            if variable is not None:
                space.root().slices.append(_Slice(variable, axis, role, offset))
        offset += size


def compact(model, masks=None):
    """A new, narrower plain Keras model without the units of `model` that no layer reads.

    It computes what the masked `model` computes (to float tolerance): every
    unit whose channel no layer reads any more is gone from its producers, its
    BatchNormalization and depthwise layers, and the readers' rows; so are
    pruned heads of `MultiHeadAttention` layers of the graph and pruned
    feed-forward units of keras-hub transformer blocks. Pruned heads inside
    keras-hub blocks stay, as zeros (the block derives its head size from its
    number of heads), as do weights pruned one by one. The new model is not
    compiled.

    Args:
        model: a masked functional or Sequential model (see `tf_lottery.mask`),
            nested ones (keras-hub task models) included.
        masks: `{mask key: 0/1 array}`; default: the model's current masks.

    Returns:
        `keras.Model`: the compacted network, with the layer names of `model`.
    """
    if _graph(model) is None:
        raise ValueError(f"Model '{model.name}' ({type(model).__name__}) has no layer graph: compact rebuilds a "
                         "functional or Sequential model from its layers' configurations.")
    structure = analyze(model)
    masks = masking.get_masks(model) if masks is None else masks
    read = structure.read_units(masks)
    rebuilt = _rebuilt_layers(model)
    dropped = {}  # id(variable) -> {axis: indices removed}
    sizes = {}  # id(layer) -> {config argument: number of units kept}
    for group in structure.groups:
        if not group.resizes or any(id(layer) not in rebuilt for layer, _ in group.resizes):
            continue  # Its layers are rebuilt by others, from their own configurations.
        unread = np.flatnonzero(~read[group.name])
        for item in group.slices:
            dropped.setdefault(id(item.variable), {}).setdefault(item.axis, []).extend(item.indices(unread))
        for layer, argument in group.resizes:
            sizes.setdefault(id(layer), {})[argument] = group.size - unread.size

    def clone(layer):
        return type(layer).from_config({**layer.get_config(), **sizes.get(id(layer), {})})

    inputs = keras.tree.map_structure(lambda tensor: keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                                                 name=_input_layer(model, tensor).name),
                                      _graph(model).input)
    compacted = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone, recursive=True)
    values = _masked_values(model, masks)
    for old, new in zip(model.weights, compacted.weights):
        value = values[old.path]
        for axis, indices in dropped.get(id(old), {}).items():
            value = np.delete(value, indices, axis=axis)
        new.assign(value)
    return compacted


def _rebuilt_layers(model):
    """`{id(layer)}` of the layers `clone_model(model, recursive=True)` rebuilds from their configurations."""
    found = set()
    for layer in model.layers:
        if _graph(layer) is not None:
            found |= _rebuilt_layers(layer)
        else:
            found.add(id(layer))
    return found


def _input_layer(model, tensor):
    return next(layer for layer in _graph(model).layers
                if isinstance(layer, layers.InputLayer) and layer.output is tensor)


def _masked_values(model, masks):
    """`{variable.path: array}` of `model`'s weights with `masks` applied."""
    values = {variable.path: variable.numpy() for variable in model.weights}
    for key, variable in masking.get_prunable_variables(model).items():
        values[variable.path] = values[variable.path] * np.asarray(masks[key], values[variable.path].dtype)
    return values
