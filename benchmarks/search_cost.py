"""What a sparse LeNet-300-100 ticket costs: full IMP vs early-bird vs one-shot vs a change-based criterion.

Each mode is one `TicketSearch` from the same seed (same initialization and
data order) down to --target_density (default 5%):

* `imp`: the paper's iterative magnitude pruning, 20% of the surviving weights
  per round (10% for the output layer), rewinding to initialization;
* `early_bird`: the dense round ends once the magnitude mask at the target
  density changes by less than 10% of its weights in 5 evaluations in a row
  (You et al., 2020), then one round prunes to the target;
* `imp_short`: the same iterative pruning with a fifth of the iterations in
  every round (`ROUND_FRACTIONS`);
* `one_shot`: a full dense round, then one round pruned to the target;
* `movement_rate`: one-shot, scored by the change-based criterion (per-step
  accumulated |dw|; the slowest-changing weights are pruned) instead of magnitude;
* `two_rounds`: iterative pruning in two rounds (`rounds_to_target=2`), each
  removing half (geometrically) of what full IMP removes on the way to the target;
* `two_rounds_lr`: the same with learning-rate rewinding (`rewind="lr"`): the
  survivors keep their trained weights, so the result is a pruned and retrained
  network, not a ticket rewound to initialization;
* `gradual_lr`: gradual pruning in four rounds with learning-rate rewinding,
  every round but the last 3/10 as long (`interim_iterations`), as they only
  have to find the masks; the last trains the final mask in full.
* `gmp`: gradual magnitude pruning within one round (Zhu & Gupta, 2017): a
  dense round a tenth as long, then one round 2.5 times as long that keeps
  training the dense weights (`rewind="lr"`) while it prunes them to the
  target, every 1/30 of a round over its first 5/6 of a round
  (`gradual_iterations`, `gradual_every`), and trains the final mask after.

Per mode and dataset it reports wall time (and each round's, which shows how
the machine's speed moved during the run), the process's CPU time (which leaves
out time spent waiting for the CPU), training iterations (all rounds),
the final density and test accuracy (last round), and the ratios to full IMP
(how many times cheaper) and the accuracy difference in points. Target (issue
9): a mode at least 5x cheaper than full IMP in both iterations and wall time,
within 0.5 points of its test accuracy.

Reduced from the paper (50,000 iterations per round on all of MNIST) so that
the default run takes about 20 minutes on a 2-core CPU: 1,200 iterations per
round on the 3,500 training images of the MNIST subset (about 20 epochs) and
3,600 on Fashion-MNIST's 55,000 (about 4 epochs), evaluated every 60 / 360
iterations (the early-bird checks). Run from the repository root:

    python benchmarks/search_cost.py [--datasets=mnist_subset,fashion_mnist] [--modes=imp,...] [--seed=0]
        [--output=result.json]

`--modes` runs a subset (IMP, the baseline of every ratio, always runs), e.g. to repeat the
closest modes with other seeds.

`--quick` uses tiny settings (for smoke tests; the figures then mean nothing).
The JSON goes to stdout, and to `--output` if given.
"""

import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from tf_lottery import datasets, environment, models, storage  # noqa: E402
from tf_lottery.search import SearchConfig, TicketSearch  # noqa: E402

MODEL = "lenet300_100"
MODES = {
    "imp": {},
    "imp_short": {},
    "early_bird": {"early_bird": 0.1, "early_bird_patience": 5},
    "one_shot": {"one_shot": True},
    "movement_rate": {"one_shot": True, "criterion": "movement_rate"},
    "two_rounds": {"rounds_to_target": 2},
    "two_rounds_lr": {"rounds_to_target": 2, "rewind": "lr"},
    "gradual_lr": {"rounds_to_target": 4, "rewind": "lr"},
    "gmp": {"rounds_to_target": 1, "rewind": "lr"},
}
#: Modes with other round lengths: the SearchConfig fields they set, in full rounds.
ROUND_FRACTIONS = {
    "imp_short": {"iterations": 1 / 5},
    "gradual_lr": {"interim_iterations": 3 / 10},
    "gmp": {"iterations": 5 / 2, "interim_iterations": 1 / 10, "gradual_iterations": 5 / 6, "gradual_every": 1 / 30},
}
#: Training iterations per round and between evaluations, per dataset.
SCHEDULES = {"mnist_subset": (1200, 60), "fashion_mnist": (3600, 360), "digits": (40, 10)}
TARGET = {"times_cheaper": 5.0, "max_accuracy_drop_points": 0.5}
QUICK = {"datasets": ["digits"], "target_density": 0.5}

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["mnist_subset", "fashion_mnist"], f"Datasets, of {sorted(SCHEDULES)}.")
flags.DEFINE_float("target_density", 0.05, "Density every mode prunes to.", lower_bound=0, upper_bound=1)
flags.DEFINE_string("data_dir", None, "Folder holding the dataset files, for datasets that need them.")
flags.DEFINE_integer("seed", 0, "Seed of every search and of the data split.")
flags.DEFINE_list("modes", list(MODES), f"Modes to run, of {list(MODES)}; imp always runs.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}; overrides the flags it names.")


def _search(data, mode, settings, run_dir):
    iterations, eval_every = SCHEDULES[data.name]
    schedule = {"iterations": iterations, "eval_every": eval_every}
    for field, fraction in ROUND_FRACTIONS.get(mode, {}).items():
        schedule[field] = round(iterations * fraction)
        if field in ("iterations", "interim_iterations"):  # Rounds evaluate on a period that divides their length.
            schedule["eval_every"] = math.gcd(schedule["eval_every"], schedule[field])
    config = SearchConfig(rounds=None, target_density=settings["target_density"], epochs=None,
                          seed=settings["seed"], **schedule, **MODES[mode])
    started, cpu_started = time.time(), time.process_time()
    rounds = TicketSearch(lambda: models.get(MODEL)(data.input_shape, data.num_classes), data, config, run_dir,
                          verbose=0).run()["rounds"]
    result = {"seconds": time.time() - started, "cpu_seconds": time.process_time() - cpu_started,
              "iterations": sum(r["iterations"] for r in rounds), "rounds": len(rounds),
              "density": rounds[-1]["density"], "test_accuracy": rounds[-1]["test_accuracy"],
              "dense_round_iterations": rounds[0]["iterations"], "round_seconds": [r["seconds"] for r in rounds]}
    if "early_bird" in rounds[0]:  # where the dense round stopped, and the mask distances that decided it
        result["early_bird"] = rounds[0]["early_bird"]
    return result


def measure(settings, folder):
    """The JSON report: every mode on every dataset, with its ratios to full IMP."""
    results = {}
    for name in settings["datasets"]:
        data = datasets.load(name, data_dir=settings["data_dir"], seed=settings["seed"])
        modes = {}
        for mode in settings["modes"]:
            modes[mode] = _search(data, mode, settings, os.path.join(folder, name, mode))
            print(f"{name}: {mode}: {modes[mode]['iterations']} iterations in {modes[mode]['seconds']:.0f} s, "
                  f"test accuracy {modes[mode]['test_accuracy']:.4f} at density {modes[mode]['density']:.3f}",
                  file=sys.stderr, flush=True)
        imp = modes["imp"]
        for entry in modes.values():
            entry["times_cheaper_iterations"] = imp["iterations"] / entry["iterations"]
            entry["times_cheaper_seconds"] = imp["seconds"] / entry["seconds"]
            entry["times_cheaper_cpu_seconds"] = imp["cpu_seconds"] / entry["cpu_seconds"]
            entry["accuracy_vs_imp_points"] = 100 * (entry["test_accuracy"] - imp["test_accuracy"])
            entry["meets_target"] = bool(
                min(entry["times_cheaper_iterations"], entry["times_cheaper_seconds"]) >= TARGET["times_cheaper"]
                and entry["accuracy_vs_imp_points"] >= -TARGET["max_accuracy_drop_points"])
        iterations, eval_every = SCHEDULES[name]
        results[name] = {"train_images": len(data.x_train), "iterations_per_round": iterations,
                         "eval_every": eval_every, "modes": modes,
                         "target_met_by": [mode for mode, entry in modes.items() if entry["meets_target"]]}
    return {
        "model": MODEL, "target_density": settings["target_density"], "seed": settings["seed"],
        "quick": settings["quick"], "target": TARGET, "modes": {mode: MODES[mode] for mode in settings["modes"]},
        "round_fractions": {mode: fields for mode, fields in ROUND_FRACTIONS.items() if mode in settings["modes"]},
        "datasets": results,
        **environment.machine(),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = {"datasets": FLAGS.datasets, "target_density": FLAGS.target_density, "data_dir": FLAGS.data_dir,
                "seed": FLAGS.seed, "quick": FLAGS.quick, "modes": [m for m in MODES if m == "imp" or m in FLAGS.modes],
                **(QUICK if FLAGS.quick else {})}
    for flag, given, known in (("datasets", settings["datasets"], SCHEDULES), ("modes", FLAGS.modes, MODES)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise app.UsageError(f"--{flag} has {unknown}; choose from {sorted(known)}.")
    with tempfile.TemporaryDirectory() as folder:
        report = measure(settings, folder)
    storage.publish_json(report, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
