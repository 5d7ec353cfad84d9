"""Linear regression (D2L sections 3.4-3.5): the smallest model the Trainer fits, on synthetic data.

The data are `y = Xw + b + noise` with the book's `w = [2, -3.4]`, `b = 4.2` and Gaussian
noise of standard deviation 0.01; the model is one dense unit initialised from N(0, 0.01^2)
and trained with minibatch SGD (batch 32, lr 0.03, 3 epochs) on half the squared error. Then
the learned weights are compared with the true ones.

Departures from the book's JAX code:
- `loss(Y_hat, Y)` takes predictions (d2lite's signature, the book's PyTorch one) instead of
  `(params, X, Y, state)`; the value is the same, the mean of `(y_hat - y)^2 / 2`.
- The data are drawn with NumPy from a `seed` (the book uses a fixed JAX key) and offered
  through `arrays(train)` as well as the book's `get_dataloader(train)`, so the Trainer keeps
  them on the device and slices batches inside its jitted step.
- There are no images, so the command line is its own: `--epochs`, `--lr`, `--batch-size`,
  `--out-dir`, `--seed` and `--quick`.

    python -m chapters.linear_regression            # 3 epochs, batch 32, SGD lr 0.03
    python -m chapters.linear_regression --quick    # 10 batches per epoch, 2 epochs
"""
import argparse
import sys

import numpy as np
from flax import linen as nn

import d2lite as d2l
from d2lite.cli import QUICK_BATCHES, positive_float, positive_int, run_main

TRUE_W = (2.0, -3.4)
TRUE_B = 4.2


class SyntheticRegressionData(d2l.DataModule):
    """Synthetic data for linear regression: `y = Xw + b + noise`, X standard normal."""

    def __init__(self, w, b, noise=0.01, num_train=1000, num_val=1000, batch_size=32, seed=0):
        self.save_hyperparameters()
        w = np.asarray(w, dtype=np.float32).reshape(-1, 1)
        rng = np.random.default_rng(seed)
        n = num_train + num_val
        self.X = rng.standard_normal((n, len(w)), dtype=np.float32)
        noise = np.float32(noise) * rng.standard_normal((n, 1), dtype=np.float32)
        self.y = self.X @ w + np.float32(b) + noise

    def _rows(self, train):
        return slice(0, self.num_train) if train else slice(self.num_train, None)

    def get_dataloader(self, train):
        return self.get_tensorloader((self.X, self.y), train, self._rows(train))

    def arrays(self, train):
        rows = self._rows(train)
        return self.X[rows], self.y[rows]


class LinearRegression(d2l.Module):
    """A linear regression model: one dense unit, trained on half the squared error."""

    lr: float = 0.03

    def setup(self):
        self.net = nn.Dense(1, kernel_init=nn.initializers.normal(0.01))

    def loss(self, Y_hat, Y, averaged=True):
        losses = (Y_hat - Y) ** 2 / 2
        return losses.mean() if averaged else losses

    def get_w_b(self, state):
        """The learned weight vector and bias."""
        net = state.params["net"]
        return net["kernel"].reshape(-1), net["bias"][0]


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
    p.add_argument("--seed", type=int, default=0, help="seeds the data and the initial weights")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_BATCHES} batches per epoch, 2 epochs unless --epochs is given")
    return p


def run(argv=None):
    args = parser().parse_args(argv)
    data = SyntheticRegressionData(w=TRUE_W, b=TRUE_B, batch_size=args.batch_size, seed=args.seed)
    model = LinearRegression(lr=args.lr)
    limits = {"limit_train_batches": QUICK_BATCHES, "limit_val_batches": 2} if args.quick else {}
    trainer = d2l.Trainer(max_epochs=args.epochs or (2 if args.quick else 3), seed=args.seed,
                          out_dir=args.out_dir, **limits)  # fmt: skip
    trainer.fit(model, data)
    w, b = model.get_w_b(trainer.state)
    print(f"error in estimating w: {np.asarray(TRUE_W) - np.asarray(w)}")
    print(f"error in estimating b: {TRUE_B - float(b):.4f}")
    return trainer


def main(argv=None):
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
