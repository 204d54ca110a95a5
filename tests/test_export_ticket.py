"""End-to-end: examples/export_ticket.py on a tiny run directory, and benchmarks/export_size.py --quick."""

import json
import os
import shutil

import pytest

from tf_lottery import export, models
from tf_lottery.search import SearchConfig, TicketSearch

from conftest import DIGITS, assert_user_error, run_script, run_scripts


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    TicketSearch(lambda: models.lenet300_100(DIGITS.input_shape, DIGITS.num_classes), DIGITS,
                 SearchConfig(rounds=1, epochs=2, batch_size=32), str(run_dir), verbose=0).run()
    return run_dir


def test_binary_exports_every_variant_with_a_size_table(run_dir, tmp_path):
    result = run_script("examples/export_ticket.py", f"--run_dir={run_dir}", f"--output_dir={tmp_path}", "--round=1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / export.REPORT_NAME).read_text())["files"]
    names = ["saved_model", *(f"{variant}.tflite" for variant in export.VARIANTS)]
    assert sorted(report) == sorted(names) and sorted(os.listdir(tmp_path)) == sorted([*names, export.REPORT_NAME])
    history = json.loads((run_dir / "history.json").read_text())
    assert report["int8.tflite"]["density"] == pytest.approx(history["rounds"][1]["density"], abs=1e-6)
    assert f"Round 1: {history['rounds'][1]['density']:.2%} of weights remaining" in result.stdout
    for name in names:
        assert f"\n{name} " in result.stdout, name
        assert report[name]["parity"]["samples"] == export.PARITY_SAMPLES
    assert "1.000" in result.stdout  # float.tflite against itself.


def test_binary_exports_the_compacted_network(tmp_path):
    run_dir = tmp_path / "run"
    TicketSearch(lambda: models.lenet300_100(DIGITS.input_shape, DIGITS.num_classes), DIGITS,
                 SearchConfig(rounds=1, epochs=None, iterations=8, eval_every=4, batch_size=32, granularity="unit",
                              prune_rate=0.5), str(run_dir),
                 verbose=0).run()
    result = run_script("examples/export_ticket.py", f"--run_dir={run_dir}", f"--output_dir={tmp_path / 'export'}",
                        "--round=1", "--compact", "--variants=float", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    # fc1 keeps 150 of 300 units and fc2 50 of 100: 64*150+150 + 150*50+50 + 50*10+10 of 64*300+300 + ...
    assert "Compacted: 17,810 of 50,610 parameters (35.2%)." in result.stdout
    report = json.loads((tmp_path / "export" / export.REPORT_NAME).read_text())["files"]
    assert report["float.tflite"]["parity"]["top1_agreement"] == 1.0


def test_binary_names_the_rounds_a_run_has(run_dir, tmp_path):
    result = run_script("examples/export_ticket.py", f"--run_dir={run_dir}", f"--output_dir={tmp_path}", "--round=5",
                  check=False)
    assert result.returncode != 0 and "--round=5, but" in result.stderr and "rounds 0 to 1" in result.stderr


def test_benchmark_quick_prints_the_documented_figures(tmp_path):
    output = tmp_path / "result.json"
    result = run_script("benchmarks/export_size.py", "--quick", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert json.loads(result.stdout) == report and report["quick"] is True
    assert list(report["tickets"]) == ["0.6"]
    assert set(report["targets"]) == {"int8_ratio_at_10pct", "pqat_ratio_at_10pct", "int8_accuracy_cost_points",
                                      "peer_minus_ticket_accuracy_points_search_epochs",
                                      "peer_minus_ticket_accuracy_points_round_epochs"}
    for ticket in report["tickets"].values():
        peers = ticket["tfmot_peers"]
        assert (peers["search_epochs"]["epochs"], peers["round_epochs"]["epochs"]) == (3, 1)
        for figures in (ticket, *peers.values()):
            assert set(figures["files"]) == {*export.VARIANTS, "int8_dense"}
            assert figures["files"]["float"]["ratio"] == 1.0
            assert figures["density"] == pytest.approx(ticket["density"], abs=0.01)
            assert 0 <= figures["keras_test_accuracy"] <= 1
        assert ticket["latency"]["int8"]["sparse_us"] > 0 and ticket["latency"]["float"]["sparse_over_dense"] > 0


def test_exporting_a_missing_or_damaged_run_ends_in_a_message(run_dir, tmp_path):
    history, truncated = tmp_path / "history", tmp_path / "truncated"
    for copy in (history, truncated):
        shutil.copytree(run_dir, copy)
    (history / "history.json").write_text("{}")
    masks = truncated / "round_001" / "masks.npz"
    masks.write_bytes(masks.read_bytes()[:50])
    cases = {
        tmp_path / "none": "none holds no run (run.json is missing)",
        history: "history.json has format version None",
        truncated: "round_001 is damaged",
    }
    results = run_scripts(*(["examples/export_ticket.py", f"--run_dir={run}", f"--output_dir={tmp_path / 'out'}",
                             "--round=1"] for run in cases))
    for message, result in zip(cases.values(), results):
        assert_user_error(result, message)
    assert not (tmp_path / "out").exists()
