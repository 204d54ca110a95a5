"""Latency of TFLite files and Keras models, side by side: a ticket against its dense network.

Each function times every candidate in `rounds` rounds, the order reversed
every other round so that drifts in the machine's load hit every candidate
alike; each round is a warm-up and then `runs` timed invocations. It returns
the median microseconds per invocation: compare candidates timed in one call,
not figures across calls.

    times = tf_lottery.latency.tflite_latencies({"dense": "dense.tflite", "ticket": "small.tflite"}, x_test)
"""

import statistics
import time

from tf_lottery import export

WARMUP_RUNS = 30


def _round_robin(invokers, rounds, runs):
    """`{name: median µs}` of `invokers` (`{name: () -> None}`), timed as the module docstring says."""
    times = {name: [] for name in invokers}
    for index in range(rounds):
        for name in (list(invokers) if index % 2 == 0 else reversed(list(invokers))):
            invoke, spent = invokers[name], times[name]
            for _ in range(WARMUP_RUNS):
                invoke()
            for _ in range(runs):
                start = time.perf_counter()
                invoke()
                spent.append(time.perf_counter() - start)
    return {name: 1e6 * statistics.median(spent) for name, spent in times.items()}


def tflite_latencies(paths, x, rounds=5, runs=100):
    """Median µs per batch-1 invocation of each TFLite file (`{name: path}`), one thread, built-in kernels."""
    interpreters = {name: export.load_interpreter(path, num_threads=1) for name, path in paths.items()}
    for interpreter in interpreters.values():
        export.run_tflite(interpreter, x[:1])  # Resizes to batch 1.
    return _round_robin({name: interpreter.invoke for name, interpreter in interpreters.items()}, rounds, runs)


def keras_latencies(models, x, rounds=5, runs=100):
    """Median µs per `predict_on_batch(x)` of each Keras model (`{name: model}`): one batch, its compiled step."""
    return _round_robin({name: (lambda model=model: model.predict_on_batch(x)) for name, model in models.items()},
                        rounds, runs)
