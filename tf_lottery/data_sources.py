"""The user's data for a ticket search, named on the command line (`examples/find_ticket.py --data=...`).

`parse(spec)` turns one of three forms into a `tf_lottery.data.SearchData`:

- `npz:PATH`: a NumPy `.npz` file, saved with `np.savez(PATH, x_train=..., y_train=...)`, holding `x_train`
  and `y_train`, and optionally `x_val` and `y_val`, `x_test` and `y_test`. Without `x_val`, a
  `validation_split` of the training examples, drawn with `seed`, is held out for validation.
- `images:DIR`: image files (.png, .jpg, .jpeg, .bmp, .gif) in one folder per class, `DIR/CLASS_NAME/*.png`,
  read by `keras.utils.image_dataset_from_directory`; a `validation_split` of them, drawn with `seed`, is
  held out for validation. Every image is resized to `image_size`: by default the size of the images,
  which must then all share it. They are read in grayscale if the first one is, else in RGB.
- `tfds:NAME`: a TensorFlow Datasets dataset (`mnist`, `NAME/CONFIG`, `NAME:VERSION`) already prepared in
  `data_dir`; nothing is downloaded. Its `validation` split is the validation set, or else the last
  `validation_split` of its `train` split (TFDS shuffles examples when it prepares a dataset, so that is a
  fixed sample of them; it does not depend on `seed`). Its `test` split, if any, is the test set. Needs
  the `tfds` extra (tensorflow-datasets).

Images become float32 pixels in [0, 1]. The training set of `images:` and `tfds:` data is a function
`seed -> tf.data.Dataset` that builds its pipeline afresh on each call, so the order of its batches
depends only on that seed (and on TensorFlow's global seed, which the search sets for every round);
their validation and test sets are `tf.data.Dataset`s in batches of `batch_size`.

    data = data_sources.parse("images:/data/flowers", batch_size=32, image_size=(64, 64))
"""

import collections
import contextlib
import io
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import datasets, extras
from tf_lottery.data import SearchData, as_search_data

#: The forms of a data spec, `FORM:WHERE`.
FORMS = ("npz", "images", "tfds")

#: Examples the training set of `images:` and `tfds:` data is shuffled among (all of a smaller set).
SHUFFLE_BUFFER = 10_000

#: The image files that `keras.utils.image_dataset_from_directory` reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

_USAGE = ("npz:PATH (a NumPy .npz file of x_train, y_train, ...), images:DIR (DIR/CLASS_NAME/*.png, one "
          "folder per class) or tfds:NAME (a TensorFlow Datasets dataset prepared in the data dir)")
_NPZ_KEYS = tuple(f"{kind}_{split}" for split in ("train", "val", "test") for kind in "xy")
_SAVE_NPZ = "save the arrays with np.savez(PATH, x_train=..., y_train=...)"


def load(spec, *, data_dir=None, seed=0, batch_size=60, validation_split=0.1, image_size=None):
    """The `SearchData` that `spec` names: a built-in dataset (one of `tf_lottery.datasets.NAMES`, split as
    `tf_lottery.datasets.load` splits it) or a form of `parse`."""
    if spec in datasets.NAMES:
        return as_search_data(datasets.load(spec, data_dir=data_dir, seed=seed))
    return parse(spec, data_dir=data_dir, seed=seed, batch_size=batch_size, validation_split=validation_split,
                 image_size=image_size)


def parse(spec, *, data_dir=None, seed=0, batch_size=60, validation_split=0.1, image_size=None):
    """The `SearchData` that `spec` names (see the module docstring).

    Args:
        spec: `npz:PATH`, `images:DIR` or `tfds:NAME`.
        data_dir: where `tfds:` datasets are prepared (TFDS' default, `~/tensorflow_datasets`, if None).
        seed: draws the validation examples held out of `npz:` and `images:` training sets.
        batch_size: the batch size of `images:` and `tfds:` sets (`npz:` arrays are batched by the search).
        validation_split: the fraction of the training examples held out when the data has no validation set.
        image_size: `(height, width)` to resize `images:` to; by default the size they all share.
    """
    form, _, where = spec.partition(":")
    if form not in FORMS or not where:
        raise ValueError(f"Unknown data {spec!r}: give a built-in dataset ({', '.join(datasets.NAMES)}), {_USAGE}.")
    if not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be between 0 and 1; got {validation_split}.")
    if form == "npz":
        return load_npz(where, seed=seed, validation_split=validation_split)
    if form == "images":
        return load_images(where, seed=seed, batch_size=batch_size, validation_split=validation_split,
                           image_size=image_size)
    return load_tfds(where, data_dir=data_dir, batch_size=batch_size, validation_split=validation_split)


def load_npz(path, *, seed=0, validation_split=0.1):
    """`npz:PATH` data: `(x, y)` arrays, with `validation_split` of the training set held out if there is no `x_val`."""
    path = os.path.abspath(path)
    arrays = _read_npz(path)
    sets = {}
    for split in ("train", "val", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None and y is None:
            continue
        if x is None or y is None:
            given, missing = (f"x_{split}", f"y_{split}") if y is None else (f"y_{split}", f"x_{split}")
            raise ValueError(f"{path} holds {given} but no {missing}: give both or neither.")
        if len(x) != len(y):
            raise ValueError(f"In {path}, x_{split} holds {len(x)} examples but y_{split} {len(y)}: inputs and "
                             "targets must match one for one.")
        sets[split] = (x, y)
    if "val" not in sets:
        sets["train"], sets["val"] = _hold_out(*sets["train"], seed, validation_split, path)
    return SearchData(train=sets["train"], validation=sets["val"], test=sets.get("test"), name=f"npz:{path}",
                      num_classes=_class_count([y for _, y in sets.values()]))


def _class_count(labels):
    """1 + the largest label, if the labels are integer class indices (one per example); else `None`."""
    if all(y.ndim == 1 and np.issubdtype(y.dtype, np.integer) for y in labels):
        return int(max(y.max() for y in labels)) + 1
    return None


def _read_npz(path):
    """`{key: array}` of the arrays of `_NPZ_KEYS` in the .npz file at `path` (x_train and y_train at least), read
    without pickle."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No file {path}: npz:PATH needs a NumPy .npz file; {_SAVE_NPZ}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a NumPy .npz file ({error}); {_SAVE_NPZ}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not a NumPy .npz file of named arrays; {_SAVE_NPZ}.")
    with archive:
        if "x_train" not in archive.files or "y_train" not in archive.files:
            raise ValueError(f"{path} holds {', '.join(archive.files) or 'no arrays'}; npz:PATH needs x_train and "
                             f"y_train (and optionally x_val and y_val, x_test and y_test): {_SAVE_NPZ}.")
        arrays = {}
        for key in (key for key in _NPZ_KEYS if key in archive.files):
            try:
                arrays[key] = archive[key]
            except ValueError:
                raise ValueError(f"{key} in {path} is an array of Python objects, which only pickle can load and "
                                 "is not loaded (unsafe): save it as a numeric array, e.g. np.asarray(x, "
                                 "dtype=np.float32).") from None
        return arrays


def _hold_out(x, y, seed, validation_split, path):
    """`(train, validation)`: `validation_split` of the examples, drawn with `seed`, held out; both in file order."""
    size = len(x)
    held = round(size * validation_split)
    if not 0 < held < size:
        raise ValueError(f"Holding out validation_split={validation_split} of the {size} training examples in {path} "
                         "leaves an empty training or validation set: add x_val and y_val to the file, or change "
                         "validation_split.")
    order = np.random.default_rng(seed).permutation(size)
    kept, validation = np.sort(order[held:]), np.sort(order[:held])
    return (x[kept], y[kept]), (x[validation], y[validation])


def load_images(directory, *, seed=0, batch_size=60, validation_split=0.1, image_size=None):
    """`images:DIR` data: a training function and a validation dataset of one folder of images per class."""
    directory = os.path.abspath(directory)
    paths = _image_paths(directory)
    channels = _image_shapes(paths[:1])[0][2]
    if image_size is None:
        image_size = _common_size(directory, paths)
    size = tuple(int(side) for side in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (height, width) in pixels; got {image_size!r}.")
    options = dict(labels="inferred", label_mode="int", color_mode="grayscale" if channels == 1 else "rgb",
                   batch_size=None, image_size=size, shuffle=True, seed=seed,
                   validation_split=validation_split, subset="both", verbose=False)

    def read(subset):
        # Keras prints how many files it uses for training and for validation even with verbose=False.
        with contextlib.redirect_stdout(io.StringIO()):
            datasets = keras.utils.image_dataset_from_directory(directory, **options)
        return datasets[subset].map(lambda x, y: (x / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)

    def train(round_seed):
        # Built afresh for each call: Keras' training set reshuffles its files on every pass, drawing from a
        # generator seeded when the dataset is built, so one built once would give each call a different order.
        return _shuffled_batches(read(0), batch_size, round_seed)

    return SearchData(train=train, validation=read(1).batch(batch_size), name=f"images:{directory}",
                      num_classes=len({os.path.dirname(path) for path in paths}))


def _image_paths(directory):
    """The image files in the class folders of `directory`, or an error naming the layout it needs."""
    layout = (f"images:DIR needs a folder of images per class, {os.path.join(directory, 'CLASS_NAME', '*.png')} "
              f"({', '.join(IMAGE_EXTENSIONS)} files)")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No folder {directory}: {layout}.")
    classes = {entry.name: _images_under(entry.path) for entry in sorted(os.scandir(directory), key=lambda e: e.name)
               if entry.is_dir()}
    with_images = [name for name, paths in classes.items() if paths]
    if not with_images:
        raise ValueError(f"{directory} has no class folders of images: {layout}.")
    if len(with_images) == 1:
        raise ValueError(f"{directory} has images of one class only ({with_images[0]}): a classifier needs two "
                         f"classes or more; {layout}.")
    return [path for paths in classes.values() for path in paths]


def _images_under(folder):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.lower().endswith(IMAGE_EXTENSIONS))


def _image_shapes(paths):
    """`(height, width, channels)` of each image file, decoded in parallel."""
    def shape(path):
        return tf.shape(tf.io.decode_image(tf.io.read_file(path), expand_animations=False))

    shapes = tf.data.Dataset.from_tensor_slices(paths).map(shape, num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate(list(shapes.batch(1024).as_numpy_iterator()))


def _common_size(directory, paths):
    """The `(height, width)` every image has, or an error listing the sizes found."""
    sizes = collections.Counter((int(height), int(width)) for height, width, _ in _image_shapes(paths))
    if len(sizes) > 1:
        found = ", ".join(f"{height}x{width} ({count} images)" for (height, width), count in sizes.most_common(5))
        raise ValueError(f"The images in {directory} have {len(sizes)} sizes (height x width: {found}"
                         f"{', ...' if len(sizes) > 5 else ''}): pass an image size (--image_size=H,W, or "
                         "image_size=(H, W)) to resize them all to it.")
    return next(iter(sizes))


def load_tfds(name, *, data_dir=None, batch_size=60, validation_split=0.1):
    """`tfds:NAME` data: a training function and validation (and test) datasets of a prepared TFDS dataset."""
    tfds = extras.require("tensorflow_datasets", "tfds", f"tfds:{name}")
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"The TFDS dataset {name} is not prepared in {builder.data_dir_root} (no {builder.data_path}), and "
            f"tf_lottery downloads nothing: on a machine with internet access run `tfds build {name} "
            f"--data_dir=DIR` (or tfds.builder({name!r}, data_dir=DIR).download_and_prepare()), then copy DIR "
            "here and pass it as the data dir (--data_dir=DIR).")
    splits = builder.info.splits
    if "train" not in splits:
        raise ValueError(f"The TFDS dataset {name} has no train split (it has {', '.join(splits)}).")
    train_split, validation = "train", "validation"
    if validation not in splits:
        size = splits["train"].num_examples
        kept = size - round(size * validation_split)
        if not 0 < kept < size:
            raise ValueError(f"Holding out validation_split={validation_split} of the {size} training examples of "
                             f"{name} leaves an empty training or validation set; change validation_split.")
        train_split, validation = f"train[:{kept}]", f"train[{kept}:]"

    def read(split):
        return builder.as_dataset(split=split, as_supervised=True).map(_scale_uint8,
                                                                       num_parallel_calls=tf.data.AUTOTUNE)

    # Read in file order, without shuffling: nothing in it depends on how often it was iterated.
    training_set = read(train_split)

    def train(seed):
        return _shuffled_batches(training_set, batch_size, seed)

    test = read("test").batch(batch_size) if "test" in splits else None
    label = builder.info.features[builder.info.supervised_keys[1]]
    return SearchData(train=train, validation=read(validation).batch(batch_size), test=test,
                      name=f"tfds:{name}", num_classes=getattr(label, "num_classes", None),
                      source=f"{builder.info.full_name} in {builder.data_dir_root}")


def _scale_uint8(x, y):
    """uint8 inputs (images) as float32 in [0, 1]; other inputs as they are."""
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) / 255.0 if t.dtype == tf.uint8 else t, x), y


def _shuffled_batches(dataset, batch_size, seed):
    """`dataset` shuffled with `seed` (drawn once, not anew on each pass), in batches of `batch_size`."""
    return dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False).batch(batch_size)
