"""Training-step overhead of `tf_lottery.wrap` over the plain model.

For each model, builds the plain network and `tf_lottery.wrap` of it (same
initial weights), sets the wrapped model's masks to ~20% density (random,
seeded) and compiles both with Adam. The wrapped model trains with
`LotteryCallback()` in its callbacks, as a user would. Both train with
`model.fit` on one in-memory `tf.data` dataset of random 28x28x1 images, in one
process, after a warm-up fit that traces the train step. Repeats alternate
plain, wrapped, plain, wrapped, ... so load drifts hit both alike.

A repeat is one `fit(steps_per_epoch=steps, epochs=1)`, timed from
`on_epoch_begin` to `on_epoch_end`: per-step costs (masking in the compiled
step, batch-level callbacks) are included, per-fit set-up (including
`LotteryCallback.on_train_begin`) is not. Reported per model: median ms per
step of each, the median of the per-pair ratios wrapped/plain, and whether it
meets the target ratio <= 1.05. The 1-minute load average at start and end is
recorded too: other processes on the machine make timings noisy.

Run from the repository root:

    python benchmarks/mask_overhead.py [--repeats 7] [--steps 200]
        [--models lenet300_100,conv2] [--seed 0] [--output result.json]

`--quick` uses tiny settings (for tests; the timings then mean nothing).
The JSON goes to stdout, and to `--output` if given.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lottery  # noqa: E402
from tf_lottery import environment, models, storage  # noqa: E402

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
DENSITY = 0.2
TARGET_RATIO = 1.05
BATCH_SIZES = {"lenet300_100": 60, "conv2": 60}
QUICK = {"repeats": 2, "steps": 3, "warmup_steps": 2, "batch_size": 8}

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 7, "Timed fits per model and variant.", lower_bound=1)
flags.DEFINE_integer("steps", 200, "Training steps per timed fit.", lower_bound=1)
flags.DEFINE_list("models", list(BATCH_SIZES), f"Models to measure, from {list(BATCH_SIZES)}.")
flags.DEFINE_integer("seed", 0, "Seed for the weights, the data and the masks.")
flags.DEFINE_string("output", None, "Also write the JSON to this file.")
flags.DEFINE_bool("quick", False, f"Tiny settings for smoke tests: {QUICK}; overrides --repeats/--steps.")
flags.register_validator("models", lambda names: names and set(names) <= set(BATCH_SIZES),
                         f"--models must be a non-empty subset of {list(BATCH_SIZES)}.")


class _EpochTimer(keras.callbacks.Callback):
    """Wall time of the (single) epoch; has no batch hooks, so it keeps Keras' async dispatch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def _compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _ms_per_step(model, dataset, steps, lottery):
    """One fit of `steps` steps; the wrapped model gets a fresh LotteryCallback, as in a user's run."""
    timer = _EpochTimer()
    callbacks = [tf_lottery.LotteryCallback(), timer] if lottery else [timer]
    model.fit(dataset, steps_per_epoch=steps, epochs=1, callbacks=callbacks, shuffle=False, verbose=0)
    return 1000 * timer.seconds / steps


def measure(name, *, repeats, steps, warmup_steps, batch_size, seed):
    rng = np.random.default_rng(seed)
    n = batch_size * 16
    x = rng.random((n, *INPUT_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, n)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).cache().repeat()

    keras.utils.set_random_seed(seed)
    plain = models.get(name)(INPUT_SHAPE, NUM_CLASSES)
    wrapped = tf_lottery.wrap(plain)
    tf_lottery.set_masks(wrapped, {key: (rng.random(mask.shape) < DENSITY).astype(np.float32)
                                   for key, mask in tf_lottery.get_masks(wrapped).items()})
    density = tf_lottery.sparsity_report(wrapped)["density"]
    _compiled(plain)
    _compiled(wrapped)

    for model, lottery in ((plain, False), (wrapped, True)):  # Traces the train steps.
        _ms_per_step(model, dataset, warmup_steps, lottery)
    plain_ms, wrapped_ms = [], []
    for i in range(repeats):
        plain_ms.append(_ms_per_step(plain, dataset, steps, lottery=False))
        wrapped_ms.append(_ms_per_step(wrapped, dataset, steps, lottery=True))
        logging.info("%s repeat %d/%d: plain %.3f ms/step, wrapped %.3f ms/step",
                     name, i + 1, repeats, plain_ms[-1], wrapped_ms[-1])
    ratios = [w / p for p, w in zip(plain_ms, wrapped_ms)]
    ratio = statistics.median(ratios)
    return {
        "input_shape": list(INPUT_SHAPE),
        "batch_size": batch_size,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "repeats": repeats,
        "mask_density": density,
        "jit_compile": bool(plain.jit_compile),
        "plain_ms_per_step": statistics.median(plain_ms),
        "wrapped_ms_per_step": statistics.median(wrapped_ms),
        "ratio": ratio,
        "meets_target": ratio <= TARGET_RATIO,
        "plain_ms_per_repeat": plain_ms,
        "wrapped_ms_per_repeat": wrapped_ms,
        "ratio_per_repeat": ratios,
    }


def main(argv):
    del argv
    settings = dict(QUICK) if FLAGS.quick else {"repeats": FLAGS.repeats, "steps": FLAGS.steps,
                                                "warmup_steps": min(FLAGS.steps, 20)}
    load_start = os.getloadavg()[0]
    results = {}
    for name in FLAGS.models:
        batch_size = settings.get("batch_size", BATCH_SIZES[name])
        results[name] = measure(name, **{**settings, "batch_size": batch_size}, seed=FLAGS.seed)
    report = {
        "benchmark": "mask_overhead",
        "measured": "ms per training step (model.fit, Adam), wrapped with LotteryCallback vs plain",
        "target": f"ratio <= {TARGET_RATIO}",
        "quick": FLAGS.quick,
        "seed": FLAGS.seed,
        **environment.machine(),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "models": results,
    }
    storage.publish_json(report, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
