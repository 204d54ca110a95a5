"""Shared test set-up: quiet TensorFlow logs, two logical CPU devices, deterministic seeds, running scripts."""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# tf.distribute tests replicate over two logical CPUs; this must happen before
# TensorFlow initializes its devices. Everything else runs on the first one.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _run_scripts(*commands, timeout=600):
    """Runs repository scripts at once, as a user would from a shell: each command is `[script, *args]`.

    Returns a `subprocess.CompletedProcess` for each, in order.
    """
    processes = [subprocess.Popen([sys.executable, str(ROOT / script), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=SCRIPT_ENV, cwd=ROOT)
                 for script, *args in commands]
    results = []
    for process, command in zip(processes, commands):
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            process.kill()
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


@pytest.fixture
def run_scripts():
    """`run_scripts(*commands)`: runs repository scripts at once (see `_run_scripts`)."""
    return _run_scripts


def assert_user_error(result, message):
    """A binary's run that ended in a one-paragraph error naming `message`, not a traceback."""
    assert result.returncode == 1, (result.args, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "allow_pickle" not in result.stderr, result.stderr[-3000:]
    assert message in result.stderr, (result.args, result.stderr[-3000:])


@pytest.fixture
def user_error():
    """`user_error(result, message)`: checks a binary ended in a clear error (see `assert_user_error`)."""
    return assert_user_error
