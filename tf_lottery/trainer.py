"""One round of a ticket search: the user's compile (or the search's defaults), their data, and evaluations.

`Trainer` knows nothing of masks or rounds' schedule: the search hands it the
round's seed, length and callbacks, and gets back the evaluation curve, the
final training metrics and the trained weights.

A model the user compiled keeps its loss (several outputs and loss weights
included), metrics and optimizer: every round starts from a fresh state of that
optimizer (iterations, moments and learning-rate schedule back at step 0). An
uncompiled model gets the defaults of `SearchConfig`: its optimizer and learning
rate, sparse categorical cross-entropy on logits, and accuracy.
"""

import dataclasses
import json

import keras
import numpy as np

from tf_lottery import data as data_lib
from tf_lottery import distribute, weights

#: The cosine schedule ends at this fraction of the initial learning rate, where `finetune` rounds continue.
COSINE_FLOOR = 0.01
#: `SearchConfig` fields that set up the search's own optimizer; a model the user compiled brings its own.
OPTIMIZER_FIELDS = ("optimizer", "learning_rate", "lr_schedule", "jit_compile")

# Words in metric names that fall (errors, divergences) or rise (scores) as a model improves: how `mode="auto"`
# reads a name, as Keras' callbacks do.
_FALLING = ("loss", "error", "mae", "mse", "mape", "msle", "crossentropy", "hinge", "poisson", "divergence",
            "logcosh")
_RISING = ("acc", "auc", "precision", "recall", "f1", "fbeta", "f_beta", "iou", "top", "r2", "similarity")


@dataclasses.dataclass
class RoundResult:
    """What one round of training produced."""

    curve: list  # One dict per evaluation: "iteration" and every validation and test metric ("val_loss", ...).
    train: dict  # The compiled metrics on the training set after training.
    trained: dict  # The trained weights, by variable path.
    learning_rate: float  # The optimizer's learning rate at the round's first step.

    @property
    def diverged(self):
        """Whether the training loss or any weight is not finite."""
        return not (np.isfinite(self.train["loss"]) and all(np.isfinite(v).all() for v in self.trained.values()))


def monitor_mode(monitor, mode):
    """"min" or "max": `mode`, or for "auto" what `monitor`'s name says (losses fall; accuracies, AUCs rise)."""
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if any(word in name for word in _FALLING):
        return "min"
    if any(word in name for word in _RISING):
        return "max"
    raise ValueError(f"Cannot tell whether {monitor!r} should fall or rise: set mode='min' or mode='max'.")


def best_evaluation(curve, monitor, mode):
    """The evaluation of `curve` with the best value of `monitor` (the first of equals)."""
    sign = 1 if monitor_mode(monitor, mode) == "min" else -1
    return min(curve, key=lambda point: sign * point[monitor])


class _Evaluations(keras.callbacks.Callback):
    """Evaluates the validation and test sets every period; stops training once the validation loss is not finite."""

    def __init__(self, evaluate, splits):
        super().__init__()
        self.evaluate, self.splits = evaluate, splits
        self.curve = []

    def on_epoch_end(self, epoch, logs=None):
        point = {"iteration": int(self.model.optimizer.iterations.numpy())}
        for prefix, split in self.splits.items():
            point.update({f"{prefix}_{name}": value for name, value in self.evaluate(split).items()})
        self.curve.append(point)
        if not np.isfinite(point["val_loss"]):
            self.model.stop_training = True  # Diverged: the round is not saved (see `RoundDivergedError`).


class Trainer:
    """Trains a search's model one round at a time.

    Args:
        model: the built, masked model; compiled by the user, or not (then the
            search's defaults compile it).
        data: a `tf_lottery.data.SearchData`.
        config: the `SearchConfig` (batch size, the defaults' optimizer settings,
            monitor and mode).
        strategy: the `tf.distribute.Strategy` training runs under.
        verbose: Keras' progress bar (1) or none (0).
    """

    def __init__(self, model, data, config, strategy, verbose):
        self.model, self.data, self.config = model, data, config
        self.strategy, self.verbose = strategy, verbose
        self.user_compiled = model.compiled
        self._compiled_settings = None  # The optimizer settings the model was last compiled with.
        if self.user_compiled:
            changed = ", ".join(f"{name}={value!r}" for name, value in config.changed_fields(OPTIMIZER_FIELDS).items())
            if changed:
                raise ValueError(f"The model is compiled, so its own optimizer trains every round; the search's "
                                 f"{changed} would be ignored. Set the optimizer in model.compile, or leave the "
                                 "model uncompiled to use these settings.")
        if distribute.is_multi_worker(strategy) and (self.user_compiled or not _all_arrays(data)):
            raise ValueError("A multi_worker search trains the default classifier (an uncompiled model with "
                             "logits) on (x, y) arrays; search on one machine (any other strategy) for a compiled "
                             "model or tf.data input.")

    def check(self, monitor, mode, index, iterations):
        """Evaluates one validation batch before round `index` (of `iterations` steps) trains; raises a `ValueError`
        naming the fix when the model cannot be evaluated on the data (e.g. a loss that does not match the outputs
        or the targets), or `monitor` is not a validation metric it computes, with a direction."""
        with self.strategy.scope():
            self._install(self.optimizer(index, iterations))
        try:
            names = list(self._evaluate(self.data.validation, steps=1))
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"The model cannot be evaluated on the validation set: {error}\nCheck that the loss "
                             "and metrics match the model's outputs and the targets' shapes.") from error
        available = [f"val_{name}" for name in names]
        if monitor not in available:
            raise ValueError(f"monitor={monitor!r} is not a validation metric this model computes; choose one of "
                             f"{available} (compile the model with the metric to monitor it).")
        monitor_mode(monitor, mode)

    def compile_signature(self):
        """The user's loss, metrics and loss weights as JSON (checked on resume), or `None` for the defaults'."""
        if not self.user_compiled:
            return None
        settings = {name: value for name, value in self.model.get_compile_config().items() if name != "optimizer"}
        return json.loads(json.dumps(settings, default=repr))

    def train(self, seed, iterations, period, callbacks, index):
        """Trains `iterations` steps of round `index` in `iterations // period` evaluation periods, evaluating after
        each; returns a `RoundResult`."""
        self._reseed(seed)
        evaluations = _Evaluations(self._evaluate, self.data.splits)
        callbacks = [*callbacks, evaluations]
        with self.strategy.scope():
            self._install(self.optimizer(index, iterations))
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            learning_rate = float(f"{rate:.7g}")  # The digits a float32 holds.
            batches = self.data.train_batches(seed, iterations, self.config.batch_size)
            fit_kwargs = dict(epochs=iterations // period, steps_per_epoch=period, callbacks=callbacks)
            if distribute.is_multi_worker(self.strategy):
                distribute.fit_with_strategy_run(self.model, batches, strategy=self.strategy, **fit_kwargs)
            else:
                self.model.fit(batches, shuffle=False, verbose=self.verbose, **fit_kwargs)
        return RoundResult(evaluations.curve, self._evaluate_training_set(seed), weights.snapshot(self.model),
                           learning_rate)

    def optimizer(self, index, iterations):
        """A fresh optimizer for round `index` of `iterations` steps: the user's configuration, or the defaults'."""
        if self.user_compiled:
            return self.model.optimizer.__class__.from_config(self.model.optimizer.get_config())
        config = self.config
        schedule = config.learning_rate
        if config.lr_schedule == "cosine":
            schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=iterations,
                                                              alpha=COSINE_FLOOR)
            if config.rewind == "finetune" and index > 0:
                schedule = config.learning_rate * COSINE_FLOOR  # Continue at the final learning rate.
        if config.optimizer == "adam":
            return keras.optimizers.Adam(schedule)
        return keras.optimizers.SGD(schedule, momentum=0.9 if config.optimizer == "momentum" else 0.0)

    def _install(self, optimizer):
        """Makes `optimizer` the model's. If the model's optimizer has the same configuration, only sets its state to
        `optimizer`'s fresh one, so the train and test steps are traced once per search, not once per round."""
        settings = keras.optimizers.serialize(optimizer)
        settings["config"].pop("name")  # Unique per instance ("adam_1"), not a setting.
        if self.user_compiled or settings == self._compiled_settings:
            current = self.model.optimizer
            if not current.built:
                current.build(self.model.trainable_variables)
            optimizer.build(self.model.trainable_variables)
            for variable, fresh in zip(current.variables, optimizer.variables, strict=True):
                variable.assign(fresh)
            return
        self._compile(optimizer)
        self._compiled_settings = settings

    def _compile(self, optimizer):
        self.model.compile(optimizer=optimizer, metrics=["accuracy"],
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           jit_compile=self.config.jit_compile)

    def _evaluate(self, split, **kwargs):
        if distribute.is_multi_worker(self.strategy):
            return distribute.evaluate_locally(self.model, *split)
        return data_lib.evaluate(self.model, split, verbose=0, **kwargs)

    def _evaluate_training_set(self, seed):
        """The metrics on the training set: the arrays, or one epoch of the pipeline (a round's iterations if it has
        no end)."""
        if data_lib.is_arrays(self.data.train):
            return self._evaluate(self.data.train)
        steps = self.data.train_steps_per_epoch(self.config.batch_size) or self.config.iterations
        return self._evaluate(self.data.train_batches(seed, steps, self.config.batch_size))

    def _reseed(self, seed):
        """Seeds the global generators and every layer's own (dropout, noise), so a round's
        randomness depends only on (seed, round), not on the rounds run before it in this process."""
        keras.utils.set_random_seed(seed)
        generators = [g for layer in self.model._flatten_layers() for g in layer._seed_generators]
        for offset, generator in enumerate(generators):
            generator.state.assign(np.array([seed % 2**31, offset], dtype=generator.state.dtype))


def _all_arrays(data):
    return all(data_lib.is_arrays(split) for split in (data.train, *data.splits.values()))
