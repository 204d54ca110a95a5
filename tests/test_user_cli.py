"""End-to-end: find_ticket on a saved Keras model and the user's data (npz:, images:), then export_ticket and
analyze_ticket on that run with no --model flag, as a user runs them."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_lottery import data_sources, model_sources

from conftest import DIGITS, assert_user_error, run_script, run_scripts

DIGITS_DATA = data_sources.load("digits")

SEARCH = ("--rounds=1", "--iterations=20", "--eval_every=10", "--batch_size=32", "--verbose=0")


def _saved_model(path):
    """A compiled digits classifier with its own optimizer and metric, saved as a user saves one."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, "relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(path)
    return model


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    model = _saved_model(folder / "model.keras")
    np.savez(folder / "digits.npz", x_train=DIGITS.x_train, y_train=DIGITS.y_train, x_test=DIGITS.x_test,
             y_test=DIGITS.y_test)
    result = run_script("examples/find_ticket.py", f"--model={folder / 'model.keras'}",
                        f"--data=npz:{folder / 'digits.npz'}", f"--output_dir={folder / 'run'}",
                        "--monitor=val_accuracy", *SEARCH)
    return folder, model, result


def test_a_saved_model_on_npz_data_is_searched_from_its_own_weights_and_compile(npz_run):
    folder, model, result = npz_run
    assert f"Data: npz:{folder / 'digits.npz'}:" in result.stdout and "1131 train" in result.stdout
    history = json.loads((folder / "run" / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1]
    assert {"val_accuracy", "test_accuracy", "early_stop_val_accuracy"} <= set(history["rounds"][1])
    assert history["rounds"][0]["learning_rate"] == pytest.approx(3e-3)  # The saved AdamW's, not the default.
    rewind = np.load(folder / "run" / "round_001" / "rewind_weights.npz")
    for key, variable in zip(rewind.files, model.weights):
        np.testing.assert_array_equal(rewind[key][rewind[key] != 0], variable.numpy()[rewind[key] != 0])
    run = json.loads((folder / "run" / "run.json").read_text())
    assert run["signature"]["dataset"]["name"] == f"npz:{folder / 'digits.npz'}"
    assert run["signature"]["compile"]["loss"]["class_name"] == "SparseCategoricalCrossentropy"


def test_export_and_analysis_read_such_a_run_with_no_model_flag(npz_run, tmp_path):
    folder, _, _ = npz_run
    export, analyze = run_scripts(
        ["examples/export_ticket.py", f"--run_dir={folder / 'run'}", f"--output_dir={tmp_path / 'export'}",
         "--variants=float"],
        ["examples/analyze_ticket.py", f"--run_dir={folder / 'run'}", f"--output_dir={tmp_path / 'analysis'}",
         "--samples=50", "--noise_scales=0", "--noise_repeats=1", "--epsilons=0"])
    assert export.returncode == 0, export.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["files"]["float.tflite"]["parity"]["top1_agreement"] > 0.95
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    analysis = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert analysis["samples"] == 50 and set(analysis["noise"]) == {"ticket", "dense", "reinit"}
    control = np.load(tmp_path / "analysis" / "reinit_control" / "round_000" / "rewind_weights.npz")
    ticket = np.load(folder / "run" / "round_000" / "rewind_weights.npz")
    assert not np.array_equal(control[ticket.files[0]], ticket[ticket.files[0]])  # Freshly initialized.


def test_an_image_folder_is_searched_with_a_built_in_network(tmp_path):
    for k in range(3):
        (tmp_path / "images" / f"class{k}").mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.random.default_rng(i).normal(30 + 90 * k, 10, (10, 10, 1)), 0, 255)
            tf.io.write_file(str(tmp_path / "images" / f"class{k}" / f"{i}.png"),
                             tf.io.encode_png(pixels.astype(np.uint8)))
    result = run_script("examples/find_ticket.py", f"--data=images:{tmp_path / 'images'}", "--model=lenet300_100",
                        f"--output_dir={tmp_path / 'run'}", *SEARCH, "--iterations=40")
    assert f"Data: images:{tmp_path / 'images'}: tf.data pipelines" in result.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["rounds"]) == 2 and history["rounds"][0]["train_accuracy"] > 0.5  # Chance: 1/3.
    assert "val_accuracy" in history["rounds"][0] and "test_accuracy" not in history["rounds"][0]
    masks = np.load(tmp_path / "run" / "round_001" / "masks.npz")
    assert masks["fc1/kernel"].shape == (100, 300)  # 10 x 10 grayscale pixels.


def test_a_monitor_the_model_does_not_compute_ends_in_a_message_before_any_training(tmp_path):
    _saved_model(tmp_path / "model.keras")
    result = run_script("examples/find_ticket.py", f"--model={tmp_path / 'model.keras'}", "--dataset=digits",
                        "--monitor=val_auc", f"--output_dir={tmp_path / 'run'}", check=False)
    assert_user_error(result, "monitor='val_auc' is not a validation metric this model computes; choose one of "
                              "['val_accuracy', 'val_loss']")
    assert not (tmp_path / "run").exists()


def test_a_saved_model_that_does_not_load_is_an_error_naming_the_fix(tmp_path):
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(FileNotFoundError, match=r"needs a model saved with model.save\(PATH.keras\)"):
        model_sources.builder(str(tmp_path / "missing.keras"), DIGITS_DATA)
    with pytest.raises(ValueError, match=r"(?s)does not load as a Keras model.*never loads a model with safe_mode=False"):
        model_sources.builder(str(tmp_path / "broken.keras"), DIGITS_DATA)
    with pytest.raises(ValueError, match=r"Unknown model 'lenet'.*or a saved Keras model, PATH.keras"):
        model_sources.builder("lenet", DIGITS_DATA)
