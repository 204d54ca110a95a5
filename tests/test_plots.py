"""tf_lottery.plots: figures are real PNGs with content; aggregation over seeds; examples/plot_run.py."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from tf_lottery import plots, storage

from conftest import run_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


def synthetic_history(seed=0, rounds=6, iterations=400, period=50, start=0.85):
    """A history shaped like TicketSearch's: density 0.8**r, noisy curves, an early stop per round."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(rounds):
        density = 0.8 ** index
        curve = []
        for step in range(period, iterations + 1, period):
            progress = step / iterations
            curve.append({"iteration": step, "val_loss": 0.6 - 0.2 * progress + 0.3 * (progress - 0.7) ** 2
                          + 0.01 * rng.random(), "val_accuracy": start + 0.05 * progress,
                          "test_accuracy": start + 0.05 * progress - 0.002 * index + 0.003 * rng.random(),
                          "test_loss": 0.5})
        early = min(curve, key=lambda point: point["val_loss"])
        entries.append({"round": index, "density": density, "layer_density": {"fc1/kernel": density},
                        "iterations": iterations, "test_accuracy": curve[-1]["test_accuracy"],
                        "val_accuracy": curve[-1]["val_accuracy"], "early_stop_iteration": early["iteration"],
                        "early_stop_test_accuracy": early["test_accuracy"],
                        "early_stop_val_accuracy": early["val_accuracy"], "seconds": 1.0 + index, "curve": curve})
    return {"rounds": entries, "best_round": 0}


def regression_history(rounds=4, iterations=400, period=50):
    """A regression run's history: val_loss and val_mae, no test set; early stops at min val_mae (iteration 250)."""
    rng = np.random.default_rng(0)
    entries = []
    for index in range(rounds):
        curve = [{"iteration": step, "val_loss": 2.0 - step / iterations + 0.05 * rng.random(),
                  "val_mae": 1.0 + (step / iterations - 0.6) ** 2 + 0.01 * index}
                 for step in range(period, iterations + 1, period)]
        early = min(curve, key=lambda point: point["val_mae"])
        entries.append({"round": index, "density": 0.8 ** index, "iterations": iterations, "train_loss": 1.0,
                        "train_mae": 0.8, "val_loss": curve[-1]["val_loss"], "val_mae": curve[-1]["val_mae"],
                        "early_stop_iteration": early["iteration"], "early_stop_val_loss": early["val_loss"],
                        "early_stop_val_mae": early["val_mae"], "seconds": 1.0, "curve": curve})
    return {"rounds": entries, "best_round": 0}


@pytest.fixture
def figures(monkeypatch):
    """`{file name: axes}` of every figure plots writes."""
    drawn, save = {}, plots._save

    def recording(figure, path):
        drawn[pathlib.Path(path).name] = figure.axes[0]
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", recording)
    return drawn


def assert_real_png(path, min_bytes=10_000):
    path = pathlib.Path(path)
    assert path.is_file() and path.stat().st_size > min_bytes, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # Not blank: lines, text and bands.
    # Colored content (the lines), not only black text on white.
    rgb = pixels[..., :3]
    assert (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3).mean() > 0.002


def test_aggregate_mean_min_max_over_seeds():
    first, second = synthetic_history(0), synthetic_history(1, rounds=4)
    line = plots.aggregate([first, second], "early_stop_test_accuracy")
    assert line["runs"] == 2 and len(line["mean"]) == 4  # Only the rounds both completed.
    a = [r["early_stop_test_accuracy"] for r in first["rounds"][:4]]
    b = [r["early_stop_test_accuracy"] for r in second["rounds"]]
    np.testing.assert_allclose(line["mean"], (np.array(a) + b) / 2)
    np.testing.assert_allclose(line["min"], np.minimum(a, b))
    np.testing.assert_allclose(line["max"], np.maximum(a, b))
    np.testing.assert_allclose(line["density"], [0.8 ** i for i in range(4)])
    with pytest.raises(ValueError, match="at least one"):
        plots.aggregate([], "test_accuracy")


def test_density_figures_three_lines_with_bands(tmp_path):
    lines = {kind: plots.aggregate([synthetic_history(s + 10 * k) for s in range(2)], "early_stop_test_accuracy")
             for k, kind in enumerate(("ticket", "reinit", "random_mask"))}
    accuracy = plots.plot_accuracy_vs_density(lines, tmp_path / "accuracy.png", dense_accuracy=0.86,
                                              title="Synthetic: accuracy")
    stops = {kind: plots.aggregate([synthetic_history(s)], "early_stop_iteration") for s, kind in enumerate(lines)}
    early = plots.plot_early_stop_vs_density(stops, tmp_path / "early.png")
    for path in (accuracy, early):
        assert_real_png(path)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]  # Written atomically.


def test_plot_run_writes_three_figures(tmp_path):
    paths = plots.plot_run(synthetic_history(), tmp_path, name="synthetic")
    assert set(paths) == {"curves", "accuracy", "early_stop"}
    for path in paths.values():
        assert_real_png(path)


def test_plot_run_on_a_classification_run_draws_the_papers_figures(tmp_path, figures):
    history = synthetic_history()
    plots.plot_run(history, tmp_path, name="lenet")
    accuracy, curves, early = (figures[f"lenet_{kind}.png"] for kind in ("accuracy", "curves", "early_stop"))
    assert (accuracy.get_ylabel(), accuracy.get_title()) == ("Test accuracy at early stop (%)",
                                                             "lenet: test accuracy at early stop")
    np.testing.assert_allclose(accuracy.lines[0].get_ydata(),
                               [100 * r["early_stop_test_accuracy"] for r in history["rounds"]])
    assert (curves.get_ylabel(), curves.get_title()) == ("Test accuracy (%)", "lenet: test accuracy during training")
    assert early.get_ylabel() == "Early-stop iteration (min. validation loss)"
    for entry in history["rounds"]:  # Without a test set: validation accuracy, still in percent.
        for key in [key for key in entry if "test" in key]:
            entry.pop(key)
    paths = plots.plot_run(history, tmp_path, name="val")
    assert set(paths) == {"curves", "accuracy", "early_stop"}
    assert figures["val_accuracy.png"].get_ylabel() == "Validation accuracy at early stop (%)"
    assert figures["val_curves.png"].get_title() == "val: validation accuracy during training"


def test_plot_run_on_a_regression_run_plots_its_metrics_unscaled(tmp_path, figures):
    history = regression_history()
    paths = plots.plot_run(history, tmp_path, monitor="val_mae", mode="min")
    assert paths == {kind: os.path.join(tmp_path, f"run_{kind}.png") for kind in ("curves", "val_loss", "early_stop")}
    for path in paths.values():
        assert_real_png(path)
    metric, curves, early = (figures[f"run_{kind}.png"] for kind in ("val_loss", "curves", "early_stop"))
    assert (metric.get_ylabel(), metric.get_title()) == ("Validation loss at early stop",
                                                         "run: validation loss at early stop")
    np.testing.assert_allclose(metric.lines[0].get_ydata(), [r["early_stop_val_loss"] for r in history["rounds"]])
    assert (curves.get_ylabel(), curves.get_title()) == ("Validation loss", "run: validation loss during training")
    dots = [line for line in curves.lines if line.get_marker() == "o"]
    assert [list(dot.get_xdata()) for dot in dots] == [[250]] * 4  # The best val_mae, not the lowest val_loss.
    np.testing.assert_allclose([dot.get_ydata()[0] for dot in dots],
                               [r["early_stop_val_loss"] for r in history["rounds"]])
    assert early.get_ylabel() == "Early-stop iteration (min. validation MAE)"
    assert "run_val_mae.png" in plots.plot_run(history, tmp_path, metric="val_mae", monitor="val_mae",
                                               mode="min")["val_mae"]
    assert figures["run_val_mae.png"].get_ylabel() == "Validation MAE at early stop"
    with pytest.raises(ValueError, match=r"no 'test_accuracy' at its early stops; choose one of \['val_loss', "
                                         r"'val_mae'\]"):
        plots.plot_run(history, tmp_path, metric="test_accuracy")
    for entry in history["rounds"]:
        entry.pop("early_stop_val_loss")
    with pytest.raises(ValueError, match=r"recorded none of .*one of \['val_mae'\]"):
        plots.plot_run(history, tmp_path)


def instability_record(barriers=(0.3, 0.01, 0.0), chosen=5):
    """An instability.json of `rewind="auto"` with candidates 0, 5, 10 and the given barriers."""
    alphas = np.linspace(0, 1, 7).tolist()
    curves = [{"rewind_iteration": k, "alphas": alphas, "metric": "accuracy", "barrier": barrier,
               "values": (0.9 - barrier * np.sin(np.pi * np.array(alphas))).tolist()}
              for k, barrier in zip((0, 5, 10), barriers)]
    return {"threshold": 0.02, "stable": True, "rewind_iteration": chosen, "curves": curves}


def test_instability_figure_draws_the_error_on_each_path_and_marks_the_chosen_point(tmp_path, figures):
    path = plots.plot_instability(instability_record(), tmp_path / "instability.png")
    assert_real_png(path)
    lines = figures["instability.png"].get_lines()
    assert [line.get_label() for line in lines] == ["k = 0: barrier 0.300", "k = 5: barrier 0.010 (chosen)",
                                                    "k = 10: barrier 0.000"]
    assert max(lines[0].get_ydata()) == pytest.approx(40.0)  # Error in percent: 100 * (1 - (0.9 - 0.3)).
    assert lines[1].get_linewidth() > lines[0].get_linewidth()


def test_plot_run_example_plots_a_regression_run_with_its_monitor(tmp_path):
    run_dir = tmp_path / "regression"
    storage.write_json(run_dir / "history.json", regression_history(rounds=3))
    storage.write_json(run_dir / "run.json", {"config": {"monitor": "val_mae", "mode": "min"}})
    storage.write_json(run_dir / "instability.json", instability_record())
    plotted = run_script("examples/plot_run.py", f"--run_dir={run_dir}", "--metric=val_mae", check=False,
                         timeout=120)
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    for suffix in ("curves", "val_mae", "early_stop", "instability"):
        assert_real_png(run_dir / "plots" / f"regression_{suffix}.png")
        assert f"regression_{suffix}.png" in plotted.stdout


def test_plot_run_example_reads_a_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    storage.write_json(run_dir / "history.json", synthetic_history(rounds=3))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "plot_run.py"), f"--run_dir={run_dir}"],
                            capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for suffix in ("curves", "accuracy", "early_stop"):
        assert_real_png(run_dir / "plots" / f"run_{suffix}.png")
    missing = subprocess.run([sys.executable, str(ROOT / "examples" / "plot_run.py"),
                              f"--run_dir={tmp_path / 'nothing'}"], capture_output=True, text=True, env=env,
                             timeout=120, cwd=ROOT)
    assert missing.returncode != 0 and "history.json" in missing.stderr


def test_empty_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_metric_vs_density({}, tmp_path / "x.png", ylabel="y")
    history = synthetic_history()
    for entry in history["rounds"]:
        entry.pop("curve")
    with pytest.raises(ValueError, match="curve"):
        plots.plot_training_curves(history, tmp_path / "x.png")


def test_analysis_figure_has_a_panel_per_analysis(tmp_path):
    curve = {0.0: 0.9, 0.1: 0.6, 0.2: 0.3}
    report = {"noise": {"ticket": curve, "dense": curve, "reinit": curve},
              "adversarial": {"fgsm": {"ticket": curve}, "pgd": {"ticket": curve}},
              "transfer": {"rounds": [{"density": 0.8 ** r, "ticket": 0.9, "transferred": 0.85, "random_mask": 0.8}
                                      for r in range(4)]}}
    path = plots.plot_analysis(report, tmp_path / "analysis.png")
    assert_real_png(path)
    without_transfer = plots.plot_analysis({k: v for k, v in report.items() if k != "transfer"},
                                           tmp_path / "three_panels.png")
    assert_real_png(without_transfer)
    assert imread(path).shape[1] > imread(without_transfer).shape[1]  # Four panels, not three.
