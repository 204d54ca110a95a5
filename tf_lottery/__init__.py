"""tf_lottery: find, train and ship lottery tickets with Keras 3.

Mask a model in place, train it with `LotteryCallback`, prune it with a
`PruningPlan`, rewind the survivors:

    tf_lottery.mask(model)
    callback = tf_lottery.LotteryCallback()
    model.fit(x, y, callbacks=[callback])
    scores = tf_lottery.criteria.magnitude(tf_lottery.get_prunable_weights(model), None)
    tf_lottery.set_masks(model, tf_lottery.PruningPlan().apply(model, scores))
    callback.rewind()
"""

from tf_lottery import criteria
from tf_lottery.data import SearchData
from tf_lottery.callbacks import EarlyBirdStopping, GradualPruning, LotteryCallback, MovementTracker
from tf_lottery.masking import (
    apply_masks,
    get_masks,
    get_prunable_weights,
    is_masked,
    load_model,
    mask,
    set_masks,
    sparsity_report,
    strip,
)
from tf_lottery.pruning import PruningPlan
from tf_lottery.registry import DENSE_BY_DEFAULT, register_prunable
from tf_lottery.structure import compact

__version__ = "0.2.0"

__all__ = [
    "DENSE_BY_DEFAULT",
    "EarlyBirdStopping",
    "GradualPruning",
    "LotteryCallback",
    "MovementTracker",
    "PruningPlan",
    "SearchData",
    "apply_masks",
    "compact",
    "criteria",
    "get_masks",
    "get_prunable_weights",
    "is_masked",
    "load_model",
    "mask",
    "register_prunable",
    "set_masks",
    "sparsity_report",
    "strip",
]

_REPLACED = {
    "wrap": "tf_lottery.wrap(model) was replaced by tf_lottery.mask(model), which masks the model in place "
            "(any model: subclassed, nested, keras-hub) instead of returning a wrapped clone",
    "Masked": "tf_lottery.Masked was replaced by tf_lottery.mask(model): build your subclassed model with plain "
              "layers, call it once, then mask it",
}


def __getattr__(name):
    if name in _REPLACED:
        raise AttributeError(f"{_REPLACED[name]}. See 'Migrating from wrap and Masked' in the README.")
    raise AttributeError(f"module 'tf_lottery' has no attribute {name!r}")
