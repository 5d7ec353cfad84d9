"""RegNet (D2L section 8.8): the AnyNet design space and its 32-layer RegNetX, at 96x96.

`AnyNet` is the template that Radosavovic et al. (2020) search over: a stem (3x3/2
convolution, BatchNorm, ReLU), stages of ResNeXt blocks whose first block halves the
resolution, and a head (global average pool, dense layer). Each stage is described by
`(depth, num_channels, group_width, bot_mul)`. `RegNetX32` is the book's instance: stem
width 32, two stages of depth 4 and 6 and width 32 and 80, group width 16, no bottleneck
(`bot_mul` 1). Trained as in the book: SGD, lr 0.05, batch 128, 96x96, 10 epochs.

The blocks are the book's `d2l.ResNeXtBlock`, from d2lite, whose `groups` argument is, as in
the book's code, the width of each group: RegNet's group width 16 is passed as it is (2 groups
in the first stage, 5 in the second).

Departures from the book's JAX code:
- The head averages over the whole feature map with `jnp.mean` (a true global pool) instead
  of an average pool whose window is read off the input shape.

    python -m chapters.regnet            # 10 epochs, 96x96, batch 128, SGD lr 0.05
    python -m chapters.regnet --quick    # a smoke run of a few batches
"""
import sys

import jax.numpy as jnp
from flax import linen as nn

import d2lite as d2l
from d2lite.book import BatchNorm
from d2lite.cli import chapter_parser, run_main, train_chapter


class AnyNet(d2l.Classifier):
    """Stem, stages of ResNeXt blocks, head; `arch` holds `(depth, num_channels, group_width, bot_mul)`
    for each stage. (Both fields have defaults only because the base class's fields do.)"""

    arch: tuple = ()
    stem_channels: int = 32
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def stem(self, num_channels):
        """3x3/2 convolution, BatchNorm, ReLU: half the resolution."""
        return nn.Sequential([
            nn.Conv(num_channels, kernel_size=(3, 3), strides=(2, 2), padding=(1, 1)),
            BatchNorm(not self.training),
            nn.relu,
        ])  # fmt: skip

    def stage(self, depth, num_channels, group_width, bot_mul):
        """`depth` ResNeXt blocks of width `num_channels`; the first halves the resolution."""
        blocks = [d2l.ResNeXtBlock(num_channels, group_width, bot_mul, use_1x1conv=True, strides=(2, 2),
                                   training=self.training)]  # fmt: skip
        blocks += [d2l.ResNeXtBlock(num_channels, group_width, bot_mul, training=self.training)
                   for _ in range(depth - 1)]  # fmt: skip
        return nn.Sequential(blocks)

    def head(self):
        """Global average pool, at any input size, then the dense classifier."""
        return nn.Sequential([lambda x: jnp.mean(x, axis=(1, 2)), nn.Dense(self.num_classes)])

    def setup(self):
        if not self.arch:
            raise ValueError("AnyNet needs arch: one (depth, num_channels, group_width, bot_mul) per stage")
        self.net = nn.Sequential([self.stem(self.stem_channels),
                                  *(self.stage(*s) for s in self.arch),
                                  self.head()])  # fmt: skip


class RegNetX32(AnyNet):
    """The book's 32-layer RegNetX: stem 32; stages (depth, width) (4, 32) and (6, 80); group
    width 16; bot_mul 1."""

    arch: tuple = ((4, 32, 16, 1), (6, 80, 16, 1))
    stem_channels: int = 32
    lr: float = 0.1
    num_classes: int = 10


def parser():
    return chapter_parser("regnet", __doc__.splitlines()[0], epochs=10, batch_size=128,
                          lr=0.05, resize=96)  # fmt: skip


def run(argv=None):
    args = parser().parse_args(argv)
    model = RegNetX32(lr=args.lr)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
