"""Shared test set-up (quiet TensorFlow logs, two logical CPU devices, deterministic seeds), data, run readers,
and running the scripts as a user would."""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_lottery import datasets  # noqa: E402
from tf_lottery.run_store import RunStore  # noqa: E402

# tf.distribute tests replicate over two logical CPUs; this must happen before
# TensorFlow initializes its devices. Everything else runs on the first one.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
#: scikit-learn's 8x8 digits, split with seed 0: the small dataset most tests train on.
DIGITS = datasets.load("digits", seed=0)


def round_arrays(run_dir, index, name="masks"):
    """The arrays `name` (a key of `run_store.ROUND_FILES`) that completed round `index` of a run saved."""
    return RunStore(run_dir).read_round(index, (name,))[1][name]


def files_under(folder):
    """`{relative path: bytes}` of every file under `folder`: to check that nothing was changed."""
    return {os.path.relpath(os.path.join(root, name), folder): pathlib.Path(root, name).read_bytes()
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def run_script(script, *args, check=True, timeout=600):
    """Runs a repository script (e.g. "examples/find_ticket.py") as a user would; returns its CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                          env=SCRIPT_ENV, timeout=timeout, check=check)


def run_scripts(*commands, timeout=600):
    """Runs repository scripts at once, each command `[script, *args]`; returns their CompletedProcesses."""
    processes = [subprocess.Popen([sys.executable, str(ROOT / script), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=SCRIPT_ENV)
                 for script, *args in commands]
    results = []
    for process, command in zip(processes, commands):
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            process.kill()
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def assert_user_error(result, message):
    """Checks that a script ended in a one-paragraph error naming `message`, not in a traceback."""
    assert result.returncode == 1, (result.args, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "allow_pickle" not in result.stderr, result.stderr[-3000:]
    assert message in result.stderr, (result.args, result.stderr[-3000:])
