"""Pruning at initialization: scores of every masked weight before any training (SNIP, GraSP, SynFlow).

The baselines a ticket is measured against (Frankle et al. 2021, "Pruning Neural Networks at
Initialization: Why are We Missing the Mark?"). Each function scores the masked weights of a built model as
it stands (higher survives, as `tf_lottery.criteria` scores):

- `snip`: |g * w|, the loss gradient g on a batch times the weight (Lee et al., 2019).
- `grasp`: w * Hg, the Hessian-gradient product on a batch times the weight (Wang et al., 2020); GraSP
  removes the weights whose removal least reduces the gradient flow, i.e. the lowest w * Hg.
- `synflow`: |dR/dw * w| of R, the sum of the outputs of the network with every weight replaced by its
  absolute value on an input of ones (Tanaka et al., 2020): data-free. `synflow_ranks` prunes with it
  iteratively, as the method does, and ranks the weights by how long they survive.

A search uses them with `SearchConfig(criterion="snip" | "grasp" | "synflow")`: `InitializationScores`
scores the network as each round starts (round 0: the initialization), and the next round prunes by those
scores (`one_shot=True`: once, to the target, as the methods prune).

The gradients come from the model's compiled loss (`model.compute_loss`), so compile the model first.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import masking, weights
from tf_lottery.pruning import PruningPlan
from tf_lottery.registry import weights_by_path

#: The criteria scored at the start of a round, by name.
METHODS = ("snip", "grasp", "synflow")
#: GraSP divides the logits by this temperature before its loss (Wang et al.'s default).
GRASP_TEMPERATURE = 200.0
#: Pruning steps of `synflow_ranks` (Tanaka et al. use 100).
SYNFLOW_ITERATIONS = 100


def _loss(model, x, y, temperature=1.0):
    return model.compute_loss(x=x, y=y, y_pred=model(x, training=False) / temperature)


def _require_compiled(model, method):
    if not model.compiled:
        raise ValueError(f"{method} scores weights by the gradient of the model's loss: compile the model first "
                         "(model.compile(loss=...)).")


def snip(model, x, y):
    """`{mask key: |dL/dw * w|}` on the batch `(x, y)`: connection sensitivity (SNIP)."""
    _require_compiled(model, "snip")
    variables = masking.get_prunable_variables(model)
    with tf.GradientTape() as tape:
        loss = _loss(model, x, y)
    gradients = tape.gradient(loss, list(variables.values()))
    return {key: np.abs(gradient.numpy() * variable.numpy())
            for (key, variable), gradient in zip(variables.items(), gradients)}


def grasp(model, x, y, temperature=GRASP_TEMPERATURE):
    """`{mask key: w * Hg}` on the batch `(x, y)`, with H the loss Hessian and g the loss gradient (GraSP)."""
    _require_compiled(model, "grasp")
    variables = masking.get_prunable_variables(model)
    values = list(variables.values())
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = _loss(model, x, y, temperature)
        gradients = inner.gradient(loss, values)
        flow = tf.add_n([tf.reduce_sum(tf.stop_gradient(g) * g) for g in gradients])
    hessian_gradients = outer.gradient(flow, values)
    return {key: variable.numpy() * product.numpy()
            for (key, variable), product in zip(variables.items(), hessian_gradients)}


def synflow(model):
    """`{mask key: |dR/dw * w|}`: synaptic flow, with R the summed output of the network whose every weight is
    replaced by its absolute value, on one input of ones (no data). The weights are restored afterwards."""
    with _absolute_weights(model):
        return _flow(model)


def synflow_ranks(model, density, iterations=SYNFLOW_ITERATIONS):
    """Iterative SynFlow: prunes the surviving weights of `model` to `density` in `iterations` global steps of
    one rate, rescoring after each; returns scores that rank the weights by how long they survived.

    A weight pruned at step j scores j; a survivor scores `iterations + 1` plus its last score scaled into
    [0, 1). Pruning to `density` by these scores, globally, keeps SynFlow's survivors. The model's masks and
    weights are restored afterwards.
    """
    if not 0 < density < 1:
        raise ValueError(f"density must be in (0, 1); got {density!r}.")
    original = masking.get_masks(model)
    alive = sum(int(mask.sum()) for mask in original.values())
    final = min(alive, max(1, round(density * sum(mask.size for mask in original.values()))))
    ranks = {key: np.where(mask > 0, np.inf, 0.0) for key, mask in original.items()}
    with _absolute_weights(model):
        try:
            masks = original
            for step in range(1, iterations + 1):
                survivors = round(alive * (final / alive) ** (step / iterations))  # One rate per step, compounded.
                current = sum(int(mask.sum()) for mask in masks.values())
                if survivors < current:
                    plan = PruningPlan(rate=(current - survivors) / current, output_rate=None, scope="global")
                    masks = plan.prune(masks, _flow(model))
                    masking.set_masks(model, masks)  # Zeroes the pruned weights: the next flow runs without them.
                for key, mask in masks.items():
                    ranks[key][(mask == 0) & np.isinf(ranks[key])] = step
            last = _flow(model)
        finally:
            masking.set_masks(model, original)
    top = max(float(value.max()) for value in last.values()) or 1.0
    return {key: np.where(np.isinf(ranks[key]), iterations + 1 + last[key] / (top * (1 + 1e-6)), ranks[key])
            for key in ranks}


@contextlib.contextmanager
def _absolute_weights(model):
    """Replaces every floating-point weight of `model` by its absolute value; restores the weights on exit."""
    if not model.inputs:
        raise ValueError("synflow feeds the network an input of ones, so it needs a model with a known input "
                         "shape (a functional or Sequential model, or a subclassed one called on data).")
    start = weights.snapshot(model)
    try:
        for variable in weights_by_path(model).values():
            if keras.backend.is_float_dtype(variable.dtype):
                variable.assign(tf.abs(variable))
        yield
    finally:
        weights.restore(model, start)


def _flow(model):
    """`{mask key: |dR/dw * w|}` of the weights as they stand, R the summed output on one input of ones."""
    variables = masking.get_prunable_variables(model)
    with tf.GradientTape() as tape:
        flow = tf.reduce_sum(tf.nest.flatten(model(tf.ones((1, *model.inputs[0].shape[1:])), training=False)))
    gradients = tape.gradient(flow, list(variables.values()))
    return {key: np.abs(gradient.numpy() * variable.numpy())
            for (key, variable), gradient in zip(variables.items(), gradients)}


_BATCH_SCORES = {"snip": snip, "grasp": grasp}


class InitializationScores(keras.callbacks.Callback):
    """Scores the masked weights with SNIP, GraSP or SynFlow as training starts (before the first step).

    Args:
        method: one of `METHODS`.
        batch: `(x, y)`: the batch SNIP and GraSP take the loss gradient on.
        density: the density `synflow` prunes to iteratively (see `synflow_ranks`).
    """

    def __init__(self, method, batch=None, density=None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
        self.method, self.batch, self.density = method, batch, density
        self._scores = None

    def on_train_begin(self, logs=None):
        if self._scores is not None:
            return
        masking.apply_masks(self.model)
        if self.method == "synflow":
            self._scores = synflow_ranks(self.model, self.density)
        else:
            self._scores = _BATCH_SCORES[self.method](self.model, *self.batch)

    def statistics(self):
        """`{mask key: score}` as training started: the `statistics` that `criteria.at_initialization` reads."""
        if self._scores is None:
            raise ValueError("No scores yet: train with this callback first.")
        return self._scores
