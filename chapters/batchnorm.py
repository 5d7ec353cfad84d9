# %% [markdown]
# # Batch normalization (D2L 8.5)
#
# Batch normalization standardises a layer's inputs with the mean and variance of the current
# minibatch, then rescales them with a learned scale and shift; at evaluation time it uses
# running averages of those statistics instead. Deep networks then train faster and tolerate
# larger learning rates. The section writes the layer from scratch, puts it into LeNet, and
# compares it with Flax's own layer on Fashion-MNIST at 28x28.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.batchnorm` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/batchnorm.ipynb`, where the same cells run one by one.


# %%
import jax.numpy as jnp
from flax import linen as nn

import d2lite as d2l
from d2lite import book

# %% [markdown]
# ## The layer from scratch
#
# `batch_norm` is the mathematics, `BatchNorm` the bookkeeping: its scale `gamma` and shift
# `beta` are parameters, its running `moving_mean` and `moving_var` live in Flax's
# 'batch_stats' collection, which the Trainer threads through its jitted step. The running
# statistics follow Flax's convention, which is also the book's JAX code's:
# `moving = momentum * moving + (1 - momentum) * batch` with `momentum = 0.9`, and the batch
# variance is the biased one (divided by n, not n - 1). With the same momentum and epsilon the
# layer matches `flax.linen.BatchNorm` to float32 precision, and the tests check that.
#
# Departures from the book's JAX code:
# - The images are NHWC, so a 4-D input is averaged over axes (0, 1, 2), every axis but the
#   channels. The book's JAX `batch_norm` averages over (0, 2, 3), the NCHW axes of its
#   PyTorch tab, which on NHWC data normalizes over the batch, the width and the channels
#   and keeps one statistic per image row.
# - `batch_norm` returns the updated running statistics instead of assigning to variables
#   passed in, so it is a pure function; and, like Flax's layer, `BatchNorm` leaves them
#   untouched while `init` runs (the book's layer folds the initialization batch into them).


# %%
def batch_norm(X, deterministic, gamma, beta, moving_mean, moving_var, eps, momentum):
    """Normalize `X`; return the output and the (possibly updated) running mean and variance.

    In training mode (`deterministic=False`) `X` is normalized with the statistics of this
    batch, per feature: over the batch for a 2-D input (batch, features), over the batch,
    height and width for a 4-D NHWC input. The running statistics move towards them
    (`momentum` is the weight kept by the old value). In evaluation mode
    (`deterministic=True`) the running statistics normalize and are returned unchanged.
    """
    if deterministic:
        X_hat = (X - moving_mean) / jnp.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    assert X.ndim in (2, 4), f"batch_norm takes (batch, features) or NHWC inputs, got {X.shape}"
    axes = (0,) if X.ndim == 2 else (0, 1, 2)  # every axis but the features (channels last)
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)  # biased: divided by n
    X_hat = (X - mean) / jnp.sqrt(var + eps)
    moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
    moving_var = momentum * moving_var + (1.0 - momentum) * var
    return gamma * X_hat + beta, moving_mean, moving_var


# %%
class BatchNorm(nn.Module):
    """Batch normalization from scratch for `num_dims`-D inputs (2: dense, 4: NHWC convolution).

    `num_features` is the number of outputs of the dense layer or channels of the
    convolution before it. `deterministic=True` (evaluation) uses the running statistics.
    """

    num_features: int
    num_dims: int
    deterministic: bool = False
    momentum: float = 0.9
    eps: float = 1e-5

    @nn.compact
    def __call__(self, X):
        shape = (1, self.num_features) if self.num_dims == 2 else (1, 1, 1, self.num_features)
        gamma = self.param("gamma", nn.initializers.ones, shape)
        beta = self.param("beta", nn.initializers.zeros, shape)
        moving_mean = self.variable("batch_stats", "moving_mean", jnp.zeros, shape)
        moving_var = self.variable("batch_stats", "moving_var", jnp.ones, shape)
        Y, mean, var = batch_norm(
            X,
            self.deterministic,
            gamma,
            beta,
            moving_mean.value,
            moving_var.value,
            eps=self.eps,
            momentum=self.momentum,
        )
        # Evaluation leaves the collection read-only; `init`'s dummy batch is no data to remember.
        if not (self.deterministic or self.is_initializing()):
            moving_mean.value, moving_var.value = mean, var
        return Y


# %% [markdown]
# ## LeNet with batch normalization
#
# `BNLeNetScratch` puts the scratch layer after each convolution and hidden dense layer of
# LeNet, before the sigmoid; `BNLeNet` is the same network with Flax's `nn.BatchNorm`, the
# chapter's default (`--scratch` trains the other). Both keep their running statistics with
# momentum 0.9, d2lite's one rule (`d2lite.book.BN_MOMENTUM`); the book's JAX code leaves
# Flax's 0.99 here. One more departure from the book's JAX
# code: the convolutions are unpadded (5x5 'VALID': 28 -> 24 -> 12 -> 8 -> 4) as in the book's
# PyTorch, MXNet and TensorFlow tabs; the JAX tab inherits Flax's default 'SAME' padding and
# so feeds 784 features, not 256, to the first dense layer.


# %%
class BNLeNetScratch(d2l.Classifier):
    """LeNet with the scratch BatchNorm after each convolution and hidden dense layer."""

    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        deterministic = not self.training
        self.net = nn.Sequential(
            [
                nn.Conv(6, kernel_size=(5, 5), padding="VALID"),
                BatchNorm(6, num_dims=4, deterministic=deterministic),
                nn.sigmoid,
                lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
                nn.Conv(16, kernel_size=(5, 5), padding="VALID"),
                BatchNorm(16, num_dims=4, deterministic=deterministic),
                nn.sigmoid,
                lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
                lambda x: x.reshape((x.shape[0], -1)),  # flatten
                nn.Dense(120),
                BatchNorm(120, num_dims=2, deterministic=deterministic),
                nn.sigmoid,
                nn.Dense(84),
                BatchNorm(84, num_dims=2, deterministic=deterministic),
                nn.sigmoid,
                nn.Dense(self.num_classes),
            ]
        )


class BNLeNet(d2l.Classifier):
    """The same network with Flax's BatchNorm at d2lite's one momentum, 0.9 (`d2lite.book.BatchNorm`)."""

    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential(
            [
                nn.Conv(6, kernel_size=(5, 5), padding="VALID"),
                book.BatchNorm(not self.training),
                nn.sigmoid,
                lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
                nn.Conv(16, kernel_size=(5, 5), padding="VALID"),
                book.BatchNorm(not self.training),
                nn.sigmoid,
                lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
                lambda x: x.reshape((x.shape[0], -1)),  # flatten
                nn.Dense(120),
                book.BatchNorm(not self.training),
                nn.sigmoid,
                nn.Dense(84),
                book.BatchNorm(not self.training),
                nn.sigmoid,
                nn.Dense(self.num_classes),
            ]
        )


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = BNLeNet(lr=0.1)
# model.layer_summary((1, 28, 28, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.1 (BatchNorm allows the book's larger rate), batches of
# 128 images at 28x28, validated on the 10,000 test images after each epoch.
# The plot redraws as training goes.


# %% active="ipynb"
# data = d2l.FashionMNIST(batch_size=128)
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
    """The chapter's own flag."""
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="train BNLeNetScratch (the from-scratch BatchNorm) instead of BNLeNet",
    )


def main(argv=None):
    """The script: the cells above with the command line's values (`--help` lists the flags);
    returns its variables (`args`, `model`, `data`, `trainer`)."""
    args = d2l.chapter_args(
        "batchnorm",
        "Batch normalization (D2L 8.5)",
        epochs=10,
        batch_size=128,
        lr=0.1,
        resize=28,
        options=options,
        argv=argv,
    )
    model = (BNLeNetScratch if args.scratch else BNLeNet)(lr=args.lr)
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
