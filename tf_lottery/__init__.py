"""tf_lottery: find, train and ship lottery tickets with Keras 3.

Wrap a model, train it with `LotteryCallback`, prune it with a `PruningPlan`,
rewind the survivors and strip the wrappers:

    model = tf_lottery.wrap(model)
    callback = tf_lottery.LotteryCallback()
    model.fit(x, y, callbacks=[callback])
    scores = tf_lottery.criteria.magnitude(tf_lottery.get_prunable_weights(model), None)
    tf_lottery.set_masks(model, tf_lottery.PruningPlan().apply(model, scores))
    callback.rewind()
    plain = tf_lottery.strip(model)
"""

from tf_lottery import criteria
from tf_lottery.callbacks import EarlyBirdStopping, GradualPruning, LotteryCallback, MovementTracker
from tf_lottery.masking import (
    Masked,
    apply_masks,
    get_masks,
    get_prunable_weights,
    register_prunable,
    set_masks,
    sparsity_report,
    strip,
    wrap,
)
from tf_lottery.pruning import PruningPlan

__version__ = "0.1.0"

__all__ = [
    "EarlyBirdStopping",
    "GradualPruning",
    "LotteryCallback",
    "Masked",
    "MovementTracker",
    "PruningPlan",
    "apply_masks",
    "criteria",
    "get_masks",
    "get_prunable_weights",
    "register_prunable",
    "set_masks",
    "sparsity_report",
    "strip",
    "wrap",
]
