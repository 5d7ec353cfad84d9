"""ResNeXt (D2L section 8.6.5): grouped-convolution bottleneck blocks in the ResNet template, at 96x96.

A ResNeXt block (Xie et al., 2017) is a bottleneck residual block whose 3x3 convolution is
split into `groups` independent groups: a 1x1 convolution to `bot_channels =
num_channels * bot_mul` channels, a 3x3 convolution in which each of the `groups` groups
maps its own `bot_channels / groups` channels to as many outputs (`groups` times fewer
weights and multiply-adds than a dense 3x3), and a 1x1 convolution back to `num_channels`
that mixes the groups again. `ResNeXt` is the ResNet template of `chapters.resnet` (same
stem, stages and head) with these blocks.

The network trained here keeps ResNet-18's layout, stages of two blocks with 64, 128, 256
and 512 channels, with `groups=16` and `bot_mul=1`, the book's example block. Cardinality
16 rather than the paper's 32 keeps every group at least 4 channels wide (64 / 16, like the
groups of the paper's ResNeXt-50 32x4d), and a bottleneck as wide as the block keeps
ResNet-18's widths. The blocks then need about 7x fewer multiply-adds than ResNet-18's
(2 c^2 + 9 c^2 / 16 against 18 c^2 per pixel) and a sixth of the parameters (1.8 M).

On a CPU, XLA runs grouped convolutions (`feature_group_count > 1`) and their gradients
very slowly, 7 to 50 times slower than a dense convolution of the same shapes: this
network's training step took 17 s at batch 32, against 1.1 s for ResNet-18.
`grouped_conv`, the convolution of the blocks' 3x3 layers, therefore runs a grouped
convolution on a CPU as a dense one whose kernel is block-diagonal (the weights of group g
connect only input group g to output group g; all other entries are zeros that get no
gradient). The parameters and the results are those of the grouped convolution (the tests
compare outputs and gradients); the CPU does `groups` times the arithmetic of the 3x3
layers, and a training step costs about as much as ResNet-18's (1.1 s at batch 32) instead
of 15x more. On accelerators `grouped_conv` is `lax.conv_general_dilated` unchanged.

Departures from the book's JAX code:
- `groups` is the number of groups, as in the paper and the book's prose and figure: the
  3x3 convolution gets `feature_group_count=groups`, so its kernel has shape (3, 3,
  bot_channels // groups, bot_channels). The book's code passes `bot_channels // groups`,
  which makes `groups` the width of each group instead of their number.
- The shortcut gets its 1x1 convolution and BatchNorm whenever the block's stride or channel
  count changes the shape, not only when `use_1x1conv=True` (see `chapters.resnet`).
- The head is `chapters.resnet`'s global average pool (`jnp.mean`, any input size).

    python -m chapters.resnext            # 10 epochs, 96x96, batch 128, SGD lr 0.01
    python -m chapters.resnext --quick    # a smoke run of a few batches
"""
import sys
from functools import partial

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from chapters.resnet import BatchNorm, ResNet, changes_shape
from d2lite.cli import chapter_parser, run_main, train_chapter


def grouped_conv(lhs, rhs, window_strides, padding, *args, feature_group_count=1, **kwargs):
    """`lax.conv_general_dilated`; on a CPU a grouped convolution runs as a dense block-diagonal one.

    Takes the arguments of `lax.conv_general_dilated` (an `nn.Conv(conv_general_dilated=...)`)
    with the kernel `rhs` in Flax's HWIO layout: (kernel size..., in channels per group,
    out channels).
    """
    groups = feature_group_count
    if groups > 1 and jax.default_backend() == "cpu":
        *window, group_in, out = rhs.shape
        blocks = rhs.reshape(*window, group_in, groups, out // groups)
        # full[..., G * group_in + i, g * group_out + o] = blocks[..., i, g, o] if G == g else 0
        full = jnp.einsum("...igo,Gg->...Gigo", blocks, jnp.eye(groups, dtype=rhs.dtype))
        rhs, groups = full.reshape(*window, groups * group_in, out), 1
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, feature_group_count=groups,
                                    **kwargs)  # fmt: skip


class ResNeXtBlock(nn.Module):
    """The ResNeXt block: 1x1 conv, grouped 3x3 conv (`groups` groups), 1x1 conv, plus a shortcut.

    `bot_channels = round(num_channels * bot_mul)` must be a multiple of `groups`. The 3x3
    convolution carries the block's `strides`; the shortcut is a 1x1 convolution with
    BatchNorm when `use_1x1conv` is set or the block changes the shape of its input.
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
            raise ValueError(f"ResNeXtBlock: {bot_channels} bottleneck channels "
                             f"(num_channels * bot_mul) do not split into {self.groups} groups")  # fmt: skip
        norm = partial(BatchNorm, use_running_average=not self.training)
        Y = nn.relu(norm(name="bn1")(nn.Conv(bot_channels, kernel_size=(1, 1), name="conv1")(X)))
        Y = nn.Conv(bot_channels, kernel_size=(3, 3), strides=self.strides, padding="SAME",
                    feature_group_count=self.groups, conv_general_dilated=grouped_conv, name="conv2")(Y)
        Y = nn.relu(norm(name="bn2")(Y))
        Y = norm(name="bn3")(nn.Conv(self.num_channels, kernel_size=(1, 1), name="conv3")(Y))
        if self.use_1x1conv or changes_shape(X, self.num_channels, self.strides):
            X = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides, name="conv4")(X)
            X = norm(name="bn4")(X)
        return nn.relu(Y + X)


class ResNeXt(ResNet):
    """The ResNet template (stem, stages, head from `chapters.resnet`) with ResNeXt blocks."""

    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    groups: int = 16
    bot_mul: float = 1.0

    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            downsample = i == 0 and not first_block  # as in ResNet.block: halve, project
            strides = (2, 2) if downsample else (1, 1)
            blk.append(ResNeXtBlock(num_channels, self.groups, self.bot_mul, use_1x1conv=downsample,
                                    strides=strides, training=self.training))  # fmt: skip
        return nn.Sequential(blk)


def parser():
    p = chapter_parser("resnext", __doc__.splitlines()[0], epochs=10, batch_size=128, lr=0.01, resize=96)
    p.add_argument("--groups", type=int, default=16, help="groups of each 3x3 convolution (cardinality)")
    p.add_argument("--bot-mul", type=float, default=1.0,
                   help="bottleneck channels as a multiple of the block's channels")  # fmt: skip
    return p


def run(argv=None):
    args = parser().parse_args(argv)
    model = ResNeXt(lr=args.lr, groups=args.groups, bot_mul=args.bot_mul)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
