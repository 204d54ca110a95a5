"""Pruning plans: scores and current masks in, new masks out."""

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from tf_lottery import masking

SCOPES = ("layerwise", "global", "erk")


def _check_rate(rate, what):
    if not (isinstance(rate, (int, float)) and 0 < rate < 1):
        raise ValueError(f"{what} must be a fraction in (0, 1), e.g. 0.2 for 20% per round; got {rate!r}.")


def parse_block(text):
    """`"1x4"` -> `(1, 4)`; `None` -> `None`."""
    if text is None:
        return None
    rows, _, cols = text.partition("x")
    if not (rows.isdigit() and cols.isdigit()):
        raise ValueError(f"block must look like '1x4' or '1x16' (rows x cols); got {text!r}.")
    return int(rows), int(cols)


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """How many of the surviving weights each round removes, and where.

    Attributes:
        rate: fraction of the surviving weights removed per round (0.2 in the paper).
        output_rate: rate for the output layer (the last masked layer); the paper
            prunes it at half the rate of the hidden layers. `None`: use `rate`.
            Each output unit keeps at least its best weight (or block), so no
            class is cut off from the network.
        layer_rates: per-layer overrides, keyed by layer path (the mask key
            without its weight name, e.g. `"dense"` or `"encoder/dense"`: all
            its masked weights) or by mask key (`"dense/kernel"`).
        scope: `"layerwise"` ranks weights within each layer; `"global"` ranks
            all weights pruned at `rate` together; `"erk"` removes `rate` of
            their survivors in all and spreads the survivors over the layers
            by `erk_densities` (layers with their own rate, including the
            output layer, are still pruned within the layer).
        skip: layer paths (or mask keys) never pruned.
        target_density: global density at which a search stops; `None` for none.
        block: `None` (unstructured) or `(rows, cols)` in TFLite's fully-connected
            weight layout `[out, in]`, e.g. `(1, 4)` or `(1, 16)`: 2-D kernels are
            pruned in whole blocks of `cols` consecutive inputs of `rows` outputs,
            ranked by the mean score of the block, so TFLite's block-sparse kernels
            apply. Blocks at the edge of a kernel whose size is not a multiple are
            partial (and ranked by the mean of what they hold). Kernels that are
            not 2-D (convolutions) stay unstructured.
    """

    rate: float = 0.2
    output_rate: float | None = 0.1
    layer_rates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    scope: str = "layerwise"
    skip: tuple[str, ...] = ()
    target_density: float | None = None
    block: tuple[int, int] | None = None

    def __post_init__(self):
        _check_rate(self.rate, "rate")
        if self.output_rate is not None:
            _check_rate(self.output_rate, "output_rate")
        for name, rate in self.layer_rates.items():
            _check_rate(rate, f"layer_rates[{name!r}]")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}; got {self.scope!r}.")
        if self.target_density is not None and not 0 < self.target_density <= 1:
            raise ValueError(f"target_density must be in (0, 1]; got {self.target_density!r}.")
        if self.block is not None:
            if len(self.block) != 2 or not all(isinstance(n, int) and n >= 1 for n in self.block):
                raise ValueError(f"block must be None or (rows, cols) of positive ints, e.g. (1, 4); got {self.block!r}.")
            object.__setattr__(self, "block", tuple(self.block))
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "layer_rates", dict(self.layer_rates))

    def rate_for(self, key, output_layer=None):
        """The rate for mask `key`, or `None` if the plan skips it."""
        layer = masking.layer_of(key)
        if key in self.skip or layer in self.skip:
            return None
        for name in (key, layer):
            if name in self.layer_rates:
                return self.layer_rates[name]
        if layer == output_layer and self.output_rate is not None:
            return self.output_rate
        return self.rate

    def apply(self, model, scores):
        """The masks of the next round for a masked `model`, given `scores` per mask key."""
        return self.prune(masking.get_masks(model), scores, output_layer=masking.output_layer(model))

    def prune(self, masks, scores, output_layer=None):
        """Pure form of `apply`: removes the lowest-scoring surviving weights.

        Args:
            masks: `{mask key: 0/1 array}`, the current masks.
            scores: `{mask key: array}` of the same shapes; higher survives.
            output_layer: the layer path that `output_rate` applies to.

        Returns:
            New masks, `{mask key: float32 0/1 array}`. Ties are broken by
            position, so the result is deterministic.
        """
        self.check_names(masks)
        if set(scores) != set(masks):
            raise ValueError(f"Scores are for {sorted(scores)}, but the masks are for {sorted(masks)}.")
        for key, value in scores.items():
            if np.shape(value) != np.shape(masks[key]):
                raise ValueError(f"Scores for '{key}' have shape {np.shape(value)}, the mask {np.shape(masks[key])}.")
            if np.isnan(value).any():
                raise ValueError(f"Scores for '{key}' contain NaN: the weights diverged during training. "
                                 "Lower the learning rate or check the data, then run the round again.")
        new_masks = {key: np.asarray(mask, np.float32).copy() for key, mask in masks.items()}
        pooled = []
        for key in masks:
            rate = self.rate_for(key, output_layer)
            if rate is None:
                continue
            if self.scope != "layerwise" and rate == self.rate and key not in self.layer_rates:
                pooled.append(key)
            else:
                _prune_together([key], new_masks, scores, rate, self.block, output_layer)
        if pooled and self.scope == "erk":
            _prune_erk(pooled, new_masks, scores, self.rate, self.block, output_layer)
        elif pooled:
            _prune_together(pooled, new_masks, scores, self.rate, self.block, output_layer)
        return new_masks

    def check_names(self, masks):
        """Raises `ValueError` if the plan's `skip` or `layer_rates` name a layer or weight `masks` lack."""
        known = set(masks) | {masking.layer_of(key) for key in masks}
        unknown = sorted((set(self.skip) | set(self.layer_rates)) - known)
        if unknown:
            raise ValueError(f"The plan names layers the model does not have: {unknown}. Known: {sorted(known)}.")


def erk_densities(shapes, density):
    """Per-layer densities of the Erdos-Renyi-Kernel distribution (Evci et al., 2020, "Rigging the Lottery").

    A layer's density is proportional to the sum of its kernel's dimensions over
    their product (for a Dense kernel `[in, out]`: `(in + out) / (in * out)`, the
    Erdos-Renyi distribution; a convolution's kernel sizes count too), scaled so
    the layers together keep `density` of their weights. A layer whose density
    would exceed 1 stays dense, and the others share the rest (as RigL does).

    Args:
        shapes: `{key: weight shape}`.
        density: the global density in (0, 1].

    Returns:
        `{key: density}`, whose weighted mean over the layers' sizes is `density`.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1]; got {density!r}.")
    sizes = {key: math.prod(shape) for key, shape in shapes.items()}
    raw = {key: sum(shape) / sizes[key] for key, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense = set()
    while True:
        sparse = [key for key in shapes if key not in dense]
        if not sparse:
            return {key: 1.0 for key in shapes}
        scale = (budget - sum(sizes[key] for key in dense)) / sum(raw[key] * sizes[key] for key in sparse)
        # Making a layer dense raises the others' scale, so every layer over 1 can turn dense at once.
        full = [key for key in sparse if scale * raw[key] >= 1]
        if not full:
            return {key: 1.0 if key in dense else scale * raw[key] for key in shapes}
        dense.update(full)


def simulate(plan, masks, output_layer=None):
    """The masks `plan` leaves of `masks` when every layer's weights rank alike (by position in the layer), so a
    global plan takes from each pooled layer in proportion to its survivors: how many weights a round keeps."""
    scores = {key: np.arange(mask.size, dtype=np.float64).reshape(mask.shape) / mask.size
              for key, mask in masks.items()}
    return plan.prune(masks, scores, output_layer=output_layer)


def compounded_plan(plan, masks, output_layer, rounds=None, steps=1):
    """A plan that prunes in `steps` equal steps what `plan` prunes from `masks` in several rounds.

    The number of rounds is `rounds`, or (if None) the fewest that bring the
    global density to `plan.target_density`. Each step removes the same
    fraction of the survivors of every layer.
    """
    if rounds is None:
        rounds, simulated = 0, masks
        while masking.density(simulated) > plan.target_density + 1e-9:
            simulated = simulate(plan, simulated, output_layer)
            rounds += 1
    layer_rates = {}
    for key in masks:
        rate = plan.rate_for(key, output_layer)
        if rate is not None and rate != plan.rate:
            layer_rates[key] = 1 - (1 - rate) ** (rounds / steps)
    return dataclasses.replace(plan, rate=1 - (1 - plan.rate) ** (rounds / steps), output_rate=None,
                               layer_rates=layer_rates)


class _BlockGrid:
    """Views a weight array as blocks of a `PruningPlan.block`.

    `block` is `(rows, cols)` in TFLite's `[out, in]` layout; a Keras 2-D kernel
    is `[in, out]`, so its blocks are `(cols, rows)`. Anything not 2-D, or
    `block=None`, is viewed as single weights.
    """

    def __init__(self, shape, block):
        self.shape = shape
        self.block = (block[1], block[0]) if block and len(shape) == 2 else None
        if self.block:
            self.grid = tuple(-(-size // step) for size, step in zip(shape, self.block))

    def reduce(self, values, reducer):
        """One value per block: `reducer` over its entries (NaN-padded where a block is partial)."""
        if not self.block:
            return np.asarray(values, np.float64).ravel()
        padded = np.full([n * step for n, step in zip(self.grid, self.block)], np.nan)
        padded[: self.shape[0], : self.shape[1]] = values
        blocks = padded.reshape(self.grid[0], self.block[0], self.grid[1], self.block[1])
        return reducer(blocks, axis=(1, 3)).ravel()

    def alive(self, mask):
        """Flags, per weight or block, whether any of its weights survives in `mask`."""
        return self.reduce(mask, np.nanmax) > 0

    def best_per_output(self, alive, ranked):
        """Flags, per output unit (last axis; column of blocks), its highest-ranked `alive` weight or block."""
        if len(self.shape) < 2:
            return np.zeros_like(alive)
        columns = self.grid[1] if self.block else self.shape[-1]
        alive, ranked = alive.reshape(-1, columns), ranked.reshape(-1, columns)
        best = np.zeros_like(alive)
        rows = np.argmax(np.where(alive, ranked, -np.inf), axis=0)
        living = alive.any(axis=0)
        best[rows[living], np.flatnonzero(living)] = True
        return best.ravel()

    def expand(self, block_values):
        """The weight-shaped array that repeats each block's value over the block."""
        if not self.block:
            return block_values.reshape(self.shape)
        full = block_values.reshape(self.grid)
        for axis, step in enumerate(self.block):
            full = np.repeat(full, step, axis=axis)
        return full[: self.shape[0], : self.shape[1]]


def random_masks_like(masks, seed, block=None):
    """Random masks with the per-key number of surviving weights (or `block`s) of `masks`.

    The random-mask control: `block` (as in `PruningPlan.block`) keeps the
    structure of a block ticket, so its control has whole blocks too and runs
    on the same TFLite kernels.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for key in sorted(masks):
        mask = np.asarray(masks[key], np.float32)
        grid = _BlockGrid(mask.shape, block)
        alive = grid.alive(mask)
        flat = np.zeros(alive.size, np.float32)
        flat[rng.choice(alive.size, size=int(alive.sum()), replace=False)] = 1
        result[key] = grid.expand(flat).astype(np.float32)
    return result


def count_survivors(masks, block=None):
    """`{mask key: number of surviving weights}`, or of surviving blocks (as in `PruningPlan.block`)."""
    return {key: int(_BlockGrid(np.shape(mask), block).alive(mask).sum()) for key, mask in masks.items()}


def prune_to_counts(masks, scores, counts, block=None, output_layer=None):
    """Removes the lowest-scoring survivors of each mask until `counts[key]` weights (or blocks) are left.

    Keys missing from `counts`, or already at or below their count, are left as
    they are. Like `PruningPlan.prune`, each output unit of `output_layer` keeps
    its best weight (or block). Returns new masks.
    """
    new_masks = {key: np.asarray(mask, np.float32).copy() for key, mask in masks.items()}
    alive = count_survivors(masks, block)
    for key, count in counts.items():
        if count < alive[key]:
            _prune_together([key], new_masks, scores, (alive[key] - count) / alive[key], block, output_layer)
    return new_masks


def _prune_erk(keys, masks, scores, rate, block=None, output_layer=None):
    """Removes `rate` of the surviving weights (or blocks) of `keys` in all, leaving each layer its share of the
    survivors by `erk_densities`, in place."""
    sizes = count_survivors({key: np.ones_like(masks[key]) for key in keys}, block)
    alive = count_survivors({key: masks[key] for key in keys}, block)
    density = sum(alive.values()) * (1 - rate) / sum(sizes.values())
    densities = erk_densities({key: masks[key].shape for key in keys}, density)
    counts = {key: max(1, math.floor(densities[key] * sizes[key] + 0.5)) for key in keys}
    masks.update(prune_to_counts({key: masks[key] for key in keys}, scores, counts, block, output_layer))


def _prune_together(keys, masks, scores, rate, block=None, output_layer=None):
    """Removes `rate` of the surviving weights (or blocks) of `keys`, ranked together, in place.

    The weights of `output_layer` keep each output unit's best surviving
    weight (or block): a class whose every weight is pruned could never be
    predicted again.
    """
    grids = [_BlockGrid(masks[key].shape, block) for key in keys]
    alive_parts = [grid.alive(masks[key]) for grid, key in zip(grids, keys)]
    ranked_parts = [grid.reduce(scores[key], np.nanmean) for grid, key in zip(grids, keys)]
    kept_parts = [grid.best_per_output(part, part_ranked) if masking.layer_of(key) == output_layer
                  else np.zeros_like(part)
                  for key, grid, part, part_ranked in zip(keys, grids, alive_parts, ranked_parts)]
    alive, ranked, kept = (np.concatenate(parts) for parts in (alive_parts, ranked_parts, kept_parts))
    count = math.floor(rate * alive.sum() + 0.5)
    survivors = np.flatnonzero(alive & ~kept)
    order = survivors[np.argsort(ranked[survivors], kind="stable")]
    flat = alive.astype(np.float32)
    flat[order[:count]] = 0
    offset = 0
    for key, grid, part in zip(keys, grids, alive_parts):
        layer_mask = grid.expand(flat[offset:offset + part.size])
        if not layer_mask.any():
            raise ValueError(
                f"Pruning {rate:.0%} of the surviving weights would leave '{key}' with no weights. "
                "Lower the rate for this layer (PruningPlan.layer_rates), skip it (PruningPlan.skip), "
                "or stop at a higher target_density."
            )
        masks[key] = layer_mask.astype(np.float32)
        offset += part.size
