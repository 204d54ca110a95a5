"""Figures of ticket searches, in the style of the lottery-ticket paper (matplotlib: the `plots` extra).

Every function draws on its own `matplotlib.figure.Figure` and writes a PNG with
the Agg renderer; nothing touches `matplotlib.pyplot` or the global backend, so
importing this module is safe in notebooks, servers and tests alike.

Inputs are the `history.json` dicts a `TicketSearch` writes (`{"rounds": [...]}`,
see `tf_lottery.search`), or several of them (seeds of one experiment) reduced by
`aggregate` to mean / min / max per round:

    histories = {"ticket": [h_seed0, h_seed1], "reinit": [...], "random mask": [...]}
    lines = {label: aggregate(runs, "early_stop_test_accuracy") for label, runs in histories.items()}
    plot_metric_vs_density(lines, "accuracy.png", ylabel="Test accuracy at early stop (%)", percent=True)

`plot_run(history, output_dir)` draws every figure of one run, of any compiled
metric it recorded (what `examples/plot_run.py` writes).
"""

import os

import numpy as np

from tf_lottery import extras, storage
from tf_lottery.run_store import HISTORY_FILE
from tf_lottery.trainer import monitor_mode

extras.require("matplotlib", "plots", __name__)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

# Colors of the paper's figures: the ticket blue, random re-initialization orange, random mask green.
COLORS = {"ticket": "#1f77b4", "reinit": "#ff7f0e", "random_mask": "#2ca02c"}
LABELS = {"ticket": "Winning ticket (original init)", "reinit": "Same mask, random re-init",
          "random_mask": "Random mask, same layer densities", "dense": "Dense network (round 0)",
          "transferred": "Ticket's masks from the other dataset"}
_FALLBACK_COLORS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
#: What `plot_run` plots by default: the first of these that the run recorded.
DEFAULT_METRICS = ("test_accuracy", "val_accuracy", "test_loss", "val_loss")
_SETS = {"train": "Training", "val": "Validation", "test": "Test"}
_ABBREVIATIONS = {"auc", "iou", "mae", "mape", "mse", "rmse"}


def load_history(run_dir):
    """The history dict of the run in `run_dir` (its `history.json`)."""
    return storage.read_json(os.path.join(run_dir, HISTORY_FILE))


def aggregate(histories, metric):
    """Mean, min and max of `metric` per round over `histories` (e.g. one per seed).

    Rounds are matched by index; only the rounds every history completed are
    kept. Returns `{"density": [...], "mean": [...], "min": [...], "max": [...],
    "runs": n}` with the density of each round (its mean over the histories;
    runs replaying one mask schedule share it exactly).
    """
    if not histories:
        raise ValueError("aggregate needs at least one history.")
    count = min(len(history["rounds"]) for history in histories)
    if count == 0:
        raise ValueError("A history has no completed rounds; nothing to aggregate.")
    values = np.array([[float(history["rounds"][i][metric]) for i in range(count)] for history in histories])
    density = np.array([[float(history["rounds"][i]["density"]) for i in range(count)] for history in histories])
    return {"density": density.mean(axis=0).tolist(), "mean": values.mean(axis=0).tolist(),
            "min": values.min(axis=0).tolist(), "max": values.max(axis=0).tolist(), "runs": len(histories)}


def _style(name, index):
    color = COLORS.get(name, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])
    return color, LABELS.get(name, name)


def _density_axis(axis, densities):
    """Log-scaled x axis of percent of weights remaining, dense on the left (as in the paper)."""
    percents = sorted({round(100 * d, 10) for d in densities}, reverse=True)
    axis.set_xscale("log")
    low, high = min(percents), max(percents)
    axis.set_xlim(high * 1.15, low / 1.15)  # Inverted: sparser to the right.
    step = max(1, -(-len(percents) // 9))   # At most ~9 labels.
    shown = percents[::step]
    if percents[-1] not in shown:
        shown.append(percents[-1])
    axis.xaxis.set_major_locator(FixedLocator(shown))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    axis.set_xlabel("Percent of weights remaining (log scale)")


def plot_metric_vs_density(lines, path, *, ylabel, title=None, percent=False, reference=None,
                           reference_label=None):
    """One line per entry of `lines` (`{name: aggregate(...)}`), with a min/max band.

    x: percent of weights remaining, log scale. `percent` multiplies values by
    100 (accuracies stored as fractions). `reference`: a y value drawn as a
    dashed horizontal line (e.g. the dense network's accuracy). Returns `path`.
    """
    if not lines:
        raise ValueError("Nothing to plot: `lines` is empty.")
    scale = 100.0 if percent else 1.0
    figure = Figure(figsize=(7.5, 5.5), dpi=120)
    axis = figure.add_subplot()
    densities = []
    for index, (name, line) in enumerate(lines.items()):
        color, label = _style(name, index)
        x = 100 * np.asarray(line["density"])
        mean, low, high = (scale * np.asarray(line[key]) for key in ("mean", "min", "max"))
        runs = line.get("runs", 1)
        axis.plot(x, mean, "o-", color=color, markersize=4, linewidth=1.8,
                  label=f"{label} (mean of {runs})" if runs > 1 else label)
        if runs > 1:
            axis.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        densities.extend(line["density"])
    if reference is not None:
        axis.axhline(scale * reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
    _density_axis(axis, densities)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title)
    axis.grid(True, which="major", alpha=0.3)
    bands = any(line.get("runs", 1) > 1 for line in lines.values())
    legend_title = "shaded: min to max over seeds" if bands else None
    # Below the axes, so it never hides a line or a band.
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small", title=legend_title,
                title_fontsize="small", frameon=False)
    figure.tight_layout()
    return _save(figure, path)


def plot_accuracy_vs_density(lines, path, *, title=None, dense_accuracy=None):
    """Test accuracy at early stop (%) vs percent of weights remaining (the paper's Figures 1, 3, 4)."""
    return plot_metric_vs_density(
        lines, path, ylabel="Test accuracy at early stop (%)", percent=True,
        title=title or "Test accuracy at early stop vs weights remaining",
        reference=dense_accuracy, reference_label="Dense network (round 0)" if dense_accuracy is not None else None)


def plot_early_stop_vs_density(lines, path, *, title=None, monitor="val_loss", mode="auto"):
    """Early-stop iteration (best value of the run's `monitor`) vs percent of weights remaining."""
    best = "min." if monitor_mode(monitor, mode) == "min" else "max."
    return plot_metric_vs_density(
        lines, path, ylabel=f"Early-stop iteration ({best} {_lower(_metric_name(monitor))})",
        title=title or "Early-stop iteration vs weights remaining")


def plot_training_curves(history, path, *, metric="test_accuracy", title=None, max_lines=8):
    """`metric` over training iterations, one line per round (at most `max_lines`, evenly spread).

    Each line is labelled with its percent of weights remaining; a marker shows
    the round's early-stop point (its `early_stop_iteration`: the best value of
    the run's monitor).
    """
    rounds = [r for r in history["rounds"] if r.get("curve")]
    if not rounds:
        raise ValueError("The history holds no training curves (rounds without a 'curve').")
    if len(rounds) > max_lines:
        picks = np.unique(np.round(np.linspace(0, len(rounds) - 1, max_lines)).astype(int))
        rounds = [rounds[i] for i in picks]
    scale = 100.0 if _is_accuracy(metric) else 1.0
    figure = Figure(figsize=(7, 4.5), dpi=120)
    axis = figure.add_subplot()
    colors = _gradient(len(rounds))
    for color, entry in zip(colors, rounds):
        iterations = [point["iteration"] for point in entry["curve"]]
        values = [scale * point[metric] for point in entry["curve"]]
        axis.plot(iterations, values, "-", color=color, linewidth=1.5,
                  label=f"{100 * entry['density']:.3g}% (round {entry['round']})")
        early = values[iterations.index(entry["early_stop_iteration"])]
        axis.plot([entry["early_stop_iteration"]], [early], "o", color=color, markersize=5)
    axis.set_xlabel("Training iteration")
    axis.set_ylabel(_metric_label(metric))
    axis.set_title(title or f"{_metric_label(metric)} during training, by weights remaining")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="best", fontsize="small", title="weights remaining (dot: early stop)",
                title_fontsize="small", ncol=2 if len(rounds) > 4 else 1)
    figure.tight_layout()
    return _save(figure, path)


def plot_run(history, output_dir, *, name="run", title=None, metric=None, monitor="val_loss", mode="auto"):
    """Every figure of one run: training curves, `metric` at early stop and the early stop vs density.

    `metric`: a validation or test metric the run recorded ("val_mae", ...); by
    default the first of `DEFAULT_METRICS` it recorded. Accuracies are drawn in
    percent. `monitor` and `mode`: the run's (its `SearchConfig`'s), which chose
    each round's early stop. Returns `{"curves": path, key: path, "early_stop":
    path}`, files `<name>_<key>.png`, where `key` is "accuracy" for an accuracy
    and else `metric` (e.g. "val_loss").
    """
    metric = _run_metric(history, metric)
    key = "accuracy" if _is_accuracy(metric) else metric
    label = title or name
    words = _lower(_metric_name(metric))
    lines_metric = {name: aggregate([history], f"early_stop_{metric}")}
    lines_early = {name: aggregate([history], "early_stop_iteration")}
    return {
        "curves": plot_training_curves(history, os.path.join(output_dir, f"{name}_curves.png"), metric=metric,
                                       title=f"{label}: {words} during training"),
        key: plot_metric_vs_density(
            lines_metric, os.path.join(output_dir, f"{name}_{key}.png"),
            ylabel=_metric_label(metric, " at early stop"), percent=_is_accuracy(metric),
            title=f"{label}: {words} at early stop", reference=history["rounds"][0][f"early_stop_{metric}"],
            reference_label="Dense network (round 0)"),
        "early_stop": plot_early_stop_vs_density(lines_early, os.path.join(output_dir, f"{name}_early_stop.png"),
                                                 title=f"{label}: early-stop iteration", monitor=monitor, mode=mode),
    }


def _run_metric(history, metric):
    """`metric`, or the first of `DEFAULT_METRICS` that every round of `history` recorded at its early stop."""
    rounds = history["rounds"]
    if not rounds:
        raise ValueError("The history has no completed rounds; nothing to plot.")
    recorded = sorted(key.removeprefix("early_stop_") for key in set.intersection(*(set(r) for r in rounds))
                      if key.startswith("early_stop_") and key != "early_stop_iteration")
    if metric is None:
        metric = next((m for m in DEFAULT_METRICS if m in recorded), None)
        if metric is None:
            raise ValueError(f"The run recorded none of {list(DEFAULT_METRICS)}; name the metric to plot, one of "
                             f"{recorded}.")
    elif metric not in recorded:
        raise ValueError(f"The run recorded no {metric!r} at its early stops; choose one of {recorded}.")
    return metric


def plot_analysis(report, path):
    """The figure of `examples/analyze_ticket.py`: test accuracy of a ticket and its comparisons, one panel each.

    Panels: against the weight-noise scale, against each attack's budget, and,
    if `report` has a transfer, against the percent of weights remaining.
    `report` is what `analyze_ticket` writes to analysis.json (`"noise"`,
    `"adversarial"`, optional `"transfer"`). Returns `path`.
    """
    panels = [("Gaussian weight noise", "Noise scale s (x the layer's weight std)", report["noise"])]
    panels += [(f"{attack.upper()} attack", "Epsilon (L-infinity, pixels in [0, 1])", curves)
               for attack, curves in report["adversarial"].items()]
    count = len(panels) + ("transfer" in report)
    figure = Figure(figsize=(4.8 * count, 4.4), dpi=100)
    for position, (title, xlabel, curves) in enumerate(panels, start=1):
        axis = figure.add_subplot(1, count, position)
        for index, (name, curve) in enumerate(curves.items()):
            color, label = _style(name, index)
            axis.plot([float(x) for x in curve], [100 * value for value in curve.values()], "o-", color=color,
                      markersize=4, label=label)
        axis.set(title=title, xlabel=xlabel, ylabel="Test accuracy (%)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    if "transfer" in report:
        rows = report["transfer"]["rounds"]
        axis = figure.add_subplot(1, count, count)
        for index, name in enumerate(("ticket", "transferred", "random_mask")):
            color, label = _style(name, index)
            axis.plot([100 * row["density"] for row in rows], [100 * row[name] for row in rows], "o-",
                      color=color, markersize=4, label=label)
        _density_axis(axis, [row["density"] for row in rows])
        axis.set(title="Transfer between datasets", ylabel="Test accuracy (%)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def plot_instability(record, path, *, title="Instability analysis"):
    """The linear paths of `rewind="auto"`: the validation error (or metric) between the two copies trained from
    each candidate rewind point, one line per point, the chosen one bold. `record` is a run's instability.json
    (`RunStore.read_instability`). Returns `path`."""
    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    axis = figure.add_subplot()
    curves = record["curves"]
    for color, curve in zip(_gradient(len(curves)), curves):
        metric = curve["metric"]
        values = [100 * (1 - value) for value in curve["values"]] if _is_accuracy(metric) else curve["values"]
        chosen = curve["rewind_iteration"] == record["rewind_iteration"]
        axis.plot(curve["alphas"], values, "o-", color=color, markersize=3, linewidth=2.5 if chosen else 1.2,
                  label=f"k = {curve['rewind_iteration']}: barrier {curve['barrier']:.3f}" + (" (chosen)" * chosen))
    metric = curves[0]["metric"]
    ylabel = "Validation error (%)" if _is_accuracy(metric) else _metric_name(f"val_{metric}")
    axis.set(title=title, xlabel="Interpolation between the two copies", ylabel=ylabel)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def _is_accuracy(metric):
    """Whether `metric` is an accuracy (a fraction, drawn in percent)."""
    return "accuracy" in metric


def _metric_name(metric):
    """"Validation loss" for "val_loss", "Test MAE" for "test_mae"."""
    prefix, _, rest = metric.partition("_")
    words = [word.upper() if word in _ABBREVIATIONS else word
             for word in (rest if prefix in _SETS else metric).split("_")]
    text = " ".join([_SETS[prefix], *words] if prefix in _SETS else words)
    return text[:1].upper() + text[1:]


def _metric_label(metric, detail=""):
    """An axis label: `metric`'s name, then `detail`, then "(%)" for an accuracy."""
    return _metric_name(metric) + detail + (" (%)" if _is_accuracy(metric) else "")


def _lower(text):
    return text[:1].lower() + text[1:]


def _gradient(count):
    """`count` colors from dark blue (dense) to yellow (sparsest)."""
    from matplotlib import colormaps
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, count)]


def _save(figure, path):
    """Writes `figure` as a PNG, atomically (temporary name, then rename)."""
    with storage.atomic_path(path, ".png") as temporary:
        figure.savefig(temporary, format="png")
    return path
