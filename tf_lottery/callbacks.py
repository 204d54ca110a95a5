"""Keras callbacks for training lottery tickets."""

import keras

from tf_lottery import masking

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
    """Captures the rewind weights and keeps the pruned weights of a wrapped model at zero.

    At the start of training it zeroes every pruned weight; each optimizer step
    then re-applies the masks inside the compiled step (see `tf_lottery.Masked`),
    so no optimizer state can revive a pruned weight. The first time training
    reaches the rewind point it records every weight except the masks;
    `rewind()` restores them later, keeping the current masks.

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

    def on_train_batch_end(self, batch, logs=None):
        if self.rewind_weights is not None or self.rewind_unit != "step":
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step == self.rewind_count:
            self._capture()
        elif step > self.rewind_count:
            raise ValueError(
                f"Training passed step {self.rewind_count} between two callback calls (now at step {step}), "
                "so the rewind weights could not be captured there. Use a steps_per_execution that divides "
                "the rewind step."
            )

    def on_epoch_end(self, epoch, logs=None):
        if self.rewind_weights is None and self.rewind_unit == "epoch" and epoch + 1 == self.rewind_count:
            self._capture()

    def on_train_end(self, logs=None):
        if self.rewind_weights is None:
            raise ValueError(
                f"Training ended before the rewind point {self.rewind_unit}:{self.rewind_count}. "
                f"Rewind to an earlier {self.rewind_unit}, or train longer."
            )

    def rewind(self, model=None):
        """Resets every weight to its captured value and re-applies the current masks."""
        if self.rewind_weights is None:
            raise ValueError("No rewind weights captured yet: train with this callback first.")
        masking.set_weight_values(model or self.model, self.rewind_weights)

    def _capture(self):
        self.rewind_weights = masking.get_weight_values(self.model)

    def _planned_length(self):
        if self.rewind_unit == "epoch":
            return self.params.get("epochs")
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        return steps * epochs if steps and epochs else None
