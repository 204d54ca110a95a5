"""examples/tune_ticket.py on keras-tuner's distributed tuning: a chief and two workers on 127.0.0.1.

One study of 4 trials; worker tuner1 (under --strategy=mirrored) is killed once a trial of its has
saved round 0, then restarted with the same KERASTUNER_TUNER_ID.
"""

import json
import re
import socket
import subprocess
import sys
import time

import keras_tuner
import pytest

import tf_lottery
from tf_lottery import models, storage
from tf_lottery.search import SearchConfig
from tf_lottery.tuning import LotteryTuner, distributed_role

from conftest import DIGITS, ROOT, SCRIPT_ENV

FLAGS = ("--dataset=digits", "--max_trials=4", "--epochs=1", "--target_density=0.8")
TIMEOUT = 150  # Seconds for the whole study; it takes about a third of that on 2 CPU cores.
# Raised inside keras-tuner's oracle lock (threading.currentThread), not by this package.
pytestmark = pytest.mark.filterwarnings("ignore:(currentThread|getName):DeprecationWarning")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(condition, deadline, what):
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out waiting for {what}.")
        time.sleep(0.05)
    return condition()


class _Cluster:
    """Starts examples/tune_ticket.py processes of one study; `kill_all` ends every one still running."""

    def __init__(self, directory):
        self.directory, self.output_dir = directory, directory / "tune"
        self.env = {**SCRIPT_ENV, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}
        self.processes = {}

    def start(self, name, tuner_id, *flags):
        """Starts a process; its stdout and stderr go to `name`.out and `name`.err."""
        with open(self.directory / f"{name}.out", "w") as out, open(self.directory / f"{name}.err", "w") as err:
            self.processes[name] = subprocess.Popen(
                [sys.executable, str(ROOT / "examples/tune_ticket.py"), *FLAGS, f"--output_dir={self.output_dir}",
                 *flags], stdout=out, stderr=err, env={**self.env, "KERASTUNER_TUNER_ID": tuner_id})

    def output(self, name):
        return (self.directory / f"{name}.out").read_text()

    def trials_run(self, name):
        """The trials process `name` started, in order."""
        return re.findall(r"^tuner\d runs trial (\d+): ", self.output(name), re.M)

    def wait(self, names, deadline):
        """Waits for processes `names` to end; each must succeed."""
        for name in names:
            process = self.processes[name]
            process.wait(timeout=max(deadline - time.monotonic(), 1))
            assert process.returncode == 0, (name, self.output(name)[-2000:],
                                             (self.directory / f"{name}.err").read_text()[-3000:])

    def kill_all(self):
        for process in self.processes.values():
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Runs the study; returns (cluster, the killed trial, its trial.json status and history at the kill)."""
    cluster = _Cluster(tmp_path_factory.mktemp("distributed"))
    deadline = time.monotonic() + TIMEOUT
    try:
        cluster.start("chief", "chief")
        cluster.start("tuner0", "tuner0")
        cluster.start("tuner1", "tuner1", "--strategy=mirrored")
        trial = _wait(lambda: cluster.trials_run("tuner1")[:1], deadline, "tuner1's first trial")[0]
        trial_dir = cluster.output_dir / f"trial_{trial}"
        history = trial_dir / "search" / "history.json"
        _wait(lambda: history.exists() and storage.read_json(history)["rounds"], deadline, f"round 0 of trial {trial}")
        cluster.processes["tuner1"].kill()
        cluster.processes["tuner1"].wait()
        status = json.loads((trial_dir / "trial.json").read_text())["status"]
        cut_history = storage.read_json(history)
        cluster.start("tuner1_restarted", "tuner1", "--strategy=mirrored")
        cluster.wait(["tuner0", "tuner1_restarted", "chief"], deadline)
    finally:
        cluster.kill_all()
    return cluster, trial, status, cut_history


def _table(cluster):
    table = re.search(r"trial +status +val_accuracy +hyperparameters\n((?:\d+ .*\n)+)", cluster.output("chief"))
    assert table, cluster.output("chief")[-3000:]
    return re.findall(r"^(\d+) +(\w+) +([\d.]+) +(.*)$", table[1], re.M)


def test_the_chief_prints_every_trial_and_the_best_ticket(study):
    cluster, *_ = study
    rows = _table(cluster)
    assert [(trial, status) for trial, status, *_ in rows] == [(str(i), "COMPLETED") for i in range(4)]
    for *_, hyperparameters in rows:  # As a single process lists them.
        assert re.findall(r"(\w+)=", hyperparameters) == ["prune_rate", "output_prune_rate", "scope", "rewind",
                                                          "learning_rate", "criterion"]
    best = max(rows, key=lambda row: float(row[2]))
    ticket = cluster.output_dir / f"trial_{best[0]}" / "ticket.keras"
    assert re.search(rf"Best ticket: trial {best[0]}, round \d+ of .*: {re.escape(str(ticket))}\n",
                     cluster.output("chief"))
    density = tf_lottery.sparsity_report(tf_lottery.load_model(ticket))["density"]
    assert density <= 0.8


def test_the_workers_split_the_trials(study):
    cluster, *_ = study
    tuner0, tuner1 = cluster.trials_run("tuner0"), cluster.trials_run("tuner1") + cluster.trials_run("tuner1_restarted")
    assert tuner0 and tuner1 and sorted(set(tuner0) | set(tuner1)) == ["0", "1", "2", "3"]
    assert not set(tuner0) & set(tuner1)
    for name in ("tuner0", "tuner1_restarted"):
        assert "no trials left" in cluster.output(name)


def test_the_trials_are_those_of_one_process_and_each_search_is_complete(study):
    cluster, *_ = study
    config = SearchConfig(rounds=None, target_density=0.8, epochs=1)
    one_process = LotteryTuner(lambda: models.lenet300_100(DIGITS.input_shape, DIGITS.num_classes), DIGITS,
                               config, max_trials=4, directory=str(cluster.directory), project_name="one_process")
    for _ in range(4):  # The random oracle's proposals depend on their order only, not on the results.
        proposal = one_process.oracle.create_trial("tuner0")
        trial_dir = cluster.output_dir / f"trial_{proposal.trial_id}"
        trial = keras_tuner.engine.trial.Trial.load(str(trial_dir / "trial.json"))
        assert trial.hyperparameters.values == proposal.hyperparameters.values
        search = trial_dir / "search"
        rounds = storage.read_json(search / "history.json")["rounds"]
        assert rounds[-1]["density"] <= 0.8 and rounds[-1]["val_accuracy"] == trial.score
        assert (search / "run.json").is_file() and (trial_dir / "ticket.keras").is_file()
    assert json.loads((cluster.output_dir / "oracle.json").read_text())["ongoing_trials"] == {}


def test_a_worker_killed_mid_trial_resumes_it_when_restarted(study):
    cluster, trial, status, cut_history = study
    assert status == "RUNNING"
    assert cluster.trials_run("tuner1_restarted")[0] == trial  # keras-tuner hands it back to the same tuner id.
    rounds = storage.read_json(cluster.output_dir / f"trial_{trial}" / "search" / "history.json")["rounds"]
    assert len(rounds) > len(cut_history["rounds"]) and rounds[0] == cut_history["rounds"][0]  # Resumed, not redone.


@pytest.mark.parametrize("env, role", [
    ({}, None),
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "1", "KERASTUNER_TUNER_ID": "chief"}, "chief"),
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "1", "KERASTUNER_TUNER_ID": "tuner3"}, "worker"),
])
def test_the_role_comes_from_keras_tuners_environment(monkeypatch, env, role):
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed_role() == role


def test_a_half_set_environment_names_the_missing_variables(monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT", raising=False)
    monkeypatch.delenv("KERASTUNER_TUNER_ID", raising=False)
    with pytest.raises(ValueError, match="set KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID too"):
        distributed_role()
