"""VGG (D2L section 8.2): networks built from repeated blocks of 3x3 convolutions.

A VGG block is `num_convs` 3x3 convolutions (padding 1, ReLU) and a 2x2 max pool with
stride 2, which halves the height and width. `VGG(arch)` stacks one block per
`(num_convs, out_channels)` pair of `arch` and ends with AlexNet's classifier: two dense
layers of 4096 units with dropout 0.5 and a dense output layer. `VGG11_ARCH` is VGG-11;
like the book, the chapter trains VGG-11 with every block's channels divided by 4
(`SMALL_VGG11_ARCH`) at 224x224 with plain SGD at lr 0.01, because the full network
(about 129 million parameters here) is too slow for Fashion-MNIST on one machine.

The model is the book's. Two departures in spelling: `arch` is a tuple of pairs, hashable as
a Flax field should be, and `VGG` takes keyword arguments only (`VGG(arch=..., lr=...)`, as
the book calls it). The book's `arch: list`, a field with no default after the base class's
fields with defaults, is refused by Python's dataclasses unless the fields are keyword-only,
and positionally `VGG(arch)` would set the base class's first field instead. VGG-11's five
pools need inputs of at least 32x32.

    python -m chapters.vgg            # 10 epochs, 224x224, batch 128
    python -m chapters.vgg --quick    # a smoke run of a few batches
"""
import sys

from flax import linen as nn

import d2lite as d2l
from chapters.alexnet import flatten
from d2lite.cli import chapter_parser, run_main, train_chapter

VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
SMALL_VGG11_ARCH = tuple((num_convs, channels // 4) for num_convs, channels in VGG11_ARCH)


def max_pool_2x2(x):
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def vgg_block(num_convs, out_channels):
    """`num_convs` 3x3 convolutions with ReLU, then a 2x2 max pool that halves the size."""
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv(out_channels, kernel_size=(3, 3), padding=1), nn.relu]
    layers.append(max_pool_2x2)
    return nn.Sequential(layers)


class VGG(d2l.Classifier, kw_only=True):
    """VGG: one `vgg_block` per (num_convs, out_channels) of `arch`, then three dense layers."""

    arch: tuple  # ((num_convs, out_channels), ...): one pair per block
    lr: float = 0.01
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential([
            *(vgg_block(num_convs, channels) for num_convs, channels in self.arch),
            flatten,
            nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=not self.training),
            nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=not self.training),
            nn.Dense(self.num_classes),
        ])  # fmt: skip


def parser():
    return chapter_parser("vgg", __doc__.splitlines()[0], epochs=10, batch_size=128, lr=0.01,
                          resize=224)  # fmt: skip


def run(argv=None):
    args = parser().parse_args(argv)
    model = VGG(arch=SMALL_VGG11_ARCH, lr=args.lr)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
