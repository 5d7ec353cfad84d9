# %% [markdown]
# # DenseNet (D2L 8.7)
#
# ResNet adds a block's input to its output; DenseNet concatenates them instead, so every
# layer of a dense block sees what all the layers before it made. Transition layers between
# the blocks keep the channel count in check. The section trains a DenseNet on Fashion-MNIST
# at 96x96.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.densenet` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/densenet.ipynb`, where the same cells run one by one.


# %%
import jax.numpy as jnp
from flax import linen as nn

import d2lite as d2l
from d2lite.book import BatchNorm
from d2lite.models import global_avg_pool

# %% [markdown]
# ## Dense blocks
#
# A dense block is a chain of BatchNorm-ReLU-3x3 convolutions. Each convolution adds
# `growth_rate` new channels, and the block's output is its input concatenated with
# everything the convolutions made.


# %%
def conv_block(num_channels, training=True):
    """BatchNorm, ReLU, then a 3x3 convolution to `num_channels` (the pre-activation order)."""
    return nn.Sequential(
        [
            BatchNorm(not training),
            nn.relu,
            nn.Conv(num_channels, kernel_size=(3, 3), padding="SAME"),
        ]
    )


# %%
class DenseBlock(nn.Module):
    """`num_convs` conv blocks; each sees the concatenation of the input and all earlier outputs.

    The output has `input channels + num_convs * num_channels` channels (`num_channels` is
    the growth rate).
    """

    num_convs: int
    num_channels: int
    training: bool = True

    def setup(self):
        self.net = [conv_block(self.num_channels, self.training) for _ in range(self.num_convs)]

    def __call__(self, X):
        for blk in self.net:
            Y = blk(X)
            X = jnp.concatenate((X, Y), axis=-1)  # channels last (NHWC)
        return X


# %% [markdown]
# ## Transition layers
#
# BatchNorm, ReLU, a 1x1 convolution that halves the channels, and a 2x2 average pool that
# halves the height and width.


# %%
def transition_block(num_channels, training=True):
    """BatchNorm, ReLU, 1x1 convolution to `num_channels`, 2x2 average pooling (stride 2)."""
    return nn.Sequential(
        [
            BatchNorm(not training),
            nn.relu,
            nn.Conv(num_channels, kernel_size=(1, 1)),
            lambda x: nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
        ]
    )


# %% [markdown]
# ## The network
#
# ResNet's stem, four dense blocks of four convolutions with growth rate 32, transitions
# between them, and a head of BatchNorm, ReLU, global average pool and a dense layer.
#
# Departures from the book's JAX code:
# - The channel count is carried from block to block, as in the book's PyTorch code and the
#   DenseNet paper: after each dense block `num_channels += num_convs * growth_rate`, then the
#   transition halves it, so the widths run 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248.
#   The book's JAX `create_net` recomputes `self.num_channels + num_convs * growth_rate` for
#   every block instead, so each of its transitions outputs 96 channels whatever came in
#   (and its last block ends at 224).
# - The head averages over the whole feature map with NiN's `global_avg_pool` (a true global
#   pool) instead of an average pool whose window is read off the input shape.
# - `conv_block` and `transition_block` are functions returning `nn.Sequential`, like the
#   book's PyTorch helpers, rather than the JAX tab's `ConvBlock`/`TransitionBlock` classes;
#   the layers are the same.


# %%
class DenseNet(d2l.Classifier):
    """DenseNet: a ResNet-like stem, dense blocks with transitions between them, a global pool."""

    num_channels: int = 64
    growth_rate: int = 32
    arch: tuple = (4, 4, 4, 4)
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def b1(self):
        """The stem: 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pool (a quarter of the size)."""
        return [
            nn.Conv(self.num_channels, kernel_size=(7, 7), strides=(2, 2), padding="SAME"),
            BatchNorm(not self.training),
            nn.relu,
            lambda x: d2l.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME"),
        ]

    def setup(self):
        layers = self.b1()
        num_channels = self.num_channels  # carried from block to block (see the text above)
        for i, num_convs in enumerate(self.arch):
            layers.append(DenseBlock(num_convs, self.growth_rate, training=self.training))
            num_channels += num_convs * self.growth_rate  # what the dense block outputs
            if i != len(self.arch) - 1:  # a transition between blocks halves the channels
                num_channels //= 2
                layers.append(transition_block(num_channels, training=self.training))
        layers += [
            BatchNorm(not self.training),
            nn.relu,
            global_avg_pool,
            nn.Dense(self.num_classes),
        ]
        self.net = nn.Sequential(layers)


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = DenseNet(lr=0.01)
# model.layer_summary((1, 96, 96, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.01, batches of 128 images resized to 96x96, validated on
# the 10,000 test images after each epoch.
# The plot redraws as training goes.


# %% active="ipynb"
# data = d2l.FashionMNIST(batch_size=128, resize=(96, 96))
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
def main(argv=None):
    """The script: the cells above with the command line's values (`--help` lists the flags);
    returns its variables (`args`, `model`, `data`, `trainer`)."""
    args = d2l.chapter_args(
        "densenet",
        "DenseNet (D2L 8.7)",
        epochs=10,
        batch_size=128,
        lr=0.01,
        resize=96,
        smoke_resize=32,
        argv=argv,
    )
    model = DenseNet(lr=args.lr)
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
