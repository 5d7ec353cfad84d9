"""What the next edition saves from its sections, written against Flax NNX: its key stream, the
linear models, LeNet, the residual blocks, `cross_entropy` and `show_heatmaps`. Constructors
take `rngs=` (default: keys from `get_key`) and the input widths NNX layers need."""

import random

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .. import book
from .module import Classifier, Module

# One stream of keys per interpreter, from seed 0: a notebook's models are drawn the same on
# every run (so a resumed run rebuilds the model it resumes), and no two keys are correlated.
_keys = [jax.random.PRNGKey(0)]
_seeds = random.Random(0)


def get_key():
    """The next key of the face's stream (split from the previous one)."""
    _keys[0], key = jax.random.split(_keys[0])
    return key


def get_seed():
    """The next integer seed of the face's stream, for APIs that take an int."""
    return _seeds.randint(0, 10**6)


def default_rngs(rngs, **streams):
    """`rngs`, or Rngs of keys from `get_key` (`streams`: more named streams, such as dropout)."""
    if rngs is not None:
        return rngs
    return nnx.Rngs(get_key(), **{name: get_key() for name in streams})


# ---------------------------------------------------------------------- linear models (3, 4)
class LinearRegressionScratch(Module):
    """Linear regression from scratch: weights drawn from N(0, sigma^2), half squared error."""

    def __init__(self, num_inputs, lr, sigma=0.01, rngs=None):
        super().__init__()
        self.save_hyperparameters(ignore=["rngs"])
        rngs = default_rngs(rngs)
        self.w = nnx.Param(sigma * rngs.params.normal((num_inputs, 1)))
        self.b = nnx.Param(jnp.zeros(1))

    def forward(self, X):
        return X @ self.w + self.b

    def loss(self, y_hat, y):
        return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)

    def configure_optimizers(self):
        return book.SGD(self.lr)


class LinearRegression(Module):
    """Linear regression with `nnx.Linear`, trained with optax's SGD on the mean squared error."""

    def __init__(self, num_inputs, lr, rngs=None):
        super().__init__()
        self.save_hyperparameters(ignore=["rngs"])
        init = nnx.initializers.normal(0.01)
        self.net = nnx.Linear(num_inputs, 1, kernel_init=init, rngs=default_rngs(rngs))

    def forward(self, X):
        return self.net(X)

    def loss(self, y_hat, y):
        return jnp.mean((y_hat - y) ** 2)

    def configure_optimizers(self):
        return optax.sgd(self.lr)

    def get_w_b(self):
        """The learned (kernel, bias), as arrays."""
        return self.net.kernel[...], self.net.bias[...]


def cross_entropy(y_hat, y):
    """Mean cross-entropy of predicted probabilities `y_hat` for the labels `y`; a probability
    that underflowed to 0 counts as 1e-12, so the log stays finite."""
    picked = jnp.take_along_axis(y_hat, y[:, None], axis=1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(picked, 1e-12)))


def show_heatmaps(matrices, xlabel, ylabel, titles=None, figsize=(2.5, 2.5), cmap="Reds"):
    """A grid of heatmaps, one per matrix of `matrices` (rows, columns, height, width), with one
    colorbar; returns the Figure."""
    from matplotlib import pyplot as plt

    book.use_svg_display()
    rows, cols = matrices.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=figsize, sharex=True, sharey=True, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            image = axes[i, j].imshow(jax.device_get(matrices[i, j]), cmap=cmap)
            if i == rows - 1:
                axes[i, j].set_xlabel(xlabel)
            if j == 0:
                axes[i, j].set_ylabel(ylabel)
            if titles:
                axes[i, j].set_title(titles[j])
    fig.colorbar(image, ax=axes, shrink=0.6)
    return fig


class SoftmaxRegression(Classifier):
    """Softmax regression: flatten, one linear layer of `num_outputs` logits."""

    def __init__(self, num_outputs, lr, num_inputs=784, rngs=None):
        super().__init__()
        self.save_hyperparameters(ignore=["rngs"])
        self.net = nnx.Linear(num_inputs, num_outputs, rngs=default_rngs(rngs))

    def forward(self, X):
        return self.net(X.reshape((X.shape[0], -1)))


# -------------------------------------------------------------------------- networks (7, 8)
def _avg_pool(x):
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def _flatten(x):
    return x.reshape((x.shape[0], -1))


class LeNet(Classifier):
    """LeNet-5 on 28x28 images: two sigmoid convolutions with average pooling, three dense layers."""

    def __init__(self, lr=0.1, num_classes=10, kernel_init=None, rngs=None):
        super().__init__()
        self.save_hyperparameters(ignore=["rngs", "kernel_init"])
        rngs = default_rngs(rngs)
        init = nnx.initializers.xavier_uniform() if kernel_init is None else kernel_init
        conv = lambda i, o, padding: nnx.Conv(i, o, (5, 5), padding=padding, kernel_init=init, rngs=rngs)  # noqa: E731
        dense = lambda i, o: nnx.Linear(i, o, kernel_init=init, rngs=rngs)  # noqa: E731
        self.net = nnx.Sequential(
            conv(1, 6, "SAME"), nnx.sigmoid, _avg_pool,
            conv(6, 16, "VALID"), nnx.sigmoid, _avg_pool, _flatten,
            dense(400, 120), nnx.sigmoid,
            dense(120, 84), nnx.sigmoid,
            dense(84, num_classes),
        )  # fmt: skip


class Residual(nnx.Module):
    """ResNet's residual block: two 3x3 convolutions with BatchNorm, and a 1x1 convolution on the
    shortcut when asked for or when the block downsamples (otherwise the shapes cannot add)."""

    def __init__(self, num_channels, use_1x1conv=False, strides=(1, 1), in_channels=None, rngs=None):
        in_channels = num_channels if in_channels is None else in_channels
        rngs = default_rngs(rngs)
        self.conv1 = nnx.Conv(in_channels, num_channels, (3, 3), strides=strides, padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(num_channels, num_channels, (3, 3), padding="SAME", rngs=rngs)
        project = use_1x1conv or any(s != 1 for s in strides)
        self.conv3 = (
            nnx.Conv(in_channels, num_channels, (1, 1), strides=strides, rngs=rngs) if project else None
        )
        self.bn1 = nnx.BatchNorm(num_channels, rngs=rngs)
        self.bn2 = nnx.BatchNorm(num_channels, rngs=rngs)

    def __call__(self, X):
        Y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(X)))))
        if self.conv3 is not None:
            X = self.conv3(X)
        return nnx.relu(Y + X)


class ResNeXtBlock(nnx.Module):
    """ResNeXt's block: 1x1 down to `bot_mul` of the channels, a grouped 3x3, 1x1 back up, each
    with BatchNorm; a 1x1 convolution with BatchNorm on the shortcut when `use_1x1conv`."""

    def __init__(
        self, num_channels, groups, bot_mul, use_1x1conv=False, strides=(1, 1), in_channels=None, rngs=None
    ):
        in_channels = num_channels if in_channels is None else in_channels
        rngs = default_rngs(rngs)
        bottleneck = int(round(num_channels * bot_mul))
        self.conv1 = nnx.Conv(in_channels, bottleneck, (1, 1), rngs=rngs)
        self.conv2 = nnx.Conv(
            bottleneck,
            bottleneck,
            (3, 3),
            strides=strides,
            padding="SAME",
            feature_group_count=groups,
            rngs=rngs,
        )
        self.conv3 = nnx.Conv(bottleneck, num_channels, (1, 1), rngs=rngs)
        self.bn1, self.bn2 = nnx.BatchNorm(bottleneck, rngs=rngs), nnx.BatchNorm(bottleneck, rngs=rngs)
        self.bn3 = nnx.BatchNorm(num_channels, rngs=rngs)
        self.conv4 = self.bn4 = None
        if use_1x1conv:
            self.conv4 = nnx.Conv(in_channels, num_channels, (1, 1), strides=strides, rngs=rngs)
            self.bn4 = nnx.BatchNorm(num_channels, rngs=rngs)

    def __call__(self, X):
        Y = nnx.relu(self.bn1(self.conv1(X)))
        Y = nnx.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return nnx.relu(Y + X)
