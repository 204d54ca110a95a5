"""The models Keras users have, masked in place: keras-hub transformers and CNNs, keras.applications.

Each is built from its constructor (presets and pretrained weights need a
download), masked, trained with a pruning round between two trainings (pruned
weights checked after every step), rewound, saved and loaded with its masks,
exported to TFLite with the parity check, and stripped. The keras.applications
models take a minute or more each on a 2-core CPU (mostly tracing their
training step), so they run with `-m slow`; the default suite masks them.
"""

import re

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import tf_lottery
from tf_lottery import export, masking, weights
from tf_lottery.datasets import Dataset
from tf_lottery.search import SearchConfig, TicketSearch

N = 16


def _images(shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((N, *shape), dtype=np.float32), np.arange(N) % classes


BERT_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def _tokens(names, n=N, seed=0):
    """`n` random sentences of 16 token ids (none is the padding id 0), as inputs `names` of a keras-hub model."""
    rng = np.random.default_rng(seed)
    arrays = {"token_ids": rng.integers(1, 500, (n, 16)).astype("int32"), "segment_ids": np.zeros((n, 16), "int32"),
              "padding_mask": np.ones((n, 16), "int32")}
    return {name: arrays[name] for name in names}


def _bert_classifier():
    """A small keras-hub BERT text classifier (2 classes), built from its constructor."""
    backbone = keras_hub.models.BertBackbone(vocabulary_size=500, num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=16)
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)


def _bert():
    return _bert_classifier(), _tokens(BERT_INPUTS), np.arange(N) % 2


def _vit():
    backbone = keras_hub.models.ViTBackbone(image_shape=(28, 28, 1), patch_size=7, num_layers=2, num_heads=2,
                                            hidden_dim=32, mlp_dim=64)
    return keras_hub.models.ViTImageClassifier(backbone, num_classes=10, preprocessor=None), *_images((28, 28, 1), 10)


def _gpt2():
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=500, num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=16)
    x = _tokens(["token_ids", "padding_mask"])
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None), x, np.roll(x["token_ids"], -1, axis=1)


def _keras_hub_resnet():
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64], stackwise_num_blocks=[1],
        stackwise_num_strides=[1], block_type="basic_block", image_shape=(32, 32, 3))
    return keras_hub.models.ResNetImageClassifier(backbone, num_classes=10, preprocessor=None), *_images((32, 32, 3), 10)


def _application(constructor, **kwargs):
    def build():
        model = constructor(input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None, **kwargs)
        return model, *_images((32, 32, 3), 10)
    return build


# name: (builder, the weights that must be masked, left dense, the warning expected when masking).
CASES = {
    "bert": (_bert, r"/(query|key|value|attention_output|feedforward_\w+_dense)/kernel$|^token_embedding/",
             r"position_embedding|segment_embedding|/bias$|layer_norm", None),
    "vit": (_vit, r"/(query|key|value|attention_output|dense_\d)/kernel$|patch_embedding/kernel",
            r"position_embedding|class_token|/bias$|/ln", r"'vit_patching_and_embedding' \(ViTPatchingAndEmbedding\): "
            r"\['vit_patching_and_embedding/class_token'\], covered by tf_lottery.register_prunable"
            r"\(ViTPatchingAndEmbedding, weights=\('class_token',\)\)"),
    "gpt2": (_gpt2, r"/(query|key|value|attention_output|feedforward_\w+_dense)/kernel$|^token_embedding/",
             r"position_embedding|/bias$|layer_norm", None),
    "keras_hub_resnet": (_keras_hub_resnet, r"conv\w*/kernel$", r"/bias$|bn", None),
}
SLOW_CASES = {
    "mobilenet_v2": (_application(keras.applications.MobileNetV2, alpha=0.35), r"(conv|depthwise|project|expand|"
                     r"Conv\w*|predictions)\w*/\w*kernel$", r"/bias$|BN|bn", None),
    "efficientnet_b0": (_application(keras.applications.EfficientNetB0), r"conv\w*/\w*kernel$|predictions/kernel",
                        r"/bias$|bn", None),
    "resnet50": (_application(keras.applications.ResNet50), r"conv\w*/kernel$|predictions/kernel", r"/bias$|bn",
                 None),
}


class _ZerosAfterEveryStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        masks = tf_lottery.get_masks(self.model)
        for key, weight in tf_lottery.get_prunable_weights(self.model).items():
            assert not np.any(weight[masks[key] == 0]), key


def _outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.parametrize("name", [*CASES, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW_CASES)])
def test_model_is_masked_pruned_rewound_saved_exported_and_stripped(name, tmp_path, recwarn):
    build, must_mask, stays_dense, warning = {**CASES, **SLOW_CASES}[name]
    model, x, y = build()
    tf_lottery.mask(model)
    left_dense = [str(w.message) for w in recwarn if "left these layers dense" in str(w.message)]
    assert [bool(re.search(warning, message)) for message in left_dense] == ([True] if warning else [])
    keys, paths = list(tf_lottery.get_masks(model)), [v.path for v in model.trainable_weights]
    assert [p for p in paths if re.search(must_mask, p) and p not in keys] == []
    assert [k for k in keys if re.search(stays_dense, k)] == []
    masked = tf_lottery.sparsity_report(model)["total"] / sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert masked > 0.9

    initial = weights.snapshot(model)
    lottery = tf_lottery.LotteryCallback()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[lottery, _ZerosAfterEveryStep()])
    scores = tf_lottery.criteria.magnitude(tf_lottery.get_prunable_weights(model), None)
    masks = tf_lottery.PruningPlan(rate=0.5, output_rate=None).apply(model, scores)
    tf_lottery.set_masks(model, masks)
    lottery.rewind()
    rewound = weights.snapshot(model)
    for path, value in initial.items():
        expected = np.where(masks[path] == 1, value, 0) if path in masks else value
        np.testing.assert_array_equal(rewound[path], expected, err_msg=path)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[lottery, _ZerosAfterEveryStep()])
    assert tf_lottery.sparsity_report(model)["density"] == pytest.approx(0.5, abs=0.02)

    model.save(tmp_path / "ticket.keras")
    loaded = tf_lottery.load_model(tmp_path / "ticket.keras")
    for key, mask in tf_lottery.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[key], err_msg=key)
    np.testing.assert_array_equal(_outputs(loaded, x), _outputs(model, x))

    sparse = name != "gpt2"
    if not sparse:  # TFLite's sparsity pass fails on GPT-2's tied token embedding (TF 2.21).
        with pytest.raises(ValueError, match=r"with its sparsity optimization \(sparse=True\).*sparse=False"):
            export.export_tflite(model, tmp_path / "ticket.tflite", representative_data=x)
    entry = export.export_tflite(model, tmp_path / "ticket.tflite", representative_data=x, sparse=sparse)
    assert entry["parity"]["samples"] == N and entry["density"] == pytest.approx(0.5, abs=0.02)

    trained = _outputs(model, x)
    assert tf_lottery.strip(model) is model and not tf_lottery.is_masked(model)
    np.testing.assert_array_equal(_outputs(model, x), trained)


@pytest.mark.parametrize("name", sorted(SLOW_CASES))
def test_keras_applications_are_masked_in_place(name):
    build, must_mask, stays_dense, _ = SLOW_CASES[name]
    model, x, _ = build()
    before = _outputs(model, x[:2])
    tf_lottery.mask(model)
    keys, paths = list(tf_lottery.get_masks(model)), [v.path for v in model.trainable_weights]
    assert [p for p in paths if re.search(must_mask, p) and p not in keys] == []
    assert [k for k in keys if re.search(stays_dense, k)] == []
    np.testing.assert_array_equal(_outputs(model, x[:2]), before)
    rng = np.random.default_rng(0)
    masks = {key: rng.random(mask.shape) < 0.5 for key, mask in tf_lottery.get_masks(model).items()}
    tf_lottery.set_masks(model, masks)
    for key, weight in tf_lottery.get_prunable_weights(model).items():
        assert not np.any(weight[~masks[key]]), key


def test_a_text_model_of_several_inputs_exports_a_saved_model_with_parity(tmp_path):
    model = tf_lottery.mask(_bert_classifier())
    rng = np.random.default_rng(0)
    tf_lottery.set_masks(model, {key: rng.random(mask.shape) < 0.3 for key, mask in tf_lottery.get_masks(model).items()})
    x = _tokens(BERT_INPUTS, 32)
    entry = export.export_saved_model(model, tmp_path / "saved_model", representative_data=x)
    assert entry["parity"]["samples"] == 32 and entry["parity"]["max_abs_diff"] < 1e-5
    served = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(next(iter(served(**{k: tf.constant(v) for k, v in x.items()}).values())).numpy(),
                               _outputs(model, x), atol=1e-5)
    with pytest.raises(ValueError, match=r"a dict of batches of the model's inputs, 'padding_mask': \(N, None\)"):
        export.export_saved_model(model, tmp_path / "other", representative_data=x["token_ids"])
    with pytest.raises(ValueError, match=r"quantize='pqat' handles models of one input"):
        export.export_tflite(model, tmp_path / "a.tflite", quantize="pqat", representative_data=x)


def test_mirrored_training_keeps_a_transformers_zeros_on_every_replica():
    # Not strategy_from_flag's collective all-reduce: MirroredStrategies of one process share collective keys,
    # so a second one all-reducing other shapes (the LeNet of tests/test_distribute.py) would clash with it.
    strategy = tf.distribute.MirroredStrategy(cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = _bert_classifier()
    tf_lottery.mask(model)  # Outside the scope: the masks join the strategy of the model's weights.
    rng = np.random.default_rng(0)
    masks = {key: rng.random(mask.shape) < 0.3 for key, mask in tf_lottery.get_masks(model).items()}
    tf_lottery.set_masks(model, masks)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(_tokens(BERT_INPUTS, 16), np.arange(16) % 2, batch_size=8, epochs=1, verbose=0)
    for key, variable in masking.get_prunable_variables(model).items():
        replicas = variable.value.values
        assert len(replicas) == 2, key
        for replica in replicas:
            assert not np.any(replica.numpy()[masks[key] == 0]), key
            assert np.any(replica.numpy()[masks[key] == 1]), key


def test_ticket_search_of_a_keras_hub_text_classifier(tmp_path):
    """`TicketSearch` takes a keras-hub model; here one whose only input is token ids (padding id 0)."""

    def build():
        classifier = _bert_classifier()
        token_ids = keras.Input((16,), dtype="int32", name="token_ids")
        logits = classifier({"token_ids": token_ids, "segment_ids": keras.ops.zeros_like(token_ids),
                             "padding_mask": keras.ops.cast(token_ids != 0, "int32")})
        return keras.Model(token_ids, logits)

    tokens = {split: _tokens(["token_ids"], n, seed)["token_ids"] for split, n, seed in (("train", 64, 0), ("val", 16, 1),
                                                                          ("test", 16, 2))}
    labels = {split: (array[:, 0] > 250).astype("int64") for split, array in tokens.items()}
    data = Dataset("tokens", "generated", tokens["train"], labels["train"], tokens["val"], labels["val"],
                   tokens["test"], labels["test"], num_classes=2)
    config = SearchConfig(rounds=1, epochs=1, batch_size=32)
    history = TicketSearch(build, data, config, str(tmp_path), verbose=0).run()
    assert [round(r["density"], 2) for r in history["rounds"]] == [1.0, 0.8]
    queries = {key: density for key, density in history["rounds"][1]["layer_density"].items()
               if key.endswith("/query/kernel")}
    assert len(queries) == 2 and all(density == pytest.approx(0.8, abs=0.01) for density in queries.values())
    ticket = tf_lottery.load_model(tmp_path / "best_ticket.keras")
    assert set(tf_lottery.get_masks(ticket)) == set(history["rounds"][1]["layer_density"])
