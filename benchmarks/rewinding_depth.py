"""Where to rewind in deeper networks: tickets rewound to initialization, to the iteration `rewind="auto"` chose,
and with learning-rate rewinding, each beside its controls, with the instability curve of every candidate.

For each model of --models, in one process, on --dataset (by default the full Fashion-MNIST of Debian's
`dataset-fashion-mnist`, --train_images of its training images; ResNet-20 gets the images padded to 32x32):

1. The `auto` search (`SearchConfig(rewind="auto")`): the instability of the dense network from each candidate
   iteration (--candidates, fractions of a round; `tf_lottery.stability`: two copies on two data orders, 30
   networks on the line between them, the validation error barrier), then a ticket search rewinding to the
   earliest candidate under 2 points of barrier (or the latest, if none is).
2. The `init` search (rewinding to initialization; when `auto` chose iteration 0 it is the same search, reused)
   and the `lr` search (learning-rate rewinding: the survivors keep their trained values, the learning rate
   starts again), each for --rounds rounds.
3. The reinit and random_mask controls of each search's last round.

Recipes (Frankle & Carbin 2019 for the Conv nets; Frankle et al. 2020 for ResNet-20): Conv-2 Adam 2e-4 and Conv-4
Adam 3e-4, batch 60, convolutions pruned 10% per round, fully-connected layers 20%, the output layer 10%;
ResNet-20 SGD with momentum 0.9 and batch 128, learning rate 0.1 after a linear warmup over the first 10% of a
round, cosine decay after it, 20% per round pruned globally.

Budget: the default trains far less than the papers (20,000 / 25,000 / 63,000 iterations per round): --iterations
per round and --rounds rounds, sized to finish in about an hour on a 2-core CPU; the output says what it ran.
`--full` uses the papers' round lengths and 10 rounds, for a machine with a GPU.

Run from the repository root:

    python benchmarks/rewinding_depth.py [--models conv2,conv4,resnet20] [--iterations 200,150,60] [--rounds 3]
        [--candidates 0,0.1,0.25] [--train_images 10000] [--dataset fashion_mnist] [--data_dir DIR]
        [--full] [--seed 0] [--output result.json]

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
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tf_lottery import analysis, datasets, environment, models, stability, storage  # noqa: E402
from tf_lottery.run_store import RunStore  # noqa: E402
from tf_lottery.search import SearchConfig, TicketSearch  # noqa: E402

MODELS = ("conv2", "conv4", "resnet20")
#: Round lengths: the default's, on a 2-core CPU, and the papers' (--full).
CPU_ITERATIONS = {"conv2": 200, "conv4": 150, "resnet20": 60}
PAPER_ITERATIONS = {"conv2": 20_000, "conv4": 25_000, "resnet20": 63_000}
FULL_ROUNDS = 10
REWINDS = ("auto", "init", "lr")
CONTROLS = ("reinit", "random_mask")
QUICK = {"dataset": "digits", "iterations": [6], "rounds": 1, "candidates": [0.0, 0.5], "train_images": 0}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(MODELS), f"Models, from {list(MODELS)}.")
flags.DEFINE_list("iterations", None, "Training iterations per round, one per model or one for all (default: "
                  f"{CPU_ITERATIONS}; with --full {PAPER_ITERATIONS}).")
flags.DEFINE_integer("rounds", 3, f"Pruning rounds of each search (with --full: {FULL_ROUNDS}).", lower_bound=1)
flags.DEFINE_list("candidates", ["0", "0.1", "0.25"], "Rewind points rewind=auto tests, as fractions of a "
                  "round.")
flags.DEFINE_integer("train_images", 10_000, "Training images used (0: all).", lower_bound=0)
flags.DEFINE_enum("dataset", "fashion_mnist", datasets.NAMES, "Dataset.")
flags.DEFINE_string("data_dir", None, "Where the dataset's files are (e.g. CIFAR-10's).")
flags.DEFINE_bool("full", False, "The papers' round lengths, all training images and 10 rounds (for a GPU).")
flags.DEFINE_integer("seed", 0, "Seed of the searches, the controls and the data split.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}; overrides the flags it names.")
flags.register_validator("models", lambda names: bool(names) and set(names) <= set(MODELS),
                         f"--models must be a non-empty subset of {list(MODELS)}.")


def _log(message):
    print(message, file=sys.stderr, flush=True)


def recipe(name, iterations, rounds, seed):
    """`(build_model, SearchConfig)` of model `name`: the papers' optimizer and pruning rates."""
    common = dict(rounds=rounds, epochs=None, iterations=iterations, eval_every=iterations, seed=seed)
    if name == "resnet20":
        warmup = max(1, iterations // 10)

        def build(input_shape, num_classes):
            model = models.resnet20(input_shape, num_classes)
            schedule = keras.optimizers.schedules.CosineDecay(0.0, iterations - warmup, warmup_target=0.1,
                                                              warmup_steps=warmup)
            model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), metrics=["accuracy"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return model
        return build, SearchConfig(batch_size=128, scope="global", prune_rate=0.2, output_prune_rate=None,
                                   **common)
    convolutions = [f"conv{n}" for n in range(1, 3 if name == "conv2" else 5)]
    return models.get(name), SearchConfig(batch_size=60, learning_rate=2e-4 if name == "conv2" else 3e-4,
                                          prune_rate=0.2, output_prune_rate=0.1,
                                          layer_rates=",".join(f"{layer}=0.1" for layer in convolutions), **common)


def prepare(data, name, train_images, seed):
    """`data` with `train_images` training images (0: all), padded to 32x32 for ResNet-20."""
    if train_images and train_images < len(data.x_train):
        keep = np.sort(np.random.default_rng(seed).choice(len(data.x_train), train_images, replace=False))
        data = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    if name == "resnet20" and data.input_shape[0] < 32:
        pad = (32 - data.input_shape[0]) // 2, (32 - data.input_shape[1]) // 2
        padded = {f"x_{split}": np.pad(getattr(data, f"x_{split}"), ((0, 0), (pad[0],) * 2, (pad[1],) * 2, (0, 0)))
                  for split in ("train", "val", "test")}
        data = dataclasses.replace(data, **padded)
    return data


def measure(name, data, iterations, settings, seed, folder):
    build_model, config = recipe(name, iterations, settings["rounds"], seed)
    build = lambda: build_model(data.input_shape, data.num_classes)  # noqa: E731
    candidates = sorted({round(fraction * iterations) for fraction in settings["candidates"]})
    _log(f"[{name}] {len(data.x_train)} training images {data.input_shape}, {iterations} iterations per round, "
         f"{settings['rounds']} rounds, rewind candidates {candidates}.")
    histories, seconds = {}, {}

    def search(kind, run_dir, **changes):
        started = time.time()
        history = TicketSearch(build, data, dataclasses.replace(config, **changes), run_dir, verbose=0).run()
        seconds[kind] = time.time() - started
        return history

    runs = {rewind: os.path.join(folder, name, rewind) for rewind in REWINDS}
    histories["auto"] = search("auto", runs["auto"], rewind="auto",
                               rewind_candidates=",".join(map(str, candidates)))
    instability = RunStore(runs["auto"]).read_instability()
    chosen = instability["rewind_iteration"]
    _log(f"[{name}] rewind=auto chose iteration {chosen}; barriers "
         f"{ {c['rewind_iteration']: round(c['barrier'], 4) for c in instability['curves']} }")
    settings_of = {"auto": stability.rewind_setting(chosen), "init": "init", "lr": "lr"}
    if chosen == 0:
        runs["init"], histories["init"] = runs["auto"], histories["auto"]
    else:
        histories["init"] = search("init", runs["init"], rewind="init")
    histories["lr"] = search("lr", runs["lr"], rewind="lr")
    controls, by_run = {}, {}
    for rewind in REWINDS:
        if runs[rewind] not in by_run:  # `init` is the `auto` run when auto chose iteration 0.
            by_run[runs[rewind]] = {}
            for control in CONTROLS:
                started = time.time()
                metrics = analysis.last_round_control(runs[rewind], os.path.join(folder, name, f"{rewind}_{control}"),
                                                      build, data, control)
                seconds[f"{rewind}_{control}"] = time.time() - started
                by_run[runs[rewind]][control] = metrics["test_accuracy"]
        controls.update({(rewind, control): by_run[runs[rewind]][control] for control in CONTROLS})
        _log(f"[{name}] {rewind}: {histories[rewind]['rounds'][-1]['test_accuracy']:.4f} at density "
             f"{histories[rewind]['rounds'][-1]['density']:.3f}; reinit {controls[(rewind, 'reinit')]:.4f}, "
             f"random_mask {controls[(rewind, 'random_mask')]:.4f}")
    dense = histories["auto"]["rounds"][0]
    return {
        "iterations_per_round": iterations, "rounds": settings["rounds"], "training_images": len(data.x_train),
        "input_shape": list(data.input_shape),
        "config": config.changed_fields([field.name for field in dataclasses.fields(config)]),
        "dense_test_accuracy": dense["test_accuracy"],
        "instability": instability,
        "rewind_chosen": chosen,
        "tickets": {rewind: {"rewind": settings_of[rewind],
                             "density": histories[rewind]["rounds"][-1]["density"],
                             "test_accuracy_per_round": [r["test_accuracy"] for r in histories[rewind]["rounds"]],
                             "test_accuracy": histories[rewind]["rounds"][-1]["test_accuracy"],
                             **{f"{control}_test_accuracy": controls[(rewind, control)] for control in CONTROLS}}
                    for rewind in REWINDS},
        "seconds": seconds,
    }


def markdown(results):
    """The figures of `results` (the JSON's `models`) as a markdown table."""
    lines = ["| model | dense | rewind | weights | ticket | reinit | random mask | barrier by rewind iteration |",
             "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        barriers = ", ".join(f"{c['rewind_iteration']}: {c['barrier']:.3f}" for c in result["instability"]["curves"])
        for rewind, ticket in result["tickets"].items():
            lines.append(f"| {name} | {result['dense_test_accuracy']:.1%} | {rewind} ({ticket['rewind']}) | "
                         f"{ticket['density']:.1%} | {ticket['test_accuracy']:.1%} | "
                         f"{ticket['reinit_test_accuracy']:.1%} | {ticket['random_mask_test_accuracy']:.1%} | "
                         f"{barriers if rewind == 'auto' else ''} |")
    return "\n".join(lines)


def main(argv):
    del argv
    full = FLAGS.full
    defaults = PAPER_ITERATIONS if full else CPU_ITERATIONS
    settings = {"dataset": FLAGS.dataset,
                "iterations": [int(i) for i in FLAGS.iterations] if FLAGS.iterations else
                [defaults[name] for name in FLAGS.models],
                "rounds": FULL_ROUNDS if full and not FLAGS["rounds"].present else FLAGS.rounds,
                "candidates": [float(c) for c in FLAGS.candidates],
                "train_images": 0 if full else FLAGS.train_images, "full": full}
    if FLAGS.quick:
        settings.update(QUICK)
    iterations = settings["iterations"]
    if len(iterations) not in (1, len(FLAGS.models)):
        raise app.UsageError(f"--iterations needs one value, or one per model ({len(FLAGS.models)}).")
    if not all(0 <= c < 1 for c in settings["candidates"]):
        raise app.UsageError("--candidates are fractions of a round in [0, 1), e.g. 0,0.05,0.1.")
    loaded = datasets.load(settings["dataset"], data_dir=FLAGS.data_dir, seed=FLAGS.seed)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, name in enumerate(FLAGS.models):
            data = prepare(loaded, name, settings["train_images"], FLAGS.seed)
            results[name] = measure(name, data, iterations[index % len(iterations)], settings, FLAGS.seed, folder)
    report = environment.benchmark_report(
        "rewinding_depth",
        "test accuracy of tickets rewound to initialization, to the iteration rewind=auto chose from the dense "
        "network's instability (validation error barrier between two copies trained on two data orders), and with "
        "learning-rate rewinding, each with reinit and random_mask controls of its last round",
        quick=FLAGS.quick, seed=FLAGS.seed, settings=settings, models=results,
        dataset={"name": loaded.name, "source": loaded.source, "test_images": len(loaded.x_test)})
    _log(markdown(results))
    storage.publish_json(report, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
