"""Iterative magnitude pruning with rewinding: the ticket search.

Round 0 trains the dense network. Every later round prunes the previous round's
trained network with the plan, resets the survivors (to the rewind weights, or
keeps the trained weights for `lr` / `finetune`), and trains again; with
`gradual_iterations` it prunes step by step while it trains (`GradualPruning`).

Each round is saved in the run directory (`tf_lottery.run_store`, which knows its layout).
A process killed at any moment loses at most the round in progress: resuming
rebuilds the next round from the last complete round folder, and seeds every
round from (seed, round), so a resumed run equals an uninterrupted one.
"""

import dataclasses
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import criteria, distribute, environment, masking, run_store, storage, weights
from tf_lottery.run_store import RunDirError, RunStore, empty_history
from tf_lottery.callbacks import (UNITS, EarlyBirdStopping, GradualPruning, LotteryCallback, MovementTracker,
                                  parse_rewind_point)
from tf_lottery.pruning import SCOPES, PruningPlan, compounded_plan, parse_block, random_masks_like

REWIND_MODES = ("init", "step:K", "epoch:K", "lr", "finetune")
CONTROLS = ("reinit", "random_mask")
OPTIMIZERS = ("adam", "sgd", "momentum")
LR_SCHEDULES = ("constant", "cosine")
#: The cosine schedule ends at this fraction of the initial learning rate, where `finetune` rounds continue.
COSINE_FLOOR = 0.01


# Fields a resumed run may change: when it stops, and the learning rate of the rounds still to train (to
# continue past a round that diverged).
_RESUMABLE_CHANGES = ("rounds", "target_density", "learning_rate")


class RoundDivergedError(ValueError):
    """A round's training ended with a loss or weights that are not finite; nothing of it was saved."""


def _field(default, help, choices=None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of a ticket search; each field's metadata carries its help text."""

    rounds: int | None = _field(5, "Pruning rounds after the dense round 0 (None: until target_density).")
    target_density: float | None = _field(None, "Stop once the global density is at or below this fraction.")
    prune_rate: float = _field(0.2, "Fraction of surviving weights pruned per round.")
    output_prune_rate: float | None = _field(0.1, "Rate for the output layer (None: same as prune_rate).")
    layer_rates: str | None = _field(None, "Per-layer rates overriding the two above, 'layer=rate,...' (e.g. "
                                           "'conv1=0.1,conv2=0.1': the paper's Conv-2 prunes convolutions at 10%).")
    scope: str = _field("layerwise", "Rank weights per layer or globally.", SCOPES)
    block: str | None = _field(None, "Prune 2-D kernels in blocks, 'RxC' in TFLite's [out, in] layout: "
                                     "'1x4' (fast sparse float TFLite) or '1x16' (fast sparse int8).")
    criterion: str = _field("magnitude", "Pruning criterion.", tuple(criteria.CRITERIA))
    movement_every: str = _field("step", "How often criterion movement_rate adds up |Δw|: every step, or every "
                                         "epoch (evaluation period).", UNITS)
    rewind: str = _field("init", f"Where survivors restart each round: {REWIND_MODES}.")
    control: str | None = _field(None, "Run a control instead of a ticket search: reinit (the masks, a fresh "
                                       "initialization) or random_mask (random masks of the same per-layer density, "
                                       "in the same blocks).", CONTROLS)
    one_shot: bool = _field(False, "Prune straight to the target density (or `rounds` rounds' worth) at once.")
    rounds_to_target: int | None = _field(None, "Reach target_density in this many pruning rounds, each removing "
                                                "the same share of what the plan's rates remove on the way there "
                                                "(1 is one_shot).")
    early_bird: float | None = _field(None, "Early-bird tickets (You et al., 2020): end the dense round once the "
                                            "mask drawn at the final density changes by less than this fraction "
                                            "(e.g. 0.1) in early_bird_patience evaluations in a row, then prune "
                                            "to it at once, as one_shot does.")
    early_bird_patience: int = _field(5, "Consecutive stable evaluations that end an early-bird dense round.")
    epochs: int | None = _field(5, "Training epochs per round (exclusive with iterations).")
    iterations: int | None = _field(None, "Training iterations per round (exclusive with epochs).")
    interim_iterations: int | None = _field(None, "Training iterations of every round before the last (round 0 "
                                                  "too), which only have to find the masks; the last round trains "
                                                  "for the full epochs/iterations. With rewind='lr': gradual "
                                                  "pruning at the cost of a few dense trainings.")
    gradual_iterations: int | None = _field(None, "Prune every round after round 0 gradually, over its first this "
                                                  "many iterations (Zhu & Gupta's cubic schedule, see "
                                                  "GradualPruning): from the previous round's masks to as many "
                                                  "survivors as the plan keeps, chosen by the criterion as the "
                                                  "weights train. With rewind='lr' and rounds_to_target=1: gradual "
                                                  "magnitude pruning after a dense round.")
    gradual_every: int = _field(100, "Iterations between the pruning steps of gradual_iterations.")
    eval_every: int | None = _field(None, "Iterations between evaluations (default: one epoch, or 100).")
    batch_size: int = _field(60, "Training batch size.")
    optimizer: str = _field("adam", "Optimizer ('momentum': SGD with momentum 0.9).", OPTIMIZERS)
    learning_rate: float = _field(1.2e-3, "Initial learning rate.")
    lr_schedule: str = _field("constant", f"Learning-rate schedule within a round (cosine: down to "
                                          f"{COSINE_FLOOR:g} of learning_rate).", LR_SCHEDULES)
    seed: int = _field(0, "One seed for initialization, data order, dropout and random masks.")
    jit_compile: bool = _field(False, "Compile the train step with XLA (the path TPUs take).")

    def __post_init__(self):
        self.plan()  # Validates the pruning fields.
        for field in dataclasses.fields(self):
            allowed = field.metadata["choices"]
            value = getattr(self, field.name)
            if allowed and value not in allowed and not (value is None and field.default is None):
                raise ValueError(f"{field.name} must be one of {allowed}; got {value!r}.")
        if self.rewind not in ("init", "lr", "finetune"):
            try:
                parse_rewind_point(self.rewind)
            except ValueError:
                raise ValueError(f"rewind must be one of {REWIND_MODES}; got {self.rewind!r}.") from None
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("Give exactly one of epochs or iterations per round.")
        for name in ("rounds", "epochs", "iterations", "interim_iterations", "gradual_iterations", "gradual_every",
                     "eval_every", "batch_size", "early_bird_patience", "rounds_to_target"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if self.rounds is None and self.target_density is None:
            raise ValueError("Give rounds, target_density, or both, so the search knows when to stop.")
        if self.rounds_to_target is not None and (self.target_density is None or self.prunes_once):
            raise ValueError("rounds_to_target needs target_density (the density its rounds reach) and excludes "
                             "one_shot and early_bird (which prune to it in one round).")
        for name in ("iterations", "interim_iterations"):
            value = getattr(self, name)
            if value and self.eval_every and value % self.eval_every:
                raise ValueError(f"{name} ({value}) must be a multiple of eval_every ({self.eval_every}).")
        if ":" in self.rewind:  # Round 0 trains for interim_iterations, if given.
            unit, count = parse_rewind_point(self.rewind)
            if unit == "step":
                length = self.interim_iterations or self.iterations
            else:
                length = None if self.interim_iterations else self.epochs
            if length is not None and count > length:
                raise ValueError(f"The rewind point {self.rewind} lies beyond round 0, which trains for {length} "
                                 f"{unit}{'s' * (length != 1)}: rewind earlier, or train round 0 longer.")
        if self.gradual_iterations and self.iterations and self.gradual_iterations > self.iterations:
            raise ValueError(f"gradual_iterations ({self.gradual_iterations}) exceeds a round's iterations "
                             f"({self.iterations}): prune over fewer iterations, or train longer.")
        if self.gradual_iterations and self.control:
            raise ValueError("A control trains given masks from the start of every round, so it cannot prune "
                             "gradually: run it without gradual_iterations.")
        if self.early_bird is not None and not 0 < self.early_bird <= 1:
            raise ValueError(f"early_bird must be a mask distance in (0, 1], e.g. 0.1; got {self.early_bird!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate!r}.")

    @property
    def prunes_once(self):
        """Whether round 1 prunes straight to the final density (one-shot and early-bird searches)."""
        return self.one_shot or self.early_bird is not None

    def plan(self):
        """The `PruningPlan` these settings describe."""
        return PruningPlan(rate=self.prune_rate, output_rate=self.output_prune_rate,
                           layer_rates=parse_layer_rates(self.layer_rates), scope=self.scope,
                           target_density=self.target_density, block=parse_block(self.block))


def parse_layer_rates(text):
    """`"conv1=0.1,conv2=0.1"` -> `{"conv1": 0.1, "conv2": 0.1}`; `None` -> `{}`."""
    rates = {}
    for item in filter(None, (text or "").split(",")):
        name, _, rate = item.partition("=")
        try:
            rates[name.strip()] = float(rate)
        except ValueError:
            raise ValueError(f"layer_rates must look like 'conv1=0.1,conv2=0.1' (layer=rate, comma-separated); "
                             f"got {text!r}.") from None
    return rates


def round_seed(seed, round_index):
    """The seed of one round, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0])


class _Evaluator(keras.callbacks.Callback):
    """Evaluates validation and test sets every period; stops training once the validation loss is not finite."""

    def __init__(self, data, evaluate):
        super().__init__()
        self.data, self.evaluate = data, evaluate
        self.curve = []

    def on_epoch_end(self, epoch, logs=None):
        val = self.evaluate(self.data.x_val, self.data.y_val)
        test = self.evaluate(self.data.x_test, self.data.y_test)
        self.curve.append({"iteration": int(self.model.optimizer.iterations.numpy()), "val_loss": val["loss"],
                           "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
                           "test_loss": test["loss"]})
        if not np.isfinite(val["loss"]):
            self.model.stop_training = True  # Diverged: the round is not saved (see `RoundDivergedError`).


class TicketSearch:
    """Runs a ticket search and checkpoints every round.

    Args:
        build_model: `() -> keras.Model`, a built model of any structure whose
            outputs are logits; its weights (fresh or pretrained) are round 0's
            starting point. The search masks it (`tf_lottery.mask`).
        data: a `tf_lottery.datasets.Dataset` (or anything with its fields).
        config: a `SearchConfig`.
        run_dir: the run directory (see `tf_lottery.run_store`).
        replay_masks_from: a run directory whose round masks this run reuses
            (e.g. to train a control at exactly the ticket's densities).
        resume: continue the run in `run_dir` from its last complete round
            (or start it there, if the folder holds none); the rounds still
            to train may use another `learning_rate`.
        overwrite: delete the run in `run_dir` and start again. A folder that
            holds anything but a run is never deleted.
        verbose: 0 silent; 1 Keras' progress bar and one line per round.
        tensorboard: write per-round scalars under `run_dir/tensorboard`.
        mask_kwargs: passed to `tf_lottery.mask` (e.g. `skip`, `registry`).
        strategy: a `tf.distribute.Strategy` (see `tf_lottery.distribute`);
            `config.batch_size` is the global batch. Default: the current one.
    """

    def __init__(self, build_model, data, config, run_dir, *, replay_masks_from=None, resume=False,
                 overwrite=False, verbose=1, tensorboard=False, mask_kwargs=None, strategy=None):
        if resume and overwrite:
            raise ValueError("Choose resume or overwrite, not both.")
        if (config.prunes_once or config.rounds_to_target or config.gradual_iterations) and replay_masks_from:
            raise ValueError("one_shot, early_bird, rounds_to_target and gradual_iterations exclude "
                             "replay_masks_from: a replay trains the replayed run's masks.")
        self.build_model, self.data, self.config = build_model, data, config
        self.run_dir, self.replay_masks_from = run_dir, replay_masks_from
        self.resume, self.overwrite, self.verbose = resume, overwrite, verbose
        self.tensorboard, self.mask_kwargs = tensorboard, mask_kwargs or {}
        self.strategy = strategy or tf.distribute.get_strategy()
        if config.early_bird is not None and distribute.is_multi_worker(self.strategy):
            raise ValueError("early_bird cannot stop a multi-worker round early; search on one machine (any "
                             "strategy but multi_worker), or drop early_bird.")
        self.plan = config.plan()
        self.criterion = criteria.get(config.criterion, seed=config.seed)

    # ------------------------------------------------------------ public API

    def run(self):
        """Runs (or resumes) the search; returns the history dict."""
        self.write_dir = distribute.writable_dir(self.run_dir, self.strategy)
        self.chief = self.write_dir == self.run_dir
        self.store, self.write_store = RunStore(self.run_dir), RunStore(self.write_dir)
        keras.utils.set_random_seed(self.config.seed)
        self.model = self._build_masked()
        self._compiled_settings = None  # The optimizer settings the model was last compiled with (see `_compile`).
        self.initial_weights = weights.snapshot(self.model)
        self.plan.check_names(masking.get_masks(self.model))
        self.replayed = self._load_replay()
        history = self._prepare_run_dir()
        index = len(history["rounds"])
        if index:
            self._log(f"Resuming {self.run_dir} after round {index - 1}.")
        while index <= self._last_round() and not self._reached_target(history):
            masks = self._masks_for(index)
            self._start_round(index, masks)
            history["rounds"].append(self._train_round(index, masks))
            history["best_round"] = best_round(history["rounds"])
            self.write_store.write_history(history)
            index += 1
        self._save_best_ticket(history)
        return history

    # ------------------------------------------------------------- run folder

    def _signature(self):
        return {
            "weights": {path: list(value.shape) for path, value in self.initial_weights.items()},
            "dataset": {"name": getattr(self.data, "name", None),
                        "shapes": {split: list(getattr(self.data, f"x_{split}").shape)
                                   for split in ("train", "val", "test")}},
            "replay_masks_from": os.path.abspath(self.replay_masks_from) if self.replay_masks_from else None,
        }

    def _prepare_run_dir(self):
        """Checks the run directory before any training; returns the history to continue from."""
        store = self.store
        if not self.chief:  # The chief checks and prepares the run directory.
            return self._resumed_history() if self.resume and store.is_run() else empty_history()
        if store.entries() and not (self.resume and store.is_run()):
            if self.overwrite:
                self._log(f"Deleted the run in {self.run_dir}: {', '.join(store.delete())}.")
            elif store.is_run():
                raise FileExistsError(f"{self.run_dir} already holds a run. Pass resume to continue it, overwrite "
                                      "to start again, or choose another run directory.")
            else:
                raise RunDirError(f"{self.run_dir} is not empty and holds no tf_lottery run (it has "
                                  f"{', '.join(store.entries())}): choose another run directory.")
        store.check_writable()
        if store.is_run():
            history = self._resumed_history()
            store.write_history(history)  # Rebuilt from the round folders, whatever the file held.
            return history
        store.write_record({"config": dataclasses.asdict(self.config), "signature": self._signature(),
                            "versions": environment.versions()})
        return empty_history()

    def _resumed_history(self):
        """Checks that the run in the run directory is this search; loads its rounds."""
        saved = self.store.read_record()
        config = dataclasses.asdict(self.config)
        # Settings added after a run was started keep their defaults, which the run used.
        saved_config = {**{field.name: field.default for field in dataclasses.fields(SearchConfig)},
                        **saved["config"]}
        differences = [f"{key}: run has {saved_config.get(key)!r}, now {value!r}"
                       for key, value in config.items()
                       if key not in _RESUMABLE_CHANGES and saved_config.get(key) != value]
        signature = self._signature()
        differences += [f"{key}: run has {saved['signature'].get(key)!r}, now {value!r}"
                        for key, value in signature.items() if saved["signature"].get(key) != value]
        if differences:
            raise ValueError(f"Cannot resume {self.run_dir}: it was started with a different setup. "
                             "Differences: " + "; ".join(differences) +
                             ". Resume with the original settings, or start a new run.")
        count = self.store.completed_rounds()  # Before anything is removed: a gap is an error.
        if self.chief:
            for name in self.store.clear_leftovers():
                self._log(f"Removed {name}, left by an interrupted write.")
        rounds = []
        for index in range(count):
            metrics, state = self.store.read_round(index, self._state_names())
            self._keep_state(index, state)
            rounds.append(metrics)
        return {"rounds": rounds, "best_round": best_round(rounds)}

    # ------------------------------------------------------------- the rounds

    def _state_names(self):
        """The arrays each round saves: masks and weights, and what the criterion needs."""
        names = ["masks", "rewind", "trained"]
        return names + ["statistics"] if self.config.criterion == "movement_rate" else names

    def _last_round(self):
        if self.config.prunes_once:
            return 1
        if self.config.rounds_to_target:
            return min(self.config.rounds or sys.maxsize, self.config.rounds_to_target)
        if self.replayed is not None:
            return len(self.replayed) - 1 if self.config.rounds is None else min(len(self.replayed) - 1,
                                                                                   self.config.rounds)
        return self.config.rounds if self.config.rounds is not None else sys.maxsize

    def _reached_target(self, history):
        return bool(history["rounds"]) and self._at_target(history["rounds"][-1]["density"])

    def _at_target(self, density):
        return self.config.target_density is not None and density <= self.config.target_density + 1e-9

    def _round_iterations(self, index, masks, steps_per_epoch):
        """The training length of round `index`, which ends with `masks`: interim, unless it is the last round."""
        config = self.config
        full = config.iterations or config.epochs * steps_per_epoch
        if not config.interim_iterations or index == self._last_round() or self._at_target(masking.density(masks)):
            return full
        return config.interim_iterations

    def _load_replay(self):
        if not self.replay_masks_from:
            return None
        source = RunStore(self.replay_masks_from)
        replayed = [source.read_masks(index) for index in range(source.completed_rounds())]
        if not replayed:
            raise RunDirError(f"{self.replay_masks_from} holds no completed rounds to replay masks from: check "
                              "the path.")
        expected = masking.get_masks(self.model)
        for masks in replayed:
            if {k: v.shape for k, v in masks.items()} != {k: v.shape for k, v in expected.items()}:
                raise ValueError(f"The masks in {self.replay_masks_from} belong to another model "
                                 f"(keys and shapes differ from {sorted(expected)}).")
        return replayed

    def _masks_for(self, index):
        """The masks round `index` trains with."""
        if index == 0:
            masks = masking.get_masks(self.model)
        elif self.replayed is not None:
            masks = self.replayed[index]
        else:
            masks = self._pruned_masks(index)
        if self.config.control == "random_mask" and index > 0:
            masks = random_masks_like(masks, round_seed(self.config.seed, index), self.plan.block)
        return masks

    def _pruned_masks(self, index):
        state = self._round_state
        final = masking.get_prunable_weights(self.model, state["trained"])
        initial = masking.get_prunable_weights(self.model, state["rewind"])
        scores = criteria.score(self.criterion, final, initial, state.get("statistics"))
        if self.config.prunes_once:
            plan = self._one_shot_plan(state["masks"])
        elif self.config.rounds_to_target:
            plan = compounded_plan(self.plan, self._first_masks, self._output_layer(),
                                   steps=self.config.rounds_to_target)
        else:
            plan = self.plan
        return plan.prune(state["masks"], scores, output_layer=self._output_layer())

    def _one_shot_plan(self, masks):
        return compounded_plan(self.plan, masks, self._output_layer(), self.config.rounds)

    def _build_masked(self):
        with self.strategy.scope():
            return masking.mask(self.build_model(), **self.mask_kwargs)

    def _output_layer(self):
        return masking.output_layer(self.model)

    def _start_weights(self, index):
        """The weights round `index` starts from, before its masks are applied."""
        mode = self.config.rewind
        if self.config.control == "reinit":
            keras.utils.set_random_seed(round_seed(self.config.seed + 1, index))
            return weights.snapshot(self.build_model())
        if index == 0:
            return self.initial_weights
        if mode in ("lr", "finetune"):
            return self._round_state["trained"]
        return self._rewind_point

    def _keep_state(self, index, state):
        """Keeps the arrays of the last round, and round 0's rewind weights: where later rounds restart.

        Round 0 trains every weight, so its rewind weights hold the rewind value
        of each one; a later round's have its pruned weights zeroed, and a mask
        that is not nested in the one before (the random_mask control) would
        restart some survivors from 0 if it rewound to them.
        """
        self._round_state = state
        if index == 0:
            self._rewind_point, self._first_masks = state["rewind"], state["masks"]

    def _prunes_gradually(self, index):
        return bool(self.config.gradual_iterations) and index > 0

    def _start_round(self, index, masks):
        """Sets the weights and masks round `index` starts with: `masks`, or the last round's if it prunes gradually."""
        start = self._start_weights(index)
        masking.set_masks(self.model, self._round_state["masks"] if self._prunes_gradually(index) else masks)
        weights.restore(self.model, start)

    def _train_round(self, index, masks):
        """Trains round `index`, which ends with `masks`; saves and returns its metrics."""
        config, started = self.config, time.time()
        self._reseed(round_seed(config.seed, index))
        steps_per_epoch = -(-len(self.data.x_train) // config.batch_size)
        total = self._round_iterations(index, masks, steps_per_epoch)
        period = config.eval_every or (steps_per_epoch if total % steps_per_epoch == 0 and config.epochs else
                                       (100 if total % 100 == 0 else total))
        if total % period:
            raise ValueError(f"The round's {total} iterations are not a multiple of eval_every ({period}).")
        late_rewinding = ":" in config.rewind and index == 0
        lottery = LotteryCallback(config.rewind if late_rewinding else 0)
        evaluator = _Evaluator(self.data, self._evaluate)
        callbacks = [lottery, evaluator]
        tracker = early_bird = gradual = None
        if "statistics" in self._state_names():
            tracker = MovementTracker(config.movement_every)
            callbacks.insert(1, tracker)
        statistics = tracker.statistics if tracker else None
        if config.early_bird is not None and index == 0:
            early_bird = EarlyBirdStopping(self._one_shot_plan(masks), self.criterion, config.early_bird,
                                           config.early_bird_patience, statistics)
            callbacks.append(early_bird)
        if self._prunes_gradually(index):  # It checks, before the first step, that the round is long enough.
            gradual = GradualPruning(masks, config.gradual_iterations, config.gradual_every, self.criterion,
                                     self.plan.block, statistics)
            callbacks.insert(-1, gradual)
        with self.strategy.scope():
            self._compile(self._optimizer(index, total))
            fit_kwargs = dict(epochs=total // period, steps_per_epoch=period, callbacks=callbacks)
            if distribute.is_multi_worker(self.strategy):
                distribute.fit_with_strategy_run(self.model, self._train_dataset(index, total),
                                                 strategy=self.strategy, **fit_kwargs)
            else:
                self.model.fit(self._train_dataset(index, total), shuffle=False, verbose=self.verbose,
                               **fit_kwargs)
        trained = weights.snapshot(self.model)
        train = self._evaluate(self.data.x_train, self.data.y_train)
        if not (np.isfinite(train["loss"]) and all(np.isfinite(value).all() for value in trained.values())):
            raise RoundDivergedError(
                f"Round {index} diverged: its training loss is {train['loss']} with learning_rate "
                f"{config.learning_rate:g}. It was not saved; {self.run_dir} keeps its {index} completed round(s). "
                f"Resume with a smaller learning_rate to train round {index} again."
            )
        metrics = self._metrics(index, evaluator.curve, train, time.time() - started)
        if early_bird:
            metrics["early_bird"] = {"stopped_at": early_bird.stopped_at, "distances": early_bird.distances}
        if gradual:
            metrics["gradual_pruning"] = gradual.steps
        state = {"masks": masking.get_masks(self.model), "rewind": lottery.rewind_weights, "trained": trained}
        if tracker:
            state["statistics"] = tracker.statistics()
        self._keep_state(index, state)
        self._save_round(index, metrics)
        self._report(metrics)
        return metrics

    def _evaluate(self, images, labels):
        if distribute.is_multi_worker(self.strategy):
            return distribute.evaluate_locally(self.model, images, labels)
        return self.model.evaluate(images, labels, batch_size=1024, verbose=0, return_dict=True)

    def _reseed(self, seed):
        """Seeds the global generators and every layer's own (dropout, noise), so a round's
        randomness depends only on (seed, round), not on the rounds run before it in this process."""
        keras.utils.set_random_seed(seed)
        generators = [g for layer in self.model._flatten_layers() for g in layer._seed_generators]
        for offset, generator in enumerate(generators):
            generator.state.assign(np.array([seed % 2**31, offset], dtype=generator.state.dtype))

    def _metrics(self, index, curve, train, seconds):
        report = masking.sparsity_report(self.model)
        end = curve[-1]
        early = min(curve, key=lambda point: point["val_loss"])
        return {
            "round": index,
            "density": report["density"],
            "layer_density": {key: layer["density"] for key, layer in report["layers"].items()},
            "remaining_weights": report["remaining"],
            "iterations": end["iteration"],
            "train_accuracy": train["accuracy"], "train_loss": train["loss"],
            "val_accuracy": end["val_accuracy"], "val_loss": end["val_loss"],
            "test_accuracy": end["test_accuracy"], "test_loss": end["test_loss"],
            "early_stop_iteration": early["iteration"],
            "early_stop_val_loss": early["val_loss"],
            "early_stop_test_accuracy": early["test_accuracy"],
            "seconds": seconds,
            "learning_rate": self.config.learning_rate,
            "curve": curve,
        }

    def _compile(self, optimizer):
        """Compiles the model with `optimizer`; if the last round's optimizer had the same configuration, only
        sets that optimizer's state to `optimizer`'s fresh one, so the train and test steps are traced once per
        search, not once per round."""
        settings = keras.optimizers.serialize(optimizer)
        settings["config"].pop("name")  # Unique per instance ("adam_1"), not a setting.
        if self.model.compiled and settings == self._compiled_settings:
            optimizer.build(self.model.trainable_variables)
            for variable, fresh in zip(self.model.optimizer.variables, optimizer.variables, strict=True):
                variable.assign(fresh)
            return
        self.model.compile(optimizer=optimizer, metrics=["accuracy"],
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           jit_compile=self.config.jit_compile)
        self._compiled_settings = settings

    def _optimizer(self, index, total):
        config = self.config
        schedule = config.learning_rate
        if config.lr_schedule == "cosine":
            schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total,
                                                              alpha=COSINE_FLOOR)
            if config.rewind == "finetune" and index > 0:
                schedule = config.learning_rate * COSINE_FLOOR  # Continue at the final learning rate.
        if config.optimizer == "adam":
            return keras.optimizers.Adam(schedule)
        return keras.optimizers.SGD(schedule, momentum=0.9 if config.optimizer == "momentum" else 0.0)

    def _train_dataset(self, index, steps):
        """Batches for `steps` steps, in an order drawn with NumPy from (seed, round).

        The order is fixed before `tf.data` sees it, so it is the same under every
        `tf.distribute` strategy (a strategy rebuilds the pipeline, which re-seeds
        `Dataset.shuffle`); each replica gathers its share of the global batch.
        """
        count, batch = len(self.data.x_train), self.config.batch_size
        rng = np.random.default_rng(round_seed(self.config.seed, index))
        order = np.concatenate([rng.permutation(count) for _ in range(-(-steps * batch // count))])
        images, labels = tf.constant(self.data.x_train), tf.constant(self.data.y_train)
        return (tf.data.Dataset.from_tensor_slices(order[: steps * batch]).batch(batch)
                .map(lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))

    def _save_round(self, index, metrics):
        self.write_store.write_round(index, self._round_state, metrics)
        if self.tensorboard:
            self._write_scalars(metrics)

    def _write_scalars(self, metrics):
        writer = tf.summary.create_file_writer(self.write_store.path(run_store.TENSORBOARD_DIR))
        with writer.as_default(step=metrics["round"]):
            for name in ("density", "test_accuracy", "val_accuracy", "early_stop_iteration",
                         "early_stop_test_accuracy", "seconds"):
                tf.summary.scalar(name, metrics[name])
        writer.close()

    def _save_best_ticket(self, history):
        if history["best_round"] is not None and self.chief:
            self.save_ticket(history["best_round"], self.store.path(run_store.TICKET_FILE))

    def save_ticket(self, index, path):
        """Saves the masked, trained network of completed round `index` as a `.keras` file, atomically."""
        self.store.restore_round(self.model, index)
        with storage.atomic_path(path, ".keras") as temporary:
            self.model.save(temporary)

    def _report(self, m):
        self._log(f"round {m['round']:>3}  density {m['density']:8.3%}  test acc {m['test_accuracy']:.4f}  "
                  f"val acc {m['val_accuracy']:.4f}  early stop {m['early_stop_iteration']:>6} "
                  f"(test acc {m['early_stop_test_accuracy']:.4f})  {m['seconds']:6.1f} s")

    def _log(self, message):
        if self.verbose:
            print(message, flush=True)


def read_run_config(run_dir):
    """The `SearchConfig` of the run in `run_dir` (settings added since it started at their defaults)."""
    return SearchConfig(**RunStore(run_dir).read_record()["config"])


def best_round(rounds, max_accuracy_drop=0.005):
    """The sparsest round whose validation accuracy is within `max_accuracy_drop` of round 0's."""
    if not rounds:
        return None
    floor = rounds[0]["val_accuracy"] - max_accuracy_drop
    eligible = [r for r in rounds if r["val_accuracy"] >= floor]
    return min(eligible, key=lambda r: r["density"])["round"]
