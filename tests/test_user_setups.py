"""The ticket search on users' own models, losses, optimizers and data: each setup runs a 2-round search that
stops after round 1 and resumes to round 2."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_lottery import SearchData, data_sources, models
from tf_lottery.run_store import RunStore
from tf_lottery.search import RoundDivergedError, SearchConfig, TicketSearch
from tf_lottery.trainer import monitor_mode

from conftest import DIGITS, round_arrays

RNG = np.random.default_rng(0)
CONFIG = SearchConfig(rounds=2, epochs=None, iterations=20, eval_every=10, batch_size=32)


def _search_and_resume(tmp_path, build, data, config=CONFIG):
    """Round 0 and 1, then a resumed round 2 (with Keras' naming reset, as in a new process); returns the history."""
    keras.backend.clear_session()
    first = TicketSearch(build, data, dataclasses.replace(config, rounds=1), str(tmp_path), verbose=0).run()
    assert len(first["rounds"]) == 2
    keras.backend.clear_session()
    history = TicketSearch(build, data, config, str(tmp_path), verbose=0, resume=True).run()
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert history["rounds"][:2] == [{**r, "seconds": r["seconds"]} for r in first["rounds"]]
    densities = [r["density"] for r in history["rounds"]]
    assert densities[0] == 1.0 and densities[0] > densities[1] > densities[2]
    return history


def _text_data(n=240, length=12, vocabulary=50):
    """Token sequences labelled 1 when token 7 occurs in them."""
    x = RNG.integers(1, vocabulary, size=(n, length))
    y = (x == 7).any(axis=1).astype("float32")
    return x, y


def test_a_gru_text_classifier_with_binary_cross_entropy(tmp_path):
    x, y = _text_data()

    def build():
        model = keras.Sequential([keras.Input((12,)), keras.layers.Embedding(50, 8, name="embedding"),
                                  keras.layers.GRU(8, name="gru"), keras.layers.Dense(1, "sigmoid", name="out")])
        model.compile(optimizer="adam", loss="binary_crossentropy",
                      metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])
        return model

    data = SearchData(train=(x[:160], y[:160]), validation=(x[160:200], y[160:200]), test=(x[200:], y[200:]))
    history = _search_and_resume(tmp_path, build, data, dataclasses.replace(CONFIG, monitor="val_auc"))
    last = history["rounds"][2]
    assert {"val_auc", "val_accuracy", "test_auc", "train_auc", "early_stop_val_auc"} <= set(last)
    assert last["early_stop_val_auc"] == max(point["val_auc"] for point in last["curve"])
    assert set(round_arrays(tmp_path, 2)) >= {"embedding/embeddings", "gru/gru_cell/kernel", "out/kernel"}


X_REGRESSION = RNG.normal(size=(200, 4)).astype("float32")
Y_REGRESSION = X_REGRESSION @ np.array([1.0, -2.0, 0.5, 0.0], "float32") + 0.1
REGRESSION = SearchData(train=(X_REGRESSION[:160], Y_REGRESSION[:160]),
                        validation=(X_REGRESSION[160:], Y_REGRESSION[160:]))


def _regression_mlp():
    """Unnamed layers: Keras numbers their names in each new instance."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    return model


def test_a_regression_mlp_with_mean_squared_error_and_no_test_set(tmp_path):
    y = Y_REGRESSION
    history = _search_and_resume(tmp_path, _regression_mlp, REGRESSION)
    rounds = history["rounds"]
    assert "val_mae" in rounds[0] and not any(name.startswith("test_") for name in rounds[0])
    assert rounds[0]["val_loss"] < float(np.var(y))  # It learned something.
    assert history["best_round"] == max(r["round"] for r in rounds if r["val_loss"] <= rounds[0]["val_loss"] + 0.005)


def test_arrays_with_sample_weights_train_and_evaluate_weighted(tmp_path):
    weights = np.where(Y_REGRESSION[:160] > 0, 1.0, 0.0).astype("float32")
    data = SearchData(train=(X_REGRESSION[:160], Y_REGRESSION[:160], weights),
                      validation=(X_REGRESSION[160:], Y_REGRESSION[160:]))
    history = TicketSearch(_regression_mlp, data, dataclasses.replace(CONFIG, rounds=1), str(tmp_path), verbose=0).run()
    ticket = RunStore(str(tmp_path)).load_model(1)
    x, y = X_REGRESSION[:160], Y_REGRESSION[:160]
    weighted = ticket.evaluate(x, y, sample_weight=weights, batch_size=1024, verbose=0, return_dict=True)["loss"]
    plain = ticket.evaluate(x, y, batch_size=1024, verbose=0, return_dict=True)["loss"]
    assert history["rounds"][1]["train_loss"] == pytest.approx(weighted) and weighted != pytest.approx(plain)


def test_unnamed_layers_take_a_reinit_control_and_a_resume_names_their_numbering(tmp_path):
    config = dataclasses.replace(CONFIG, rounds=1, control="reinit")
    history = TicketSearch(_regression_mlp, REGRESSION, config, str(tmp_path), verbose=0).run()
    assert len(history["rounds"]) == 2
    with pytest.raises(ValueError, match=r"other names, which Keras numbers.*keras.backend.clear_session\(\)"):
        TicketSearch(_regression_mlp, REGRESSION, dataclasses.replace(config, rounds=2), str(tmp_path), verbose=0,
                     resume=True).run()


def _digits_dataset(images, labels, batch=32):
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def _classifier():
    return models.lenet300_100(DIGITS.input_shape, DIGITS.num_classes)


@pytest.mark.parametrize("form", ["dataset", "py_dataset"])  # A function: see the next test.
def test_tf_data_and_py_datasets_train_an_uncompiled_classifier(tmp_path, form):
    arrays = (DIGITS.x_train, DIGITS.y_train)
    train = _digits_dataset(*arrays).repeat() if form == "dataset" else _Batches(*arrays)
    data = SearchData(train=train, validation=_digits_dataset(DIGITS.x_val, DIGITS.y_val),
                      test=_digits_dataset(DIGITS.x_test, DIGITS.y_test))
    history = _search_and_resume(tmp_path, _classifier, data)
    assert history["rounds"][2]["test_accuracy"] > 0.5


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch=32):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, index):
        window = slice(index * self.batch, (index + 1) * self.batch)
        return self.x[window], self.y[window]


def test_a_training_function_repeats_its_order_and_augmentation_on_resume(tmp_path):
    def train(seed):  # Shuffled and augmented from the round's seed.
        return _digits_dataset(DIGITS.x_train, DIGITS.y_train).unbatch().shuffle(2000, seed=seed).batch(32).map(
            lambda x, y: (x + tf.random.uniform(tf.shape(x), 0, 0.01, seed=seed), y))

    data = SearchData(train=train, validation=(DIGITS.x_val, DIGITS.y_val))
    _search_and_resume(tmp_path / "resumed", _classifier, data)
    TicketSearch(_classifier, data, CONFIG, str(tmp_path / "straight"), verbose=0).run()
    for index in range(3):
        for name in ("masks", "trained"):
            resumed = round_arrays(tmp_path / "resumed", index, name)
            straight = round_arrays(tmp_path / "straight", index, name)
            for key in resumed:
                np.testing.assert_array_equal(resumed[key], straight[key], err_msg=f"round {index} {name} {key}")


def test_a_compiled_model_keeps_its_optimizer_schedule_and_metrics_and_restarts_them_every_round(tmp_path):
    def build():
        model = _classifier()
        schedule = keras.optimizers.schedules.CosineDecay(1e-4, decay_steps=20, warmup_target=2e-3, warmup_steps=5)
        model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-3, clipnorm=1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
        return model

    history = _search_and_resume(tmp_path, build, DIGITS)
    for r in history["rounds"]:
        assert [point["iteration"] for point in r["curve"]] == [10, 20]  # A fresh optimizer every round.
        assert r["learning_rate"] == pytest.approx(1e-4)  # The warmup starts again.
        assert "val_top2" in r and "val_accuracy" not in r


def test_a_compiled_model_refuses_the_searchs_own_optimizer_settings(tmp_path):
    def build():
        model = _classifier()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        return model

    with pytest.raises(ValueError, match=r"compiled.*learning_rate=0.01 would be ignored"):
        TicketSearch(build, DIGITS, dataclasses.replace(CONFIG, learning_rate=0.01), str(tmp_path), verbose=0).run()


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()  # Unnamed: Keras numbers its name, which the masks' keys leave out.
        self.hidden = keras.layers.Dense(32, activation="relu", name="hidden")
        self.out = keras.layers.Dense(10, name="out")

    def call(self, x):
        return self.out(self.hidden(keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))))


def test_an_unbuilt_subclassed_model_is_built_on_the_data(tmp_path):
    history = _search_and_resume(tmp_path, Subclassed, DIGITS)
    assert history["rounds"][0]["val_accuracy"] > 0.15  # Chance: 0.1.


def test_multi_label_outputs(tmp_path):
    x = RNG.normal(size=(240, 6)).astype("float32")
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < -0.5], axis=1).astype("float32")

    def build():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(3, "sigmoid")])
        model.compile(optimizer="adam", loss="binary_crossentropy",
                      metrics=[keras.metrics.AUC(multi_label=True, name="auc")])
        return model

    data = SearchData(train=(x[:160], y[:160]), validation=(x[160:200], y[160:200]), test=(x[200:], y[200:]))
    history = _search_and_resume(tmp_path, build, data, dataclasses.replace(CONFIG, monitor="val_auc"))
    assert history["rounds"][2]["val_auc"] > 0.5


def test_dict_inputs_and_two_outputs_with_loss_weights(tmp_path):
    image = RNG.normal(size=(200, 8)).astype("float32")
    extra = RNG.normal(size=(200, 2)).astype("float32")
    label = (image[:, 0] + extra[:, 0] > 0).astype("int64")
    amount = (image[:, 1] - extra[:, 1]).astype("float32")

    def build():
        inputs = {"image": keras.Input((8,), name="image"), "extra": keras.Input((2,), name="extra")}
        hidden = keras.layers.Dense(16, "relu", name="trunk")(keras.layers.Concatenate()(list(inputs.values())))
        outputs = {"label": keras.layers.Dense(2, name="label")(hidden),
                   "amount": keras.layers.Dense(1, name="amount")(hidden)}
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss={"label": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                              "amount": "mse"},
                      loss_weights={"label": 1.0, "amount": 0.5}, metrics={"label": ["accuracy"]})
        return model

    def split(window):
        return {"image": image[window], "extra": extra[window]}, {"label": label[window], "amount": amount[window]}

    data = SearchData(train=split(slice(0, 160)), validation=split(slice(160, 200)))
    history = _search_and_resume(tmp_path, build, data)
    last = history["rounds"][2]
    assert {"val_label_loss", "val_amount_loss", "val_label_accuracy"} <= set(last)
    assert set(round_arrays(tmp_path, 2)) == {"trunk/kernel", "label/kernel", "amount/kernel"}


def test_a_causal_language_model_from_keras_hub(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary, length = 32, 12
    starts, steps = RNG.integers(0, vocabulary, 300), RNG.integers(1, 4, 300)
    tokens = (starts[:, None] + steps[:, None] * np.arange(length + 1)) % vocabulary  # Arithmetic sequences.

    def split(window):
        return ({"token_ids": tokens[window, :-1], "padding_mask": np.ones((len(tokens[window]), length), bool)},
                tokens[window, 1:])

    def build():
        backbone = keras_hub.models.GPT2Backbone(vocabulary_size=vocabulary, num_layers=1, num_heads=2,
                                                 hidden_dim=16, intermediate_dim=32, max_sequence_length=length)
        logits = keras.layers.Dense(vocabulary, name="lm_head")(backbone(backbone.input))
        model = keras.Model(backbone.input, logits)
        model.compile(optimizer=keras.optimizers.AdamW(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        return model

    data = SearchData(train=split(slice(0, 240)), validation=split(slice(240, 300)))
    history = _search_and_resume(tmp_path, build, data)
    assert history["rounds"][0]["val_accuracy"] > 1.5 / vocabulary  # Better than chance after 20 steps.
    masks = round_arrays(tmp_path, 2)
    assert any("self_attention" in key for key in masks) and "lm_head/kernel" in masks


def test_the_data_forms_of_the_command_line_feed_a_search(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x_train=DIGITS.x_train, y_train=DIGITS.y_train, x_test=DIGITS.x_test, y_test=DIGITS.y_test)
    data = data_sources.parse(f"npz:{path}", seed=0)
    history = _search_and_resume(tmp_path / "run", _classifier, data)
    assert "test_accuracy" in history["rounds"][2]


@pytest.mark.parametrize("data, message", [
    (SearchData(train=tf.data.Dataset.from_tensor_slices((DIGITS.x_train, DIGITS.y_train)),
                validation=(DIGITS.x_val, DIGITS.y_val)),
     r"training dataset yields single examples of shape \(8, 8, 1\).*call .batch\(batch_size\)"),
    (SearchData(train=_digits_dataset(DIGITS.x_train, DIGITS.y_train).take(0), validation=(DIGITS.x_val, DIGITS.y_val)),
     r"training dataset is empty"),
    (SearchData(train=_digits_dataset(DIGITS.x_train, DIGITS.y_train).repeat(),
                validation=(DIGITS.x_val, DIGITS.y_val)),
     r"no end.*SearchData\(steps_per_epoch=N\)"),
    (SearchData(train=(DIGITS.x_train, DIGITS.y_train[:10]), validation=(DIGITS.x_val, DIGITS.y_val)),
     r"training arrays hold different numbers of examples"),
    (SearchData(train=(DIGITS.x_train, DIGITS.y_train), validation=(DIGITS.x_val, np.zeros((len(DIGITS.x_val), 3)))),
     r"(?s)cannot be evaluated on the validation set.*Check that the loss"),
])
def test_data_the_search_cannot_use_is_an_error_before_anything_is_written(tmp_path, data, message):
    config = dataclasses.replace(CONFIG, epochs=1, iterations=None, eval_every=None)
    with pytest.raises(ValueError, match=message):
        TicketSearch(_classifier, data, config, str(tmp_path / "run"), verbose=0).run()
    assert not (tmp_path / "run").exists()


def test_search_data_names_the_forms_it_takes():
    with pytest.raises(ValueError, match=r"training set must be \(x, y\) arrays, a batched tf.data.Dataset"):
        SearchData(train=DIGITS.x_train, validation=(DIGITS.x_val, DIGITS.y_val))
    with pytest.raises(ValueError, match=r"validation set is a list; pass the arrays as a tuple"):
        SearchData(train=(DIGITS.x_train, DIGITS.y_train), validation=[DIGITS.x_val, DIGITS.y_val])
    with pytest.raises(ValueError, match=r"monitor must be a validation metric.*got 'test_accuracy'"):
        SearchConfig(monitor="test_accuracy")
    with pytest.raises(ValueError, match=r"Cannot tell whether 'val_smoothness'.*mode='min' or mode='max'"):
        SearchConfig(monitor="val_smoothness")
    assert SearchConfig(monitor="val_smoothness", mode="max").mode == "max"
    assert [monitor_mode(f"val_{name}", "auto") for name in ("loss", "mae", "label_loss", "auc", "top2", "r2_score")] \
        == ["min", "min", "min", "max", "max", "max"]


def test_a_compiled_model_that_diverges_is_told_to_compile_a_smaller_learning_rate(tmp_path):
    def build():
        model = _regression_mlp()
        model.compile(optimizer=keras.optimizers.SGD(1e6), loss="mse")
        return model

    with pytest.raises(RoundDivergedError, match=r"Round 0 diverged.*Compile the model with a smaller learning rate"):
        TicketSearch(build, REGRESSION, CONFIG, str(tmp_path), verbose=0).run()
