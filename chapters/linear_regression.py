"""Linear regression (D2L sections 3.4-3.5): the smallest model the Trainer fits, on synthetic data.

The data are `y = Xw + b + noise` with the book's `w = [2, -3.4]`, `b = 4.2` and Gaussian
noise of standard deviation 0.01; the model is one dense unit initialised from N(0, 0.01^2)
and trained with minibatch SGD (batch 32, lr 0.03, 3 epochs) on half the squared error. Then
the learned weights are compared with the true ones.

The data and the model are the book's `d2l.SyntheticRegressionData` and
`d2l.LinearRegression`. There are no images, so the command line is its own: `--epochs`,
`--lr`, `--batch-size`, `--out-dir`, `--seed` (the initial weights; the data come from the
book's fixed key) and `--quick`.

    python -m chapters.linear_regression            # 3 epochs, batch 32, SGD lr 0.03
    python -m chapters.linear_regression --quick    # 10 batches per epoch, 2 epochs
"""
import argparse
import sys

import numpy as np

import d2lite as d2l
from d2lite.cli import QUICK_BATCHES, positive_float, positive_int, run_main

TRUE_W = (2.0, -3.4)
TRUE_B = 4.2


def parser():
    p = argparse.ArgumentParser(prog="python -m chapters.linear_regression",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default: 3, or 2 with --quick)")  # fmt: skip
    p.add_argument("--lr", type=positive_float, default=0.03)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--out-dir", default="runs/linear_regression",
                   help="where the live plot (progress.png/.svg) is written")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_BATCHES} batches per epoch, 2 epochs unless --epochs is given")
    return p


def run(argv=None):
    args = parser().parse_args(argv)
    data = d2l.SyntheticRegressionData(w=d2l.tensor(TRUE_W), b=TRUE_B, batch_size=args.batch_size)
    model = d2l.LinearRegression(lr=args.lr)
    limits = {"limit_train_batches": QUICK_BATCHES, "limit_val_batches": 2} if args.quick else {}
    trainer = d2l.Trainer(max_epochs=args.epochs or (2 if args.quick else 3), seed=args.seed,
                          out_dir=args.out_dir, **limits)  # fmt: skip
    trainer.fit(model, data)
    w, b = model.get_w_b(trainer.state)
    print(f"error in estimating w: {np.asarray(TRUE_W) - np.asarray(w).reshape(-1)}")
    print(f"error in estimating b: {TRUE_B - float(b[0]):.4f}")
    return trainer


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
