"""The model of a ticket search, named on the command line (`examples/find_ticket.py --model=...`).

`builder(spec, data)` turns one of two forms into the `() -> keras.Model` that a `TicketSearch` takes:

- a built-in network of `tf_lottery.models` (`lenet300_100`, `conv2`, ...), sized for the data's input
  shape and number of classes; uncompiled, so the search trains it with `SearchConfig`'s optimizer;
- `PATH.keras`, a model saved with `model.save(PATH)`: its architecture, its compile settings (loss,
  metrics, optimizer, if it was compiled) and its weights, where round 0 starts. It is loaded with Keras'
  safe mode: a model with custom layers loads only if they are registered
  (`keras.saving.register_keras_serializable`) by code imported before the search.
"""

import functools
import os
import zipfile

import keras

from tf_lottery import models

SAVED_SUFFIX = ".keras"


def builder(spec, data):
    """`() -> keras.Model` for `spec`: a built-in network's name or `PATH.keras` (see the module docstring).

    Raises a `ValueError` (a `FileNotFoundError` for a missing file) naming the fix before any training.
    """
    if spec.endswith(SAVED_SUFFIX):
        load_saved(spec)  # Fails now, before any training, if it does not load.
        return functools.partial(load_saved, spec)
    if spec not in models.MODELS:
        raise ValueError(f"Unknown model {spec!r}: give a built-in network ({', '.join(sorted(models.MODELS))}) or "
                         f"a saved Keras model, PATH{SAVED_SUFFIX}.")
    if data.num_classes is None:
        raise ValueError(f"{spec} is a classifier, and {data.name} has no integer class labels: save your own "
                         f"model (model.save('model{SAVED_SUFFIX}')) and pass --model=model{SAVED_SUFFIX}.")
    return functools.partial(models.get(spec), data.input_shape, data.num_classes)


def load_saved(path):
    """The Keras model saved in `path` (`model.save(path)`), loaded in safe mode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file {path}: --model=PATH{SAVED_SUFFIX} needs a model saved with "
                                f"model.save(PATH{SAVED_SUFFIX}).")
    try:
        return keras.saving.load_model(path)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} does not load as a Keras model: {error}\nSave the model with model.save(PATH{SAVED_SUFFIX}). "
            "Custom layers, losses and metrics load only when registered with "
            "@keras.saving.register_keras_serializable() in code imported before the search; tf_lottery never "
            "loads a model with safe_mode=False (which would run code from the file)."
        ) from error
