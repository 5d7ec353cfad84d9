"""Softmax regression (D2L sections 4.4-4.5): one linear layer from pixels to class scores.

Each 28x28 Fashion-MNIST image is flattened to 784 values and mapped by a single dense
layer to 10 scores; the Classifier's cross-entropy applies the softmax inside the loss
(numerically stable: the log-sum-exp form). Trained as in the book: SGD, lr 0.1, batch
256, 10 epochs. The model is the concise implementation of section 4.5 (`nn.Dense`), which
is what the from-scratch version of section 4.4 computes.

The model is the book's `d2l.SoftmaxRegression`, trained as the book's code trains it.

    python -m chapters.softmax_regression            # 10 epochs, batch 256, SGD lr 0.1
    python -m chapters.softmax_regression --quick    # a smoke run of a few batches
"""
import sys

import d2lite as d2l
from d2lite.cli import chapter_parser, run_main, train_chapter


def parser():
    return chapter_parser("softmax_regression", __doc__.splitlines()[0], epochs=10, batch_size=256,
                          lr=0.1, resize=28)  # fmt: skip


def run(argv=None):
    args = parser().parse_args(argv)
    model = d2l.SoftmaxRegression(num_outputs=10, lr=args.lr)
    return train_chapter(args, model)


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
