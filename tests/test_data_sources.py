"""Tests for tf_lottery.data_sources: `npz:`, `images:` and `tfds:` data made here, tiny and offline.

Every image here is one grey level throughout, unique to it, so a batch reads back as the images it holds.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_lottery import data_sources

tfds.display_progress_bar(False)


def contents(dataset):
    """`[[(grey level, label), ...] per batch]` of a dataset of single-grey-level images in [0, 1]."""
    return [[(round(float(x.max()) * 255), int(y)) for x, y in zip(*batch)] for batch in dataset.as_numpy_iterator()]


def flat(batches):
    return [example for batch in batches for example in batch]


# --- npz:PATH ----------------------------------------------------------------------------------------------


def test_npz_with_validation_and_test_sets(tmp_path, monkeypatch):
    arrays = {f"{kind}_{split}": np.arange(size * 3, dtype=np.float32).reshape(size, 3) + offset if kind == "x"
              else np.arange(size) + offset
              for split, size, offset in (("train", 8, 0), ("val", 4, 100), ("test", 2, 200)) for kind in "xy"}
    np.savez(tmp_path / "data.npz", **arrays)
    monkeypatch.chdir(tmp_path)
    data = data_sources.parse("npz:data.npz")
    assert data.name == f"npz:{tmp_path / 'data.npz'}" and data.num_classes == 202  # 1 + the largest label.
    for split, value in (("train", data.train), ("val", data.validation), ("test", data.test)):
        assert isinstance(value, tuple)
        np.testing.assert_array_equal(value[0], arrays[f"x_{split}"])
        np.testing.assert_array_equal(value[1], arrays[f"y_{split}"])


def test_npz_of_float_targets_has_no_classes(tmp_path):
    np.savez(tmp_path / "data.npz", x_train=np.zeros((10, 2)), y_train=np.linspace(0, 1, 10))
    assert data_sources.parse(f"npz:{tmp_path / 'data.npz'}").num_classes is None


def test_load_reads_built_in_datasets_as_search_data():
    data = data_sources.load("digits", seed=0)
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (8, 8, 1)
    assert data.summary().startswith("digits from ") and data.summary().endswith("1257 train, 180 validation, 360 "
                                                                                   "test examples")


def test_npz_without_validation_holds_out_a_split_drawn_with_the_seed(tmp_path):
    np.savez(tmp_path / "data.npz", x_train=np.arange(50)[:, None] * 1.0, y_train=np.arange(50) * 2)

    def split(seed):
        data = data_sources.parse(f"npz:{tmp_path / 'data.npz'}", seed=seed, validation_split=0.1)
        assert data.test is None
        for x, y in (data.train, data.validation):
            np.testing.assert_array_equal(y, x[:, 0] * 2)  # Inputs and targets stay paired.
        return data.train[1] // 2, data.validation[1] // 2

    train, validation = split(0)
    assert len(validation) == 5 and len(train) == 45
    np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(50))
    assert list(train) == sorted(train) and list(validation) == sorted(validation)  # File order.
    np.testing.assert_array_equal(split(0)[1], validation)
    assert set(split(1)[1]) != set(validation)


def _save(path, **arrays):
    np.savez(path, **arrays)


def _save_npy(path, array):
    with open(path, "wb") as file:
        np.save(file, array)


@pytest.mark.parametrize("write, error, message", [
    (None, FileNotFoundError, r"No file .*missing\.npz: npz:PATH needs a NumPy \.npz file; save the arrays with "
                              r"np\.savez\(PATH, x_train=\.\.\., y_train=\.\.\.\)"),
    (lambda path: path.write_text("x,y\n1,2\n"), ValueError, r"is not a NumPy \.npz file .*np\.savez"),
    (lambda path: _save_npy(path, np.zeros(3)), ValueError, r"is a single \.npy array"),
    (lambda path: _save(path, x_train=np.zeros((4, 2)), labels=np.zeros(4)), ValueError,
     r"holds x_train, labels; npz:PATH needs x_train and y_train \(and optionally x_val and y_val"),
    (lambda path: _save(path, x_train=np.zeros((4, 2)), y_train=np.zeros(4), x_val=np.zeros((2, 2))), ValueError,
     r"holds x_val but no y_val: give both or neither"),
    (lambda path: _save(path, x_train=np.zeros((4, 2)), y_train=np.zeros(4), y_test=np.zeros(2)), ValueError,
     r"holds y_test but no x_test: give both or neither"),
    (lambda path: _save(path, x_train=np.zeros((10, 2)), y_train=np.zeros(9)), ValueError,
     r"x_train holds 10 examples but y_train 9: inputs and targets must match one for one"),
    (lambda path: _save(path, x_train=np.array([{"a": 1}, None]), y_train=np.zeros(2)), ValueError,
     r"x_train in .* is an array of Python objects, which only pickle can load and is not loaded"),
    (lambda path: _save(path, x_train=np.zeros((3, 2)), y_train=np.zeros(3)), ValueError,
     r"Holding out validation_split=0\.1 of the 3 training examples in .* leaves an empty training or validation "
     r"set: add x_val and y_val"),
])
def test_npz_errors_name_the_fix(tmp_path, write, error, message):
    path = tmp_path / ("missing.npz" if write is None else "data.npz")
    if write is not None:
        write(path)
    with pytest.raises(error, match=message):
        data_sources.parse(f"npz:{path}")


@pytest.mark.parametrize("spec", ["csv:data.csv", "data.npz", "npz:", "images"])
def test_unknown_specs_list_the_forms(spec):
    forms = (re.escape(f"Unknown data {spec!r}: give a built-in dataset (mnist_subset") +
             ".*npz:PATH.*images:DIR.*tfds:NAME")
    with pytest.raises(ValueError, match=forms):
        data_sources.parse(spec)
    assert data_sources.FORMS == ("npz", "images", "tfds")


def test_validation_split_must_be_a_fraction(tmp_path):
    with pytest.raises(ValueError, match="validation_split must be between 0 and 1; got 1.5"):
        data_sources.parse(f"npz:{tmp_path / 'data.npz'}", validation_split=1.5)


# --- images:DIR --------------------------------------------------------------------------------------------


def write_images(directory, classes=3, per_class=6, shape=(8, 8, 3), first_level=0):
    """PNG files `directory/c<k>/<i>.png`, image i of class k all grey level first_level + 10 * k + i."""
    for k in range(classes):
        os.makedirs(directory / f"c{k}", exist_ok=True)
        for i in range(per_class):
            pixels = np.full(shape, first_level + 10 * k + i, np.uint8)
            tf.io.write_file(str(directory / f"c{k}" / f"{first_level + i}.png"), tf.io.encode_png(pixels))
    return directory


@pytest.fixture
def folder(tmp_path):
    return write_images(tmp_path / "shapes")


def test_images_load_as_labelled_batches_of_pixels_in_0_1(folder):
    data = data_sources.parse(f"images:{folder}", batch_size=4, validation_split=0.2)
    assert data.name == f"images:{folder}" and data.test is None and data.num_classes == 3
    train = data.train(0)
    assert isinstance(train, tf.data.Dataset)
    assert train.element_spec[0].shape.as_list() == [None, 8, 8, 3] and train.element_spec[0].dtype == tf.float32
    x, _ = next(iter(train))
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1
    batches, validation = contents(train), contents(data.validation)
    assert [len(batch) for batch in batches] == [4, 4, 4, 3] and [len(b) for b in validation] == [3]
    examples = flat(batches) + flat(validation)
    assert sorted(examples) == [(10 * k + i, k) for k in range(3) for i in range(6)]  # Each image once, its class.
    assert data.train_steps_per_epoch(4) == 4


def test_images_training_order_depends_only_on_the_seed(folder, monkeypatch):
    # A small shuffle buffer, so that a call iterated in part reads only part of the training set.
    monkeypatch.setattr(data_sources, "SHUFFLE_BUFFER", 4)
    data = data_sources.parse(f"images:{folder}", batch_size=4, validation_split=0.2, seed=3)
    next(iter(data.train(5)))  # A round shorter than an epoch.
    first = contents(data.train(0))
    assert contents(data.train(0)) == first
    # As a resumed run would see it, with no rounds before.
    again = data_sources.parse(f"images:{folder}", batch_size=4, validation_split=0.2, seed=3)
    assert contents(again.train(0)) == first and contents(again.validation) == contents(data.validation)
    other = contents(data.train(1))
    assert other != first and sorted(flat(other)) == sorted(flat(first))
    # The seed of parse draws the validation images.
    resplit = data_sources.parse(f"images:{folder}", batch_size=4, validation_split=0.2, seed=4)
    assert sorted(flat(contents(resplit.validation))) != sorted(flat(contents(data.validation)))


def test_images_of_mixed_sizes_need_an_image_size_which_resizes_them(folder):
    write_images(folder, classes=1, per_class=2, shape=(10, 6, 3), first_level=200)
    with pytest.raises(ValueError, match=re.escape(
            f"The images in {folder} have 2 sizes (height x width: 8x8 (18 images), 10x6 (2 images)): pass an "
            "image size (--image_size=H,W, or image_size=(H, W)) to resize them all to it.")):
        data_sources.parse(f"images:{folder}")
    data = data_sources.parse(f"images:{folder}", batch_size=32, image_size=(5, 7))
    for dataset in (data.train(0), data.validation):
        x, _ = next(iter(dataset))
        assert x.shape[1:] == (5, 7, 3) and 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1
    levels = sorted(level for level, _ in flat(contents(data.train(0))) + flat(contents(data.validation)))
    assert levels == sorted([10 * k + i for k in range(3) for i in range(6)] + [200, 201])


def test_grayscale_images_load_with_one_channel(tmp_path):
    folder = write_images(tmp_path / "grey", classes=2, per_class=5, shape=(6, 6, 1))
    data = data_sources.parse(f"images:{folder}", batch_size=3)
    assert data.train(0).element_spec[0].shape.as_list() == [None, 6, 6, 1]
    assert sorted(flat(contents(data.train(0))) + flat(contents(data.validation))) == \
        [(10 * k + i, k) for k in range(2) for i in range(5)]


def test_image_folder_errors_name_the_layout(tmp_path):
    layout = re.escape(os.path.join("CLASS_NAME", "*.png"))
    with pytest.raises(FileNotFoundError, match=f"No folder .*nowhere: images:DIR needs a folder of images per "
                                                f"class, .*{layout}"):
        data_sources.parse(f"images:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "notes.txt").write_text("not an image")
    for name in ("empty", "texts"):
        with pytest.raises(ValueError, match=f"{name} has no class folders of images: .*{layout}"):
            data_sources.parse(f"images:{tmp_path / name}")
    write_images(tmp_path / "one", classes=1)
    with pytest.raises(ValueError, match=r"has images of one class only \(c0\): a classifier needs two classes"):
        data_sources.parse(f"images:{tmp_path / 'one'}")


# --- tfds:NAME ---------------------------------------------------------------------------------------------


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """20 training and 6 test 4x4 images, one grey level each (the example's index); "validated" adds 4 validation
    images."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="plain"), tfds.core.BuilderConfig(name="validated")]

    def _info(self):
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(4, 4, 1)),
                                               "label": tfds.features.ClassLabel(num_classes=2)})
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        splits = {"train": range(20), "test": range(100, 106)}
        if self.builder_config.name == "validated":
            splits["validation"] = range(200, 204)
        return {name: self._generate_examples(levels) for name, levels in splits.items()}

    def _generate_examples(self, levels):
        for level in levels:
            yield level, {"image": np.full((4, 4, 1), level, np.uint8), "label": level % 2}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A data dir with both configs of tiny_shapes prepared (offline: there is nothing to download)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for config in ("plain", "validated"):
        tfds.builder(f"tiny_shapes/{config}", data_dir=data_dir).download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir


def test_tfds_holds_out_the_last_fraction_of_train_without_a_validation_split(tfds_dir):
    data = data_sources.parse("tfds:tiny_shapes/plain", data_dir=tfds_dir, batch_size=4, validation_split=0.25)
    assert data.name == "tfds:tiny_shapes/plain" and data.source.startswith("tiny_shapes/plain/1.0.0 in ")
    assert data.num_classes == 2
    train, validation, test = (flat(contents(dataset)) for dataset in (data.train(0), data.validation, data.test))
    assert len(train) == 15 and len(validation) == 5 and data.train_steps_per_epoch(4) == 4
    assert sorted(train + validation) == [(level, level % 2) for level in range(20)]
    assert sorted(test) == [(level, level % 2) for level in range(100, 106)]
    # The held-out examples are the last ones in file order, whatever the seed.
    in_file_order = [int(x[0, 0, 0]) for x, _ in tfds.builder("tiny_shapes/plain", data_dir=tfds_dir).as_dataset(
        split="train", as_supervised=True).as_numpy_iterator()]
    assert [level for level, _ in flat(contents(data.validation))] == in_file_order[15:]
    reseeded = data_sources.parse("tfds:tiny_shapes/plain", data_dir=tfds_dir, seed=7, batch_size=4,
                                  validation_split=0.25)
    assert contents(reseeded.validation) == contents(data.validation)


def test_tfds_uses_the_validation_split_and_orders_training_by_the_seed(tfds_dir):
    data = data_sources.parse("tfds:tiny_shapes/validated", data_dir=tfds_dir, batch_size=8)
    assert data.test is not None
    assert sorted(level for level, _ in flat(contents(data.validation))) == list(range(200, 204))
    first = contents(data.train(0))
    assert [len(batch) for batch in first] == [8, 8, 4] and data.train_steps_per_epoch(8) == 3
    assert sorted(flat(first)) == [(level, level % 2) for level in range(20)]
    assert contents(data.train(0)) == first
    assert contents(data.train(1)) != first


def test_tfds_mnist_under_mock_data(tmp_path):
    """mnist as `tfds.testing.mock_data` fakes it, in a data dir holding its metadata (so it counts as prepared)."""
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(name=name, shard_lengths=[size], num_bytes=0)
                                                 for name, size in (("train", 60), ("test", 10))]))
    os.makedirs(builder.data_path)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        data = data_sources.parse("tfds:mnist", data_dir=str(tmp_path), batch_size=5)
        assert data.name == "tfds:mnist"
        train = data.train(0)
        images, labels = train.element_spec
        assert images.shape.as_list() == [None, 28, 28, 1] and images.dtype == tf.float32
        assert labels.dtype == tf.int64
        batches = [x for x, _ in train.as_numpy_iterator()]
        assert [len(x) for x in batches] == [5, 5, 2]
        pixels = np.concatenate(batches)
        assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.max() > 0.5
        assert all(np.array_equal(a, b) for a, b in zip(batches, (x for x, _ in data.train(0).as_numpy_iterator())))
        assert not np.array_equal(batches[0], next(data.train(1).as_numpy_iterator())[0])
        for dataset in (data.validation, data.test):
            assert dataset.element_spec[0].shape.as_list() == [None, 28, 28, 1]
            assert dataset.element_spec[0].dtype == tf.float32


def test_tfds_not_prepared_says_how_to_prepare_it_and_downloads_nothing(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare was called")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"The TFDS dataset mnist is not prepared in {tmp_path} (no {tmp_path / 'mnist' / '3.0.1'}), and tf_lottery "
            "downloads nothing: on a machine with internet access run `tfds build mnist --data_dir=DIR` (or "
            "tfds.builder('mnist', data_dir=DIR).download_and_prepare()), then copy DIR here and pass it as the data "
            "dir (--data_dir=DIR).")):
        data_sources.parse("tfds:mnist", data_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
