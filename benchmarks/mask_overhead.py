"""Training-step time and memory of `tf_lottery.mask` over the plain model, and of TF Model Optimization.

For each model, builds the plain network three times with the same weights,
masks one copy in place (`tf_lottery.mask`) with random masks at ~20%
density (seeded), and compiles all three with Adam, twice: as `fit` compiles
on a CPU (a TensorFlow graph, `jit_compile=False`) and on a GPU or TPU (XLA,
`jit_compile=True`). The masked model trains with `LotteryCallback()` in its
callbacks, as a user would. All train with `model.fit` on one in-memory
`tf.data` dataset of random inputs, in one process, after a warm-up fit that
traces the train step. Two controls: the second plain copy, whose ratio to
plain (the same model timed the same way) shows how far a ratio moves with
nothing changed; and the masked model itself training with a second train
step traced without the mask constraints ("unconstrained": the same weights,
optimizer and callbacks), whose ratio to masked leaves out whatever two model
instances differ by (where their buffers lie) and measures the constraints
alone (`constraint_ratio`). Each repeat times plain, masked, the copy and the
unconstrained step in turn, starting one later than the repeat before (plain,
masked, copy, unconstrained; masked, copy, unconstrained, plain; ...), so
load drifts, and whatever one fit leaves the next (warm caches), hit all
alike. Each model has its own number of steps per fit (`STEPS`), enough for
a fit to last about a second or more on a CPU: shorter fits are mostly
noise.

Models: LeNet-300-100 and Conv-2 on 28x28x1 images (10 classes), and a small
keras-hub BERT text classifier (`BERT_CONFIG`, built from its constructor; 2
classes) on random token ids.

The peer: TF Model Optimization's `prune_low_magnitude` (constant 80%
sparsity, masks updated every 100 steps) with `UpdatePruningStep`, over the
same LeNet-300-100 in plain `tf_keras` (translated from Keras 3 with its
weights, `tfmot_bridge.to_tf_keras`), timed the same way in a subprocess:
importing tfmot turns a process to the legacy Keras.

A repeat is one `fit(steps_per_epoch=steps, epochs=1)`, timed from
`on_epoch_begin` to `on_epoch_end`: per-step costs (the mask constraints in
the compiled step, batch-level callbacks) are included, per-fit set-up
(including `LotteryCallback.on_train_begin`) is not. Reported per model and
compilation (`graph`, `xla`): median ms per step of each, the median of the
per-repeat ratios masked/plain (of wall time; `cpu_ratio` of the process's CPU
time, which leaves out time spent waiting for a CPU), plain copy/plain
(`plain_copy_ratio`), unconstrained/plain (`unconstrained_ratio`) and
masked/unconstrained (`constraint_ratio`), all of wall time; whether the
masked ratio meets `TARGET_RATIO` (and, for `graph`, is below tfmot's ratio),
whether every pruned weight was exactly zero after every masked fit, and
whether every unconstrained fit revived pruned weights (it should: it checks
that the control leaves the masks out). Per model: the median ms of one pass
of the mask constraints timed on their own (`constraint_ms`) and its share
of the plain graph step (`constraint_share`): the work masking adds to a
step without XLA; beside it, one plain elementwise pass over the same
weights (`variable.assign(variable * scale)`, `elementwise_pass_ms` and
`elementwise_pass_share`): the least that any way of keeping pruned weights
at zero after every step adds to a step that XLA does not fuse; and memory:
the bytes of the mask variables over the bytes of the weights they mask
(target <= `TARGET_MEMORY`). The 1-minute load average at start and end is
recorded too: other processes on the machine make timings noisy.

Run from the repository root:

    python benchmarks/mask_overhead.py [--repeats 21] [--steps N]
        [--models lenet300_100,conv2,bert] [--seed 0] [--output result.json]

`--quick` uses tiny settings (for tests; the timings then mean nothing).
The JSON goes to stdout, and to `--output` if given.
"""

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lottery  # noqa: E402
from tf_lottery import environment, masking, models, registry, storage, tfmot_bridge  # noqa: E402

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
#: The keras-hub BERT of the benchmark: BERT-tiny's depth and width (2 layers of 128) on a 64-token input.
BERT_CONFIG = {"vocabulary_size": 5000, "num_layers": 2, "num_heads": 2, "hidden_dim": 128, "intermediate_dim": 512,
               "max_sequence_length": 64}
QUICK_BERT_CONFIG = {**BERT_CONFIG, "vocabulary_size": 200, "hidden_dim": 16, "intermediate_dim": 32,
                     "max_sequence_length": 8}
DENSITY = 0.2
TARGET_RATIO = 1.02
#: How `fit` compiles the train step: a TensorFlow graph (its default on CPUs) or XLA (its default on GPUs and
#: TPUs, `jit_compile=True`), which fuses the mask constraint with the optimizer's update.
COMPILATIONS = {"graph": False, "xla": True}
TARGET_MEMORY = 0.25
BATCH_SIZES = {"lenet300_100": 60, "conv2": 60, "bert": 32}
#: Training steps per timed fit: about a second (LeNet-300-100) to three (the others) on a 2-core CPU.
STEPS = {"lenet300_100": 400, "conv2": 40, "bert": 40}
QUICK = {"repeats": 2, "steps": 3, "warmup_steps": 2, "batch_size": 8}

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 21, "Timed fits per model and variant.", lower_bound=1)
flags.DEFINE_integer("steps", None, f"Training steps per timed fit, for every model; default: {STEPS}.",
                     lower_bound=1)
flags.DEFINE_list("models", list(BATCH_SIZES), f"Models to measure, from {list(BATCH_SIZES)}.")
flags.DEFINE_integer("seed", 0, "Seed for the weights, the data and the masks.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}; overrides --repeats/--steps.")
flags.DEFINE_bool("tfmot", True, "Also measure TF Model Optimization on LeNet-300-100 (in a subprocess).")
flags.DEFINE_string("tfmot_settings", None, "Internal: run only the TF Model Optimization measurement with these "
                                            "JSON settings and print its JSON (what the subprocess runs).")
flags.register_validator("models", lambda names: names and set(names) <= set(BATCH_SIZES),
                         f"--models must be a non-empty subset of {list(BATCH_SIZES)}.")


def _build(name, quick):
    """`(model, number of classes)` for a model of the benchmark."""
    if name == "bert":
        config = QUICK_BERT_CONFIG if quick else BERT_CONFIG
        backbone = keras_hub.models.BertBackbone(**config)
        model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
        return model, 2
    return models.get(name)(IMAGE_SHAPE, NUM_CLASSES), NUM_CLASSES


def _dataset(name, batch_size, num_classes, seed, quick):
    rng = np.random.default_rng(seed)
    n = batch_size * 16
    if name == "bert":
        length = (QUICK_BERT_CONFIG if quick else BERT_CONFIG)["max_sequence_length"]
        x = {"token_ids": rng.integers(1, 200, (n, length)).astype(np.int32),
             "segment_ids": np.zeros((n, length), np.int32), "padding_mask": np.ones((n, length), np.int32)}
    else:
        x = rng.random((n, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, num_classes, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).cache().repeat()


def _epoch_timer(callbacks_module):
    """A callback timing the (single) epoch in wall and process CPU seconds.

    It has no batch hooks, so it keeps Keras' asynchronous callback dispatch.
    """

    class EpochTimer(callbacks_module.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds, self.cpu_seconds = (now - then for now, then in
                                              zip((time.perf_counter(), time.process_time()), self.start))

    return EpochTimer()


def _ms_per_step(model, extra_callbacks, dataset, steps, callbacks_module=keras.callbacks):
    """`(wall ms, process CPU ms)` per step of one fit of `steps` steps."""
    timer = _epoch_timer(callbacks_module)
    model.fit(dataset, steps_per_epoch=steps, epochs=1, callbacks=[*extra_callbacks(), timer], shuffle=False,
              verbose=0)
    return 1000 * timer.seconds / steps, 1000 * timer.cpu_seconds / steps


def _ratios(times, base_times):
    """Per-repeat ratios of `times` to `base_times` (ms of two variants, repeat by repeat)."""
    return [value / base for value, base in zip(times, base_times)]


def _interleaved(variants, dataset, *, repeats, steps, warmup_steps, label, callbacks_module=keras.callbacks):
    """Times `variants = {name: (model, callbacks factory)}` in turn; medians and per-repeat ratios.

    The first variant is the base, the second the one measured against it (`ratio`: of wall time;
    `cpu_ratio`: of the process's CPU time, all its threads, which time spent waiting for a CPU held by
    other processes leaves out); any further one is a control, with its own `<name>_ratio` of wall time.
    Each repeat starts one variant later than the one before, so each takes every place in turn.
    """
    base, measured, *controls = variants
    for model, callbacks in variants.values():  # Traces the train steps.
        _ms_per_step(model, callbacks, dataset, warmup_steps, callbacks_module)
    wall, cpu = {name: [] for name in variants}, {name: [] for name in variants}
    for i in range(repeats):
        names = list(variants)
        for name in names[i % len(names):] + names[:i % len(names)]:
            ms, cpu_ms = _ms_per_step(*variants[name], dataset, steps, callbacks_module)
            wall[name].append(ms)
            cpu[name].append(cpu_ms)
        logging.info("%s repeat %d/%d: %s", label, i + 1, repeats,
                     ", ".join(f"{name} {times[-1]:.3f} ms/step" for name, times in wall.items()))

    def ratios(times, name):
        return _ratios(times[name], times[base])

    timing = {f"{name}_ms_per_step": statistics.median(times) for name, times in wall.items()}
    timing.update(ratio=statistics.median(ratios(wall, measured)), cpu_ratio=statistics.median(ratios(cpu, measured)))
    timing.update({f"{name}_ratio": statistics.median(ratios(wall, name)) for name in controls})
    timing.update({f"{name}_ms_per_repeat": times for name, times in wall.items()})
    timing.update(ratio_per_repeat=ratios(wall, measured), cpu_ratio_per_repeat=ratios(cpu, measured))
    timing.update({f"{name}_ratio_per_repeat": ratios(wall, name) for name in controls})
    return timing


def _memory(model):
    """Bytes of the mask variables over the bytes of the weights they mask."""
    masks, weights = masking.get_mask_variables(model), masking.get_prunable_variables(model)
    mask_bytes = sum(np.dtype(m.dtype).itemsize * int(np.prod(m.shape)) for m in masks.values())
    weight_bytes = sum(np.dtype(w.dtype).itemsize * int(np.prod(w.shape)) for w in weights.values())
    return {"mask_bytes": mask_bytes, "masked_weight_bytes": weight_bytes, "ratio": mask_bytes / weight_bytes,
            "meets_target": mask_bytes / weight_bytes <= TARGET_MEMORY}


def _pass_ms(variables, new_value, rounds, runs):
    """Median ms of one pass of `variable.assign(new_value(variable))` over `variables`, timed on its own.

    Each round times `runs` passes in one graph (a `tf.range` loop, as a compiled train step runs them, without a
    Python call each).
    """

    @tf.function
    def passes(count):
        for _ in tf.range(count):
            for variable in variables:
                variable.assign(new_value(variable))

    passes(tf.constant(1))  # Traces.
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        passes(tf.constant(runs))
        times.append((time.perf_counter() - start) / runs)
    return 1000 * statistics.median(times)


def _pass_costs(model, plain_ms_per_step, rounds, runs):
    """What a masked step adds without XLA, and the least that any per-step zeroing would add, in ms and shares.

    The constraint pass is what Keras' optimizer runs after each update (`variable.assign(variable.constraint(
    variable))` for every masked weight). The elementwise pass multiplies the same weights by a variable scale of
    1 (a variable, so that no graph optimization can drop it): one read and one write of each weight.
    """
    variables = list(masking.get_prunable_variables(model).values())
    scale = tf.Variable(1.0)
    costs = {"constraint_ms": _pass_ms(variables, lambda variable: variable.constraint(variable), rounds, runs),
             "elementwise_pass_ms": _pass_ms(variables, lambda variable: variable * scale, rounds, runs)}
    return {**costs, "constraint_share": costs["constraint_ms"] / plain_ms_per_step,
            "elementwise_pass_share": costs["elementwise_pass_ms"] / plain_ms_per_step}


def _pruned_weights_zero(model):
    masks = tf_lottery.get_masks(model)
    return all(not np.any(np.asarray(weight)[~np.asarray(masks[key], bool)])
               for key, weight in masking.get_prunable_variables(model).items())


class _ZeroCheck(keras.callbacks.Callback):
    """Records, as each fit ends (after the timer stops), whether every pruned weight is exactly zero."""

    def __init__(self):
        super().__init__()
        self.results = []

    def on_train_end(self, logs=None):
        self.results.append(_pruned_weights_zero(self.model))


def _compiled(model, jit_compile):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    return model


class _WithStep:
    """A model that trains with a given train function of its own: `fit` sets it first.

    Keras keeps a model's train function until the model is compiled again, so two functions traced from one
    compiled model (one optimizer, one set of weights) can take turns.
    """

    def __init__(self, model, train_function):
        self.model, self.train_function = model, train_function

    def fit(self, *args, **kwargs):
        self.model.train_function = self.train_function
        return self.model.fit(*args, **kwargs)


def _with_and_without_mask_constraints(model, own_constraints, dataset):
    """`(masked, unconstrained)`: the compiled masked `model`, training with its own step, and the same model and
    optimizer training with a step traced without the mask constraints: each weight keeps `own_constraints[key]`,
    the constraint it had before masking (`None` for most)."""
    variables = masking.get_prunable_variables(model)
    mask_constraints = {key: variable.constraint for key, variable in variables.items()}
    for key, variable in variables.items():
        variable.constraint = own_constraints[key]
    try:
        model.make_train_function(force=True)
        model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)  # Traces the step, as it stands now.
        unconstrained = model.train_function
    finally:
        for key, variable in variables.items():
            variable.constraint = mask_constraints[key]
    model.make_train_function(force=True)
    return _WithStep(model, model.train_function), _WithStep(model, unconstrained)


def measure(name, *, repeats, steps, warmup_steps, batch_size, seed, quick):
    keras.utils.set_random_seed(seed)
    plain, num_classes = _build(name, quick)
    plain_copy, masked = (_build(name, quick)[0] for _ in range(2))
    for model in (plain_copy, masked):
        model.set_weights(plain.get_weights())
    own_constraints = {key: variable.constraint for key, variable in registry.weights_by_path(masked).items()}
    tf_lottery.mask(masked)
    rng = np.random.default_rng(seed)
    tf_lottery.set_masks(masked, {key: rng.random(mask.shape) < DENSITY
                                  for key, mask in tf_lottery.get_masks(masked).items()})
    dataset = _dataset(name, batch_size, num_classes, seed, quick)
    sparsity = tf_lottery.sparsity_report(masked)
    entry = {
        "batch_size": batch_size,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "repeats": repeats,
        "mask_density": sparsity["density"],
        "masked_weights": sparsity["total"],
    }
    for compilation, jit_compile in COMPILATIONS.items():
        with_constraints, unconstrained = _with_and_without_mask_constraints(
            _compiled(masked, jit_compile), own_constraints, dataset)
        checks = {"masked": _ZeroCheck(), "unconstrained": _ZeroCheck()}
        variants = {"plain": (_compiled(plain, jit_compile), list),
                    "masked": (with_constraints, lambda: [tf_lottery.LotteryCallback(), checks["masked"]]),
                    "plain_copy": (_compiled(plain_copy, jit_compile), list),
                    "unconstrained": (unconstrained, lambda: [tf_lottery.LotteryCallback(), checks["unconstrained"]])}
        timing = _interleaved(variants, dataset, repeats=repeats, steps=steps, warmup_steps=warmup_steps,
                              label=f"{name} ({compilation})")
        constraint_ratios = _ratios(timing["masked_ms_per_repeat"], timing["unconstrained_ms_per_repeat"])
        entry[compilation] = {**timing, "constraint_ratio": statistics.median(constraint_ratios),
                              "constraint_ratio_per_repeat": constraint_ratios,
                              "meets_target": timing["ratio"] <= TARGET_RATIO,
                              "pruned_weights_zero": bool(checks["masked"].results) and all(checks["masked"].results),
                              # The control's step really leaves the masks out: each of its fits revives pruned
                              # weights (the next masked fit's LotteryCallback zeroes them before it starts).
                              "unconstrained_revives_pruned_weights": bool(checks["unconstrained"].results)
                              and not any(checks["unconstrained"].results)}
    return {**entry, **_pass_costs(masked, entry["graph"]["plain_ms_per_step"], repeats, steps),
            "memory": _memory(masked)}


def measure_tfmot(*, repeats, steps, warmup_steps, batch_size, seed):
    """Plain `tf_keras` LeNet-300-100 against tfmot's `prune_low_magnitude` of it (run in its own process)."""
    tfmot, tf_keras = tfmot_bridge.modules()
    keras.utils.set_random_seed(seed)
    source = models.lenet300_100(IMAGE_SHAPE, NUM_CLASSES)
    plain = tfmot_bridge.to_tf_keras(source)
    schedule = tfmot.sparsity.keras.ConstantSparsity(1 - DENSITY, begin_step=0, frequency=100)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(tfmot_bridge.to_tf_keras(source), pruning_schedule=schedule)
    for model in (plain, pruned):
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-3),
                      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = _dataset("lenet300_100", batch_size, NUM_CLASSES, seed, quick=False)
    variants = {"plain": (plain, list), "pruned": (pruned, lambda: [tfmot.sparsity.keras.UpdatePruningStep()])}
    timing = _interleaved(variants, dataset, repeats=repeats, steps=steps, warmup_steps=warmup_steps,
                          label="tfmot lenet300_100", callbacks_module=tf_keras.callbacks)
    return {"model": "lenet300_100", "batch_size": batch_size, "steps": steps, "repeats": repeats,
            "sparsity": 1 - DENSITY, "update_frequency": 100, **timing}


def _tfmot_in_subprocess(settings):
    result = subprocess.run([sys.executable, os.path.abspath(__file__), f"--tfmot_settings={json.dumps(settings)}"],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"The TF Model Optimization measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def _settings(name):
    """Repeats, steps, warm-up steps and batch size for timing model `name`, from the flags."""
    if FLAGS.quick:
        return dict(QUICK)
    steps = FLAGS.steps or STEPS[name]
    return {"repeats": FLAGS.repeats, "steps": steps, "warmup_steps": min(steps, 20), "batch_size": BATCH_SIZES[name]}


def main(argv):
    del argv
    if FLAGS.tfmot_settings:
        print(json.dumps(measure_tfmot(**json.loads(FLAGS.tfmot_settings))))
        return
    load_start = os.getloadavg()[0]
    results = {name: measure(name, **_settings(name), seed=FLAGS.seed, quick=FLAGS.quick) for name in FLAGS.models}
    peer = None
    if FLAGS.tfmot:
        peer = _tfmot_in_subprocess({**_settings("lenet300_100"), "seed": FLAGS.seed})
        for entry in results.values():
            entry["graph"]["below_tfmot"] = entry["graph"]["ratio"] < peer["ratio"]
    report = {
        "benchmark": "mask_overhead",
        "measured": "ms per training step (model.fit, Adam), compiled as a TensorFlow graph and with XLA: masked "
                    "with LotteryCallback vs plain, a second plain copy vs plain, and the masked model with a step "
                    "traced without its mask constraints (unconstrained) vs plain and masked vs it; tfmot's "
                    "prune_low_magnitude with UpdatePruningStep vs plain tf_keras (graph); one pass of the mask "
                    "constraints alone, and one elementwise pass over the same weights; mask bytes over masked "
                    "weight bytes",
        "target": f"ratio <= {TARGET_RATIO} and below tfmot's; memory ratio <= {TARGET_MEMORY}",
        "quick": FLAGS.quick,
        "seed": FLAGS.seed,
        "bert_config": QUICK_BERT_CONFIG if FLAGS.quick else BERT_CONFIG,
        **environment.machine(),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "models": results,
        "tfmot": peer,
    }
    storage.publish_json(report, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
