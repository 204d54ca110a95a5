"""Units of a model and the dependencies between them: what a unit plan may remove, and `compact`.

A *unit* is one output of a layer: a `Dense` unit, a convolution filter. Its
channel does not belong to that layer alone. A `BatchNormalization` layer
scales it, a depthwise convolution filters it, every layer that reads the
tensor has a row of weights for it, and a residual `Add` joins it with the same
channel of the other branch, so the two branches' producers share one set of
channels. `analyze` follows a functional or Sequential model's graph and
gathers each such set into a `UnitGroup`: the channels that are removed
together, with every weight that holds a slice of them.

A group is left whole (never pruned) when removing one of its channels could
change what the network computes or cannot be done safely: it reaches the
model's outputs (an output layer never loses an output), a layer the planner
does not know reads it (`Reshape`, attention, custom layers), or a weight that
holds it is not masked. `UnitGroup.reason` says which.

Pruning a unit zeroes its producers' kernel columns, the depthwise filters on
its way, and the rows of every layer that reads it, so the masked network
computes what the narrower network computes; `compact` builds that narrower
network.
"""

import dataclasses

import keras
import numpy as np

from tf_lottery import masking
from tf_lottery.registry import weights_by_path

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
_PRUNABLE_KINDS = "Dense, Conv1D/2D/3D"


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

    def __init__(self, size):
        self.size = size
        self.parent = self
        self.slices, self.reasons = [], []

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
        name: the layer path of the first producer, which `PruningPlan.layer_rates`
            and `skip` name to set the group's rate.
        size: number of units.
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

    def rate(self, plan):
        """The fraction of surviving units `plan` removes from this group per round; `None` if it skips it.

        `plan.skip` and `plan.layer_rates` name the group by any of its
        producers (layer path or kernel mask key); otherwise it is `plan.rate`.
        """
        for name in (*self.keys, *self.producers):
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

    def group(self, name):
        """The group called `name` (a producer's layer path); a `ValueError` that says why if it is left whole."""
        for group in self.groups:
            if name in group.producers:
                if not group.prunable:
                    raise ValueError(f"Layer '{name}' of model '{self.model_name}' cannot lose units: "
                                     f"{group.reason}.")
                return group
        raise ValueError(f"Model '{self.model_name}' has no layer '{name}' whose units a plan can prune; those it "
                         f"has are {[g.name for g in self.prunable]}. Unit plans prune {_PRUNABLE_KINDS} layers.")

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
                             f"prune {_PRUNABLE_KINDS} layers whose outputs only known layers read.")
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
    """The unit groups of a built functional or Sequential `model` (see the module docstring).

    Raises:
        ValueError: for a model without a layer graph (subclassed), which the
            planner cannot follow.
    """
    if not isinstance(model, (keras.Sequential, keras.Model)) or not _has_graph(model):
        raise ValueError(f"Model '{model.name}' ({type(model).__name__}) has no layer graph to follow: unit plans "
                         "and compact need a functional or Sequential model. Build it with keras.Input and the "
                         "functional API, or prune it weight by weight (granularity='weight').")
    paths = {id(variable): path for path, variable in weights_by_path(model).items()}
    keys = {}
    if masking.is_masked(model):
        keys = {id(variable): key for key, variable in masking.get_prunable_variables(model).items()}
    layouts = {id(tensor): _Layout(((None, tensor.shape[-1]),)) for tensor in model.inputs}
    spaces = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        inputs = _tensors(layer, "input")
        outputs = _tensors(layer, "output")
        if inputs is None or outputs is None:  # A layer called more than once.
            for layout in layouts.values():
                layout.block(f"'{layer.name}' is called more than once, and shared layers are left whole")
            layouts.update({id(t): _Layout(((None, t.shape[-1]),)) for t in outputs or ()})
            continue
        in_layouts = [layouts[id(tensor)] for tensor in inputs]
        for tensor, layout in zip(outputs, _propagate(layer, inputs, in_layouts, outputs, spaces)):
            layouts[id(tensor)] = layout
    for tensor in model.outputs:
        layouts[id(tensor)].block("it reaches the model's outputs")
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
        groups.append(UnitGroup(producers[0], space.size, producers, reason, tuple(space.slices),
                                tuple(keys[id(kernel)] for kernel in kernels if id(kernel) in keys)))
    return Structure(model.name, groups, keys, paths)


def _has_graph(model):
    try:
        return bool(model.inputs) and all(_tensors(layer, "output") is not None for layer in model.layers[:1])
    except (AttributeError, ValueError):
        return False


def _tensors(layer, which):
    """The input or output tensors of `layer` as a list; `None` if it was called more than once."""
    try:
        value = getattr(layer, which)
    except (AttributeError, ValueError):
        return None
    return list(value) if isinstance(value, (list, tuple)) else list(value.values()) if isinstance(value, dict) \
        else [value]


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
    BatchNormalization and depthwise layers, and the readers' rows. Weights
    pruned one by one stay in it as zeros. The new model is not compiled.

    Args:
        model: a masked functional or Sequential model (see `tf_lottery.mask`).
        masks: `{mask key: 0/1 array}`; default: the model's current masks.

    Returns:
        `keras.Model`: the compacted network, with the layer names of `model`.
    """
    structure = analyze(model)
    masks = masking.get_masks(model) if masks is None else masks
    read = structure.read_units(masks)
    dropped = {}  # id(variable) -> {axis: indices removed}
    sizes = {}  # kernel path of a producer -> number of units kept
    for group in structure.groups:
        unread = np.flatnonzero(~read[group.name])
        for item in group.slices:
            dropped.setdefault(id(item.variable), {}).setdefault(item.axis, []).extend(item.indices(unread))
            if item.role == "producer":
                sizes[item.variable.path] = group.size - unread.size

    def clone(layer):
        config = layer.get_config()
        argument = next((name for cls, name in _SIZE_ARGUMENT.items() if isinstance(layer, cls)), None)
        if argument is not None and layer.kernel.path in sizes:
            config[argument] = sizes[layer.kernel.path]
        return type(layer).from_config(config)

    inputs = keras.tree.map_structure(lambda tensor: keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                                                 name=_input_layer(model, tensor).name), model.input)
    compacted = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    values = _masked_values(model, masks)
    for old, new in zip(model.weights, compacted.weights):
        value = values[old.path]
        for axis, indices in dropped.get(id(old), {}).items():
            value = np.delete(value, indices, axis=axis)
        new.assign(value)
    return compacted


def _input_layer(model, tensor):
    return next(layer for layer in model.layers if isinstance(layer, layers.InputLayer) and layer.output is tensor)


def _masked_values(model, masks):
    """`{variable.path: array}` of `model`'s weights with `masks` applied."""
    values = {variable.path: variable.numpy() for variable in model.weights}
    for key, variable in masking.get_prunable_variables(model).items():
        values[variable.path] = values[variable.path] * np.asarray(masks[key], values[variable.path].dtype)
    return values
