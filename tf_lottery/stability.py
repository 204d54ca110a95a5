"""Instability analysis: from which rewind point does training end in one linearly connected basin?

Frankle, Dziugaite, Roy & Carbin ("Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020)
found that a sparse subnetwork rewound to iteration k trains to full accuracy once training from k is
*stable*: two copies trained from the weights at k on different data orders end where the straight line
between them has no error barrier. In deeper networks that holds only from some early k > 0, which is the
rewind point a search needs (`SearchConfig(rewind="step:K")`).

`instability` trains the network once as a search's round 0 does, keeping the weights at each k; from each,
it trains two copies as a search's later rounds do after rewinding (a fresh optimizer, the round's full
length), each on its own data order, and evaluates the networks on the line between them:

    curves = stability.instability(build_model, data, SearchConfig(iterations=2000), rewind_iterations=(0, 100, 500))
    stability.earliest_stable(curves)     # The first k whose barrier is under 2 points, e.g. 100.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import callbacks as callbacks_lib
from tf_lottery import data as data_lib
from tf_lottery import masking, weights
from tf_lottery.schedule import round_seed
from tf_lottery.trainer import Trainer, monitor_mode

#: Frankle et al.'s threshold: training from k is stable when the barrier is under 2 points of error.
THRESHOLD = 0.02
#: Networks evaluated on the line between the two copies, both ends included (Frankle et al. use 30).
POINTS = 30
#: Seeds of the copies' data orders are drawn as rounds of this index and the next, far from the search's rounds.
_COPY_ROUNDS = 1_000_000


def interpolate(first, second, alpha):
    """`(1 - alpha) * first + alpha * second` for every floating-point weight of two snapshots; others (counters,
    seed states) from `first`."""
    return {path: (1 - alpha) * value + alpha * second[path] if np.issubdtype(value.dtype, np.floating) else value
            for path, value in first.items()}


def linear_path(model, first, second, split, metric="accuracy", points=POINTS):
    """`metric` of `model` on `split` at `points` evenly spaced weights from snapshot `first` to `second`.

    Returns:
        `(alphas, values)`; the model is left holding `second`.
    """
    alphas = np.linspace(0, 1, points).tolist()
    values = []
    for alpha in alphas:
        weights.restore(model, interpolate(first, second, alpha))
        values.append(float(data_lib.evaluate(model, split, verbose=0)[metric]))
    return alphas, values


def barrier(values, mode="max"):
    """The largest rise of the error along a path above the mean of its two ends (Frankle et al.'s error barrier).

    Args:
        values: a metric at evenly spaced points from one end to the other.
        mode: `"max"` if the metric rises as the network improves (accuracy: the error is 1 - value), `"min"` if
            it falls (a loss).

    Returns:
        The barrier in the metric's units (0.02 of accuracy: 2 points); 0 when the path is no worse than its ends.
    """
    errors = -np.asarray(values, np.float64) if mode == "max" else np.asarray(values, np.float64)
    return float(max(0.0, errors.max() - (errors[0] + errors[-1]) / 2))


def instability(build_model, data, config, rewind_iterations=(0,), *, masks=None, points=POINTS, split="val",
                metric="accuracy", strategy=None, verbose=0):
    """The error barrier between two copies trained from each rewind point in `rewind_iterations`.

    Args:
        build_model: a function returning the Keras model, as for `TicketSearch`; compiled or not (then
            `config`'s optimizer trains it as a classifier with logits).
        data: a `tf_lottery.SearchData` or `tf_lottery.datasets.Dataset`.
        config: the `SearchConfig` of the search the rewind point is for: its seed, round length
            (`iterations` or `epochs`), batch size and optimizer settings.
        rewind_iterations: the iterations k to test, each within the round's length; 0 is the initialization.
        masks: `{mask key: 0/1 array}` to analyze a masked network (e.g. a round of a search); `None` for the
            dense network.
        points: networks evaluated on each line, both ends included.
        split: `"val"` (default: choosing k on it keeps the test set unseen) or `"test"`.
        metric: the compiled metric whose barrier is measured (`"accuracy"`, `"loss"`, ...).
        strategy: the `tf.distribute.Strategy` to train under (default: the current one).
        verbose: 1 prints a line per rewind point.

    Returns:
        One dict per k, in order: `{"rewind_iteration", "alphas", "values"` (the metric at each alpha), `"metric",
        "barrier"}`.
    """
    data = data_lib.as_search_data(data)
    rewind_iterations = sorted({int(k) for k in rewind_iterations})
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model()
        if not model.built:
            model(data.example_inputs())
        model = model if masking.is_masked(model) else masking.mask(model)
    if masks is not None:
        masking.set_masks(model, masks)
    trainer = Trainer(model, data, config, strategy, verbose=0)
    length = config.round_length(data.train_steps_per_epoch(config.batch_size))
    too_late = [k for k in rewind_iterations if not 0 <= k <= length]
    if too_late:
        raise ValueError(f"Rewind iterations {too_late} lie outside the round's {length} iterations: choose k "
                         f"from 0 to {length}.")
    if split not in data.splits:
        raise ValueError(f"split={split!r} is not a set of this data; choose one of {sorted(data.splits)}.")
    trainer.check(f"val_{metric}", "auto", 0, length)
    mode = monitor_mode(metric, "auto")
    starts = _rewind_points(trainer, config.seed, length, rewind_iterations)
    curves = []
    for k in rewind_iterations:
        ends = []
        for copy in range(2):
            weights.restore(model, starts[k])
            ends.append(trainer.train(round_seed(config.seed, _COPY_ROUNDS + copy), length, length, [], 1).trained)
        alphas, values = linear_path(model, ends[0], ends[1], data.splits[split], metric, points)
        curves.append({"rewind_iteration": k, "alphas": alphas, "values": values, "metric": metric,
                       "barrier": barrier(values, mode)})
        if verbose:
            print(f"Rewind iteration {k}: {metric} barrier {curves[-1]['barrier']:.4f} between copies at "
                  f"{values[0]:.4f} and {values[-1]:.4f}.", flush=True)
    return curves


def rewind_setting(iteration):
    """`SearchConfig.rewind` for rewinding to `iteration`: `"init"` for 0, else `"step:K"`."""
    return f"step:{iteration}" if iteration else "init"


def earliest_stable(curves, threshold=THRESHOLD):
    """The earliest rewind iteration of `instability`'s curves whose barrier is under `threshold`, or `None`."""
    stable = [curve["rewind_iteration"] for curve in curves if curve["barrier"] < threshold]
    return min(stable) if stable else None


def _rewind_points(trainer, seed, length, rewind_iterations):
    """`{k: weights}` at each k of one training as a search's round 0 (its seed, length and optimizer)."""
    if not any(rewind_iterations):
        return {0: weights.snapshot(trainer.model)}
    captures = {k: callbacks_lib.LotteryCallback(rewind_at=f"step:{k}") for k in rewind_iterations}
    trainer.train(round_seed(seed, 0), length, length, list(captures.values()), 0)
    return {k: capture.rewind_weights for k, capture in captures.items()}
