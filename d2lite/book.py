"""What the book saves into `d2l` from its sections 3-8: plotting helpers, models, an optimizer,
devices, keys, aliases.

Each name keeps the book's signature and behaviour; where the book's JAX code is wrong on a
current JAX, Flax or Python, the docstring says what d2lite does instead.

BatchNorm momentum: d2lite's blocks (`Residual`, `ResNeXtBlock`, and the chapters) keep
running statistics with momentum 0.9, PyTorch's default with which the book's accuracies were
measured, instead of Flax's 0.99: at 0.99 the statistics average over about 100 steps, so a
short run is evaluated with statistics still near their initial values. Layers a reader
writes with `nn.BatchNorm` keep Flax's default.
"""

import contextvars
import random
import sys
from functools import partial
from types import FunctionType

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from .errors import D2LiteError
from .hparams import HyperParameters
from .module import Classifier, Module

__all__ = """use_svg_display set_figsize set_axes plot show_images nn_Module get_seed get_key cpu gpu num_gpus
try_gpu try_all_gpus SGD LinearRegressionScratch
LinearRegression SoftmaxRegression corr2d LeNet Residual ResNeXtBlock to numpy transpose sigmoid ones_like
ones zeros_like zeros arange meshgrid linspace eye sin sinh cos cosh tanh exp log tensor expand_dims matmul
concat stack int32 int64 float32 abs reshape reduce_sum reduce_mean argmax astype swapaxes repeat
max_pool""".split()


# --------------------------------------------------------------------- plotting (2.4, 4.2)
def use_svg_display():
    """Show pyplot figures as SVG in Jupyter; nothing outside IPython."""
    ipython = sys.modules.get("IPython")  # imported by every Jupyter kernel, not by scripts
    if ipython is not None and ipython.get_ipython() is not None:
        from matplotlib_inline import backend_inline

        backend_inline.set_matplotlib_formats("svg")


def set_figsize(figsize=(3.5, 2.5)):
    """The size of pyplot's next figures, in inches."""
    from matplotlib import pyplot as plt

    use_svg_display()
    plt.rcParams["figure.figsize"] = figsize


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend):
    """Label, scale and bound `axes`, add a legend when given, and a grid."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    axes.set_xlim(xlim)
    axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def plot(
    X,
    Y=None,
    xlabel=None,
    ylabel=None,
    legend=None,
    xlim=None,
    ylim=None,
    xscale="linear",
    yscale="linear",
    fmts=("-", "m--", "g-.", "r:"),
    figsize=(3.5, 2.5),
    axes=None,
):
    """Plot one or more curves on pyplot's current axes (or `axes`), as the book's `d2l.plot`.

    `X` and `Y` are each one sequence of numbers or a list of them; with `Y` left out, `X`
    holds the y values and they are plotted against their index. One x sequence serves
    every y sequence.
    """
    from matplotlib import pyplot as plt

    def one_curve(values):  # a flat sequence of numbers, not a list of sequences
        return getattr(values, "ndim", None) == 1 or (
            isinstance(values, list) and not hasattr(values[0], "__len__")
        )

    if one_curve(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif one_curve(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    set_figsize(figsize)
    axes = plt.gca() if axes is None else axes
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts, strict=False):  # at most as many curves as formats
        if len(x):
            axes.plot(x, y, fmt)
        else:
            axes.plot(y, fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend)


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """A pyplot grid of images (grayscale for 2-D ones) with optional titles; returns the axes."""
    from matplotlib import pyplot as plt

    _, axes = plt.subplots(num_rows, num_cols, figsize=(num_cols * scale, num_rows * scale), squeeze=False)
    axes = axes.reshape(-1)
    for i, (ax, img) in enumerate(zip(axes, imgs, strict=False)):
        ax.imshow(np.asarray(img), cmap="gray")
        ax.set_axis_off()
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=8)
    for ax in axes[len(imgs) :]:
        ax.set_axis_off()
    return axes


nn_Module = nn.Module
BN_MOMENTUM = 0.9
BatchNorm = partial(nn.BatchNorm, momentum=BN_MOMENTUM)  # spelled as the book's nn.BatchNorm(not training)

# Two names the book's JAX cells call and their libraries have since removed (`jax.tree_map` in
# 7.2, `optax.additive_weight_decay` in 3.7): put back as their successors, which behave the same.
# Only added where missing, so nothing that JAX or Optax define is ever replaced.
for library, removed, successor in (
    (jax, "tree_map", jax.tree.map),
    (optax, "additive_weight_decay", optax.add_decayed_weights),
):
    if not hasattr(library, removed):
        setattr(library, removed, successor)


def get_seed():
    """A random seed from Python's `random` (the book's `randint(0, 1e6)` fails on Python 3.12)."""
    return random.randint(0, 10**6)


def get_key():
    """A PRNG key from a random seed: `random.seed(s)` makes a notebook's keys repeat."""
    return jax.random.PRNGKey(get_seed())


# ------------------------------------------------------------------------------- devices
def cpu():
    return jax.devices("cpu")[0]


def num_gpus():
    try:
        return len(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend
        return 0


def gpu(i=0):
    if i >= num_gpus():
        raise D2LiteError(
            f"there is no GPU {i}: this machine has {num_gpus()} (try_gpu({i}) falls back to the CPU)"
        )
    return jax.devices("gpu")[i]


def try_gpu(i=0):
    """GPU `i` if there is one, else the CPU."""
    return gpu(i) if num_gpus() > i else cpu()


def try_all_gpus():
    """Every GPU, or `[cpu()]` without one (as the book's docstring says; its code returns [])."""
    return [gpu(i) for i in range(num_gpus())] or [cpu()]


# ---------------------------------------------------------------------- linear models (3, 4)
class SGD(HyperParameters):
    """Minibatch stochastic gradient descent as an optax-style transformation: `update = -lr * grad`.

    Fixed from the book: `init` returns an empty state (not the EmptyState class, which no
    jitted step can take), and `__call__` takes `self`.
    """

    def __init__(self, lr):
        self.save_hyperparameters()

    def init(self, params):
        return optax.EmptyState()

    def update(self, updates, state, params=None):
        return jax.tree.map(lambda g: -self.lr * g, updates), state

    def __call__(self):
        return optax.GradientTransformation(self.init, self.update)


class LinearRegressionScratch(Module):
    """Linear regression from scratch: weights drawn from N(0, sigma^2), half squared error."""

    num_inputs: int
    lr: float
    sigma: float = 0.01

    def setup(self):
        self.w = self.param("w", nn.initializers.normal(self.sigma), (self.num_inputs, 1))
        self.b = self.param("b", nn.initializers.zeros, (1,))

    def forward(self, X):
        return X @ self.w + self.b

    def loss(self, params, X, y, state):
        y_hat = state.apply_fn({"params": params}, *X)
        return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)

    def configure_optimizers(self):
        return SGD(self.lr)


class LinearRegression(Module):
    """Linear regression with a dense layer, trained with optax's SGD."""

    lr: float

    def setup(self):
        self.net = nn.Dense(1, kernel_init=nn.initializers.normal(0.01))

    def forward(self, X):
        return self.net(X)

    def loss(self, params, X, y, state):
        y_hat = state.apply_fn({"params": params}, *X)
        return jnp.mean(optax.l2_loss(y_hat, y))

    def configure_optimizers(self):
        return optax.sgd(self.lr)

    def get_w_b(self, state):
        """The learned (kernel, bias)."""
        net = state.params["net"]
        return net["kernel"], net["bias"]


class SoftmaxRegression(Classifier):
    """Softmax regression: flatten, one dense layer of `num_outputs` logits."""

    num_outputs: int
    lr: float

    @nn.compact
    def __call__(self, X):
        return nn.Dense(self.num_outputs)(X.reshape((X.shape[0], -1)))


# ------------------------------------------------------------------------ convolutions (7, 8)
def corr2d(X, K):
    """The 2-D cross-correlation of `X` with the kernel `K`, at every position where K fits.

    Computed as a sum of shifted copies of X, one per kernel entry, instead of one
    indexed update per output pixel.
    """
    X, K = jnp.asarray(X), jnp.asarray(K)
    h, w = K.shape
    rows, cols = X.shape[0] - h + 1, X.shape[1] - w + 1
    return sum(K[i, j] * X[i : i + rows, j : j + cols] for i in range(h) for j in range(w))


class LeNet(Classifier):
    """LeNet-5: two 5x5 convolutions with sigmoid and 2x2 average pooling, three dense layers."""

    lr: float = 0.1
    num_classes: int = 10
    kernel_init: FunctionType = nn.initializers.xavier_uniform

    def setup(self):
        conv = partial(nn.Conv, kernel_size=(5, 5), kernel_init=self.kernel_init())
        dense = partial(nn.Dense, kernel_init=self.kernel_init())
        pool = lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))  # noqa: E731
        self.net = nn.Sequential(
            [
                conv(6, padding="SAME"),
                nn.sigmoid,
                pool,
                conv(16, padding="VALID"),
                nn.sigmoid,
                pool,
                lambda x: x.reshape((x.shape[0], -1)),  # flatten
                dense(120),
                nn.sigmoid,
                dense(84),
                nn.sigmoid,
                dense(self.num_classes),
            ]
        )


def changes_shape(X, num_channels, strides):
    """Whether a block with `num_channels` outputs and `strides` changes the shape of `X`."""
    return X.shape[-1] != num_channels or any(s != 1 for s in np.broadcast_to(strides, 2))


class Residual(nn.Module):
    """The residual block of ResNet: two 3x3 conv-BatchNorm layers, and a shortcut added before the last ReLU.

    The shortcut is a 1x1 convolution with the block's stride when `use_1x1conv` is set, and
    also, unlike the book's (whose `Y + X` then fails), whenever the block changes its input's
    shape. BatchNorm momentum 0.9 (see the module's docstring).
    """

    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    @nn.compact
    def __call__(self, X):
        norm = partial(BatchNorm, use_running_average=not self.training)
        conv = partial(nn.Conv, self.num_channels, padding="SAME")
        Y = nn.relu(norm(name="bn1")(conv(kernel_size=(3, 3), strides=self.strides, name="conv1")(X)))
        Y = norm(name="bn2")(conv(kernel_size=(3, 3), name="conv2")(Y))
        if self.use_1x1conv or changes_shape(X, self.num_channels, self.strides):
            X = conv(kernel_size=(1, 1), strides=self.strides, name="conv3")(X)
        return nn.relu(Y + X)


class ResNeXtBlock(nn.Module):
    """The ResNeXt block: 1x1 conv, grouped 3x3 conv, 1x1 conv, each with BatchNorm, plus a shortcut.

    As in the book's code (in all its frameworks), `groups` is the width of each group: the
    3x3 convolution over `bot_channels = round(num_channels * bot_mul)` channels has
    `bot_channels // groups` groups of `groups` channels. (The book's text calls `groups`
    the number of groups; RegNet's `groups=16`, a group width, needs the code's meaning.)
    The shortcut gets a 1x1 convolution and BatchNorm when `use_1x1conv` is set or the block
    changes its input's shape (see `Residual`).
    """

    num_channels: int
    groups: int
    bot_mul: float
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    @nn.compact
    def __call__(self, X):
        bot_channels = int(round(self.num_channels * self.bot_mul))
        if bot_channels % self.groups:
            raise D2LiteError(
                f"ResNeXtBlock: {bot_channels} bottleneck channels (num_channels * bot_mul) "
                f"do not split into groups of {self.groups}"
            )
        norm = partial(BatchNorm, use_running_average=not self.training)
        Y = nn.relu(norm(name="bn1")(nn.Conv(bot_channels, kernel_size=(1, 1), name="conv1")(X)))
        Y = nn.Conv(
            bot_channels,
            kernel_size=(3, 3),
            strides=self.strides,
            padding="SAME",
            feature_group_count=bot_channels // self.groups,
            name="conv2",
        )(Y)
        Y = nn.relu(norm(name="bn2")(Y))
        Y = norm(name="bn3")(nn.Conv(self.num_channels, kernel_size=(1, 1), name="conv3")(Y))
        if self.use_1x1conv or changes_shape(X, self.num_channels, self.strides):
            X = norm(name="bn4")(
                nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides, name="conv4")(X)
            )
        return nn.relu(Y + X)


# --------------------------------------------------------------------------- tensor aliases
# The book writes `d2l.reshape(x, shape)` and friends so that one text serves four frameworks.
to = jax.device_put
numpy = np.asarray
transpose = lambda a: a.T  # noqa: E731
sigmoid = jax.nn.sigmoid
ones_like, ones, zeros_like, zeros = jnp.ones_like, jnp.ones, jnp.zeros_like, jnp.zeros
arange, meshgrid, linspace, eye = jnp.arange, jnp.meshgrid, jnp.linspace, jnp.eye
sin, sinh, cos, cosh, tanh, exp, log = jnp.sin, jnp.sinh, jnp.cos, jnp.cosh, jnp.tanh, jnp.exp, jnp.log
tensor, expand_dims, matmul = jnp.array, jnp.expand_dims, jnp.matmul
concat, stack = jnp.concatenate, jnp.stack
int32, int64, float32 = jnp.int32, jnp.int64, jnp.float32
abs = jnp.abs  # noqa: A001 (the book's name; nothing in this module needs the builtin)
reshape = lambda x, *args, **kwargs: x.reshape(*args, **kwargs)  # noqa: E731
reduce_sum = lambda x, *args, **kwargs: x.sum(*args, **kwargs)  # noqa: E731
reduce_mean = lambda x, *args, **kwargs: x.mean(*args, **kwargs)  # noqa: E731
argmax = lambda x, *args, **kwargs: x.argmax(*args, **kwargs)  # noqa: E731
astype = lambda x, *args, **kwargs: x.astype(*args, **kwargs)  # noqa: E731
swapaxes = lambda x, *args, **kwargs: x.swapaxes(*args, **kwargs)  # noqa: E731
repeat = lambda x, *args, **kwargs: x.repeat(*args, **kwargs)  # noqa: E731


# ---------------------------------------------------------------------------------- pooling
# The max pool `max_pool` runs: None for Flax's; while the CPU stand-ins are on (they set it as
# the Trainer traces, devices/cpu_kernels.py) one whose gradient XLA:CPU runs faster.
MAX_POOL = contextvars.ContextVar("d2lite_max_pool", default=None)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
    """Flax's `nn.max_pool`, with which the chapters pool, or the stand-in of `MAX_POOL`."""
    return (MAX_POOL.get() or nn.max_pool)(inputs, window_shape, strides, padding)
