"""keras-tuner search over lottery-ticket hyperparameters (keras-tuner is the `tuning` extra).

A trial is one short `tf_lottery.search.TicketSearch`; `LotteryTuner` is a
`keras_tuner.Tuner` whose `run_trial` runs it and reports the objective, so any
keras-tuner oracle drives the search. No `HyperModel`: the space is declared by
`build_search_space(hp)`, one hyperparameter per `SearchConfig` field it sets.

    tuner = LotteryTuner(build_model, data, SearchConfig(rounds=None, target_density=0.2, epochs=2),
                         oracle="bayesian", max_trials=20, directory="runs", project_name="tune")
    tuner.search()
    print(tuner.best_result())  # trial, hyperparameters, objective, run_dir, round, ticket

Layout of the project directory (`directory/project_name`):

    oracle.json, tuner0.json      keras-tuner's state (the tuner's own: the base config and objective)
    trial_NN/trial.json           the trial's hyperparameters, status and metrics
    trial_NN/search/              the trial's ticket-search run directory (see `tf_lottery.search`)
    trial_NN/ticket.keras         the ticket the objective scored (masks included; `tf_lottery.load_model`)

Resuming works as in keras-tuner: build the tuner again with `overwrite=False`
(the default) and call `search()`. Finished trials are not run again; a trial
cut off mid-search resumes its ticket search from its last complete round.

Distributed tuning is keras-tuner's: with `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT` and
`KERASTUNER_TUNER_ID` set, the chief's `search()` serves the oracle over gRPC until the study
ends and its `results()` then lists every trial; each worker's `search()` runs trials the chief
hands out, writing to the shared project directory (see `distributed_role`).
"""

import dataclasses
import os

import keras

from tf_lottery import extras, masking
from tf_lottery.pruning import SCOPES
from tf_lottery.search import SearchConfig, TicketSearch, best_round

keras_tuner = extras.require("keras_tuner", "tuning", __name__)

#: Objective name -> what the oracle optimizes. "accuracy": validation accuracy of the
#: ticket at `config.target_density` (the search's last round). "density": the lowest
#: density whose validation accuracy is within `tolerance` of the dense round's.
OBJECTIVES = {
    "accuracy": keras_tuner.Objective("val_accuracy", "max"),
    "density": keras_tuner.Objective("density", "min"),
}

#: Oracles built by name. Hyperband's budget is training epochs per round: a trial it
#: promotes runs its whole search again with more epochs (a search's rounds cannot be
#: extended to longer training), and `max_epochs` is the base config's `epochs`.
ORACLES = {
    "random": keras_tuner.oracles.RandomSearchOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    "hyperband": keras_tuner.oracles.HyperbandOracle,
}

_FIELDS = {field.name for field in dataclasses.fields(SearchConfig)}


def distributed_role():
    """This process's part in keras-tuner's distributed tuning, read from its environment variables.

    Returns "chief" (`KERASTUNER_TUNER_ID` contains "chief": serves the oracle, runs no trial),
    "worker" (runs the trials the chief hands out) or None (`KERASTUNER_ORACLE_IP` unset: one
    process does both).
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [name for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if name not in os.environ]
    if missing:
        raise ValueError(f"KERASTUNER_ORACLE_IP is set, so this process joins a distributed tuning run: set "
                         f"{' and '.join(missing)} too (the chief's port; 'chief' for the chief, a name of its "
                         "own such as 'tuner0' for each worker), or unset KERASTUNER_ORACLE_IP.")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def build_search_space(hp):
    """Declares the default search space on `hp` (a `keras_tuner.HyperParameters`) and returns it.

    Prune rate per round, output-layer rate, scope, rewinding point (the
    initialization, step 10, or the end of epoch 1), learning rate and criterion.
    A hyperparameter already in `hp` keeps its definition, so a user's
    `HyperParameters` narrows the space (`hp.Fixed("scope", "global")`,
    `hp.Choice("rewind", ["init", "step:500"])`) or extends it with any other
    `SearchConfig` field (`hp.Choice("optimizer", ["adam", "momentum"])`).
    """
    hp.Float("prune_rate", 0.1, 0.5, step=0.05, default=0.2)
    hp.Float("output_prune_rate", 0.05, 0.3, step=0.05, default=0.1)
    hp.Choice("scope", list(SCOPES))
    hp.Choice("rewind", ["init", "step:10", "epoch:1"])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1.2e-3)
    hp.Choice("criterion", ["magnitude", "magnitude_increase", "movement"])
    return hp


class LotteryTuner(keras_tuner.Tuner):
    """Tunes a ticket search: each trial runs `TicketSearch` with the trial's hyperparameters.

    Every trial uses `config.seed` (same initialization and data order, so trials
    differ only in their hyperparameters), and a named oracle is seeded from it
    too, so one seed fixes the whole tuning run.

    Args:
        build_model: `() -> keras.Model`, as for `TicketSearch`.
        data: a `tf_lottery.datasets.Dataset`.
        config: the base `SearchConfig`; each trial replaces the fields its
            hyperparameters name. The "accuracy" objective needs `target_density`.
        oracle: a name from `ORACLES`, or a `keras_tuner.Oracle` whose objective
            is `OBJECTIVES[objective]` (it brings its own seed, budget and space).
        objective: a key of `OBJECTIVES`.
        tolerance: for the "density" objective, the largest drop in validation
            accuracy from the dense round (0.005: half a point).
        max_trials: budget of a named random or Bayesian oracle.
        hyperparameters: a `keras_tuner.HyperParameters` for a named oracle,
            merged with `build_search_space` (see there).
        **kwargs: `keras_tuner.Tuner` arguments: `directory`, `project_name`,
            `overwrite` (False: resume an existing project; a worker never
            deletes the shared project), `distribution_strategy` (a
            `tf.distribute.Strategy` every trial's search trains under), ...
    """

    def __init__(self, build_model, data, config, oracle="random", *, objective="accuracy", tolerance=0.005,
                 max_trials=10, hyperparameters=None, **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}; got {objective!r}.")
        if objective == "accuracy" and config.target_density is None:
            raise ValueError("The 'accuracy' objective scores the ticket at config.target_density; set it.")
        self.build_model, self.data, self.config = build_model, data, config
        self.objective, self.tolerance = objective, tolerance
        self.role = distributed_role()
        if self.role == "worker":
            kwargs["overwrite"] = False  # The chief owns the project: it may already serve from it.
        super().__init__(oracle=self._oracle(oracle, max_trials, hyperparameters), **kwargs)
        self.oracle.update_space(build_search_space(self.oracle.get_space()))
        unknown = sorted(hp.name for hp in self.oracle.get_space().space if hp.name not in _FIELDS)
        if unknown:
            raise ValueError(f"Hyperparameters {unknown} set no SearchConfig field; name each one after the "
                             f"field it sets: {sorted(_FIELDS)}.")

    def _oracle(self, oracle, max_trials, hyperparameters):
        hyperband = oracle == "hyperband" or isinstance(oracle, keras_tuner.oracles.HyperbandOracle)
        if hyperband and self.config.epochs is None:
            raise ValueError("Hyperband's budget is training epochs per round: give the config epochs "
                             "(its maximum), not iterations.")
        wanted = OBJECTIVES[self.objective]
        if not isinstance(oracle, keras_tuner.Oracle):
            if oracle not in ORACLES:
                raise ValueError(f"oracle must be one of {sorted(ORACLES)} or a keras_tuner.Oracle; got {oracle!r}.")
            budget = {"max_epochs": self.config.epochs} if hyperband else {"max_trials": max_trials}
            # keras-tuner draws a random seed for seed=0, hence the offset.
            oracle = ORACLES[oracle](objective=wanted, seed=self.config.seed + 1, hyperparameters=hyperparameters,
                                     **budget)
        if (oracle.objective.name, oracle.objective.direction) != (wanted.name, wanted.direction):
            raise ValueError(f"The oracle's objective is {oracle.objective}; the {self.objective!r} objective "
                             f"needs keras_tuner.Objective({wanted.name!r}, {wanted.direction!r}).")
        return oracle

    # ---------------------------------------------------------------- trials

    def trial_config(self, hp):
        """The `SearchConfig` a trial with hyperparameters `hp` runs."""
        return dataclasses.replace(self.config, **self._tuned(hp))

    def _tuned(self, hp):
        """The SearchConfig fields `hp` sets (Hyperband's `tuner/epochs` sets epochs)."""
        values = {name: value for name, value in hp.values.items() if not name.startswith("tuner/")}
        if "tuner/epochs" in hp.values:
            values["epochs"] = hp.values["tuner/epochs"]
        return values

    def run_trial(self, trial, verbose=1):
        """Runs (or resumes) the trial's ticket search; returns the scored ticket's metrics.

        `verbose` (from `search(verbose=...)`): 0 silent; otherwise `TicketSearch`'s progress output.
        """
        keras.backend.clear_session()
        config = self.trial_config(trial.hyperparameters)
        if verbose and self.role == "worker":  # The chief's oracle announces trials; say which worker runs one.
            print(f"{self.tuner_id} runs trial {trial.trial_id}: {self._run_dir(trial)}", flush=True)
        search = TicketSearch(self.build_model, self.data, config, self._run_dir(trial), resume=True,
                              verbose=int(bool(verbose)), strategy=self.distribution_strategy)
        rounds = search.run()["rounds"]
        index = self._scored_round(config, rounds)
        search.save_ticket(index, self._ticket_path(trial))
        scored = rounds[index]
        return {name: scored[name] for name in ("val_accuracy", "density", "test_accuracy", "round")
                if name in scored}  # No test_accuracy without a test set.

    def _run_dir(self, trial):
        return os.path.join(self.get_trial_dir(trial.trial_id), "search")

    def _ticket_path(self, trial):
        return os.path.join(self.get_trial_dir(trial.trial_id), "ticket.keras")

    def _scored_round(self, config, rounds):
        if self.objective == "density":
            return best_round(rounds, self.tolerance, "val_accuracy")
        if rounds[-1]["density"] > config.target_density + 1e-9:
            raise keras_tuner.errors.FailedTrialError(
                f"The search stopped at density {rounds[-1]['density']:.4f}, above the target "
                f"{config.target_density}: leave rounds at None or raise it, or raise prune_rate.")
        return len(rounds) - 1

    # --------------------------------------------------------------- results

    def load_model(self, trial):
        """The trial's ticket: a masked model (so `get_best_models()` returns tickets)."""
        return masking.load_model(self._ticket_path(trial))

    def results(self):
        """One `result` per trial, in trial order."""
        self._require_oracle()
        return [self.result(trial) for _, trial in sorted(self.oracle.trials.items())]

    def best_result(self):
        """The `result` of the best completed trial."""
        self._require_oracle()
        best = self.oracle.get_best_trials(1)
        if not best or best[0].status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
            raise ValueError(f"No trial in {self.project_dir} has completed yet; run search() first.")
        return self.result(best[0])

    def _require_oracle(self):
        if self.role == "worker":
            raise ValueError("This worker of a distributed tuning run holds no oracle: read the results on the "
                             "chief (KERASTUNER_TUNER_ID=chief) once its search() returns.")

    def result(self, trial):
        """A trial as a dict: trial id, status, the SearchConfig fields it tuned, its objective
        value, and (None unless completed) the scored round of its search run and its ticket file."""
        done = trial.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
        return {"trial": trial.trial_id, "status": trial.status,
                "hyperparameters": self._in_space_order(self._tuned(trial.hyperparameters)),
                "objective": trial.score, "run_dir": self._run_dir(trial),
                "round": int(trial.metrics.get_last_value("round")) if done else None,
                "ticket": self._ticket_path(trial) if done else None}

    def _in_space_order(self, values):
        """`values` in the order the space declares them (a trial sent over gRPC lists its values by type)."""
        order = [hp.name for hp in self.oracle.get_space().space]
        return dict(sorted(values.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))

    # ------------------------------------------------- keras-tuner's state

    def search(self, *args, **kwargs):
        """keras-tuner's `search`; on a distributed run's chief, it returns once the study has ended."""
        super().search(*args, **kwargs)
        if self.role == "chief":
            # keras-tuner's chief saves the oracle before each worker's last trial leaves its ongoing
            # trials, and not after: save again, or a resumed project would run those trials again.
            self.save()

    def on_search_begin(self):
        # keras-tuner writes its tuner file only after a trial ends; writing it now lets a run
        # cut off in its first trial resume that trial too.
        super().on_search_begin()
        self.save()

    def get_state(self):
        """What a resumed project must share with this tuner: the base config and the objective."""
        return {**dataclasses.asdict(self.config), "objective": self.objective, "tolerance": self.tolerance}

    def set_state(self, state):
        """Checks, on resume, that the project was tuned with this tuner's settings."""
        differences = [f"{key}: project has {state.get(key)!r}, now {value!r}"
                       for key, value in self.get_state().items() if state.get(key) != value]
        if differences:
            raise ValueError(f"Cannot resume {self.project_dir}: it was tuned with other settings. Differences: "
                             + "; ".join(differences) + ". Use the original settings, another project, or "
                             "overwrite=True.")
