"""End-to-end: examples/analyze_ticket.py on tiny digits runs, as a user runs it."""

import json

import pytest

from tf_lottery import analysis, models, storage
from tf_lottery.search import SearchConfig, TicketSearch

from conftest import DIGITS as DATA, run_script


def _build():
    return models.lenet300_100(DATA.input_shape, DATA.num_classes)


def _run(*args, check=True):
    return run_script("examples/analyze_ticket.py", *args, check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        TicketSearch(_build, DATA, SearchConfig(rounds=1, epochs=2, batch_size=64, seed=seed), str(folder),
                     verbose=0).run()
        folders.append(folder)
    return folders


def test_binary_writes_noise_attack_and_transfer_results_and_a_plot(runs, tmp_path):
    run_dir, other = runs
    result = _run(f"--run_dir={run_dir}", f"--output_dir={tmp_path}", "--round=1", f"--transfer_from={other}",
                  "--samples=100", "--noise_scales=0,0.5", "--noise_repeats=1", "--epsilons=0,0.1")
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["round"] == 1 and report["samples"] == 100
    density = json.loads((run_dir / "history.json").read_text())["rounds"][1]["density"]
    assert report["density"] == {"ticket": density, "dense": 1.0, "reinit": density}
    for curves in (report["noise"], *report["adversarial"].values()):
        assert set(curves) == {"ticket", "dense", "reinit"}
        assert all(len(curve) == 2 for curve in curves.values())
    for name in ("ticket", "dense", "reinit"):
        assert report["noise"][name]["0.0"] == report["adversarial"]["fgsm"][name]["0.0"]
        assert report["adversarial"]["pgd"][name]["0.1"] < report["adversarial"]["pgd"][name]["0.0"]
    assert [row["round"] for row in report["transfer"]["rounds"]] == [0, 1]
    assert set(report["transfer"]["rounds"][1]) == {"round", "density", *analysis.TRANSFER_COLUMNS}
    assert (tmp_path / "analysis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    transferred = storage.read_arrays(tmp_path / "transfer" / "transferred" / "round_001" / "masks.npz")
    assert (transferred["fc1/kernel"] == storage.read_arrays(other / "round_001" / "masks.npz")["fc1/kernel"]).all()
    for line in ("noise s", "fgsm eps", "pgd eps", "transfer", "Results:"):
        assert line in result.stdout


def test_binary_names_the_rounds_a_run_has(runs, tmp_path):
    result = _run(f"--run_dir={runs[0]}", f"--output_dir={tmp_path}", "--round=4", check=False)
    assert result.returncode != 0 and "has rounds 0 to 1" in result.stderr and "--round=N" in result.stderr
