"""Tests for tf_lottery.models."""

import math

import keras
import numpy as np
import pytest

from tf_lottery import models

CONV_NETS = ["conv2", "conv4", "conv6"]
SMALL_AND_MNIST = {
    "lenet300_100": [(28, 28, 1), (8, 8, 1)],
    "conv2": [(28, 28, 1), (8, 8, 1)],
    "conv4": [(28, 28, 1), (8, 8, 1)],
    "conv6": [(28, 28, 1), (8, 8, 1)],
    "resnet20": [(32, 32, 3), (8, 8, 1)],
}


def _weights(model):
    return [w.numpy() for w in model.weights]


@pytest.mark.parametrize(
    "name,shape", [(n, s) for n, shapes in SMALL_AND_MNIST.items() for s in shapes]
)
def test_builds_and_outputs_logits_shape(name, shape):
    model = models.get(name)(input_shape=shape, num_classes=7)
    assert isinstance(model, keras.Model) and model.built
    assert model.get_layer("output").units == 7
    assert model.layers[-1].name == "output"
    assert model.get_layer("output").get_config()["activation"] == "linear"
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype("float32")
    assert tuple(model(x, training=False).shape) == (3, 7)


def test_lenet_parameter_count_and_names():
    model = models.lenet300_100()
    assert model.count_params() == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert [l.name for l in model.layers] == ["input", "flatten", "fc1", "fc2", "output"]


def test_conv2_parameter_count_matches_paper_architecture():
    model = models.conv2((28, 28, 1), 10)

    def conv(cin, cout):
        return 3 * 3 * cin * cout + cout

    def dense(nin, nout):
        return nin * nout + nout

    flat = (28 // 2) * (28 // 2) * 64  # one 2x2 pool
    expected = conv(1, 64) + conv(64, 64) + dense(flat, 256) + dense(256, 256) + dense(256, 10)
    assert model.count_params() == expected
    names = [l.name for l in model.layers]
    assert names == ["input", "conv1", "conv2", "pool1", "flatten", "fc1", "fc2", "output"]


@pytest.mark.parametrize("name,pools", [("conv4", 2), ("conv6", 3)])
def test_deeper_conv_nets_layout(name, pools):
    model = models.get(name)((32, 32, 3))
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256][: 2 * pools]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert model.get_layer("flatten").output.shape[1:] == (
        (32 >> pools) * (32 >> pools) * convs[-1].filters,
    )


def test_resnet20_structure():
    model = models.resnet20()
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    main = [c for c in convs if "shortcut" not in c.name]
    assert len(main) + 1 == 20  # 19 convs + output Dense
    assert len(convs) - len(main) == 2  # projections entering stages 2 and 3
    assert sorted({c.filters for c in convs}) == [16, 32, 64]
    assert model.get_layer("global_pool").output.shape[1:] == (64,)
    assert 0.26e6 < model.count_params() < 0.28e6  # ~0.27M, as in He et al.


@pytest.mark.parametrize("name", list(models.MODELS))
def test_seed_determinism(name):
    build = models.get(name)
    shape = (8, 8, 1)
    keras.utils.set_random_seed(123)
    a = _weights(build(shape))
    keras.utils.set_random_seed(123)
    b = _weights(build(shape))
    keras.utils.set_random_seed(124)
    c = _weights(build(shape))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    kernels = [i for i, w in enumerate(a) if w.ndim >= 2]
    assert all(not np.array_equal(a[i], c[i]) for i in kernels)


def test_layers_get_distinct_draws():
    # Same-shape kernels must not share one seeded draw.
    model = models.conv6((8, 8, 1))
    k = model.get_layer("fc2").kernel.numpy()
    assert not np.allclose(k, model.get_layer("fc1").kernel.numpy()[:256])


def test_glorot_normal_kernels_and_zero_biases():
    keras.utils.set_random_seed(0)
    model = models.lenet300_100()
    kernel = model.get_layer("fc1").kernel.numpy()
    assert kernel.shape == (784, 300)
    target = math.sqrt(2.0 / (784 + 300))
    assert abs(kernel.mean()) < 0.02 * target
    assert kernel.std() == pytest.approx(target, rel=0.03)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            assert not layer.bias.numpy().any()
    conv = models.conv2().get_layer("conv2").kernel.numpy()  # 3x3x64x64
    fan_in, fan_out = 9 * 64, 9 * 64
    assert conv.std() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.05)


def test_resnet_uses_he_normal():
    keras.utils.set_random_seed(0)
    kernel = models.resnet20().get_layer("stage3_block2_conv1").kernel.numpy()
    assert kernel.std() == pytest.approx(math.sqrt(2.0 / (9 * 64)), rel=0.05)


def test_get_and_registry():
    assert set(models.MODELS) == {"lenet300_100", "conv2", "conv4", "conv6", "resnet20"}
    for name, builder in models.MODELS.items():
        assert models.get(name) is builder
    with pytest.raises(ValueError) as info:
        models.get("vgg19")
    for name in models.MODELS:
        assert name in str(info.value)
    assert "vgg19" in str(info.value)


@pytest.mark.parametrize("name,minimum", [("conv2", 2), ("conv4", 4), ("conv6", 8)])
def test_too_small_input_raises_clear_error(name, minimum):
    models.get(name)((minimum, minimum, 1))  # smallest allowed works
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
        models.get(name)((minimum - 1, minimum + 5, 1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="height, width, channels"):
        models.conv2((784,))
    with pytest.raises(ValueError, match="num_classes"):
        models.lenet300_100(num_classes=0)
    with pytest.raises(ValueError, match="input_shape"):
        models.lenet300_100((28, None, 1))


def test_each_call_builds_a_new_model_with_its_own_variables():
    keras.utils.set_random_seed(5)
    a = models.conv2((8, 8, 1))
    keras.utils.set_random_seed(5)
    b = models.conv2((8, 8, 1))
    assert a is not b and not {id(l) for l in a.layers} & {id(l) for l in b.layers}
    assert not {id(v) for v in a.weights} & {id(v) for v in b.weights}
    before = _weights(b)
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a), before))  # Same seed, same start.
    for variable in a.weights:
        variable.assign(variable + 1.0)
    assert all(np.array_equal(x, y) for x, y in zip(_weights(b), before))  # Changing a leaves b as it was.
    assert all(np.array_equal(x, y + 1.0) for x, y in zip(_weights(a), before))


@pytest.mark.parametrize("name", ["lenet300_100", "conv2"])
def test_one_train_step(name):
    keras.utils.set_random_seed(1)
    model = models.get(name)((28, 28, 1), 10)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=16)
    before = model.get_layer("output").kernel.numpy()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, model.get_layer("output").kernel.numpy())
