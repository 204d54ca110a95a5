"""Ticket search under tf.distribute: two logical CPUs, XLA, and a loopback multi-worker cluster."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_lottery import distribute, masking, models
from tf_lottery.search import SearchConfig, TicketSearch

from conftest import DIGITS as DATA, ROOT, round_arrays

CONFIG = SearchConfig(rounds=2, epochs=1, batch_size=64)
ARGS = ["--dataset=digits", "--rounds=2", "--epochs=1", "--batch_size=64", "--verbose=0"]
#: A dense round, then one that prunes gradually to 30% over its first 10 of 20 iterations.
GRADUAL = {"target_density": 0.3, "rounds_to_target": 1, "rewind": "lr", "iterations": 20, "eval_every": 10,
           "gradual_iterations": 10, "gradual_every": 5, "batch_size": 64}
GRADUAL_CONFIG = SearchConfig(rounds=None, epochs=None, **GRADUAL)
GRADUAL_ARGS = ["--dataset=digits", "--verbose=0", *(f"--{name}={value}" for name, value in GRADUAL.items())]


def _build():
    return models.lenet300_100(DATA.input_shape, DATA.num_classes)


def _assert_same_masks(run_dir, reference, rounds=3):
    for index in range(rounds):
        expected, found = round_arrays(reference, index), round_arrays(run_dir, index)
        for key in expected:
            np.testing.assert_array_equal(found[key], expected[key], err_msg=f"round {index} {key}")


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    TicketSearch(_build, DATA, CONFIG, str(run_dir), verbose=0).run()
    return run_dir


def test_strategy_flags():
    assert distribute.strategy_from_flag("default") is tf.distribute.get_strategy()
    assert distribute.strategy_from_flag("mirrored").num_replicas_in_sync == 2
    with pytest.raises(ValueError, match=r"Unknown strategy 'gpu'; choose one of \('default', 'mirrored'"):
        distribute.strategy_from_flag("gpu")
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.strategy_from_flag("multi_worker")


def test_mirrored_search_matches_one_device_and_keeps_zeros_on_every_replica(single_device_run, tmp_path):
    strategy = distribute.strategy_from_flag("mirrored")
    search = TicketSearch(_build, DATA, CONFIG, str(tmp_path), verbose=0, strategy=strategy)
    search.run()
    _assert_same_masks(tmp_path, single_device_run)
    _assert_zeros_on_every_replica(search.model)


def _assert_zeros_on_every_replica(model):
    masks = masking.get_masks(model)
    for key, variable in masking.get_prunable_variables(model).items():
        replicas = variable.value.values  # One copy per logical device.
        assert len(replicas) == 2
        for replica in replicas:
            assert not np.any(replica.numpy()[masks[key] == 0]), key


@pytest.fixture(scope="module")
def gradual_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gradual")
    TicketSearch(_build, DATA, GRADUAL_CONFIG, str(run_dir), verbose=0).run()
    return run_dir


def test_mirrored_gradual_pruning_matches_one_device(gradual_run, tmp_path):
    """Masks changed by a callback mid-round reach every replica, and both replicas prune the same weights."""
    strategy = distribute.strategy_from_flag("mirrored")
    search = TicketSearch(_build, DATA, GRADUAL_CONFIG, str(tmp_path), verbose=0, strategy=strategy)
    search.run()
    _assert_same_masks(tmp_path, gradual_run, rounds=2)
    assert masking.density(masking.get_masks(search.model)) < 0.35
    _assert_zeros_on_every_replica(search.model)


def test_search_runs_with_xla(single_device_run, tmp_path):
    config = SearchConfig(rounds=2, epochs=1, batch_size=64, jit_compile=True)
    search = TicketSearch(_build, DATA, config, str(tmp_path), verbose=0)
    history = search.run()
    assert [round(r["density"], 2) for r in history["rounds"]] == [1.0, 0.80, 0.64]
    masks = masking.get_masks(search.model)
    for key, weight in masking.get_prunable_weights(search.model).items():
        assert not np.any(weight[masks[key] == 0])


def _free_ports(count):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _start_cluster(run_dir, *extra, args=ARGS):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "find_ticket.py"), "--strategy=multi_worker",
             f"--output_dir={run_dir}", *args, *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return processes


def _finish(processes, timeout=300):
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, output) for process, output in zip(processes, outputs)]


def test_multi_worker_search_matches_one_process(single_device_run, tmp_path):
    results = _finish(_start_cluster(tmp_path))
    for code, output in results:
        assert code == 0, output[-3000:]
    _assert_same_masks(tmp_path, single_device_run)
    chief = json.loads((tmp_path / "history.json").read_text())
    single = json.loads((single_device_run / "history.json").read_text())
    assert [r["density"] for r in chief["rounds"]] == [r["density"] for r in single["rounds"]]
    assert [r["early_stop_iteration"] for r in chief["rounds"]] == [r["early_stop_iteration"]
                                                                     for r in single["rounds"]]
    np.testing.assert_allclose([r["test_accuracy"] for r in chief["rounds"]],
                               [r["test_accuracy"] for r in single["rounds"]], atol=1e-6)
    assert "History: " + str(tmp_path) not in results[1][1]  # The other worker wrote elsewhere.


def test_multi_worker_gradual_pruning_matches_one_process(gradual_run, tmp_path):
    for code, output in _finish(_start_cluster(tmp_path, args=GRADUAL_ARGS)):
        assert code == 0, output[-3000:]
    _assert_same_masks(tmp_path, gradual_run, rounds=2)
    assert json.loads((tmp_path / "history.json").read_text())["rounds"][1]["gradual_pruning"] == \
        json.loads((gradual_run / "history.json").read_text())["rounds"][1]["gradual_pruning"]


def test_killed_worker_then_restart_resumes_from_the_last_round(single_device_run, tmp_path):
    processes = _start_cluster(tmp_path)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "round_000").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in processes), "a worker exited early"
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait(timeout=30)
        assert not (tmp_path / "round_002").exists(), "not killed mid-run"
    finally:
        for process in processes:  # The chief cannot finish without its peer.
            process.kill()
            process.wait()
    assert (tmp_path / "round_000").is_dir()
    results = _finish(_start_cluster(tmp_path, "--resume", "--verbose=1"))
    for code, output in results:
        assert code == 0, output[-3000:]
        assert "Resuming" in output
    _assert_same_masks(tmp_path, single_device_run)
