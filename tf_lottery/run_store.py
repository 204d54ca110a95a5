"""The run directory of a ticket search: the only code that knows its layout.

    run.json              configuration, seed, model and data signature, versions
    model.keras           the masked model as round 0 starts: architecture, compile settings, starting weights
    history.json          {"rounds": [metrics of each completed round], "best_round"}
    round_000/            one folder per completed round (renamed into place when complete)
        masks.npz         the masks the round trained with (ended with, if it pruned gradually)
        statistics.npz    (criteria movement_rate, snip, grasp, synflow) the accumulated |Δw| of its
                          training, or its scores as it started
        rewind_weights.npz the weights its survivors were reset to (for round 0 of a
                          late-rewinding run: the weights at the rewind point)
        trained_weights.npz
        metrics.json
    best_ticket.keras     the masked, trained model of the best round (`masking.load_model` reads it)
    instability.json      (rewind="auto" only) the error barrier of each candidate rewind point and the one chosen
    tensorboard/          per-round scalars, if asked for
    plots/                figures of the run (examples/plot_run.py; find_ticket.py's instability.png)

Every file is written atomically (see `storage`). A `RunStore` refuses to
delete a folder that holds anything but a run, finds a gap in the rounds before
any training, rebuilds `history.json` from the round folders, and clears what a
killed process left half-written.
"""

import os
import re
import shutil
import tempfile

from tf_lottery import masking, storage, weights

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
TICKET_FILE = "best_ticket.keras"
MODEL_FILE = "model.keras"
TENSORBOARD_DIR = "tensorboard"
PLOTS_DIR = "plots"
METRICS_FILE = "metrics.json"
INSTABILITY_FILE = "instability.json"
#: The arrays of a round's state and their files in its folder.
ROUND_FILES = {"masks": "masks.npz", "rewind": "rewind_weights.npz", "trained": "trained_weights.npz",
               "statistics": "statistics.npz"}

_ROUND_NAME = re.compile(r"round_(\d{3,})")
_PARTIAL_SUFFIX = ".partial"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names the fix."""


def round_dir(run_dir, index):
    """The folder of round `index` in a run directory."""
    return os.path.join(run_dir, f"round_{index:03d}")


def empty_history():
    """The history of a run before its first round ends."""
    return {"rounds": [], "best_round": None}


class RunStore:
    """Creates, checks, reads and writes one run directory.

    Args:
        run_dir: the run directory (see the module docstring).
    """

    def __init__(self, run_dir):
        self.run_dir = os.fspath(run_dir)

    def path(self, name):
        return os.path.join(self.run_dir, name)

    def round_dir(self, index):
        return round_dir(self.run_dir, index)

    # ------------------------------------------------------------- inspection

    def is_run(self):
        """Whether the folder holds a run (its `run.json`)."""
        return os.path.isfile(self.path(RUN_FILE))

    def entries(self):
        """The names in the folder (none if it does not exist); an error if the path is not a folder."""
        if not os.path.exists(self.run_dir):
            return []
        if not os.path.isdir(self.run_dir):
            raise RunDirError(f"{self.run_dir} is a file, not a folder: choose another run directory.")
        return sorted(os.listdir(self.run_dir))

    def foreign_entries(self):
        """Names in the folder that are no part of a run."""
        return [name for name in self.entries() if not _belongs_to_run(name)]

    def completed_rounds(self):
        """How many rounds are complete: folders round_000 to round_{n-1}, with no gap and nothing after one."""
        indices = sorted(int(match.group(1)) for match in map(_ROUND_NAME.fullmatch, self.entries())
                         if match and os.path.isdir(self.path(match.group(0))))
        count = next((position for position, index in enumerate(indices) if index != position), len(indices))
        if count < len(indices):
            later = ", ".join(os.path.basename(self.round_dir(index)) for index in indices[count:])
            raise RunDirError(
                f"{self.run_dir} has no folder for round {count}, but has folders of later rounds ({later}). "
                f"Those rounds were trained from a round that is gone, so they cannot be reused: move them out "
                f"of the run, then resume to train round {count} onwards again."
            )
        return count

    def check_writable(self):
        """Raises `RunDirError` unless files can be created in the folder (which it creates if needed)."""
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            tempfile.TemporaryFile(dir=self.run_dir, prefix=storage.TEMPORARY_PREFIX).close()
        except OSError as error:
            raise RunDirError(f"Cannot write to {self.run_dir} ({error.strerror}): make it writable, or choose "
                              "another run directory.") from None

    # ------------------------------------------------------------ life cycle

    def delete(self):
        """Deletes the run in the folder; returns what it deleted. Refuses if the folder holds anything else."""
        foreign = self.foreign_entries()
        if not self.is_run() or foreign:
            reason = (f"it also holds {', '.join(foreign)}, which no run writes" if foreign and self.is_run() else
                      f"it holds no tf_lottery run ({RUN_FILE} is missing; it has {', '.join(self.entries())})")
            raise RunDirError(f"Not deleting {self.run_dir}: {reason}. Choose another run directory, or move "
                              "those files away yourself.")
        deleted = self.entries()
        for name in deleted:
            _remove(self.path(name))
        return deleted

    def clear_leftovers(self):
        """Removes what a killed process left: half-written round folders and temporary files. Returns their names."""
        removed = []
        for folder in [self.run_dir] + [self.round_dir(index) for index in range(self.completed_rounds())]:
            for name in sorted(os.listdir(folder)):
                if name.startswith(storage.TEMPORARY_PREFIX) or (folder == self.run_dir and _is_partial_round(name)):
                    _remove(os.path.join(folder, name))
                    removed.append(os.path.relpath(os.path.join(folder, name), self.run_dir))
        return removed

    # ---------------------------------------------------------------- files

    def require_run(self):
        """Raises `RunDirError` unless the folder holds a run."""
        if not self.is_run():
            raise RunDirError(f"{self.run_dir} holds no run ({RUN_FILE} is missing): check the path, or start "
                              "the search there first.")

    def read_record(self):
        """The contents of `run.json`: configuration, signature, versions."""
        self.require_run()
        return storage.read_json(self.path(RUN_FILE))

    def write_record(self, record):
        storage.write_json(self.path(RUN_FILE), record)

    def read_history(self):
        """The history of the run, checked against its round folders."""
        self.require_run()
        path, completed = self.path(HISTORY_FILE), self.completed_rounds()
        if not completed and not os.path.exists(path):
            return empty_history()  # Killed before its first round ended.
        try:
            history = storage.read_json(path)
            rounds = history.get("rounds")
            if not isinstance(rounds, list) or len(rounds) != completed or \
                    not all(isinstance(r, dict) and "density" in r for r in rounds):
                raise storage.CorruptFileError(f"{path} does not match the run's round folders; the file is damaged.")
        except storage.CorruptFileError as error:
            raise storage.CorruptFileError(f"{error} Resume the run once (examples/find_ticket.py --resume) to "
                                           "rebuild it from the round folders.") from None
        return history

    def write_history(self, history):
        storage.write_json(self.path(HISTORY_FILE), history)

    def has_instability(self):
        """Whether the run holds the instability analysis that chose its rewind point (`rewind="auto"`)."""
        return os.path.isfile(self.path(INSTABILITY_FILE))

    def read_instability(self):
        """`{"threshold", "stable", "rewind_iteration", "curves"}`: what chose the rewind point of `rewind="auto"`
        (see `tf_lottery.stability`)."""
        return storage.read_json(self.path(INSTABILITY_FILE))

    def write_instability(self, record):
        storage.write_json(self.path(INSTABILITY_FILE), record)

    def write_round(self, index, arrays, metrics):
        """Saves a completed round: written to `round_NNN.partial`, then renamed into place."""
        final = self.round_dir(index)
        if os.path.exists(final):
            raise RunDirError(f"{final} already exists: a round is never overwritten. Move it away to redo it.")
        partial = final + _PARTIAL_SUFFIX
        if os.path.exists(partial):
            shutil.rmtree(partial)
        os.makedirs(partial)
        for name, values in arrays.items():
            storage.write_arrays(os.path.join(partial, ROUND_FILES[name]), values)
        storage.write_json(os.path.join(partial, METRICS_FILE), metrics)
        os.replace(partial, final)

    def read_round(self, index, names):
        """(metrics, {name: arrays}) of completed round `index`, for the state `names` (keys of `ROUND_FILES`)."""
        folder = self.round_dir(index)
        try:
            metrics = storage.read_json(os.path.join(folder, METRICS_FILE))
            arrays = {name: storage.read_arrays(os.path.join(folder, ROUND_FILES[name])) for name in names}
        except storage.CorruptFileError as error:
            raise storage.CorruptFileError(
                f"Round folder {folder} is damaged: {error} It was left as it is; move it away (rounds after it "
                "too) and resume to redo it."
            ) from None
        return metrics, arrays

    def read_masks(self, index):
        """The masks of round `index` (all a replay needs: a folder of round folders holding masks.npz will do)."""
        return storage.read_arrays(os.path.join(self.round_dir(index), ROUND_FILES["masks"]))

    def copy_masks(self, rounds, folder):
        """Copies the masks of round 0 and of `rounds` into round folders 0, 1, 2, ... of `folder`; returns it.

        The copy is a replay source (`TicketSearch(replay_masks_from=folder)`)
        that trains a control on those rounds only.
        """
        for index, source in enumerate([0, *rounds]):
            target = round_dir(folder, index)
            os.makedirs(target)
            shutil.copy(os.path.join(self.round_dir(source), ROUND_FILES["masks"]), target)
        return folder

    def write_model(self, model):
        """Saves the search's masked model as round 0 starts, atomically: what readers rebuild it from."""
        storage.save_model(model, self.path(MODEL_FILE))

    def load_model(self, index=None):
        """The run's masked model (from `model.keras`), set to completed round `index` if given."""
        path = self.path(MODEL_FILE)
        self.require_run()
        if not os.path.exists(path):
            raise RunDirError(f"{self.run_dir} has no {MODEL_FILE}: runs started before tf_lottery 0.3 do not keep "
                              "their model. Rebuild it with the builder the search used.")
        model = masking.load_model(path)
        return model if index is None else self.restore_round(model, index)

    def restore_round(self, model, index):
        """Sets a masked `model` to the masks and trained weights of completed round `index`; returns it."""
        if index >= self.completed_rounds():
            raise RunDirError(f"{self.run_dir} has no completed round {index}.")
        _, arrays = self.read_round(index, ("masks", "trained"))
        masking.set_masks(model, arrays["masks"])
        weights.restore(model, arrays["trained"])
        return model


_RUN_ENTRIES = (RUN_FILE, HISTORY_FILE, TICKET_FILE, MODEL_FILE, TENSORBOARD_DIR, INSTABILITY_FILE, PLOTS_DIR)


def _belongs_to_run(name):
    return (name in _RUN_ENTRIES
            or name.startswith(storage.TEMPORARY_PREFIX) or bool(_ROUND_NAME.fullmatch(name)) or _is_partial_round(name))


def _is_partial_round(name):
    return name.endswith(_PARTIAL_SUFFIX) and bool(_ROUND_NAME.fullmatch(name.removesuffix(_PARTIAL_SUFFIX)))


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
