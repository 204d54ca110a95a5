"""Unit tickets beside unstructured and 1x4 block tickets: accuracy, size and latency of the networks they ship.

For each model of --models on --dataset (by default LeNet-300-100 and Conv-2 on the full Fashion-MNIST of
Debian's `dataset-fashion-mnist`), in one process (ratios are to the same quantization of the dense network):

1. A unit ticket search (`SearchConfig(granularity="unit")`): every round removes --prune_rate of the surviving
   units of each hidden layer (Dense units, convolution filters) and rewinds to initialization, for --rounds rounds.
   The ticket it ships is the sparsest round whose final validation accuracy is within 1 point of the dense
   round's (the search's own `best_round`, `monitor="val_accuracy"`); if none is, the pruned round with the best
   validation accuracy. The test set only measures it.
2. An unstructured and a 1x4 block ticket search that reach the shipped unit ticket's density in as many rounds
   (one rate for every layer, the output layer too), so the three end with equal numbers of remaining weights.
3. The reinit control of each: the shipped round's masks trained from a fresh initialization (the control trains
   the dense round 0 and that round only).
4. The shipped networks: the dense network (round 0), the unit ticket compacted (`tf_lottery.compact`: a narrower
   plain model, checked to compute what the masked ticket does), and the unstructured and 1x4 tickets as they
   export (TFLite's sparse storage). Each is exported as a float and a full int8 TFLite file; reported: test
   accuracy (Keras, and each file's), parameters, file bytes, and latency as ratios to the dense network measured
   in the same run: Keras `predict_on_batch` at batch 1 and 256 (CPU, TensorFlow's threads) for the dense and the
   compacted model (a masked ticket runs the dense graph), and TFLite at batch 1 (one thread, built-in kernels
   without the XNNPACK delegate, `export.load_interpreter`) for every file. Timings are round-robin medians
   (`tf_lottery.latency`).
5. Every round of the unit search compacted and timed the same way, in the same round-robin: the trade-off
   between accuracy and speed that the choice in 1 is made on.

Targets: on LeNet-300-100, the shipped unit ticket within 1 point of dense test accuracy at <= 0.35x the dense
float TFLite latency; on Conv-2, within 1 point at <= 0.5x the dense Keras CPU inference time (batch 256).
Whether each ticket beats its reinit control is reported either way.

Budget: it trains far less than the paper (50,000 iterations per round): --iterations per round (2,000 for
LeNet-300-100, about 2 epochs of 55,000 images; 400 for Conv-2), --rounds 6 and 5. On a 2-core CPU
LeNet-300-100 takes about 4 minutes, Conv-2 about 25.

Run from the repository root:

    python benchmarks/structured_tickets.py [--models lenet300_100,conv2] [--iterations 2000,400] [--rounds 6,5]
        [--dataset fashion_mnist] [--prune_rate 0.2] [--latency_rounds 5] [--latency_runs 100] [--seed 0]
        [--output result.json]

`--quick` uses tiny settings (for tests; the figures then mean nothing). The JSON goes to stdout, and to
`--output` if given.
"""

import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import tf_lottery  # noqa: E402
from tf_lottery import datasets, environment, export, latency, models, parity, storage, structure  # noqa: E402
from tf_lottery.run_store import RunStore  # noqa: E402
from tf_lottery.search import SearchConfig, TicketSearch  # noqa: E402

KINDS = {"unit": {"granularity": "unit"}, "unstructured": {}, "1x4": {"block": "1x4"}}
QUANTIZATIONS = {"float": None, "int8": "int8"}
TARGETS = {"lenet300_100": ("tflite_float", 0.35), "conv2": ("keras_batch_256", 0.5)}
ACCURACY_POINTS = 1.0
MONITOR = "val_accuracy"
KERAS_BATCHES = (1, 256)
EVALUATION_BATCH = 256
ITERATIONS = {"lenet300_100": 2000, "conv2": 400}
ROUNDS = {"lenet300_100": 6, "conv2": 5}
QUICK = {"dataset": "digits", "iterations": [8], "rounds": [2], "prune_rate": 0.5, "latency_rounds": 1,
         "latency_runs": 5}

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(TARGETS), f"Models, from {list(TARGETS)}.")
flags.DEFINE_list("iterations", None, f"Training iterations per round, one per model (or one for all); default "
                  f"{ITERATIONS}.")
flags.DEFINE_list("rounds", None, f"Pruning rounds of the unit search (after the dense round 0), one per model (or "
                  f"one for all); default {ROUNDS}.")
flags.DEFINE_enum("dataset", "fashion_mnist", datasets.NAMES, "Dataset.")
flags.DEFINE_float("prune_rate", 0.2, "Fraction of surviving units pruned per round.")
flags.DEFINE_integer("latency_rounds", 5, "Rounds of timing over all candidates.", lower_bound=1)
flags.DEFINE_integer("latency_runs", 100, "Timed invocations per candidate and round.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the searches, the controls and the data split.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}; overrides the flags it names.")
flags.register_validator("models", lambda names: bool(names) and set(names) <= set(TARGETS),
                         f"--models must be a non-empty subset of {list(TARGETS)}.")


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _accuracy(outputs, labels):
    return float(np.mean(np.argmax(outputs, -1) == labels))


def _search(name, data, config, run_dir, replay_from=None):
    build = lambda: models.get(name)(data.input_shape, data.num_classes)  # noqa: E731
    started = time.time()
    history = TicketSearch(build, data, config, run_dir, replay_masks_from=replay_from, verbose=0).run()
    return history, time.time() - started


def shipped_round(history):
    """The unit round to ship, and whether it is within the accuracy tolerance on the validation set.

    The search's `best_round` (the sparsest round within the tolerance of round 0's validation accuracy) when it
    is a pruned round; else the pruned round with the best validation accuracy.
    """
    if history["best_round"]:
        return history["best_round"], True
    return max(history["rounds"][1:], key=lambda r: r[MONITOR])["round"], False


def _searches(name, data, iterations, rounds, settings, seed, folder):
    """The three searches and their reinit controls: `(histories, controls, (shipped round, within), seconds)`."""
    base = dict(epochs=None, iterations=iterations, eval_every=max(1, iterations // 2), seed=seed,
                prune_rate=settings["prune_rate"], monitor=MONITOR, tolerance=ACCURACY_POINTS / 100)
    histories, controls, seconds = {}, {}, {}
    chosen = None
    for kind, options in KINDS.items():
        if kind == "unit":
            config = SearchConfig(rounds=rounds, **base, **options)
        else:  # The shipped unit ticket's density, reached in as many rounds of one rate for every layer.
            rate = 1 - histories["unit"]["rounds"][chosen]["density"] ** (1 / chosen)
            config = SearchConfig(rounds=chosen, **{**base, "prune_rate": rate}, output_prune_rate=None, **options)
        run_dir = os.path.join(folder, name, kind)
        histories[kind], seconds[kind] = _search(name, data, config, run_dir)
        _log(f"[{name}] {kind} search: {seconds[kind]:.0f} s, densities "
             f"{[round(r['density'], 4) for r in histories[kind]['rounds']]}")
        if kind == "unit":
            chosen, within = shipped_round(histories[kind])
            _log(f"[{name}] shipping unit round {chosen} ({'within' if within else 'none is within'} "
                 f"{ACCURACY_POINTS} point of dense validation accuracy)")
        replay = RunStore(run_dir).copy_masks([chosen], os.path.join(folder, name, f"{kind}_masks"))
        control = dataclasses.replace(config, control="reinit", rounds=1)
        history, seconds[f"{kind}_reinit"] = _search(name, data, control, os.path.join(folder, name, f"{kind}_reinit"),
                                                     replay_from=replay)
        controls[kind] = history["rounds"][-1]
        _log(f"[{name}] {kind} reinit control: {seconds[f'{kind}_reinit']:.0f} s")
    return histories, controls, (chosen, within), seconds


def _tflite(model, data, path, quantize):
    """One TFLite file of `model`: its bytes and test accuracy."""
    entry = export.export_tflite(model, path, quantize=quantize, block=None,
                                 representative_data=data.x_train[:export.PARITY_SAMPLES])
    interpreter = export.load_interpreter(path)
    # In batches: one batch of the whole test set overflows TFLite's convolution buffers.
    outputs = np.concatenate([export.run_tflite(interpreter, data.x_test[start:start + EVALUATION_BATCH])
                              for start in range(0, len(data.x_test), EVALUATION_BATCH)])
    return {"bytes": entry["bytes"], "test_accuracy": _accuracy(outputs, data.y_test),
            "top1_agreement": entry["parity"]["top1_agreement"]}


def _compacted_rounds(name, data, rounds, folder):
    """`({round: compacted unit ticket}, {round: its parity with the masked ticket}, {round: its units})`."""
    compacted, parities, units = {}, {}, {}
    for index in range(1, rounds + 1):
        ticket = export.load_ticket(os.path.join(folder, name, "unit"), index)
        compacted[index] = tf_lottery.compact(ticket)
        parities[index] = parity.check(ticket, lambda x, m=compacted[index]: m.predict(x, verbose=0),
                                       data.x_test[:export.PARITY_SAMPLES], "compact")
        alive = structure.analyze(ticket).alive_units(tf_lottery.get_masks(ticket))
        units[index] = {group: int(kept.sum()) for group, kept in alive.items()}
    return compacted, parities, units


def _timings(networks, plain, data, folder, settings):
    """Files and latencies of `networks` (`{name: model}`): `(files, tflite µs, {batch: Keras µs})`.

    Every network gets a float and an int8 TFLite file; Keras times the networks named in `plain` (a masked
    ticket runs in Keras as the dense graph does).
    """
    files, paths = {}, {}
    for network, model in networks.items():
        for kind, quantize in QUANTIZATIONS.items():
            key = f"{network}_{kind}"
            paths[key] = os.path.join(folder, "tflite", f"{key}.tflite")
            files[key] = _tflite(model, data, paths[key], quantize)
    tflite = latency.tflite_latencies(paths, data.x_test, settings["latency_rounds"], settings["latency_runs"])
    keras_times = {batch: latency.keras_latencies({network: networks[network] for network in plain},
                                                 data.x_test[:batch], settings["latency_rounds"],
                                                 settings["latency_runs"])
                   for batch in KERAS_BATCHES}
    return files, tflite, keras_times


def _speed(network, files, tflite, keras_times):
    """A network's file bytes and latencies, and their ratios to the dense network's."""
    entry = {"files": {}}
    for kind in QUANTIZATIONS:
        key, dense_key = f"{network}_{kind}", f"dense_{kind}"
        entry["files"][kind] = {**files[key], "bytes_ratio": files[key]["bytes"] / files[dense_key]["bytes"],
                                "latency_us": tflite[key], "latency_ratio": tflite[key] / tflite[dense_key]}
    if network in keras_times[KERAS_BATCHES[0]]:
        entry["keras_latency_us"] = {f"batch_{b}": keras_times[b][network] for b in KERAS_BATCHES}
        entry["keras_latency_ratio"] = {f"batch_{b}": keras_times[b][network] / keras_times[b]["dense"]
                                        for b in KERAS_BATCHES}
    return entry


def measure(name, data, iterations, rounds, settings, seed, folder):
    _log(f"[{name}] {len(data.x_train)} training images, {iterations} iterations per round, {rounds} unit rounds.")
    histories, controls, (chosen, within), seconds = _searches(name, data, iterations, rounds, settings, seed, folder)
    dense = tf_lottery.strip(export.load_ticket(os.path.join(folder, name, "unit"), 0))
    compacted, parities, units = _compacted_rounds(name, data, rounds, folder)
    plain = {"dense": dense, **{f"round_{index}": model for index, model in compacted.items()}}
    timed = {**plain, **{kind: export.load_ticket(os.path.join(folder, name, kind), chosen)
                         for kind in ("unstructured", "1x4")}}
    started = time.time()
    speeds = _timings(timed, list(plain), data, os.path.join(folder, name), settings)
    seconds["export_and_latency"] = time.time() - started
    unit_rounds = []
    for record in histories["unit"]["rounds"][1:]:
        index = record["round"]
        unit_rounds.append({"round": index, "density": record["density"], MONITOR: record[MONITOR],
                            "test_accuracy": record["test_accuracy"], "parameters": compacted[index].count_params(),
                            "units": units[index], "compact_parity": parities[index],
                            **_speed(f"round_{index}", *speeds)})
    networks = {}
    for network in ("dense", "unit", "unstructured", "1x4"):
        history = histories.get(network, histories["unit"])["rounds"]
        metrics = history[0] if network == "dense" else history[chosen]
        timed_as = f"round_{chosen}" if network == "unit" else network
        entry = {"density": metrics["density"], "keras_test_accuracy": metrics["test_accuracy"],
                 "parameters": timed[timed_as].count_params(), **_speed(timed_as, *speeds)}
        if network != "dense":
            entry["reinit_test_accuracy"] = controls[network]["test_accuracy"]
            entry["beats_reinit"] = metrics["test_accuracy"] > controls[network]["test_accuracy"]
        networks[network] = entry
    networks["unit"].update(units=units[chosen], compact_parity=parities[chosen])
    return {"iterations_per_round": iterations, "rounds": rounds,
            "shipped_round": chosen, "shipped_within_validation_tolerance": within,
            "dense_" + MONITOR: histories["unit"]["rounds"][0][MONITOR],
            "round_densities": {kind: [r["density"] for r in h["rounds"]] for kind, h in histories.items()},
            "networks": networks, "unit_rounds": unit_rounds,
            "targets": _targets(name, networks), "seconds": seconds}


def _targets(name, networks):
    measure_name, limit = TARGETS[name]
    unit, dense = networks["unit"], networks["dense"]
    ratio = unit["files"]["float"]["latency_ratio"] if measure_name == "tflite_float" \
        else unit["keras_latency_ratio"]["batch_256"]
    drop = 100 * (dense["keras_test_accuracy"] - unit["keras_test_accuracy"])
    return {"accuracy_drop_points": {"value": drop, "at_most": ACCURACY_POINTS, "held": drop <= ACCURACY_POINTS},
            f"{measure_name}_latency_ratio": {"value": ratio, "at_most": limit, "held": ratio <= limit}}


def _ratio_cells(entry):
    keras_ratio = entry.get("keras_latency_ratio")
    return [f"{entry['files'][kind]['latency_ratio']:.2f}×" for kind in QUANTIZATIONS] + \
        [f"{keras_ratio[f'batch_{b}']:.2f}×" if keras_ratio else "as dense" for b in KERAS_BATCHES]


def markdown(results):
    """The figures of `results` (the JSON's `models`) as markdown tables: the shipped networks, then every unit
    round."""
    speed_header = "float TFLite | int8 TFLite | Keras batch 1 | Keras batch 256 |"
    lines = ["| model | network | weights | parameters | test accuracy (reinit) | float bytes | " + speed_header,
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        for network, entry in result["networks"].items():
            reinit = f" ({entry['reinit_test_accuracy']:.1%})" if "reinit_test_accuracy" in entry else ""
            lines.append(f"| {name} | {network} | {entry['density']:.1%} | {entry['parameters']:,} | "
                         f"{entry['keras_test_accuracy']:.1%}{reinit} | "
                         f"{entry['files']['float']['bytes_ratio']:.2f}× | {' | '.join(_ratio_cells(entry))} |")
    lines += ["", "| model | unit round | weights | units | validation accuracy | test accuracy | " + speed_header,
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        for entry in result["unit_rounds"]:
            shipped = " (shipped)" if entry["round"] == result["shipped_round"] else ""
            lines.append(f"| {name} | {entry['round']}{shipped} | {entry['density']:.1%} | "
                         f"{'-'.join(str(n) for n in entry['units'].values())} | {entry[MONITOR]:.1%} | "
                         f"{entry['test_accuracy']:.1%} | {' | '.join(_ratio_cells(entry))} |")
    return "\n".join(lines)


def _per_model(flag, defaults):
    """The values of a per-model list flag: as given (one for all models, or one per model), or each model's
    default."""
    if FLAGS[flag].value is None:
        return [defaults[name] for name in FLAGS.models]
    values = FLAGS[flag].value
    if len(values) not in (1, len(FLAGS.models)) or not all(value.isdigit() for value in values):
        raise app.UsageError(f"--{flag} needs one whole number, or one per model ({len(FLAGS.models)}); got {values}.")
    return [int(value) for value in values]


def main(argv):
    del argv
    settings = {"dataset": FLAGS.dataset, "iterations": _per_model("iterations", ITERATIONS),
                "rounds": _per_model("rounds", ROUNDS), "prune_rate": FLAGS.prune_rate,
                "latency_rounds": FLAGS.latency_rounds, "latency_runs": FLAGS.latency_runs}
    if FLAGS.quick:
        settings.update(QUICK)
    iterations, rounds = settings["iterations"], settings["rounds"]
    if min(rounds) < 1:
        raise app.UsageError("--rounds must be at least 1.")
    data = datasets.load(settings["dataset"], seed=FLAGS.seed)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, name in enumerate(FLAGS.models):
            results[name] = measure(name, data, iterations[index % len(iterations)], rounds[index % len(rounds)],
                                    settings, FLAGS.seed, folder)
    report = environment.benchmark_report(
        "structured_tickets",
        "unit, unstructured and 1x4 tickets at equal remaining weights, with reinit controls: test accuracy; the "
        "shipped network's parameters and TFLite bytes; latency as ratios to the dense network in the same run "
        "(Keras predict_on_batch at batch 1 and 256 for the compacted unit tickets; TFLite float and int8 at batch "
        "1, one thread, for every file). The unit ticket shipped is the sparsest round within 1 point of dense "
        "validation accuracy; every round of the unit search is compacted and timed",
        quick=FLAGS.quick, seed=FLAGS.seed, settings=settings, models=results,
        dataset=data.description())
    _log(markdown(results))
    storage.publish_json(report, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
