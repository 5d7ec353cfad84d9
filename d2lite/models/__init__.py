"""The pieces later chapters reuse from earlier ones, saved in d2lite the way the book saves its
into `d2l`: pooling, the dense head, the kernel initialisations, and (resnet.py) the ResNet
template that ResNeXt fills with its own blocks. The chapters import them from here, so an
installed d2lite needs no `chapters` package."""

from flax import linen as nn
from jax import numpy as jnp

from ..book import max_pool

# Kernel initialisations: Flax's default (the book's JAX code), the Xavier-uniform one of the
# book's `init_cnn` in its PyTorch and MXNet code, and He et al.'s (2015) for ReLU networks,
# which the book does not use (GoogLeNet needs it to start learning: see its chapter).
KERNEL_INITS = {
    "lecun": nn.initializers.lecun_normal(),
    "xavier": nn.initializers.xavier_uniform(),
    "he": nn.initializers.he_normal(),
}


def global_avg_pool(x):
    """(B, H, W, C) -> (B, C): the mean over the whole height and width, at any input size."""
    return jnp.mean(x, axis=(1, 2))


def max_pool_3x3_s2(x):
    """The overlapping 3x3 max pool with stride 2 that AlexNet introduced.

    `d2l.max_pool` is Flax's `nn.max_pool`, which the Trainer on a CPU traces as a stand-in
    with a faster gradient (d2lite/devices/cpu_kernels.py); the chapters pool with it."""
    return max_pool(x, window_shape=(3, 3), strides=(2, 2))


def flatten(x):
    return x.reshape((x.shape[0], -1))


def dense_head(num_classes, training):
    """Flatten, two dense layers of 4096 units with ReLU and dropout 0.5, then the class scores:
    AlexNet's (section 8.1) and VGG's (section 8.2) last layers."""
    layers = [flatten]
    for _ in range(2):
        layers += [nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=not training)]
    return [*layers, nn.Dense(num_classes)]
