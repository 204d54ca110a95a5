"""Networks from the lottery-ticket paper (Frankle & Carbin, arXiv 1803.03635).

Every builder returns a fresh, built, *uncompiled* functional ``keras.Model``
adapted to ``input_shape`` (height, width, channels) and ``num_classes``:

* ``lenet300_100`` -- fully connected 300-100 network (paper, MNIST).
* ``conv2``, ``conv4``, ``conv6`` -- the VGG-like CIFAR-10 nets of the paper's
  Figure 2: 3x3 'same' convolutions with ReLU, 2x2 max pooling after every pair,
  then fully connected 256-256 and the output layer.
* ``resnet20`` -- He et al.'s CIFAR ResNet-20, used in the late-rewinding work.

Outputs are **logits** (no softmax): train with
``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``.

Layer names are readable and stable across builds: ``conv1``, ``conv2``, ...,
``pool1``, ..., ``flatten``, ``fc1``, ``fc2`` and ``output`` for the final
Dense layer of every model (see ``resnet20`` for its block names).

Initializers are given without seeds, so each layer draws its own values.
For reproducible weights call ``keras.utils.set_random_seed(seed)`` right
before building; the same seed then gives identical initial weights.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import layers

__all__ = ["lenet300_100", "conv2", "conv4", "conv6", "resnet20", "MODELS", "get"]

# Paper: Gaussian Glorot initialization for the lenet/conv nets, zero biases.
_KERNEL_INIT = "glorot_normal"
_BIAS_INIT = "zeros"


def _check_args(input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be positive integers, got {input_shape!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return shape


def _check_image(name: str, shape: tuple[int, ...], num_pools: int) -> None:
    """Require (H, W, C) with H and W large enough for ``num_pools`` 2x2 poolings."""
    if len(shape) != 3:
        raise ValueError(f"{name} needs input_shape (height, width, channels), got {shape}")
    side = 2**num_pools
    if shape[0] < side or shape[1] < side:
        raise ValueError(
            f"{name} needs inputs of at least {side}x{side} ({num_pools} max poolings of "
            f"2x2); got {shape[0]}x{shape[1]}"
        )


def _dense(units: int, name: str, activation: str | None = "relu") -> layers.Dense:
    return layers.Dense(
        units,
        activation=activation,
        kernel_initializer=_KERNEL_INIT,
        bias_initializer=_BIAS_INIT,
        name=name,
    )


def _fc_head(x, hidden: Sequence[int], num_classes: int):
    """Flatten, ReLU Dense layers ``fc1..fcN`` and the logit layer ``output``."""
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden, start=1):
        x = _dense(units, f"fc{i}")(x)
    return _dense(num_classes, "output", activation=None)(x)


def _conv_net(
    name: str,
    blocks: Sequence[Sequence[int]],
    input_shape: Sequence[int],
    num_classes: int,
) -> keras.Model:
    """3x3 'same' ReLU convs; each block of filters is followed by a 2x2 max pool;
    then the FC 256-256 head."""
    shape = _check_args(input_shape, num_classes)
    _check_image(name, shape, num_pools=len(blocks))
    inputs = keras.Input(shape=shape, name="input")
    x, n = inputs, 0
    for b, filters_in_block in enumerate(blocks, start=1):
        for filters in filters_in_block:
            n += 1
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=_KERNEL_INIT,
                bias_initializer=_BIAS_INIT,
                name=f"conv{n}",
            )(x)
        x = layers.MaxPooling2D(2, name=f"pool{b}")(x)
    outputs = _fc_head(x, (256, 256), num_classes)
    return keras.Model(inputs, outputs, name=name)


def lenet300_100(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """LeNet-300-100: flatten, ``fc1`` (300, ReLU), ``fc2`` (100, ReLU), ``output``."""
    shape = _check_args(input_shape, num_classes)
    inputs = keras.Input(shape=shape, name="input")
    outputs = _fc_head(inputs, (300, 100), num_classes)
    return keras.Model(inputs, outputs, name="lenet300_100")


def conv2(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """Conv-2: 64, 64, pool; FC 256, 256, output. Needs inputs of at least 2x2."""
    return _conv_net("conv2", [(64, 64)], input_shape, num_classes)


def conv4(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """Conv-4: 64, 64, pool, 128, 128, pool; FC 256, 256, output. At least 4x4."""
    return _conv_net("conv4", [(64, 64), (128, 128)], input_shape, num_classes)


def conv6(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool; FC 256, 256, output.
    At least 8x8."""
    return _conv_net("conv6", [(64, 64), (128, 128), (256, 256)], input_shape, num_classes)


def _conv_bn(x, filters: int, kernel: int, stride: int, prefix: str, suffix: str = ""):
    """Bias-free conv ``{prefix}_conv{suffix}`` then BatchNorm ``{prefix}_bn{suffix}``."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{prefix}_conv{suffix}",
    )(x)
    return layers.BatchNormalization(name=f"{prefix}_bn{suffix}")(x)


def resnet20(input_shape=(32, 32, 3), num_classes=10) -> keras.Model:
    """CIFAR ResNet-20 (He et al. 2016): 3x3 conv 16, then 3 stages x 3 basic blocks
    with 16/32/64 filters (stride 2 entering stages 2 and 3), global average pooling
    and ``output``. Convs are bias-free and followed by BatchNorm; when the shape
    changes the shortcut is a 1x1 conv + BatchNorm projection (as in open_lth).

    Uses He normal initialization for kernels (conventional for ResNets, not the
    paper's Glorot). Strided 'same' convs work on any input size, e.g. 8x8x1.

    Layer names: ``stem_conv``/``stem_bn``/``stem_relu``; per block
    ``stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,add,relu2}`` plus
    ``..._shortcut_{conv,bn}`` where projecting; ``global_pool``; ``output``.
    """
    shape = _check_args(input_shape, num_classes)
    _check_image("resnet20", shape, num_pools=0)
    inputs = keras.Input(shape=shape, name="input")
    x = layers.ReLU(name="stem_relu")(_conv_bn(inputs, 16, 3, 1, "stem"))
    for s, filters in enumerate((16, 32, 64), start=1):
        for b in range(1, 4):
            name = f"stage{s}_block{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            y = _conv_bn(x, filters, 3, stride, name, "1")
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = _conv_bn(y, filters, 3, 1, name, "2")
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = _conv_bn(x, filters, 1, stride, f"{name}_shortcut")
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            x = layers.ReLU(name=f"{name}_relu2")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = layers.Dense(num_classes, kernel_initializer="he_normal", name="output")(x)
    return keras.Model(inputs, outputs, name="resnet20")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet300_100": lenet300_100,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "resnet20": resnet20,
}


def get(name: str) -> Callable[..., keras.Model]:
    """Return the builder registered as ``name`` in ``MODELS``."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown model {name!r}; available: {', '.join(sorted(MODELS))}"
        ) from None
