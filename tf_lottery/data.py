"""What a ticket search trains and evaluates on: the user's data, in the forms Keras' `fit` takes.

A `SearchData` holds a training set, a validation set and an optional test set. Each is one of:

- `(x, y)`: NumPy arrays, where `x` (and `y`) may also be a dict or tuple of arrays for models with
  several inputs (outputs). The search batches training arrays with `SearchConfig.batch_size`, in an
  order drawn from (seed, round): a resumed run repeats it exactly.
- a batched `tf.data.Dataset` of `(x, y)` (or `(x, y, sample_weight)`) elements. Each round iterates
  the training set afresh from its start, repeating it if the round is longer.
- a `keras.utils.PyDataset`.
- for the training set only, a function `seed -> tf.data.Dataset`: called at the start of every round
  with that round's seed, so its shuffling and augmentation depend only on (seed, round), and a
  resumed run repeats them. Prefer it to a fixed `tf.data.Dataset` whose `shuffle` draws a new order
  each time it is iterated.

A training set with no end (`Dataset.repeat()`, a generator) needs `steps_per_epoch` when the search
counts its rounds in epochs.

    data = tf_lottery.SearchData(
        train=lambda seed: images.shuffle(10_000, seed=seed).map(augment).batch(64),
        validation=val_images.batch(256))
"""

import dataclasses
import functools
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

#: Batch size of evaluations of array data.
EVALUATION_BATCH_SIZE = 1024

_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class SearchData:
    """The training, validation and (optional) test sets of a ticket search (see the module docstring).

    Args:
        train: `(x, y)` arrays, a batched `tf.data.Dataset`, a `keras.utils.PyDataset`, or a function
            `seed -> tf.data.Dataset`.
        validation: `(x, y)` arrays, a batched `tf.data.Dataset` or a `keras.utils.PyDataset`; evaluated
            every evaluation period, for the monitored metric.
        test: like `validation`, or `None`: evaluated beside it, recorded, never used to choose.
        steps_per_epoch: batches per epoch of a training set with no end (or to shorten one).
        name: a name for the data, recorded in the run and checked on resume;
            `tf_lottery.data_sources.load(name)` reads it again for the
            binaries that read a run (export, analysis).
        num_classes: the number of classes of a classification task, for the
            built-in networks' output layers (`tf_lottery.models`).
        source: where the data was read from, for messages.
    """

    train: Any
    validation: Any
    test: Any = None
    steps_per_epoch: int | None = None
    name: str | None = None
    num_classes: int | None = None
    source: str | None = None

    def __post_init__(self):
        for split in _SPLITS:
            value = getattr(self, split)
            if value is None and split != "test":
                raise ValueError(f"SearchData needs a {split} set.")
            if value is not None:
                _check_form(split, value)
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int)
                                                 or self.steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer; got {self.steps_per_epoch!r}.")

    @property
    def input_shape(self):
        """The shape of one example of a model with one input (no batch dimension)."""
        inputs = self.element_spec()[0]
        if not isinstance(inputs, tf.TensorSpec):
            raise ValueError("This data has several inputs, so it has no single input shape: build the model "
                             "yourself (a built-in network takes one input).")
        return tuple(inputs.shape[1:])

    def summary(self):
        """A line on the sets: their sizes when they are arrays."""
        sizes = {label: count(value) for label, value in
                 (("train", self.train), ("validation", self.validation), ("test", self.test)) if is_arrays(value)}
        where = f" from {self.source}" if self.source else ""
        if len(sizes) == len(self.splits) + 1:
            return f"{self.name}{where}: " + ", ".join(f"{size} {label}" for label, size in sizes.items()) + " examples"
        return f"{self.name}{where}: tf.data pipelines"

    @property
    def splits(self):
        """`{"val": ..., "test": ...}`: the sets evaluated every period (the test set only if given)."""
        return {"val": self.validation} | ({"test": self.test} if self.test is not None else {})

    def train_steps_per_epoch(self, batch_size):
        """Batches in one epoch of the training set, or `None` if it has no end and `steps_per_epoch` is unset."""
        if self.steps_per_epoch:
            return self.steps_per_epoch
        if is_arrays(self.train):
            return math.ceil(count(self.train) / batch_size)
        if isinstance(self.train, keras.utils.PyDataset):
            return len(self.train)
        return self._train_cardinality if self._train_cardinality > 0 else None

    @functools.cached_property
    def _train_cardinality(self):
        """Batches in the training pipeline (negative if it has no end or TF cannot tell): read once, since a
        training function rebuilds its pipeline on every call, and the search asks every round."""
        return int(self._train_dataset(0).cardinality())

    def train_batches(self, seed, steps, batch_size):
        """A `tf.data.Dataset` of exactly `steps` training batches for the round seeded with `seed`.

        Arrays are drawn in an order fixed with NumPy before `tf.data` sees it, so the
        order is the same under every `tf.distribute` strategy (a strategy rebuilds the
        pipeline, which re-seeds `Dataset.shuffle`); each replica gathers its share of
        the global batch.
        """
        if not is_arrays(self.train):
            return self._train_dataset(seed).repeat().take(steps).prefetch(tf.data.AUTOTUNE)
        size = count(self.train)
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(size) for _ in range(-(-steps * batch_size // size))])
        tensors = tf.nest.map_structure(tf.constant, tuple(self.train))
        return (tf.data.Dataset.from_tensor_slices(order[: steps * batch_size]).batch(batch_size)
                .map(lambda i: tf.nest.map_structure(lambda t: tf.gather(t, i), tensors),
                     num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))

    def _train_dataset(self, seed):
        if isinstance(self.train, tf.data.Dataset):
            return self.train
        if isinstance(self.train, keras.utils.PyDataset):
            return _from_py_dataset(self.train)
        dataset = self.train(seed)
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError(f"The training-set function must return a tf.data.Dataset; it returned "
                             f"{type(dataset).__name__}.")
        return dataset

    def element_spec(self):
        """The `tf.TypeSpec` structure of one training batch."""
        if is_arrays(self.train):
            return tf.nest.map_structure(lambda a: tf.TensorSpec((None,) + np.shape(a)[1:], tf.as_dtype(
                np.asarray(a).dtype)), tuple(self.train))
        return self._train_dataset(0).element_spec

    def example_inputs(self):
        """The inputs of one training batch (of one example, for arrays), to build a model on."""
        if is_arrays(self.train):
            return tf.nest.map_structure(lambda a: a[:1], self.train[0])
        if isinstance(self.train, keras.utils.PyDataset):
            return self.train[0][0]
        return next(iter(self._train_dataset(0).take(1)))[0]

    def take(self, split, examples):
        """`(x, y)` arrays of the first `examples` examples of set `split` ("train", "validation" or "test"); a
        training pipeline in its seed-0 order."""
        value = self._train_dataset(0) if split == "train" and not is_arrays(self.train) else getattr(self, split)
        if value is None:
            raise ValueError(f"This data has no {split} set.")
        if is_arrays(value):
            return tuple(tf.nest.map_structure(lambda a: np.asarray(a[:examples]), tuple(value[:2])))
        if isinstance(value, keras.utils.PyDataset):
            value = _from_py_dataset(value)
        taken = list(value.unbatch().take(examples).as_numpy_iterator())
        return tuple(tf.nest.map_structure(lambda *parts: np.stack(parts), *taken)[:2])

    def describe(self):
        """What identifies the data in a run record: its name and the shapes of its sets (checked on resume)."""
        return {"name": self.name, "shapes": {split: _describe(value) for split, value in
                                              (("train", self.train), ("val", self.validation), ("test", self.test))}}

    def check(self, model, batch_size, needs_epochs):
        """Raises a `ValueError` naming the fix for data the search cannot train `model` on, before any training."""
        for split, value in (("training", self.train), ("validation", self.validation), ("test", self.test)):
            if value is None:
                continue
            if is_arrays(value):
                _check_arrays(split, value)
            elif isinstance(value, tf.data.Dataset) or (split == "training" and callable(value)
                                                         and not isinstance(value, keras.utils.PyDataset)):
                _check_dataset(split, self._train_dataset(0) if split == "training" else value, model)
        if needs_epochs and self.train_steps_per_epoch(batch_size) is None:
            raise ValueError("The training set has no end, so an epoch has no length: give "
                             "SearchData(steps_per_epoch=N), or count rounds in iterations instead of epochs.")


def count(arrays):
    """Examples in `(x, y)` arrays."""
    return len(tf.nest.flatten(arrays[0])[0])


def as_search_data(data):
    """`data` as a `SearchData`: it is one, or it has `x_train` ... `y_test` arrays (a `tf_lottery.datasets.Dataset`)."""
    if isinstance(data, SearchData):
        return data
    if all(hasattr(data, f"{kind}_{split}") for kind in "xy" for split in ("train", "val", "test")):
        return SearchData(train=(data.x_train, data.y_train), validation=(data.x_val, data.y_val),
                          test=(data.x_test, data.y_test), name=getattr(data, "name", None),
                          num_classes=getattr(data, "num_classes", None), source=getattr(data, "source", None))
    raise ValueError(f"Data for a ticket search must be a tf_lottery.SearchData (or a tf_lottery.datasets.Dataset); "
                     f"got {type(data).__name__}. Wrap arrays or datasets as SearchData(train=..., validation=...).")


def evaluate(model, split, **kwargs):
    """`model.evaluate` on one set in any of `SearchData`'s forms; returns Keras' dict of metrics."""
    if is_arrays(split):
        x, y, *weights = split  # `evaluate`'s third positional argument is the batch size, not sample weights.
        return model.evaluate(x, y, sample_weight=weights[0] if weights else None,
                              batch_size=EVALUATION_BATCH_SIZE, return_dict=True, **kwargs)
    return model.evaluate(split, return_dict=True, **kwargs)


def is_arrays(value):
    """Whether a set is given as `(x, y)` (or `(x, y, sample_weight)`) arrays."""
    return isinstance(value, tuple) and len(value) in (2, 3) and not isinstance(value, tf.data.Dataset)


def _check_form(split, value):
    label = "training" if split == "train" else split
    forms = "(x, y) arrays, a batched tf.data.Dataset, a keras.utils.PyDataset"
    if split == "train":
        forms += " or a function seed -> tf.data.Dataset"
    if isinstance(value, list) and len(value) in (2, 3):
        raise ValueError(f"The {label} set is a list; pass the arrays as a tuple (x, y).")
    if not (is_arrays(value) or isinstance(value, (tf.data.Dataset, keras.utils.PyDataset))
            or (split == "train" and callable(value))):
        raise ValueError(f"The {label} set must be {forms}; got {type(value).__name__}.")


def _check_arrays(split, arrays):
    sizes = {len(a) for a in tf.nest.flatten(arrays)}
    if len(sizes) > 1:
        raise ValueError(f"The {split} arrays hold different numbers of examples ({sorted(sizes)}): inputs and "
                         "targets must match one for one.")
    if sizes == {0}:
        raise ValueError(f"The {split} set is empty.")


def _check_dataset(split, dataset, model):
    if int(dataset.cardinality()) == 0:
        raise ValueError(f"The {split} dataset is empty (it yields no batches); check its source and filters.")
    inputs = dataset.element_spec[0] if isinstance(dataset.element_spec, tuple) else dataset.element_spec
    expected = model.inputs if getattr(model, "inputs", None) else None
    if expected is None:
        return
    for spec, tensor in zip(tf.nest.flatten(inputs), tf.nest.flatten(expected)):
        if spec.shape.rank is not None and spec.shape.rank == len(tensor.shape) - 1:
            raise ValueError(f"The {split} dataset yields single examples of shape {spec.shape}, but the model "
                             f"takes batches of shape {tuple(tensor.shape)}: call .batch(batch_size) on it.")


def _describe(value):
    if value is None:
        return None
    if is_arrays(value):
        return tf.nest.map_structure(lambda a: list(np.shape(a)), value[0])  # The inputs' shapes.
    if isinstance(value, keras.utils.PyDataset):
        return {"py_dataset": type(value).__name__, "batches": len(value)}
    if isinstance(value, tf.data.Dataset):
        return {"dataset": str(value.element_spec)}
    return {"function": getattr(value, "__qualname__", type(value).__name__)}


def _from_py_dataset(py_dataset):
    """A `tf.data.Dataset` that yields the batches of `py_dataset`, epoch after epoch."""
    first = py_dataset[0]
    signature = tf.nest.map_structure(
        lambda value: tf.TensorSpec((None,) + np.shape(value)[1:], tf.as_dtype(np.asarray(value).dtype)), first)

    def batches():
        while True:
            for index in range(len(py_dataset)):
                yield py_dataset[index]
            py_dataset.on_epoch_end()

    return tf.data.Dataset.from_generator(batches, output_signature=signature)

