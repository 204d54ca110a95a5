"""Pruning at initialization against the ticket: SNIP, GraSP and SynFlow beside iterative magnitude pruning, each
with the random-mask control of its own layer densities and the reinit control.

Frankle et al. (2021, "Pruning Neural Networks at Initialization: Why are We Missing the Mark?") found these
methods no better than their masks shuffled within each layer. For each model of --models on --dataset (by
default LeNet-300-100 on the full Fashion-MNIST of Debian's `dataset-fashion-mnist`), in one process:

1. The ticket: --rounds rounds of iterative magnitude pruning (20% per round, the output layer 10%), rewinding to
   initialization.
2. SNIP, GraSP and SynFlow (`SearchConfig(criterion=..., one_shot=True, scope="global")`): the initialization
   scored before any training (SNIP and GraSP on the first batch, SynFlow without data, in 100 steps), pruned at
   once to the ticket's density (the same rates compounded over --rounds: the output layer keeps the ticket's
   density, the other layers are ranked together, as the methods rank them), then trained from initialization.
3. For each: the random_mask control (random masks of the same per-layer densities: the layerwise shuffle) and the
   reinit control (the masks, a fresh initialization), of its last round.

Reported: test accuracy of each at the final density, and of its controls. Budget: --iterations per round
(2,000 for LeNet-300-100: about 2 epochs of 55,000 images; the paper trains 50,000); on a 2-core CPU about 10
minutes per model.

Run from the repository root:

    python benchmarks/pruning_at_init.py [--models lenet300_100] [--iterations 2000] [--rounds 5]
        [--dataset fashion_mnist] [--seed 0] [--output result.json]

`--quick` uses tiny settings (for tests; the figures then mean nothing). The JSON goes to stdout, and to
`--output` if given; a markdown table goes to stderr.
"""

import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from tf_lottery import analysis, datasets, environment, models, saliency, storage  # noqa: E402
from tf_lottery.search import SearchConfig, TicketSearch  # noqa: E402

METHODS = ("ticket", *saliency.METHODS)
CONTROLS = ("random_mask", "reinit")
QUICK = {"dataset": "digits", "iterations": [10], "rounds": 2}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["lenet300_100"], "Models, from tf_lottery.models (lenet300_100, conv2, ...).")
flags.DEFINE_list("iterations", ["2000"], "Training iterations per round, one per model or one for all.")
flags.DEFINE_integer("rounds", 5, "Rounds of the ticket search; the other methods prune as much at once.",
                     lower_bound=1)
flags.DEFINE_enum("dataset", "fashion_mnist", datasets.NAMES, "Dataset.")
flags.DEFINE_integer("seed", 0, "Seed of the searches, the controls and the data split.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}; overrides the flags it names.")
flags.register_validator("models", lambda names: bool(names) and set(names) <= set(models.MODELS),
                         f"--models must be a non-empty subset of {list(models.MODELS)}.")


def _log(message):
    print(message, file=sys.stderr, flush=True)


def measure(name, data, iterations, rounds, seed, folder):
    build = lambda: models.get(name)(data.input_shape, data.num_classes)  # noqa: E731
    base = SearchConfig(rounds=rounds, epochs=None, iterations=iterations, eval_every=max(1, iterations // 2),
                        seed=seed)
    results, dense = {}, None
    for method in METHODS:
        config = base if method == "ticket" else dataclasses.replace(base, criterion=method, one_shot=True,
                                                                      scope="global")
        run_dir = os.path.join(folder, name, method)
        started = time.time()
        history = TicketSearch(build, data, config, run_dir, verbose=0).run()
        final, dense = history["rounds"][-1], dense or history["rounds"][0]
        entry = {"density": final["density"], "layer_density": final["layer_density"],
                 "test_accuracy": final["test_accuracy"], "seconds": time.time() - started}
        for control in CONTROLS:
            metrics = analysis.last_round_control(run_dir, os.path.join(folder, name, f"{method}_{control}"), build,
                                                  data, control)
            entry[f"{control}_test_accuracy"] = metrics["test_accuracy"]
        entry["beats_random_mask"] = entry["test_accuracy"] > entry["random_mask_test_accuracy"]
        results[method] = entry
        _log(f"[{name}] {method}: {entry['test_accuracy']:.4f} at density {entry['density']:.4f}; random mask "
             f"{entry['random_mask_test_accuracy']:.4f}, reinit {entry['reinit_test_accuracy']:.4f}")
    return {"iterations_per_round": iterations, "rounds": rounds,
            "dense_test_accuracy": dense["test_accuracy"], "methods": results}


def markdown(results):
    """The figures of `results` (the JSON's `models`) as a markdown table."""
    lines = ["| model | dense | method | weights | test accuracy | random mask (same layer densities) | reinit |",
             "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        for method, entry in result["methods"].items():
            lines.append(f"| {name} | {result['dense_test_accuracy']:.1%} | {method} | {entry['density']:.1%} | "
                         f"{entry['test_accuracy']:.1%} | {entry['random_mask_test_accuracy']:.1%} | "
                         f"{entry['reinit_test_accuracy']:.1%} |")
    return "\n".join(lines)


def main(argv):
    del argv
    settings = {"dataset": FLAGS.dataset, "iterations": [int(i) for i in FLAGS.iterations], "rounds": FLAGS.rounds}
    if FLAGS.quick:
        settings.update(QUICK)
    iterations = settings["iterations"]
    if len(iterations) not in (1, len(FLAGS.models)):
        raise app.UsageError(f"--iterations needs one value, or one per model ({len(FLAGS.models)}).")
    data = datasets.load(settings["dataset"], seed=FLAGS.seed)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, name in enumerate(FLAGS.models):
            results[name] = measure(name, data, iterations[index % len(iterations)], settings["rounds"],
                                    FLAGS.seed, folder)
    report = environment.benchmark_report(
        "pruning_at_init",
        "test accuracy of the ticket (iterative magnitude pruning) and of SNIP, GraSP and SynFlow masks at the same "
        "density, each with the random_mask control of its own layer densities and the reinit control",
        quick=FLAGS.quick, seed=FLAGS.seed, settings=settings, models=results,
        dataset=data.description())
    _log(markdown(results))
    storage.publish_json(report, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
