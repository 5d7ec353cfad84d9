"""Softmax regression (D2L sections 4.4-4.5): one linear layer from pixels to class scores.

Each 28x28 Fashion-MNIST image is flattened to 784 values and mapped by a single dense
layer to 10 scores; the Classifier's cross-entropy applies the softmax inside the loss
(numerically stable: the log-sum-exp form). Trained as in the book: SGD, lr 0.1, batch
256, 10 epochs. The model is the concise implementation of section 4.5 (`nn.Dense`), which
is what the from-scratch version of section 4.4 computes.

Departure from the book's JAX code: none in the model; the book's `loss(params, X, Y,
state)` becomes d2lite's `loss(Y_hat, Y)`, inherited from `d2l.Classifier`.

    python -m chapters.softmax_regression            # 10 epochs, batch 256, SGD lr 0.1
    python -m chapters.softmax_regression --quick    # a smoke run of a few batches
"""
import sys

from flax import linen as nn

import d2lite as d2l
from d2lite.cli import chapter_parser, run_main, train_chapter


class SoftmaxRegression(d2l.Classifier):
    """The softmax regression model: flatten, then one dense layer of `num_outputs` scores."""

    num_outputs: int = 10
    lr: float = 0.1

    def setup(self):
        self.net = nn.Sequential([
            lambda x: x.reshape((x.shape[0], -1)),  # flatten
            nn.Dense(self.num_outputs),
        ])  # fmt: skip


def parser():
    return chapter_parser("softmax_regression", __doc__.splitlines()[0], epochs=10, batch_size=256,
                          lr=0.1, resize=28)  # fmt: skip


def run(argv=None):
    args = parser().parse_args(argv)
    model = SoftmaxRegression(lr=args.lr)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
