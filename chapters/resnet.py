# %% [markdown]
# # ResNet (D2L 8.6)
#
# A residual block adds its input to what its two 3x3 convolutions make of it, so a block
# that learns nothing passes its input on: a deeper network contains the shallower ones, and
# adding layers can no longer make it worse in principle. The section builds ResNet-18 from
# such blocks and trains it on Fashion-MNIST at 96x96, this project's main job
# (`make resnet`).
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.resnet` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/resnet.ipynb`, where the same cells run one by one.


# %%
from functools import partial
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

import d2lite as d2l
from d2lite.book import BatchNorm, changes_shape
from d2lite.models import global_avg_pool
from d2lite.models.resnet import ResNet, ResNet18

# %% [markdown]
# ## The residual block and ResNet-18
#
# The residual block is the book's `d2l.Residual`, saved in d2lite (its docstring gives the
# two ways it departs from the book's: a projection whenever the shape changes, BatchNorm
# momentum 0.9). `ResNet` is the book's template: a 7x7 stem, four stages of residual blocks,
# a global average pool and a dense layer; `ResNet18` is the book's instance of it, four
# stages of two blocks with 64, 128, 256 and 512 channels. Both are saved in d2lite too
# (`d2lite/models/resnet.py`), the way the book saves its pieces into `d2l`, since ResNeXt
# builds on the template.
#
# One departure from the book's JAX code: the head is NiN's `global_avg_pool`, a mean over the
# whole feature map (a true global pool, at any input size), instead of an average pool whose
# window is read off the input shape.


# %% [markdown]
# ## The paper's family
#
# `ResNetFamily` fills the same template with the blocks of the paper's Table 1 (He et al.,
# 2016): basic blocks for ResNet-18/34, bottleneck blocks (1x1 reduce, 3x3, 1x1 expand 4x)
# for ResNet-50/101/152/200, as the presets `resnet18` ... `resnet200` (`--depth`). With 3
# input channels and 1000 classes they have the published (torchvision) parameter counts:
# 11,689,512 for ResNet-18 and 25,557,032 for ResNet-50. The family also offers the
# pre-activation blocks of He et al.'s follow-up paper (BatchNorm-ReLU-conv, `--preact`; the
# book's exercise) and a compute `dtype` field (`jnp.bfloat16`: bfloat16 activations with
# float32 parameters and BatchNorm statistics; `Classifier.loss` already takes the loss in
# float32). From the command line, `--precision bfloat16` (every chapter's flag) computes any
# model, the book's ResNet18 included, in bfloat16 around float32 state.
#
# The family (not the book's `ResNet18`) follows torchvision's ResNet v1.5, whose counts are
# the published ones: convolutions without bias (a BatchNorm follows each), a BatchNorm after
# the shortcut projection, the stride of a bottleneck on its 3x3 convolution, and the last
# BatchNorm of each bottleneck branch initialised with scale zero, so each bottleneck block
# starts as the identity (as in Flax's ImageNet example and Goyal et al., 2017).


# %%
class ResNetBlock(nn.Module):
    """The template of the paper's blocks: a branch of convolutions plus a shortcut.

    A subclass lists its branch in `convs()` as (channels, kernel size, strides) triples.
    Post-activation (the original paper): conv-BatchNorm(-ReLU) layers, the shortcut added,
    then a ReLU. Pre-activation (`preact=True`, He et al., "Identity Mappings in Deep
    Residual Networks", 2016): BatchNorm-ReLU-conv layers and a bare sum, so the shortcut
    is a pure identity from block to block; a projection shortcut reads the first
    pre-activated input. Projections (1x1 convolution with the block's stride) appear
    whenever the block changes the shape of its input.
    """

    num_channels: int
    strides: tuple = (1, 1)
    training: bool = True
    preact: bool = False
    dtype: Any = jnp.float32
    zero_init_last = False  # start the (post-activation) branch at zero: the block is the identity

    def convs(self):
        raise NotImplementedError

    @nn.compact
    def __call__(self, X):
        convs = self.convs()
        out_channels = convs[-1][0]
        project = changes_shape(X, out_channels, self.strides)
        conv = partial(nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype)
        norm = partial(BatchNorm, use_running_average=not self.training, dtype=self.dtype)
        Y = X
        if self.preact:
            for i, (channels, size, strides) in enumerate(convs):
                Y = nn.relu(norm(name=f"bn{i + 1}")(Y))
                if i == 0:
                    shortcut = conv(out_channels, (1, 1), self.strides, name="proj_conv")(Y) if project else X
                Y = conv(channels, (size, size), strides, name=f"conv{i + 1}")(Y)
            return Y + shortcut
        for i, (channels, size, strides) in enumerate(convs):
            last = i == len(convs) - 1
            Y = conv(channels, (size, size), strides, name=f"conv{i + 1}")(Y)
            zero = last and self.zero_init_last
            Y = norm(scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name=f"bn{i + 1}")(Y)
            Y = Y if last else nn.relu(Y)
        if project:
            X = norm(name="proj_bn")(conv(out_channels, (1, 1), self.strides, name="proj_conv")(X))
        return nn.relu(Y + X)


class BasicBlock(ResNetBlock):
    """Two 3x3 convolutions of `num_channels` (ResNet-18 and 34)."""

    def convs(self):
        c = self.num_channels
        return [(c, 3, self.strides), (c, 3, (1, 1))]


class BottleneckBlock(ResNetBlock):
    """1x1 down to `num_channels`, 3x3 (with the stride), 1x1 up to 4x (ResNet-50 and deeper)."""

    expansion = 4
    zero_init_last = True

    def convs(self):
        c = self.num_channels
        return [(c, 1, (1, 1)), (c, 3, self.strides), (self.expansion * c, 1, (1, 1))]


class ResNetFamily(ResNet):
    """The book's template with the paper's blocks: `block_cls`, `preact` and a compute `dtype`.

    `arch` holds (blocks, width) per stage; a bottleneck stage outputs 4x its width.
    """

    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    block_cls: type = BasicBlock
    preact: bool = False
    dtype: Any = jnp.float32

    def conv(self, num_channels, kernel_size, strides=(1, 1)):
        return nn.Conv(
            num_channels, kernel_size, strides=strides, padding="SAME", use_bias=False, dtype=self.dtype
        )

    def norm(self):
        return BatchNorm(not self.training, dtype=self.dtype)

    def block(self, num_residuals, num_channels, first_block=False):
        return nn.Sequential(
            [
                self.block_cls(
                    num_channels,
                    strides=(2, 2) if i == 0 and not first_block else (1, 1),
                    training=self.training,
                    preact=self.preact,
                    dtype=self.dtype,
                )
                for i in range(num_residuals)
            ]
        )

    def head(self):
        # Pre-activation blocks end on a bare sum: normalize and activate it before pooling.
        final = [self.norm(), nn.relu] if self.preact else []
        return nn.Sequential([*final, global_avg_pool, nn.Dense(self.num_classes, dtype=self.dtype)])


def stages(*num_blocks):
    """The paper's stage widths 64, 128, 256, 512 with the given numbers of blocks."""
    return tuple(zip(num_blocks, (64, 128, 256, 512), strict=True))


resnet18 = partial(ResNetFamily, arch=stages(2, 2, 2, 2), block_cls=BasicBlock)
resnet34 = partial(ResNetFamily, arch=stages(3, 4, 6, 3), block_cls=BasicBlock)
resnet50 = partial(ResNetFamily, arch=stages(3, 4, 6, 3), block_cls=BottleneckBlock)
resnet101 = partial(ResNetFamily, arch=stages(3, 4, 23, 3), block_cls=BottleneckBlock)
resnet152 = partial(ResNetFamily, arch=stages(3, 8, 36, 3), block_cls=BottleneckBlock)
resnet200 = partial(ResNetFamily, arch=stages(3, 24, 36, 3), block_cls=BottleneckBlock)
RESNETS = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101, 152: resnet152, 200: resnet200}


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = ResNet18(lr=0.01)
# model.layer_summary((1, 96, 96, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.01, batches of 128 images resized to 96x96, validated on
# the 10,000 test images after each epoch: `make resnet`, the project's main job.
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
    """The chapter's own flags: which member of the family to train."""
    parser.add_argument(
        "--depth",
        type=int,
        choices=sorted(RESNETS),
        default=None,
        help="train this member of the paper's family instead of the book's ResNet18",
    )
    parser.add_argument(
        "--preact",
        action="store_true",
        help="pre-activation blocks (BatchNorm-ReLU-conv), in the family (depth 18 by default)",
    )


def build_model(args):
    """The book's ResNet18, or a member of the family when --depth or --preact ask for one."""
    if args.depth is None and not args.preact:
        return ResNet18(lr=args.lr)
    return RESNETS[args.depth or 18](lr=args.lr, preact=args.preact)


def main(argv=None):
    """The script: the cells above with the command line's values (`--help` lists the flags);
    returns its variables (`args`, `model`, `data`, `trainer`)."""
    args = d2l.chapter_args(
        "resnet",
        "ResNet (D2L 8.6)",
        epochs=10,
        batch_size=128,
        lr=0.01,
        resize=96,
        smoke_resize=32,
        options=options,
        argv=argv,
    )
    model = build_model(args)
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
