"""What a result was computed with: the library versions and the machine, for run files and benchmark reports."""

import os
import platform

import keras
import numpy as np
import tensorflow as tf


def versions():
    """`{"python", "tensorflow", "keras", "numpy"}` version strings."""
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__}


def machine():
    """The versions, plus the platform, processor and CPU count (all CPUs, and those this process may use)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "usable_cpus": usable, **versions()}


def benchmark_report(benchmark, measured, *, quick, seed, dataset, settings, models):
    """A benchmark's JSON report: what it measured, whether with its tiny `--quick` settings, its seed, data and
    settings, this machine, and its results per model."""
    return {"benchmark": benchmark, "measured": measured, "quick": quick, "seed": seed, "dataset": dataset,
            "settings": settings, **machine(), "models": models}
