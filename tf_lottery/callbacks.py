"""Keras callbacks for training lottery tickets."""

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import criteria, masking, pruning, weights

UNITS = ("step", "epoch")


def parse_rewind_point(rewind_at):
    """`0`, `K`, `"step:K"` or `"epoch:K"` -> `(unit, K)`."""
    if isinstance(rewind_at, int) and not isinstance(rewind_at, bool):
        unit, count = "step", rewind_at
    elif isinstance(rewind_at, str) and rewind_at.partition(":")[0] in UNITS and rewind_at.partition(":")[2].isdigit():
        unit, _, count = rewind_at.partition(":")
        count = int(count)
    else:
        raise ValueError(f"Rewind point must be an int step or 'step:K' / 'epoch:K' with K >= 0; got {rewind_at!r}.")
    if count < 0:
        raise ValueError(f"Rewind point must be >= 0; got {rewind_at!r}.")
    return unit, count


class LotteryCallback(keras.callbacks.Callback):
    """Captures the rewind weights of a masked model and zeroes its pruned weights when training starts.

    At the start of training it zeroes every pruned weight; each optimizer step
    then re-applies the masks inside the compiled step (see `tf_lottery.mask`),
    so no optimizer state can revive a pruned weight. The first time training
    reaches the rewind point it records every weight (a `tf_lottery.weights`
    snapshot; with `rewind_at=0`, the weights the model starts with, pretrained
    or not); `rewind()` restores them later, keeping the current masks.

    Args:
        rewind_at: `0` (the initialization, as in the paper), an int number of
            optimizer steps, `"step:K"` or `"epoch:K"` (late rewinding).
    """

    def __init__(self, rewind_at=0):
        super().__init__()
        self.rewind_unit, self.rewind_count = parse_rewind_point(rewind_at)
        self.rewind_weights = None

    def on_train_begin(self, logs=None):
        masking.apply_masks(self.model)
        if self.rewind_weights is not None:
            return
        if self.rewind_count == 0:
            self._capture()
            return
        total = self._planned_length()
        if total is not None and self.rewind_count > total:
            raise ValueError(
                f"The rewind point {self.rewind_unit}:{self.rewind_count} lies beyond this training run "
                f"of {total} {self.rewind_unit}s. Rewind to an earlier {self.rewind_unit}, or train longer."
            )

    def on_train_batch_begin(self, batch, logs=None):
        # The weights after step K are those before step K + 1. A begin hook, unlike an end hook, leaves Keras
        # dispatching the end-of-batch callbacks asynchronously, so the steps run back to back.
        if self.rewind_weights is None and self.rewind_unit == "step":
            self._capture_at_step()

    def on_epoch_end(self, epoch, logs=None):
        if self.rewind_weights is None and self.rewind_unit == "epoch" and epoch + 1 == self.rewind_count:
            self._capture()

    def on_train_end(self, logs=None):
        if self.rewind_weights is None and self.rewind_unit == "step":
            self._capture_at_step()  # The rewind point may be the last step.
        if self.rewind_weights is None:
            raise ValueError(
                f"Training ended before the rewind point {self.rewind_unit}:{self.rewind_count}. "
                f"Rewind to an earlier {self.rewind_unit}, or train longer."
            )

    def rewind(self, model=None):
        """Resets every weight to its captured value and re-applies the current masks."""
        if self.rewind_weights is None:
            raise ValueError("No rewind weights captured yet: train with this callback first.")
        weights.restore(model or self.model, self.rewind_weights)

    def _capture(self):
        self.rewind_weights = weights.snapshot(self.model)

    def _capture_at_step(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step == self.rewind_count:
            self._capture()
        elif step > self.rewind_count:
            raise ValueError(
                f"Training passed step {self.rewind_count} between two callback calls (now at step {step}), "
                "so the rewind weights could not be captured there. Use a steps_per_execution that divides "
                "the rewind step."
            )

    def _planned_length(self):
        if self.rewind_unit == "epoch":
            return self.params.get("epochs")
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        return steps * epochs if steps and epochs else None


@tf.function
def _moved(variables, previous, totals):
    current = {key: tf.identity(variable) for key, variable in variables.items()}
    return current, {key: totals[key] + tf.abs(current[key] - previous[key]) for key in totals}


class MovementTracker(keras.callbacks.Callback):
    """Accumulates how far every masked weight moves, for `criteria.movement_rate`.

    After every optimizer step (or every epoch) it adds |w(t) - w(t-1)| to a
    running sum per weight, in graph (no copy to NumPy until `statistics()`).
    Per step, the sum is the path length a weight travelled; per epoch, moves
    back and forth within an epoch cancel out. It keeps accumulating across
    `fit` calls; changes made between them (e.g. rewinding) are not counted.
    With `steps_per_execution > 1`, "step" measures once per execution.

    Args:
        every: `"step"` or `"epoch"`.
    """

    def __init__(self, every="step"):
        super().__init__()
        if every not in UNITS:
            raise ValueError(f"every must be one of {UNITS}; got {every!r}.")
        self.every = every
        self._totals = None

    def on_train_begin(self, logs=None):
        self._variables = {key: variable.value for key, variable in masking.get_prunable_variables(self.model).items()}
        self._previous = {key: tf.identity(variable) for key, variable in self._variables.items()}
        if self._totals is None:
            self._totals = {key: tf.zeros_like(value) for key, value in self._previous.items()}

    def on_train_batch_end(self, batch, logs=None):
        if self.every == "step":
            self._accumulate()

    def on_epoch_end(self, epoch, logs=None):
        if self.every == "epoch":
            self._accumulate()

    def _accumulate(self):
        self._previous, self._totals = _moved(self._variables, self._previous, self._totals)

    def statistics(self):
        """`{mask key: accumulated |Δw|}` as NumPy arrays: the `statistics` of `criteria.movement_rate`."""
        if self._totals is None:
            raise ValueError("No movement recorded yet: train with this callback first.")
        return {key: value.numpy() for key, value in self._totals.items()}


def mask_distance(first, second):
    """Normalized Hamming distance between two sets of masks with the same keys.

    The number of entries that differ, divided by the number of ones in both:
    0 when the surviving weights are the same, 1 when they are disjoint. (You
    et al. divide by all entries, which at 5% density can never exceed 0.1.)
    """
    if set(first) != set(second):
        raise ValueError(f"The masks are for different weights: {sorted(first)} and {sorted(second)}.")
    changed = sum(np.count_nonzero(first[key] != second[key]) for key in first)
    kept = sum(np.count_nonzero(first[key]) + np.count_nonzero(second[key]) for key in first)
    return float(changed / kept) if kept else 0.0


class EarlyBirdStopping(keras.callbacks.Callback):
    """Stops training once the ticket drawn from the weights stops changing (You et al., ICLR 2020).

    At the end of every epoch it draws the masks `plan` gives the current
    weights of a masked model and their `mask_distance` to the masks drawn one
    epoch before. Training stops once the last `patience` distances are all
    below `threshold`; `masks` is then the early-bird ticket. Draw with a plan
    of the density you will prune to (e.g. `pruning.compounded_plan`), as the
    paper does.

    Args:
        plan: the `PruningPlan` that draws the masks (from the current ones).
        criterion: a criterion callable (see `tf_lottery.criteria`); its
            `initial` weights are the weights at the start of training.
        threshold: largest distance that counts as stable (0.1 in the paper).
        patience: how many distances in a row must be below `threshold`
            (5 in the paper).
        statistics: `None`, or a callable returning the criterion's statistics,
            e.g. `tracker.statistics` of a `MovementTracker` listed before this
            callback.

    Attributes:
        distances: `[(iteration, distance)]`, one per epoch after the first.
        stopped_at: the optimizer iteration training stopped at, or `None`.
        masks: the masks drawn at the last epoch end.
    """

    def __init__(self, plan, criterion=criteria.magnitude, threshold=0.1, patience=5, statistics=None):
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], e.g. 0.1; got {threshold!r}.")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience must be a positive integer, e.g. 5; got {patience!r}.")
        self.plan, self.criterion, self.statistics = plan, criterion, statistics
        self.threshold, self.patience = threshold, patience

    def on_train_begin(self, logs=None):
        self._initial = masking.get_prunable_weights(self.model)
        self.distances, self.stopped_at, self.masks = [], None, None

    def on_epoch_end(self, epoch, logs=None):
        statistics = self.statistics() if self.statistics else None
        scores = criteria.score(self.criterion, masking.get_prunable_weights(self.model), self._initial, statistics)
        masks = self.plan.apply(self.model, scores)
        iteration = int(self.model.optimizer.iterations.numpy())
        if self.masks is not None:
            self.distances.append((iteration, mask_distance(self.masks, masks)))
        self.masks = masks
        recent = [distance for _, distance in self.distances[-self.patience:]]
        if len(recent) == self.patience and max(recent) < self.threshold:
            self.stopped_at = iteration
            self.model.stop_training = True


class GradualPruning(keras.callbacks.Callback):
    """Prunes a masked model step by step while it trains (gradual magnitude pruning, Zhu & Gupta, 2017).

    Starting from the masks the model has when training begins, it prunes every
    `every` steps until step `iterations`, after which training goes on with
    the final masks. The number of weights each mask keeps follows Zhu &
    Gupta's cubic schedule, fast at first and slower as the network thins:

        n(t) = n_end + (n_start - n_end) * (1 - t / iterations) ** 3

    where `n_end` is the number `final_masks` keep. Only that number is taken
    from them: at each step, `criterion` scores the current weights (against
    the weights training began with) and the lowest-scoring survivors go.

    Args:
        final_masks: `{mask key: 0/1 array}` whose number of survivors per key
            (of weights, or of blocks) training ends with, e.g. the masks a
            `PruningPlan` draws.
        iterations: optimizer steps, from the start of training, over which to
            prune.
        every: steps between pruning steps (the last is at `iterations`).
        criterion: a criterion callable (see `tf_lottery.criteria`).
        block: `None`, or `(rows, cols)` as in `PruningPlan.block`.
        statistics: `None`, or a callable returning the criterion's
            statistics, e.g. `tracker.statistics` of a `MovementTracker` listed
            before this callback.

    Attributes:
        steps: `[(iteration, density)]`, one per pruning step.
    """

    def __init__(self, final_masks, iterations, every=100, criterion=criteria.magnitude, block=None, statistics=None):
        super().__init__()
        for name, value in (("iterations", iterations), ("every", every)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        self.final_masks, self.iterations, self.every = final_masks, iterations, every
        self.criterion, self.block, self.statistics = criterion, block, statistics

    def on_train_begin(self, logs=None):
        masks = masking.get_masks(self.model)
        self._start = pruning.count_survivors(masks, self.block)
        self._end = pruning.count_survivors(self.final_masks, self.block)
        if set(self._end) != set(self._start):
            raise ValueError(f"final_masks are for {sorted(self._end)}, but the model's masks are for "
                             f"{sorted(self._start)}.")
        grown = sorted(key for key in self._end if self._end[key] > self._start[key])
        if grown:
            raise ValueError(f"final_masks keep more weights than the model has left in {grown}: pruning "
                             "cannot revive weights. Draw them from the model's current masks.")
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if steps and epochs and steps * epochs < self.iterations:
            raise ValueError(f"Gradual pruning over {self.iterations} steps needs at least that long a training "
                             f"run; this one has {steps * epochs}. Train longer, or prune over fewer steps.")
        self._initial = masking.get_prunable_weights(self.model)
        self._output_layer = masking.output_layer(self.model)
        self._first_step = int(self.model.optimizer.iterations.numpy())
        self._pruned_at, self.steps = 0, []

    def on_train_batch_end(self, batch, logs=None):
        if self._pruned_at == self.iterations:
            return
        step = int(self.model.optimizer.iterations.numpy()) - self._first_step
        due = self.iterations if step >= self.iterations else step - step % self.every
        if due > self._pruned_at:
            self._prune(due)

    def on_train_end(self, logs=None):
        if self._pruned_at < self.iterations:
            raise ValueError(f"Training ended before gradual pruning reached its final masks at step "
                             f"{self.iterations} (last pruned at step {self._pruned_at}). Train longer, or prune "
                             "over fewer steps.")

    def _prune(self, step):
        remaining = (1 - step / self.iterations) ** 3
        counts = {key: round(end + (self._start[key] - end) * remaining) for key, end in self._end.items()}
        statistics = self.statistics() if self.statistics else None
        scores = criteria.score(self.criterion, masking.get_prunable_weights(self.model), self._initial, statistics)
        masks = pruning.prune_to_counts(masking.get_masks(self.model), scores, counts, self.block, self._output_layer)
        masking.set_masks(self.model, masks)
        self._pruned_at = step
        self.steps.append((step, masking.density(masks)))
