"""AlexNet (D2L section 8.1): a deep CNN with ReLU, max pooling and dropout, on Fashion-MNIST.

The model is the book's Fashion-MNIST variant of AlexNet: five convolutions with 96, 256,
384, 384 and 256 channels (the first 11x11 with stride 4), 3x3 max pools with stride 2,
two dense layers of 4096 units with dropout 0.5, and a dense output layer. It trains, as in
the book, with plain SGD at lr 0.01 on images resized to 224x224. Nothing departs from the
book's JAX code except spelling: the paddings that Flax's default ("SAME") gives are written
out as the book's PyTorch paddings (2 for the 5x5 convolution, 1 for the 3x3 ones), which
give the same shapes, and dropout is switched off through the `training` field, which the
Trainer sets to False for evaluation.

The three stride-2 pools need at least 65x65 inputs (smaller ones leave no pixels).

    python -m chapters.alexnet            # 10 epochs, 224x224, batch 128
    python -m chapters.alexnet --quick    # a smoke run of a few batches
"""
import sys

from flax import linen as nn

import d2lite as d2l
from d2lite.cli import chapter_parser, run_main, train_chapter


def max_pool_3x3_s2(x):
    """The overlapping 3x3 max pool with stride 2 that AlexNet introduced."""
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))


def flatten(x):
    return x.reshape((x.shape[0], -1))


class AlexNet(d2l.Classifier):
    """AlexNet for 1-channel images: five convolutions, three dense layers."""

    lr: float = 0.01
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential([
            nn.Conv(96, kernel_size=(11, 11), strides=(4, 4), padding=1), nn.relu,
            max_pool_3x3_s2,
            nn.Conv(256, kernel_size=(5, 5), padding=2), nn.relu,
            max_pool_3x3_s2,
            nn.Conv(384, kernel_size=(3, 3), padding=1), nn.relu,
            nn.Conv(384, kernel_size=(3, 3), padding=1), nn.relu,
            nn.Conv(256, kernel_size=(3, 3), padding=1), nn.relu,
            max_pool_3x3_s2,
            flatten,
            nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=not self.training),
            nn.Dense(4096), nn.relu, nn.Dropout(0.5, deterministic=not self.training),
            nn.Dense(self.num_classes),
        ])  # fmt: skip


def parser():
    return chapter_parser("alexnet", __doc__.splitlines()[0], epochs=10, batch_size=128, lr=0.01,
                          resize=224)  # fmt: skip


def run(argv=None):
    args = parser().parse_args(argv)
    model = AlexNet(lr=args.lr)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
