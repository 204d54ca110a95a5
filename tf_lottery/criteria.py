"""Pruning criteria: weights in, scores out (higher scores survive).

A criterion is a callable `criterion(final, initial, statistics=None) -> scores`
where `final` and `initial` map mask keys to the trained weights and to the
rewind weights, `statistics` optionally maps mask keys to training statistics
(e.g. accumulated movement), and `scores` maps the same keys to arrays of the
weights' shapes. Users may pass any callable of that form.
"""

import functools

import numpy as np


def magnitude(final, initial, statistics=None):
    """|final weight|: the paper's criterion and the default."""
    del initial, statistics
    return {key: np.abs(value) for key, value in final.items()}


def magnitude_increase(final, initial, statistics=None):
    """|final| - |initial|: keeps weights that grew most (Zhou et al., 2019)."""
    del statistics
    return {key: np.abs(value) - np.abs(initial[key]) for key, value in final.items()}


def movement(final, initial, statistics=None):
    """|final - initial|: keeps weights that moved farthest from their rewind value."""
    del statistics
    return {key: np.abs(value - initial[key]) for key, value in final.items()}


def movement_rate(final, initial, statistics=None):
    """Accumulated |Δw| over training: keeps the weights that changed fastest.

    The slowest-changing weights are pruned. `statistics` maps each mask key to
    the sum of |w(t) - w(t-1)| over every step (or every epoch) of the round,
    as recorded by `tf_lottery.MovementTracker`; `TicketSearch` records it when
    `criterion="movement_rate"`.
    """
    del initial
    return _recorded(final, statistics, "movement_rate scores weights by how much they moved during training, so "
                     "it needs statistics: train with tf_lottery.MovementTracker and pass tracker.statistics() "
                     "(TicketSearch does this for criterion='movement_rate').",
                     "movement", "track every masked weight (MovementTracker on the same model)")


def at_initialization(final, initial, statistics=None):
    """Scores measured as the round started: SNIP, GraSP or SynFlow (see `tf_lottery.saliency`).

    `statistics` maps each mask key to the scores `saliency.InitializationScores`
    recorded before the round's first step; `TicketSearch` records them for
    `criterion="snip"`, `"grasp"` or `"synflow"`.
    """
    del initial
    return _recorded(final, statistics, "snip, grasp and synflow score weights before training, so they need "
                     "statistics: train with tf_lottery.saliency.InitializationScores and pass its statistics() "
                     "(TicketSearch does this for those criteria).",
                     "scores", "score every masked weight of the model")


def _recorded(final, statistics, needed, what, fix):
    """`statistics` for the keys of `final` as float64 arrays; `ValueError`s with `needed`, or naming what is
    missing and the `fix`."""
    if statistics is None:
        raise ValueError(needed)
    missing = sorted(set(final) - set(statistics))
    if missing:
        raise ValueError(f"The statistics hold no {what} for {missing}: {fix}.")
    return {key: np.array(statistics[key], np.float64) for key in final}


def random(final, initial, statistics=None, *, seed=0):
    """Uniform random scores from `seed`: the random-pruning control."""
    del initial, statistics
    rng = np.random.default_rng(seed)
    return {key: rng.random(np.shape(value)) for key, value in sorted(final.items())}


CRITERIA = {
    "magnitude": magnitude,
    "magnitude_increase": magnitude_increase,
    "movement": movement,
    "movement_rate": movement_rate,
    "random": random,
    "snip": at_initialization,
    "grasp": at_initialization,
    "synflow": at_initialization,
}
#: The criteria that read `statistics` recorded during training (movement) or as it starts (the others).
RECORDED = ("movement_rate", "snip", "grasp", "synflow")


def get(name, *, seed=0):
    """The criterion called `name`; `seed` reaches the criteria that draw random numbers."""
    if callable(name):
        return name
    if name not in CRITERIA:
        raise ValueError(f"Unknown criterion {name!r}; choose one of {sorted(CRITERIA)} or pass a callable.")
    if name == "random":
        return functools.partial(random, seed=seed)
    return CRITERIA[name]


def score(criterion, final, initial, statistics=None):
    """Applies `criterion` and checks its input and output.

    Raises:
        ValueError: if a weight is NaN or infinite (training diverged), or the
            criterion returns scores of the wrong keys, shapes or values.
    """
    for key, value in final.items():
        if not np.isfinite(value).all():
            raise ValueError(
                f"Weight '{key}' holds NaN or infinite values at pruning time: training diverged. "
                "Lower the learning rate or check the data, then run the round again."
            )
    scores = criterion(final, initial, statistics)
    if set(scores) != set(final):
        raise ValueError(f"The criterion returned scores for {sorted(scores)}, expected {sorted(final)}.")
    for key, value in scores.items():
        if np.shape(value) != np.shape(final[key]):
            raise ValueError(f"The criterion's scores for '{key}' have shape {np.shape(value)}, "
                             f"expected {np.shape(final[key])}.")
        if np.isnan(value).any():
            raise ValueError(f"The criterion's scores for '{key}' contain NaN.")
    return scores
