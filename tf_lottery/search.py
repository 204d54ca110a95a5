"""Iterative magnitude pruning with rewinding: the ticket search.

Round 0 trains the dense network. Every later round prunes the previous round's
trained network with the plan, resets the survivors (to the rewind weights, or
keeps the trained weights for `lr` / `finetune`), and trains again; with
`gradual_iterations` it prunes step by step while it trains (`GradualPruning`).

`TicketSearch` joins three parts: the round schedule (`tf_lottery.schedule`:
which masks, start weights and length each round gets), the trainer
(`tf_lottery.trainer`: one round with the user's compile and data) and the run
store (`tf_lottery.run_store`, which alone knows the run directory's layout).
Each round is saved as it ends. A process killed at any moment loses at most the
round in progress: resuming rebuilds the next round from the last complete round
folder, and seeds every round from (seed, round), so a resumed run equals an
uninterrupted one.
"""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import distribute, environment, masking, run_store, saliency, stability, storage, weights
from tf_lottery.callbacks import EarlyBirdStopping, GradualPruning, LotteryCallback, MovementTracker
from tf_lottery.data import as_search_data
from tf_lottery.run_store import RunDirError, RunStore, empty_history
from tf_lottery.schedule import RoundSchedule, round_seed
from tf_lottery.search_config import SearchConfig
from tf_lottery.trainer import Trainer, best_evaluation, monitor_mode

# Fields a resumed run may change: when it stops, the learning rate of the rounds still to train (to continue
# past a round that diverged), and how close to round 0 the best round must be.
_RESUMABLE_CHANGES = ("rounds", "target_density", "learning_rate", "tolerance")


class RoundDivergedError(ValueError):
    """A round's training ended with a loss or weights that are not finite; nothing of it was saved."""


class TicketSearch:
    """Runs a ticket search and checkpoints every round.

    Args:
        build_model: `() -> keras.Model`, a model of any structure; its weights
            (fresh or pretrained) are round 0's starting point, and a new call
            gives the reinit control's fresh initialization. The search builds it
            on example inputs if it is not built, and masks it
            (`tf_lottery.mask`). If it is compiled, its loss, metrics and
            optimizer train every round (see `tf_lottery.trainer`); if not, the
            search compiles it as a classifier with logits outputs.
        data: a `tf_lottery.SearchData` (the user's arrays, tf.data pipelines
            or PyDatasets), or a `tf_lottery.datasets.Dataset`.
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
        self.build_model, self.data, self.config = build_model, as_search_data(data), config
        self.run_dir, self.replay_masks_from = run_dir, replay_masks_from
        self.resume, self.overwrite, self.verbose = resume, overwrite, verbose
        self.tensorboard, self.mask_kwargs = tensorboard, mask_kwargs or {}
        self.strategy = strategy or tf.distribute.get_strategy()
        if config.early_bird is not None and distribute.is_multi_worker(self.strategy):
            raise ValueError("early_bird cannot stop a multi-worker round early; search on one machine (any "
                             "strategy but multi_worker), or drop early_bird.")

    # ------------------------------------------------------------ public API

    def run(self):
        """Runs (or resumes) the search; returns the history dict."""
        config = self.config
        self.write_dir = distribute.writable_dir(self.run_dir, self.strategy)
        self.chief = self.write_dir == self.run_dir
        self.store, self.write_store = RunStore(self.run_dir), RunStore(self.write_dir)
        keras.utils.set_random_seed(config.seed)
        self.model = self._build_masked()
        self.schedule = RoundSchedule(config, self.model, lambda index: round_seed(config.seed, index),
                                      self._fresh_weights, self._load_replay())
        self.schedule.check_plan()
        if self.schedule.structure is not None:
            self._log(self.schedule.structure.summary())
        self.trainer = Trainer(self.model, self.data, config, self.strategy, self.verbose)
        self._check_before_training()
        history = self._prepare_run_dir()
        if config.rewind == "auto":
            self.config = dataclasses.replace(config, rewind=self._auto_rewind_point())
        index = len(history["rounds"])
        if index:
            self._log(f"Resuming {self.run_dir} after round {index - 1}.")
        while not self.schedule.done(history["rounds"]):
            masks = self.schedule.masks(index)
            self.schedule.start(index, masks)
            history["rounds"].append(self._train_round(index, masks))
            history["best_round"] = self._best_round(history["rounds"])
            self.write_store.write_history(history)
            index += 1
        self._save_best_ticket(history)
        return history

    def save_ticket(self, index, path):
        """Saves the masked, trained network of completed round `index` as a `.keras` file, atomically."""
        self.store.restore_round(self.model, index)
        storage.save_model(self.model, path)

    # ------------------------------------------------------------- run folder

    def _signature(self):
        return {
            "weights": {path: list(value.shape) for path, value in self.schedule.initial_weights.items()},
            "dataset": self.data.describe(),
            "replay_masks_from": os.path.abspath(self.replay_masks_from) if self.replay_masks_from else None,
            "compile": self.trainer.compile_signature(),
        }

    def _check_before_training(self):
        """Raises a `ValueError` naming the fix for data, a loss or a monitor the search cannot use."""
        config = self.config
        self.data.check(self.model, config.batch_size, needs_epochs=config.iterations is None)
        steps_per_epoch = self.data.train_steps_per_epoch(config.batch_size)
        self.trainer.check(config.monitor, config.mode, 0,
                           self.schedule.iterations(0, masking.get_masks(self.model), steps_per_epoch))

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
        store.write_model(self.model)
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
        saved_weights = saved["signature"]["weights"]
        if list(saved_weights) != list(signature["weights"]) and list(saved_weights.values()) == list(
                signature["weights"].values()):
            raise ValueError(f"Cannot resume {self.run_dir}: the model's weights have the run's shapes but other "
                             "names, which Keras numbers when it names layers and metrics itself (dense_1, dense_2, "
                             "...). Name them in the model, or resume in a new process (or after "
                             "keras.backend.clear_session()) so that Keras numbers them as it did for the run.")
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
            metrics, state = self.store.read_round(index, self.schedule.state_names())
            self.schedule.keep(index, state)
            rounds.append(metrics)
        return {"rounds": rounds, "best_round": self._best_round(rounds)}

    def _auto_rewind_point(self):
        """The rewind point of `rewind="auto"`: the one this run (resumed) or the replayed run chose, or the one
        measured now and recorded in the run directory."""
        sources = [self.store] + ([RunStore(self.replay_masks_from)] if self.replay_masks_from else [])
        record = next((source.read_instability() for source in sources if source.has_instability()), None)
        if record is None:
            record = self._measure_instability()
            self.write_store.write_instability(record)
        k = record["rewind_iteration"]
        barriers = ", ".join(f"{curve['rewind_iteration']}: {curve['barrier']:.3f}" for curve in record["curves"])
        self._log(f"rewind='auto' rewinds to iteration {k} (error barrier by iteration: {barriers}; stable under "
                  f"{record['threshold']}).")
        return stability.rewind_setting(k)

    def _measure_instability(self):
        """Runs `stability.instability` on the dense network for the candidates of `rewind="auto"`."""
        config = self.config
        length = config.round_length(self.data.train_steps_per_epoch(config.batch_size))
        candidates = config.auto_rewind_candidates(length)
        self._log(f"rewind='auto': training two copies of {length} iterations from each of iterations {candidates} "
                  "to find where training becomes stable (tf_lottery.stability).")
        start = weights.snapshot(self.model)  # `build_model` may return the search's own model.
        curves = stability.instability(self.build_model, self.data, config, candidates, strategy=self.strategy,
                                       verbose=self.verbose)
        weights.restore(self.model, start)
        chosen = stability.earliest_stable(curves, config.stability_threshold)
        if chosen is None:
            self._log(f"No candidate is stable (every barrier is {config.stability_threshold} or more): rewinding to "
                      f"the latest, iteration {candidates[-1]}. Test later iterations with rewind_candidates.")
        return {"threshold": config.stability_threshold, "stable": chosen is not None,
                "rewind_iteration": candidates[-1] if chosen is None else chosen, "curves": curves}

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

    # ------------------------------------------------------------- the rounds

    def _build_model(self, model=None):
        """`model` (default: a new one from `build_model`), called on example inputs if it is not built (a
        subclassed model)."""
        model = model or self.build_model()
        if not model.built:
            model(self.data.example_inputs())
        return model

    def _build_masked(self):
        with self.strategy.scope():
            return masking.mask(self._build_model(), **self.mask_kwargs)

    def _fresh_weights(self, index):
        """A fresh initialization for round `index` of the reinit control, under the search model's keys (a new
        instance of an architecture with unnamed layers gets other names). If `build_model` returns fixed weights
        (a saved or pretrained model), they are drawn anew from the model's configuration."""
        keras.utils.set_random_seed(round_seed(self.config.seed + 1, index))
        initial = self.schedule.initial_weights
        model = self._build_model()
        fresh = weights.by_position(weights.snapshot(model), initial)
        if all(np.array_equal(fresh[key], initial[key]) for key in initial):
            fresh = weights.by_position(weights.snapshot(self._build_model(weights.reinitialized(model))), initial)
        return fresh

    def _callbacks(self, index, masks):
        """The round's callbacks: the rewind point, and what the criterion, early-bird or gradual pruning need."""
        config, schedule = self.config, self.schedule
        late_rewinding = ":" in config.rewind and index == 0
        callbacks = {"lottery": LotteryCallback(config.rewind if late_rewinding else 0)}
        if config.criterion in saliency.METHODS:
            batch = next(iter(self.data.train_batches(round_seed(config.seed, index), 1, config.batch_size)))
            density = schedule.next_density(masks) if config.criterion == "synflow" else None
            callbacks["tracker"] = saliency.InitializationScores(config.criterion, batch[:2], density)
        elif "statistics" in schedule.state_names():
            callbacks["tracker"] = MovementTracker(config.movement_every)
        statistics = callbacks["tracker"].statistics if "tracker" in callbacks else None
        if schedule.prunes_gradually(index):  # It checks, before the first step, that the round is long enough.
            callbacks["gradual"] = GradualPruning(masks, config.gradual_iterations, config.gradual_every,
                                                  schedule.criterion, schedule.plan.block, statistics)
        if config.early_bird is not None and index == 0:
            callbacks["early_bird"] = EarlyBirdStopping(schedule.one_shot_plan(masks), schedule.criterion,
                                                        config.early_bird, config.early_bird_patience, statistics)
        return callbacks

    def _train_round(self, index, masks):
        """Trains round `index`, which ends with `masks`; saves and returns its metrics."""
        config, started = self.config, time.time()
        steps_per_epoch = self.data.train_steps_per_epoch(config.batch_size)
        total = self.schedule.iterations(index, masks, steps_per_epoch)
        period = config.eval_every or (steps_per_epoch if config.epochs and total % steps_per_epoch == 0 else
                                       (100 if total % 100 == 0 else total))
        if total % period:
            raise ValueError(f"The round's {total} iterations are not a multiple of eval_every ({period}).")
        callbacks = self._callbacks(index, masks)
        result = self.trainer.train(round_seed(config.seed, index), total, period, list(callbacks.values()), index)
        if result.diverged:
            raise RoundDivergedError(
                f"Round {index} diverged: its training loss is {result.train['loss']} with learning rate "
                f"{result.learning_rate:g}. It was not saved; {self.run_dir} keeps its {index} completed round(s). "
                + (f"Compile the model with a smaller learning rate and resume to train round {index} again."
                   if self.trainer.user_compiled else
                   f"Resume with a smaller learning_rate to train round {index} again."))
        metrics = self._metrics(index, result, time.time() - started)
        if "early_bird" in callbacks:
            early_bird = callbacks["early_bird"]
            metrics["early_bird"] = {"stopped_at": early_bird.stopped_at, "distances": early_bird.distances}
        if "gradual" in callbacks:
            metrics["gradual_pruning"] = callbacks["gradual"].steps
        state = {"masks": masking.get_masks(self.model), "rewind": callbacks["lottery"].rewind_weights,
                 "trained": result.trained}
        if "tracker" in callbacks:
            state["statistics"] = callbacks["tracker"].statistics()
        self.schedule.keep(index, state)
        self._save_round(index, state, metrics)
        self._report(metrics)
        return metrics

    def _metrics(self, index, result, seconds):
        """The round's record: its density, and every compiled metric on each set at the end and at the
        evaluation with the best monitored value (the early-stop point)."""
        report = masking.sparsity_report(self.model)
        end = result.curve[-1]
        early = best_evaluation(result.curve, self.config.monitor, self.config.mode)
        return {
            "round": index,
            "density": report["density"],
            "layer_density": {key: layer["density"] for key, layer in report["layers"].items()},
            "remaining_weights": report["remaining"],
            "iterations": end["iteration"],
            **{f"train_{name}": value for name, value in result.train.items()},
            **{name: value for name, value in end.items() if name != "iteration"},
            "early_stop_iteration": early["iteration"],
            **{f"early_stop_{name}": value for name, value in early.items() if name != "iteration"},
            "seconds": seconds,
            "learning_rate": result.learning_rate,
            "curve": result.curve,
        }

    def _best_round(self, rounds):
        return best_round(rounds, self.config.tolerance, self.config.monitor, self.config.mode)

    def _save_round(self, index, state, metrics):
        self.write_store.write_round(index, state, metrics)
        if self.tensorboard:
            self._write_scalars(metrics)

    def _write_scalars(self, metrics):
        writer = tf.summary.create_file_writer(self.write_store.path(run_store.TENSORBOARD_DIR))
        with writer.as_default(step=metrics["round"]):
            for name, value in metrics.items():
                if name != "round" and isinstance(value, (int, float)):
                    tf.summary.scalar(name, value)
        writer.close()

    def _save_best_ticket(self, history):
        if history["best_round"] is not None and self.chief:
            self.save_ticket(history["best_round"], self.store.path(run_store.TICKET_FILE))

    def _report(self, m):
        monitor = self.config.monitor
        shown = [name for name in dict.fromkeys((monitor, "val_accuracy", f"test_{monitor[4:]}", "test_accuracy"))
                 if name in m]
        values = "  ".join(f"{name} {m[name]:.4f}" for name in shown)
        self._log(f"round {m['round']:>3}  density {m['density']:8.3%}  {values}  early stop "
                  f"{m['early_stop_iteration']:>6}  {m['seconds']:6.1f} s")

    def _log(self, message):
        if self.verbose:
            print(message, flush=True)


def read_run_config(run_dir):
    """The `SearchConfig` of the run in `run_dir` (settings added since it started at their defaults)."""
    return SearchConfig(**RunStore(run_dir).read_record()["config"])


def best_round(rounds, tolerance=0.005, monitor="val_loss", mode="auto"):
    """The sparsest round whose final `monitor` is at most `tolerance` worse than round 0's."""
    if not rounds:
        return None
    sign = 1 if monitor_mode(monitor, mode) == "min" else -1
    limit = sign * rounds[0][monitor] + tolerance
    eligible = [r for r in rounds if sign * r[monitor] <= limit + 1e-12]
    return min(eligible, key=lambda r: r["density"])["round"]
