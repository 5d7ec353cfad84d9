# %% [markdown]
# # ResNet in Flax NNX (D2L 8.6)
#
# The book writes its models with Flax Linen. Flax's newer NNX API holds parameters and
# BatchNorm statistics in ordinary Python objects and passes the train/eval mode explicitly
# (`model(x, train=False)`). This chapter writes the ResNet-18 of section 8.6 in NNX and
# trains it with the same Trainer, so the two APIs can be compared on the same data.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.resnet_nnx` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/resnet_nnx.ipynb`, where the same cells run one by one.


# %%
from collections.abc import Callable
from functools import partial

import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

import d2lite as d2l
from d2lite.book import BN_MOMENTUM
from d2lite.devices.cpu_kernels import conv_general_dilated_if_on
from d2lite.models import global_avg_pool
from d2lite.module import layer_name

# %% [markdown]
# ## The blocks and the network
#
# The residual and bottleneck blocks follow the ResNet paper; the network has the ResNet-18
# layout of the Linen chapter (stem, four stages, global average pool). It trains with AdamW
# (lr 1e-3, weight decay 1e-4) through `NNXClassifier` below, an adapter over Flax's
# NNX-to-Linen bridge: one Trainer for both APIs.
#
# It is not the book's network to the last weight, but the one NNX's own ResNet examples
# (and torchvision) build, so that its parameter counts can be checked against torchvision's:
# - its convolutions have no bias, since the BatchNorm after each adds a shift anyway (the
#   book's `Residual` keeps them);
# - a projection shortcut is a 1x1 convolution followed by BatchNorm, as in the ResNet
#   paper; the book's has no BatchNorm there;
# - AdamW decays every parameter, BatchNorm scales and biases included, where the Linen
#   chapter trains with the book's SGD and no weight decay at all.
# The stem, the four stages of two blocks, the widths and the head are the same.


# %%
BatchNorm = partial(nnx.BatchNorm, momentum=BN_MOMENTUM)
# XLA's convolution, or on a CPU while the Trainer traces its stand-in (d2lite/devices/cpu_kernels.py).
Conv = partial(nnx.Conv, conv_general_dilated=conv_general_dilated_if_on)


class ResidualBlock(nnx.Module):
    """Two 3x3 convolutions and a skip; a 1x1 projection when stride or width change."""

    expansion = 1

    def __init__(self, in_features, features, strides=1, *, rngs):
        conv = partial(Conv, padding="SAME", use_bias=False, rngs=rngs)
        self.conv1 = conv(in_features, features, (3, 3), strides=strides)
        self.bn1 = BatchNorm(features, rngs=rngs)
        self.conv2 = conv(features, features, (3, 3))
        self.bn2 = BatchNorm(features, rngs=rngs)
        project = strides != 1 or in_features != features
        self.projection = conv(in_features, features, (1, 1), strides=strides) if project else None
        self.projection_bn = BatchNorm(features, rngs=rngs) if project else None

    def __call__(self, x, *, train):
        out = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = self.bn2(self.conv2(out), use_running_average=not train)
        if self.projection is not None:
            x = self.projection_bn(self.projection(x), use_running_average=not train)
        return nnx.relu(out + x)  # add first, then activate


class BottleneckBlock(nnx.Module):
    """1x1 reduce, 3x3, 1x1 expand (4x): the block of ResNet-50 and deeper."""

    expansion = 4

    def __init__(self, in_features, features, strides=1, *, rngs):
        conv = partial(Conv, padding="SAME", use_bias=False, rngs=rngs)
        out_features = features * self.expansion
        self.conv1 = conv(in_features, features, (1, 1))
        self.bn1 = BatchNorm(features, rngs=rngs)
        self.conv2 = conv(features, features, (3, 3), strides=strides)
        self.bn2 = BatchNorm(features, rngs=rngs)
        self.conv3 = conv(features, out_features, (1, 1))
        # Zero scale: each block starts as the identity, which helps deep networks train.
        self.bn3 = BatchNorm(out_features, scale_init=nnx.initializers.zeros_init(), rngs=rngs)
        project = strides != 1 or in_features != out_features
        self.projection = conv(in_features, out_features, (1, 1), strides=strides) if project else None
        self.projection_bn = BatchNorm(out_features, rngs=rngs) if project else None

    def __call__(self, x, *, train):
        out = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = nnx.relu(self.bn2(self.conv2(out), use_running_average=not train))
        out = self.bn3(self.conv3(out), use_running_average=not train)
        if self.projection is not None:
            x = self.projection_bn(self.projection(x), use_running_average=not train)
        return nnx.relu(out + x)


# %%
class NNXClassifier(d2l.Classifier):
    """A classifier whose network is `nnx_class(**nnx_kwargs, rngs=...)`, an NNX module.

    Optimised with AdamW by default, as NNX tutorials train their ResNets.
    """

    nnx_class: Callable = None
    nnx_kwargs: FrozenDict = FrozenDict()
    lr: float = 1e-3
    weight_decay: float = 1e-4
    training: bool = True

    @nn.compact
    def __call__(self, X):
        network = bridge.ToLinen(self.nnx_class, kwargs=self.nnx_kwargs, name="nnx")
        return network(X, train=self.training)

    def configure_optimizers(self):
        return optax.adamw(self.lr, weight_decay=self.weight_decay)

    def layer_summary(self, X_shape, key=None):
        """Output shapes of the NNX model's `layers` (each called as `layer(x, train=False)`)."""
        from flax import nnx

        model = nnx.eval_shape(lambda: self.nnx_class(**self.nnx_kwargs, rngs=nnx.Rngs(0)))
        X = jnp.zeros(X_shape)
        summary = []
        for layer in model.layers:
            X = nnx.eval_shape(lambda layer, x: layer(x, train=False), layer, X)
            summary.append((layer_name(layer), X.shape))
            print(f"{summary[-1][0]} output shape:\t {X.shape}")
        return summary


class Stem(nnx.Module):
    """7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pool: a quarter of the resolution."""

    def __init__(self, in_features, features, *, rngs):
        self.conv = Conv(in_features, features, (7, 7), strides=2, padding="SAME", rngs=rngs)
        self.bn = BatchNorm(features, rngs=rngs)

    def __call__(self, x, *, train):
        x = nnx.relu(self.bn(self.conv(x), use_running_average=not train))
        return d2l.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")


class Stage(nnx.Module):
    def __init__(self, block_cls, num_blocks, in_features, features, strides, *, rngs):
        blocks = []
        for i in range(num_blocks):
            blocks.append(block_cls(in_features, features, strides if i == 0 else 1, rngs=rngs))
            in_features = features * block_cls.expansion
        self.blocks = nnx.List(blocks)

    def __call__(self, x, *, train):
        for block in self.blocks:
            x = block(x, train=train)
        return x


class Head(nnx.Module):
    """Global average pooling, so any input size works, then the classifier."""

    def __init__(self, in_features, num_classes, *, rngs):
        self.fc = nnx.Linear(in_features, num_classes, rngs=rngs)

    def __call__(self, x, *, train):
        return self.fc(global_avg_pool(x))


class ResNet(nnx.Module):
    def __init__(
        self,
        stage_sizes=(2, 2, 2, 2),
        block_cls=ResidualBlock,
        num_classes=10,
        in_features=1,
        width=64,
        *,
        rngs,
    ):
        layers = [Stem(in_features, width, rngs=rngs)]
        features = width
        for i, num_blocks in enumerate(stage_sizes):
            stage_width = width * 2**i
            layers.append(Stage(block_cls, num_blocks, features, stage_width, 1 if i == 0 else 2, rngs=rngs))
            features = stage_width * block_cls.expansion
        layers.append(Head(features, num_classes, rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, x, *, train=True):
        for layer in self.layers:
            x = layer(x, train=train)
        return x


def resnet18_nnx(lr=1e-3, **kwargs):
    """ResNet-18 (basic blocks, stages 2-2-2-2) in NNX, as a d2lite classifier."""
    return NNXClassifier(nnx_class=ResNet, nnx_kwargs=FrozenDict(kwargs), lr=lr)


def resnet50_nnx(lr=1e-3, **kwargs):
    """ResNet-50 (bottleneck blocks, stages 3-4-6-3) in NNX, as a d2lite classifier."""
    kwargs = {"stage_sizes": (3, 4, 6, 3), "block_cls": BottleneckBlock} | kwargs
    return NNXClassifier(nnx_class=ResNet, nnx_kwargs=FrozenDict(kwargs), lr=lr)


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = resnet18_nnx(lr=0.001, width=64)
# model.layer_summary((1, 96, 96, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of AdamW at lr 0.001, batches of 128 images resized to 96x96, validated on
# the 10,000 test images after each epoch.
# The plot redraws as training goes.


# %% active="ipynb"
# data = d2l.FashionMNIST(batch_size=128, resize=(96, 96))
# trainer = d2l.Trainer(max_epochs=10, num_gpus=1)
# trainer.fit(model, data)


# %% [markdown]
# ## Results
#
# The final validation accuracy, then validation images titled with their true and predicted
# labels, mistakes first (a script saves them to `predictions.png` in the run directory when
# given `--predictions`).


# %% active="ipynb"
# print(f"validation accuracy: {trainer.history[-1]['val_acc']:.3f}")
# d2l.plot_predictions(trainer)


# %% active="py"
def options(parser):
    """The chapter's own flag."""
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (doubling after)")


def main(argv=None):
    """The script: the cells above with the command line's values (`--help` lists the flags);
    returns its variables (`args`, `model`, `data`, `trainer`)."""
    args = d2l.chapter_args(
        "resnet_nnx",
        "ResNet in Flax NNX (D2L 8.6)",
        epochs=10,
        batch_size=128,
        lr=1e-3,
        resize=96,
        smoke_resize=32,
        options=options,
        argv=argv,
    )
    model = resnet18_nnx(lr=args.lr, width=args.width)
    model.layer_summary((1, args.resize, args.resize, 1))
    data = d2l.FashionMNIST(
        batch_size=args.batch_size, resize=(args.resize, args.resize), **args.data_options
    )
    trainer = d2l.Trainer(max_epochs=args.epochs, **args.trainer_options)
    trainer.fit(model, data)
    print(f"validation accuracy: {trainer.history[-1]['val_acc']:.3f}")
    if args.predictions:
        d2l.plot_predictions(trainer, path=f"{trainer.run_path}/predictions.png")
    return locals()


if __name__ == "__main__":
    main()
