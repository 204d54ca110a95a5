"""Reproduces the lottery-ticket paper's evidence on our data, side by side, with figures.

Frankle & Carbin (arXiv 1803.03635), Figures 1, 3 and 4, on Fashion-MNIST (Debian's
`dataset-fashion-mnist`; or full MNIST with --dataset=mnist --data_dir=...):

1. LeNet-300-100, the paper's recipe: Adam 1.2e-3, batch 60, each round prunes 20% of the
   surviving weights of the hidden layers and 10% of the output layer, rewinds the survivors
   to their initial values, until at most --target_density (3.6%) of the weights remain.
   Only the training iterations per round are cut (the paper trains 50,000), to fit the CPU.
2. In the same run, at exactly the ticket's masks (replayed from the ticket's run):
   the `reinit` control (same mask, fresh random initialization) and the `random_mask`
   control (random masks with the ticket's per-layer densities, original initialization).
3. Conv-2 on the same data, the same way, for --conv_rounds rounds (paper: Adam 2e-4, 20,000
   iterations, 10% of the convolutional / 20% of the fully connected / 10% of the output
   weights per round).

Every experiment runs for --seeds seeds (0, 1, ...); per round it reports mean, min and max
over seeds of the test accuracy at early stop (minimum validation loss), the early-stop
iteration and the final test accuracy, and checks the paper's three claims:

1. tickets keep test accuracy >= the dense network's minus 0.5 points down to <= 3.6% of weights;
2. at that density the reinit control is at least 1 point worse than the ticket;
3. the ticket's early-stop iteration at ~20% of weights is no later than the dense network's.

Each is reported as "held", "not held" or "not checked" (e.g. the run never got that sparse),
with the numbers. Written to --output_dir (default benchmarks/results; with --quick
benchmarks/results/quick):

    results.json                      settings, machine, per-round table, claims, timings
    <model>_accuracy.png              test accuracy at early stop vs % weights remaining (log x)
    <model>_early_stop.png            early-stop iteration vs % weights remaining (log x)
    <model>_curves.png                seed 0 ticket: test accuracy over training, per round
    runs/<model>/seed_<s>/<kind>/     the search run directories (large; resumable)

results.json and the figures are rewritten after every finished seed, so a long run can be
watched; "complete" turns true at the end. A killed run continues with --resume.

    python benchmarks/reproduce_lth.py                       # the full benchmark (~46 min on 2 cores)
    python benchmarks/reproduce_lth.py --quick               # a smoke run (< 5 min)
    python benchmarks/reproduce_lth.py --dataset=mnist --data_dir=/data/mnist
"""

import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_lottery import datasets, environment, models, plots, storage  # noqa: E402
from tf_lottery.search import SearchConfig, TicketSearch  # noqa: E402

KINDS = ("ticket", "reinit", "random_mask")
MODEL_TITLES = {"lenet300_100": "LeNet-300-100", "conv2": "Conv-2"}
# The paper's training length per round (Figure 2 of arXiv 1803.03635).
PAPER_ITERATIONS = {"lenet300_100": 50_000, "conv2": 20_000}
CLAIMS = {
    "accuracy_kept": "tickets keep test accuracy >= the dense network's minus 0.5 points down to <= 3.6% of weights",
    "reinit_worse": "at that density the reinit control is at least 1 point worse than the ticket",
    "learns_faster": "the ticket's early-stop iteration at ~20% of weights is no later than the dense network's",
}
ACCURACY_DROP = 0.005   # Claim 1: 0.5 points.
REINIT_GAP = 0.01       # Claim 2: 1 point.
EARLY_DENSITY = 0.2     # Claim 3: "~20%" = the round nearest 20% (log scale), if within 15%..27%.
EARLY_DENSITY_RANGE = (0.15, 0.27)
METRICS = ("early_stop_test_accuracy", "test_accuracy", "early_stop_iteration", "val_accuracy", "seconds")

QUICK = {"seeds": 2, "rounds": 2, "iterations": 300, "eval_every": 100, "conv_rounds": 1,
         "conv_iterations": 20, "conv_eval_every": 10, "train_images": 6000, "val_images": 1000,
         "test_images": 2000, "output_dir": os.path.join("benchmarks", "results", "quick")}

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags (called when run as a script, so tests can import the analysis functions)."""
    flags.DEFINE_enum("dataset", "fashion_mnist", list(datasets.NAMES), "Dataset (offline; see tf_lottery.datasets).")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (mnist, or fashion_mnist elsewhere).")
    flags.DEFINE_integer("seeds", 2, "Seeds per experiment (0, 1, ...): mean and min/max are over these.", lower_bound=1)
    flags.DEFINE_integer("iterations", 5000, "LeNet-300-100 training iterations per round (paper: 50,000).",
                         lower_bound=1)
    flags.DEFINE_integer("eval_every", 250, "LeNet-300-100: iterations between evaluations (early-stop resolution).",
                         lower_bound=1)
    flags.DEFINE_integer("rounds", None, "LeNet-300-100: stop after this many pruning rounds (default: at "
                         "--target_density).", lower_bound=1)
    flags.DEFINE_float("target_density", 0.036, "LeNet-300-100: prune until at most this fraction of weights remains.")
    flags.DEFINE_float("learning_rate", 1.2e-3, "LeNet-300-100 Adam learning rate (paper: 1.2e-3).")
    flags.DEFINE_float("prune_rate", 0.2, "Fraction of surviving hidden-layer weights pruned per round (paper: 0.2).")
    flags.DEFINE_float("output_prune_rate", 0.1, "Fraction pruned per round in the output layer (paper: 0.1).")
    flags.DEFINE_string("rewind", "init", "Where survivors restart: init (paper) or step:K / epoch:K (late rewinding).")
    flags.DEFINE_integer("batch_size", 60, "Batch size (paper: 60).", lower_bound=1)
    flags.DEFINE_integer("conv_rounds", 2, "Conv-2 pruning rounds (0: skip Conv-2).", lower_bound=0)
    flags.DEFINE_integer("conv_iterations", 150, "Conv-2 training iterations per round (paper: 20,000).", lower_bound=1)
    flags.DEFINE_integer("conv_eval_every", 75, "Conv-2: iterations between evaluations.", lower_bound=1)
    flags.DEFINE_float("conv_learning_rate", 2e-4, "Conv-2 Adam learning rate (paper: 2e-4).")
    flags.DEFINE_float("conv_layer_rate", 0.1, "Conv-2: fraction of convolution weights pruned per round (paper: 0.1; "
                       "0: same as --prune_rate).")
    flags.DEFINE_integer("train_images", 0, "Use at most this many training images (0: all).", lower_bound=0)
    flags.DEFINE_integer("val_images", 0, "Use at most this many validation images (0: all).", lower_bound=0)
    flags.DEFINE_integer("test_images", 0, "Use at most this many test images (0: all).", lower_bound=0)
    flags.DEFINE_string("output_dir", os.path.join("benchmarks", "results"), "Where results.json, figures and runs go.")
    flags.DEFINE_boolean("resume", False, "Continue the searches found in --output_dir/runs (finished ones are kept).")
    flags.DEFINE_boolean("overwrite", False, "Delete searches found in --output_dir/runs and start again.")
    flags.DEFINE_boolean("quick", False, f"Smoke-test settings, for flags not given explicitly: {QUICK}.")


# ----------------------------------------------------------------- analysis (pure functions)


def summarize(histories):
    """Per-round mean/min/max over seeds. `histories`: `{kind: [history per seed]}`.

    Returns a list with one entry per round of the ticket runs:
    `{"round", "density", "percent_remaining", "layer_density", kind: {metric: {"mean", "min", "max"}}}`;
    a kind appears in a round only if all its seeds completed that round.
    """
    stats = {kind: {metric: plots.aggregate(runs, metric) for metric in METRICS}
             for kind, runs in histories.items() if runs}
    ticket = stats["ticket"]["early_stop_test_accuracy"]
    table = []
    for index, density in enumerate(ticket["density"]):
        entry = {"round": index, "density": density, "percent_remaining": 100 * density,
                 "layer_density": histories["ticket"][0]["rounds"][index]["layer_density"]}
        for kind, metrics in stats.items():
            if index < len(metrics["early_stop_test_accuracy"]["mean"]):
                entry[kind] = {metric: {key: line[key][index] for key in ("mean", "min", "max")}
                               for metric, line in metrics.items()}
        table.append(entry)
    return table


def _per_seed(histories, kind, index, metric):
    return [float(history["rounds"][index][metric]) for history in histories.get(kind, [])
            if index < len(history["rounds"])]


def _mean(values):
    return float(np.mean(values)) if values else None


def check_claims(histories, target_density, accuracy="early_stop_test_accuracy"):
    """Checks the paper's three claims on `{kind: [history per seed]}`, using means over seeds.

    Accuracies are the test accuracy at early stop (the paper's measure; `accuracy`
    to choose another). Returns `{claim: {"claim", "status", "detail", numbers...}}`
    with status "held", "not held" or "not checked".
    """
    tickets = histories["ticket"]
    count = min(len(h["rounds"]) for h in tickets)
    densities = [float(np.mean([h["rounds"][i]["density"] for h in tickets])) for i in range(count)]
    dense = _per_seed(histories, "ticket", 0, accuracy)
    results = {}

    # Claim 1: accuracy kept down to the target density.
    sparse = next((i for i, d in enumerate(densities) if d <= target_density + 1e-9), None)
    claim = {"claim": CLAIMS["accuracy_kept"], "dense_accuracy": _mean(dense), "seeds": len(tickets)}
    if sparse is None:
        claim.update(status="not checked", detail=f"the sparsest round has {100 * densities[-1]:.3g}% of weights, "
                     f"above the target {100 * target_density:.3g}%")
    else:
        drops = []
        for index in range(1, sparse + 1):
            per_seed = [a - d for a, d in zip(_per_seed(histories, "ticket", index, accuracy), dense)]
            drops.append((float(np.mean(per_seed)), index, min(per_seed)))
        worst, worst_index, _ = min(drops)
        at_target = drops[-1]
        claim.update(
            status="held" if worst >= -ACCURACY_DROP - 1e-9 else "not held",
            density=densities[sparse], ticket_accuracy=_mean(_per_seed(histories, "ticket", sparse, accuracy)),
            change_at_density_points=100 * at_target[0], worst_seed_change_at_density_points=100 * at_target[2],
            worst_round=worst_index, worst_round_density=densities[worst_index], worst_change_points=100 * worst,
            detail=(f"at {100 * densities[sparse]:.3g}% the ticket has "
                    f"{100 * _mean(_per_seed(histories, 'ticket', sparse, accuracy)):.2f}% vs dense {100 * claim['dense_accuracy']:.2f}% ({100 * at_target[0]:+.2f} points); worst round "
                    f"{worst_index} ({100 * densities[worst_index]:.3g}%): {100 * worst:+.2f} points "
                    f"(threshold -{100 * ACCURACY_DROP:.1f})"))
    results["accuracy_kept"] = claim

    # Claim 2: reinit at least 1 point worse at that density.
    claim = {"claim": CLAIMS["reinit_worse"]}
    reinit = _per_seed(histories, "reinit", sparse, accuracy) if sparse is not None else []
    if sparse is None or len(reinit) < len(histories.get("reinit", [])) or not reinit:
        claim.update(status="not checked", detail="no ticket round at the target density"
                     if sparse is None else "the reinit control did not reach that round")
    else:
        ticket_accuracy = _mean(_per_seed(histories, "ticket", sparse, accuracy))
        random = _per_seed(histories, "random_mask", sparse, accuracy)
        gap = ticket_accuracy - _mean(reinit)
        claim.update(
            status="held" if gap >= REINIT_GAP - 1e-9 else "not held", density=densities[sparse],
            ticket_accuracy=ticket_accuracy, reinit_accuracy=_mean(reinit), gap_points=100 * gap,
            random_mask_accuracy=_mean(random),
            detail=(f"at {100 * densities[sparse]:.3g}%: ticket {100 * ticket_accuracy:.2f}%, reinit "
                    f"{100 * _mean(reinit):.2f}% (gap {100 * gap:+.2f} points, threshold +{100 * REINIT_GAP:.0f})"
                    + (f", random mask {100 * _mean(random):.2f}%" if random else "")))
    results["reinit_worse"] = claim

    # Claim 3: learns at least as fast at ~20%.
    claim = {"claim": CLAIMS["learns_faster"]}
    near = min(range(count), key=lambda i: abs(np.log(densities[i] / EARLY_DENSITY)))
    if not EARLY_DENSITY_RANGE[0] <= densities[near] <= EARLY_DENSITY_RANGE[1]:
        claim.update(status="not checked", detail=f"no round near 20% of weights (nearest: "
                     f"{100 * densities[near]:.3g}%)")
    else:
        dense_stop = _per_seed(histories, "ticket", 0, "early_stop_iteration")
        ticket_stop = _per_seed(histories, "ticket", near, "early_stop_iteration")
        budget = [h["rounds"][0]["iterations"] for h in tickets]
        censored = sum(stop >= total for stop, total in zip(dense_stop, budget))
        held = _mean(ticket_stop) <= _mean(dense_stop)
        claim.update(status="held" if held else "not held", density=densities[near],
                     dense_early_stop_iteration=_mean(dense_stop), ticket_early_stop_iteration=_mean(ticket_stop),
                     iterations_per_round=budget[0], dense_stopped_at_last_iteration=censored,
                     detail=(f"at {100 * densities[near]:.3g}% the ticket stops at iteration {_mean(ticket_stop):.0f} "
                             f"vs dense {_mean(dense_stop):.0f} (mean of {len(ticket_stop)} seeds)"))
        if censored:
            claim["caveat"] = (f"the dense network's validation loss was still lowest at the last iteration "
                               f"({budget[0]}) in {censored} of {len(dense_stop)} seeds: with a longer round it "
                               "might stop later, so this comparison is bounded by the budget")
    results["learns_faster"] = claim
    return results


def timing(histories):
    """Seconds per round, per kind: mean, max and total over seeds and rounds."""
    result = {}
    for kind, runs in histories.items():
        seconds = [r["seconds"] for h in runs for r in h["rounds"]]
        if seconds:
            result[kind] = {"rounds": len(seconds), "mean": float(np.mean(seconds)), "max": float(np.max(seconds)),
                            "total": float(np.sum(seconds))}
    return result


def write_figures(model_name, histories, output_dir, subtitle):
    """The accuracy / early-stop figures (three lines with min/max bands) and seed 0's curves."""
    title = MODEL_TITLES.get(model_name, model_name)
    present = {kind: runs for kind, runs in histories.items() if runs}
    accuracy = {kind: plots.aggregate(runs, "early_stop_test_accuracy") for kind, runs in present.items()}
    stops = {kind: plots.aggregate(runs, "early_stop_iteration") for kind, runs in present.items()}
    dense = accuracy["ticket"]["mean"][0]
    return {
        "accuracy": plots.plot_accuracy_vs_density(
            accuracy, os.path.join(output_dir, f"{model_name}_accuracy.png"), dense_accuracy=dense,
            title=f"{title} on {subtitle}: test accuracy at early stop"),
        "early_stop": plots.plot_early_stop_vs_density(
            stops, os.path.join(output_dir, f"{model_name}_early_stop.png"),
            title=f"{title} on {subtitle}: early-stop iteration"),
        "curves": plots.plot_training_curves(
            present["ticket"][0], os.path.join(output_dir, f"{model_name}_curves.png"),
            title=f"{title} on {subtitle}, seed 0 ticket: test accuracy during training"),
    }


def format_table(model_name, table):
    """A markdown table of the per-round means [min, max] over seeds (printed, and pasted into the README)."""
    def accuracy(entry, kind):
        if kind not in entry:
            return "-"
        value = entry[kind]["early_stop_test_accuracy"]
        return f"{100 * value['mean']:.2f} [{100 * value['min']:.2f}, {100 * value['max']:.2f}]"

    lines = [f"{MODEL_TITLES.get(model_name, model_name)}: test accuracy (%) at early stop, mean [min, max] over "
             "seeds; early-stop iteration, mean",
             "",
             "| round | % of weights | ticket | reinit | random mask | early stop: ticket / reinit / random |",
             "|---:|---:|---|---|---|---:|"]
    for entry in table:
        stops = " / ".join(f"{entry[k]['early_stop_iteration']['mean']:.0f}" if k in entry else "-" for k in KINDS)
        lines.append(f"| {entry['round']} | {entry['percent_remaining']:.3g} | {accuracy(entry, 'ticket')} | "
                     f"{accuracy(entry, 'reinit')} | {accuracy(entry, 'random_mask')} | {stops} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- running


def _subset(data, train, val, test, seed=0):
    """`data` with at most the given numbers of images per split (0: all), chosen at random."""
    if not (train or val or test):
        return data
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, limit in (("train", train), ("val", val), ("test", test)):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if limit and limit < len(y):
            keep = np.sort(rng.choice(len(y), size=limit, replace=False))
            x, y = x[keep], y[keep]
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return dataclasses.replace(data, **arrays)


def _search(build, data, config, run_dir, replay, settings):
    search = TicketSearch(build, data, config, run_dir, replay_masks_from=replay, resume=settings["resume"],
                          overwrite=settings["overwrite"], verbose=1)
    return search.run()


def run_model(model_name, data, base_config, settings, on_seed):
    """Ticket search and both controls for every seed; calls `on_seed(histories)` after each seed."""
    build_model = models.get(model_name)
    build = lambda: build_model(data.input_shape, data.num_classes)  # noqa: E731
    histories = {kind: [] for kind in KINDS}
    for seed in range(settings["seeds"]):
        folder = os.path.join(settings["output_dir"], "runs", model_name, f"seed_{seed}")
        ticket_dir = os.path.join(folder, "ticket")
        for kind in KINDS:
            config = dataclasses.replace(base_config, seed=seed, control=None if kind == "ticket" else kind)
            print(f"\n== {MODEL_TITLES[model_name]}, seed {seed}: {kind} ==", flush=True)
            replay = None if kind == "ticket" else ticket_dir
            histories[kind].append(_search(build, data, config, os.path.join(folder, kind), replay, settings))
        on_seed(histories)
    return histories


def _settings():
    values = {name: FLAGS[name].value for name in (
        "dataset", "data_dir", "seeds", "iterations", "eval_every", "rounds", "target_density", "learning_rate",
        "prune_rate", "output_prune_rate", "rewind", "batch_size", "conv_rounds", "conv_iterations",
        "conv_eval_every", "conv_learning_rate", "conv_layer_rate", "train_images", "val_images", "test_images",
        "output_dir", "resume", "overwrite", "quick")}
    if FLAGS.quick:
        values.update({name: value for name, value in QUICK.items() if not FLAGS[name].present})
    return values


def _configs(settings):
    common = dict(prune_rate=settings["prune_rate"], output_prune_rate=settings["output_prune_rate"],
                  rewind=settings["rewind"], batch_size=settings["batch_size"], epochs=None, optimizer="adam")
    lenet = SearchConfig(rounds=settings["rounds"], target_density=settings["target_density"],
                         iterations=settings["iterations"], eval_every=settings["eval_every"],
                         learning_rate=settings["learning_rate"], **common)
    conv = None
    if settings["conv_rounds"]:
        rate = settings["conv_layer_rate"]
        conv = SearchConfig(rounds=settings["conv_rounds"], iterations=settings["conv_iterations"],
                            eval_every=settings["conv_eval_every"], learning_rate=settings["conv_learning_rate"],
                            layer_rates=f"conv1={rate},conv2={rate}" if rate else None, **common)
    return lenet, conv


def _model_result(model_name, config, histories, settings, figures, target_density):
    done = {kind: runs for kind, runs in histories.items() if runs}
    iterations = config.iterations
    result = {
        "title": MODEL_TITLES[model_name],
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("seed", "control")},
        "seeds_completed": len(done.get("ticket", [])),
        "iterations_per_round": iterations,
        "paper_iterations_per_round": PAPER_ITERATIONS[model_name],
        "iteration_reduction": PAPER_ITERATIONS[model_name] / iterations,
        "rounds": summarize(done),
        "claims": check_claims(done, target_density),
        "seconds_per_round": timing(done),
        "figures": figures,
        "run_dirs": os.path.join(settings["output_dir"], "runs", model_name),
    }
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    started = time.time()
    load_start = os.getloadavg()
    settings = _settings()
    if settings["resume"] and settings["overwrite"]:
        raise app.UsageError("Choose --resume or --overwrite, not both.")
    keras.utils.disable_interactive_logging()  # Keras' progress bars go to absl logging, silenced below.
    logging.set_verbosity(logging.WARNING)
    try:
        lenet_config, conv_config = _configs(settings)
        data = datasets.load(settings["dataset"], data_dir=settings["data_dir"], seed=0)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    data = _subset(data, settings["train_images"], settings["val_images"], settings["test_images"])
    subtitle = data.name.replace("_", "-").replace("fashion-mnist", "Fashion-MNIST").replace("mnist", "MNIST")
    output_dir = settings["output_dir"]
    os.makedirs(output_dir, exist_ok=True)
    print(f"Data: {data.name} from {data.source}: {len(data.x_train)} train, {len(data.x_val)} validation, "
          f"{len(data.x_test)} test images. Seeds: {settings['seeds']}. Output: {output_dir}", flush=True)

    experiments = [("lenet300_100", lenet_config)] + ([("conv2", conv_config)] if conv_config else [])
    results = {"benchmark": "reproduce_lth", "complete": False, "settings": settings, "machine": environment.machine(),
               "dataset": {"name": data.name, "source": data.source, "train": len(data.x_train),
                           "validation": len(data.x_val), "test": len(data.x_test)},
               "load_average_start": list(load_start), "models": {}}

    def save(model_name, config, histories):
        figures = write_figures(model_name, histories, output_dir, subtitle)
        results["models"][model_name] = _model_result(model_name, config, histories, settings, figures,
                                                      settings["target_density"])
        results["wall_seconds"] = time.time() - started
        storage.write_json(os.path.join(output_dir, "results.json"), results)

    for model_name, config in experiments:
        try:
            run_model(model_name, data, config, settings, lambda h, m=model_name, c=config: save(m, c, h))
        except FileExistsError as error:
            raise app.UsageError(f"{error} (benchmark: pass --resume or --overwrite)") from None
        print("\n" + format_table(model_name, results["models"][model_name]["rounds"]), flush=True)

    wall = time.time() - started
    in_rounds = sum(kind["total"] for entry in results["models"].values() for kind in entry["seconds_per_round"].values())
    results.update(complete=True, wall_seconds=wall, seconds_in_rounds=in_rounds, resumed=settings["resume"],
                   load_average_end=list(os.getloadavg()))
    storage.write_json(os.path.join(output_dir, "results.json"), results)

    print(f"\nThe paper's claims on {data.name} (means over {settings['seeds']} seeds; accuracy = test accuracy "
          "at early stop):")
    for model_name, entry in results["models"].items():
        for key, claim in entry["claims"].items():
            print(f"  [{entry['title']}] {claim['claim']}: {claim['status'].upper()} - {claim['detail']}"
                  + (f" (caveat: {claim['caveat']})" if claim.get("caveat") else ""))
    for model_name, entry in results["models"].items():
        per_round = entry["seconds_per_round"]
        print(f"{entry['title']}: {entry['iterations_per_round']} iterations per round vs the paper's "
              f"{entry['paper_iterations_per_round']:,} ({entry['iteration_reduction']:.1f}x fewer); seconds per "
              "round " + ", ".join(f"{k} {v['mean']:.1f} (max {v['max']:.1f})" for k, v in per_round.items()))
    print(f"Results: {os.path.join(output_dir, 'results.json')}")
    print(f"Total wall time: {wall:.0f} s ({wall / 60:.1f} min); training rounds (all of them, also those of "
          f"earlier processes when resumed): {in_rounds:.0f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
