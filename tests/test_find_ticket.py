"""End-to-end tests of examples/find_ticket.py, run as a user runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, SCRIPT_ENV, assert_user_error, files_under, round_arrays, run_script, run_scripts

BINARY = "examples/find_ticket.py"
ARGS = ["--dataset=digits", "--epochs=3", "--batch_size=32"]


def _run(*args, check=True):
    return run_script(BINARY, *ARGS, *args, check=check)


def test_binary_writes_the_documented_history(tmp_path):
    result = _run(f"--output_dir={tmp_path}", "--rounds=2")
    history = json.loads((tmp_path / "history.json").read_text())
    fields = {"round", "density", "layer_density", "test_accuracy", "val_accuracy", "early_stop_iteration",
              "early_stop_test_accuracy", "seconds"}
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert all(fields <= set(r) for r in history["rounds"])
    assert f"History: {tmp_path / 'history.json'}" in result.stdout
    assert "best_ticket.keras" in result.stdout
    assert result.stdout.count("density") == 3  # One progress line per round.


def test_rewind_auto_records_and_draws_the_instability_curves(tmp_path):
    result = _run(f"--output_dir={tmp_path}", "--rounds=1", "--rewind=auto", "--rewind_candidates=0,5",
                  "--epochs=1")
    record = json.loads((tmp_path / "instability.json").read_text())
    assert [curve["rewind_iteration"] for curve in record["curves"]] == [0, 5]
    assert "rewind='auto' rewinds to iteration" in result.stdout
    assert (tmp_path / "plots" / "instability.png").stat().st_size > 10_000
    assert f"drawn in {tmp_path / 'plots' / 'instability.png'}" in result.stdout
    again = _run(f"--output_dir={tmp_path}", "--rounds=1", "--epochs=1", "--overwrite")  # Figures are the run's.
    assert "instability.json, model.keras, plots," in again.stdout and not (tmp_path / "plots").exists()


def test_target_density_without_rounds_prunes_until_it_is_reached(tmp_path):
    _run(f"--output_dir={tmp_path}", "--target_density=0.6", "--epochs=1")
    densities = [r["density"] for r in json.loads((tmp_path / "history.json").read_text())["rounds"]]
    assert len(densities) > 2
    assert densities[-1] <= 0.6 < densities[-2]  # Stopped at the target, not after the default 5 rounds.


def test_wrong_flags_get_a_usage_error_with_the_allowed_values(tmp_path):
    result = _run(f"--output_dir={tmp_path}", "--scope=local", check=False)
    assert result.returncode != 0
    assert "value should be one of <layerwise|global|erk>" in result.stderr
    result = _run(f"--output_dir={tmp_path}", "--iterations=10", "--epochs=2", check=False)
    assert result.returncode != 0 and "exactly one of epochs or iterations" in result.stderr


def test_a_run_killed_mid_round_resumes_to_the_same_masks(tmp_path):
    uninterrupted, killed = tmp_path / "whole", tmp_path / "killed"
    _run(f"--output_dir={uninterrupted}", "--rounds=3")

    process = subprocess.Popen([sys.executable, str(ROOT / BINARY), *ARGS, f"--output_dir={killed}", "--rounds=3"],
                               env=SCRIPT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (killed / "round_000").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # Into round 1's training.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert (killed / "round_000").is_dir() and not (killed / "round_001").exists(), "not killed mid-round"

    result = _run(f"--output_dir={killed}", "--rounds=3", "--resume")
    assert "Resuming" in result.stdout and "after round 0" in result.stdout
    for index in range(4):
        whole, resumed = round_arrays(uninterrupted, index), round_arrays(killed, index)
        for key in whole:
            np.testing.assert_array_equal(resumed[key], whole[key], err_msg=f"round {index} {key}")
    assert not any(name.endswith(".partial") for name in os.listdir(killed))


def test_mistakes_end_in_a_message_naming_the_fix_and_write_nothing(tmp_path):
    run = tmp_path / "run"
    _run(f"--output_dir={run}", "--rounds=1")
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "round_001" / "masks.npz").write_bytes(b"garbage")
    before = files_under(tmp_path)
    new = str(tmp_path / "new")
    cases = {  # The library's checks behind these are tested in test_run_store and test_search.
        "the same run twice": ([f"--output_dir={run}"], "already holds a run"),
        "resume and overwrite": ([f"--output_dir={run}", "--resume", "--overwrite"], "Choose resume or overwrite"),
        "resume of nothing": ([f"--output_dir={new}", "--resume"], "holds no run (run.json is missing)"),
        "a damaged round": ([f"--output_dir={damaged}", "--resume", "--rounds=2"],
                            "round_001 is damaged: " + str(damaged / "round_001" / "masks.npz") + " is truncated"),
        "missing data": ([f"--output_dir={new}", "--dataset=cifar10", f"--data_dir={tmp_path / 'none'}"],
                         "cifar10"),
    }
    results = run_scripts(*([BINARY, *ARGS, *args] for args, _ in cases.values()))
    for (_, message), result in zip(cases.values(), results):
        assert_user_error(result, message)
    assert files_under(tmp_path) == before and not os.path.exists(new)
