"""benchmarks/reproduce_lth.py: aggregation and the claim checks on synthetic histories, and a tiny
end-to-end run on scikit-learn's digits (the real --quick run on Fashion-MNIST takes minutes)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
from matplotlib.image import imread

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "reproduce_lth.py"


@pytest.fixture(scope="module")
def bench():
    # The analysis functions only: the script defines its absl flags when run as __main__.
    spec = importlib.util.spec_from_file_location("reproduce_lth_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def history(accuracies, stops=None, iterations=1000, rate=0.8):
    """Rounds at density rate**r with the given test accuracies at early stop and early-stop iterations."""
    stops = stops or [iterations] * len(accuracies)
    return {"rounds": [{"round": i, "density": rate ** i, "layer_density": {"fc1/kernel": rate ** i},
                        "iterations": iterations, "early_stop_test_accuracy": a, "test_accuracy": a - 0.001,
                        "early_stop_iteration": s, "val_accuracy": a, "seconds": 2.0, "curve": []}
                       for i, (a, s) in enumerate(zip(accuracies, stops))]}


ROUNDS = 16  # 0.8**15 = 3.5% <= 3.6%; round 7 is at 21%.


def runs(ticket, reinit, random_mask, stops=None):
    return {"ticket": [history(a, stops) for a in ticket], "reinit": [history(a) for a in reinit],
            "random_mask": [history(a) for a in random_mask]}


def test_summarize_mean_min_max_per_round(bench):
    table = bench.summarize(runs(ticket=[[0.90] * ROUNDS, [0.88] * ROUNDS], reinit=[[0.85] * ROUNDS, [0.81] * 10],
                                 random_mask=[[0.80] * ROUNDS]))
    assert len(table) == ROUNDS
    assert table[3]["percent_remaining"] == pytest.approx(100 * 0.8 ** 3)
    ticket = table[3]["ticket"]["early_stop_test_accuracy"]
    assert (ticket["mean"], ticket["min"], ticket["max"]) == pytest.approx((0.89, 0.88, 0.90))
    assert table[3]["reinit"]["early_stop_test_accuracy"]["mean"] == pytest.approx(0.83)
    assert "reinit" not in table[12]  # A seed of the control stopped at round 9: only common rounds count.
    assert table[12]["random_mask"]["early_stop_iteration"]["mean"] == 1000

    rows = bench.format_table("lenet300_100", table).splitlines()
    assert rows[0].startswith("LeNet-300-100") and rows[2].startswith("| round |")
    assert len(rows) == 4 + ROUNDS
    assert rows[4 + 3].split(" | ")[1:5] == ["51.2", "89.00 [88.00, 90.00]", "83.00 [81.00, 85.00]",
                                             "80.00 [80.00, 80.00]"]
    assert rows[4 + 12].split(" | ")[3] == "-"


def test_claims_held(bench):
    ticket = [[0.880] + [0.884] * (ROUNDS - 1), [0.878] + [0.877] * (ROUNDS - 1)]
    stops = [1000] + [800] * (ROUNDS - 1)
    claims = bench.check_claims(runs(ticket, [[0.86] * ROUNDS] * 2, [[0.85] * ROUNDS] * 2, stops), 0.036)
    assert {key: c["status"] for key, c in claims.items()} == dict.fromkeys(claims, "held")
    kept = claims["accuracy_kept"]
    assert kept["density"] == pytest.approx(0.8 ** 15)
    assert kept["change_at_density_points"] == pytest.approx(0.15)  # ((+0.4) + (-0.1)) / 2
    assert claims["reinit_worse"]["gap_points"] == pytest.approx(2.05)
    assert claims["reinit_worse"]["random_mask_accuracy"] == pytest.approx(0.85)
    faster = claims["learns_faster"]
    assert faster["density"] == pytest.approx(0.8 ** 7) and faster["ticket_early_stop_iteration"] == 800
    # Dense stopped at its last iteration: the claim holds, with the caveat said out loud.
    assert faster["dense_stopped_at_last_iteration"] == 2 and "bounded by the budget" in faster["caveat"]


def test_claims_not_held(bench):
    # One middle round drops 0.6 points on average; reinit is only 0.5 points worse; the ticket stops later.
    ticket = [[0.88] * ROUNDS for _ in range(2)]
    for seed in ticket:
        seed[9] = 0.874
    stops = [600] + [900] * (ROUNDS - 1)
    claims = bench.check_claims(runs(ticket, [[0.875] * ROUNDS] * 2, [[0.87] * ROUNDS] * 2, stops), 0.036)
    assert {key: c["status"] for key, c in claims.items()} == dict.fromkeys(claims, "not held")
    assert claims["accuracy_kept"]["worst_round"] == 9
    assert claims["accuracy_kept"]["worst_change_points"] == pytest.approx(-0.6)
    assert claims["reinit_worse"]["gap_points"] == pytest.approx(0.5)
    assert "caveat" not in claims["learns_faster"]


def test_claims_not_checked_when_never_sparse_enough(bench):
    claims = bench.check_claims(runs([[0.88] * 3] * 2, [[0.85] * 3] * 2, [[0.85] * 3] * 2), 0.036)
    assert {key: c["status"] for key, c in claims.items()} == dict.fromkeys(claims, "not checked")
    assert "64" in claims["accuracy_kept"]["detail"] and "20%" in claims["learns_faster"]["detail"]


def test_tiny_run_on_digits(tmp_path):
    """The whole benchmark end to end (both models, three kinds), tiny, on digits; one seed keeps it fast."""
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dataset=digits", "--seeds=1", "--rounds=1", "--conv_rounds=1",
         "--iterations=20", "--eval_every=10", "--conv_iterations=10", "--conv_eval_every=10",
         f"--output_dir={output}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Total wall time" in result.stdout and "50,000" in result.stdout
    report = json.loads((output / "results.json").read_text())
    assert report["complete"] is True and report["wall_seconds"] > 0
    assert set(report["models"]) == {"lenet300_100", "conv2"}
    for name, entry in report["models"].items():
        assert entry["seeds_completed"] == 1 and len(entry["rounds"]) == 2
        assert set(entry["rounds"][1]) >= {"ticket", "reinit", "random_mask"}
        assert {c["status"] for c in entry["claims"].values()} == {"not checked"}  # Only 1 round: never 3.6%.
        for path in entry["figures"].values():
            assert os.path.getsize(path) > 10_000 and imread(path)[..., :3].std() > 0.05
    # Conv-2 pruned its convolutions at the paper's 10% and its dense layers at 20%.
    layers = report["models"]["conv2"]["rounds"][1]["layer_density"]
    assert layers["conv2/kernel"] == pytest.approx(0.9, abs=1e-3) and layers["fc1/kernel"] == pytest.approx(0.8, abs=1e-3)
    # The controls replayed the ticket's masks: the same density every round.
    ticket_density = report["models"]["lenet300_100"]["rounds"][1]["density"]
    assert ticket_density == pytest.approx(0.8, abs=0.01)
