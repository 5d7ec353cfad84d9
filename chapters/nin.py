"""Network in Network (D2L section 8.3): 1x1 convolutions and a global average pool, no dense layers.

A NiN block is one ordinary convolution followed by two 1x1 convolutions, each with ReLU:
the 1x1 convolutions act as a small per-pixel dense network. NiN uses AlexNet's kernel
sizes and channels (96, 256, 384) with 3x3 max pools of stride 2, then dropout, a last NiN
block with one channel per class, and a global average pool that turns each channel into
that class's logit, so the network has no dense layers at all. It trains, as in the book,
with plain SGD at lr 0.05 on images resized to 224x224.

Departure from the book's JAX code: it ends with `nn.avg_pool(x, (5, 5))` and a flatten.
That window equals the feature map only at 224x224; at 96x96 the last map is 1x1 and the
fixed 5x5 window leaves nothing, at other sizes it averages only part of the map. Here
`global_avg_pool` averages over the whole height and width (and needs no flatten), so the
model runs at any input size from 67x67 up (smaller inputs leave no pixels after the
three pools). The book also writes `num_classes = 10` without a type annotation, which
makes it a class constant rather than a field; here it is a field.

    python -m chapters.nin            # 10 epochs, 224x224, batch 128
    python -m chapters.nin --quick    # a smoke run of a few batches
"""
import sys

import jax.numpy as jnp
from flax import linen as nn

import d2lite as d2l
from chapters.alexnet import max_pool_3x3_s2
from d2lite.cli import chapter_parser, run_main, train_chapter


def nin_block(out_channels, kernel_size, strides, padding):
    """A convolution, then two 1x1 convolutions (a per-pixel MLP), each followed by ReLU."""
    return nn.Sequential([
        nn.Conv(out_channels, kernel_size, strides, padding), nn.relu,
        nn.Conv(out_channels, kernel_size=(1, 1)), nn.relu,
        nn.Conv(out_channels, kernel_size=(1, 1)), nn.relu,
    ])  # fmt: skip


def global_avg_pool(x):
    """(B, H, W, C) -> (B, C): the mean over the whole height and width, at any input size."""
    return jnp.mean(x, axis=(1, 2))


class NiN(d2l.Classifier):
    """Network in Network: four NiN blocks and a global average pool, no dense layers."""

    lr: float = 0.05
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential([
            nin_block(96, kernel_size=(11, 11), strides=(4, 4), padding=0),
            max_pool_3x3_s2,
            nin_block(256, kernel_size=(5, 5), strides=(1, 1), padding=2),
            max_pool_3x3_s2,
            nin_block(384, kernel_size=(3, 3), strides=(1, 1), padding=1),
            max_pool_3x3_s2,
            nn.Dropout(0.5, deterministic=not self.training),
            nin_block(self.num_classes, kernel_size=(3, 3), strides=(1, 1), padding=1),
            global_avg_pool,
        ])  # fmt: skip


def parser():
    return chapter_parser("nin", __doc__.splitlines()[0], epochs=10, batch_size=128, lr=0.05,
                          resize=224)  # fmt: skip


def run(argv=None):
    args = parser().parse_args(argv)
    model = NiN(lr=args.lr)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
