"""What a search round costs over a plain `model.fit` of the same steps with the same evaluations.

For each model, a repeat times `rounds` plain trainings and then one ticket
search of `rounds` rounds (round 0 and `rounds - 1` pruning rounds), in one
process, alternating so load drifts hit both alike. A plain training is what a
user would run without tf_lottery: a fresh model, `compile` (Adam, the search's
loss and metric), `fit` on the training arrays for `epochs` epochs of the
search's batch size, evaluating the validation and test sets after every epoch
as the search does, and the training set once at the end. A round's time is the
`seconds` the search records for it (training, evaluations, snapshots and its
files); the search's time is its whole `run()`.

Reported per model: the median over repeats and rounds of round / plain
(`round_ratio`), the median over repeats of search / the sum of its plain
trainings (`search_ratio`), and whether both are at most `TARGET_RATIO`.

Run from the repository root:

    python benchmarks/round_overhead.py [--models lenet300_100,conv2] [--repeats 3] [--output result.json]

`--quick` uses tiny settings (for tests; the figures then mean nothing).
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402

from tf_lottery import datasets, environment, models, storage  # noqa: E402
from tf_lottery.search import SearchConfig, TicketSearch  # noqa: E402

TARGET_RATIO = 1.05
SETTINGS = {"dataset": "mnist_subset", "epochs": 5, "rounds": 5, "batch_size": 60}
QUICK = {"dataset": "digits", "epochs": 1, "rounds": 2, "batch_size": 64, "repeats": 1}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["lenet300_100", "conv2"], f"Models, of {sorted(models.MODELS)}.")
flags.DEFINE_integer("repeats", 3, "Repeats of (plain trainings, search) per model.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the models, the data split and the searches.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}.")


class _Evaluations(keras.callbacks.Callback):
    """Evaluates the validation and test sets after every epoch, as a search round does."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_end(self, epoch, logs=None):
        for images, labels in ((self.data.x_val, self.data.y_val), (self.data.x_test, self.data.y_test)):
            self.model.evaluate(images, labels, batch_size=1024, verbose=0)


def _plain_seconds(build, data, settings):
    started = time.perf_counter()
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(SearchConfig.learning_rate), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=settings["batch_size"], epochs=settings["epochs"],
              callbacks=[_Evaluations(data)], verbose=0)
    model.evaluate(data.x_train, data.y_train, batch_size=1024, verbose=0)
    return time.perf_counter() - started


def _search(build, data, settings, seed, run_dir):
    config = SearchConfig(rounds=settings["rounds"] - 1, epochs=settings["epochs"],
                          batch_size=settings["batch_size"], seed=seed)
    started = time.perf_counter()
    history = TicketSearch(build, data, config, run_dir, verbose=0).run()
    return time.perf_counter() - started, [r["seconds"] for r in history["rounds"]]


def measure(name, data, settings, repeats, seed, folder):
    build = lambda: models.get(name)(data.input_shape, data.num_classes)  # noqa: E731
    plain, rounds, searches, round_ratios, search_ratios = [], [], [], [], []
    for repeat in range(repeats):
        keras.utils.set_random_seed(seed)
        fits = [_plain_seconds(build, data, settings) for _ in range(settings["rounds"])]
        search, round_seconds = _search(build, data, settings, seed, os.path.join(folder, f"{name}_{repeat}"))
        plain.append(fits)
        rounds.append(round_seconds)
        searches.append(search)
        round_ratios += [r / p for r, p in zip(round_seconds, fits)]
        search_ratios.append(search / sum(fits))
        print(f"{name} repeat {repeat + 1}/{repeats}: plain {sum(fits):.1f} s, search {search:.1f} s",
              flush=True, file=sys.stderr)
    result = {"plain_seconds": plain, "round_seconds": rounds, "search_seconds": searches,
              "round_ratio": statistics.median(round_ratios), "search_ratio": statistics.median(search_ratios)}
    result["meets_target"] = max(result["round_ratio"], result["search_ratio"]) <= TARGET_RATIO
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = {**SETTINGS, "repeats": FLAGS.repeats, **(QUICK if FLAGS.quick else {})}
    unknown = sorted(set(FLAGS.models) - set(models.MODELS))
    if unknown:
        raise app.UsageError(f"--models has {unknown}; choose from {sorted(models.MODELS)}.")
    data = datasets.load(settings["dataset"], seed=FLAGS.seed)
    with tempfile.TemporaryDirectory() as folder:
        results = {name: measure(name, data, settings, settings["repeats"], FLAGS.seed, folder)
                   for name in FLAGS.models}
    storage.publish_json({
        "benchmark": "round_overhead", "quick": FLAGS.quick, "seed": FLAGS.seed,
        "measured": "seconds of a search round over a plain compile + fit of the same steps with the same "
                    "evaluations; of a search over that many plain trainings",
        "target": f"round_ratio and search_ratio <= {TARGET_RATIO}", "settings": settings, "models": results,
        **environment.machine(),
    }, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
