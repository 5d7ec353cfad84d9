# %% [markdown]
# # GoogLeNet (D2L 8.4)
#
# GoogLeNet does not choose between kernel sizes: each of its Inception blocks runs 1x1, 3x3
# and 5x5 convolutions and a max pool side by side on the same input and stacks their outputs
# along the channels. The section trains it on Fashion-MNIST at 96x96, the book's smaller
# input, which keeps the run affordable.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.googlenet` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/googlenet.ipynb`, where the same cells run one by one.


# %%
from functools import partial

import jax.numpy as jnp
from flax import linen as nn

import d2lite as d2l
from d2lite.models import KERNEL_INITS, global_avg_pool

# %% [markdown]
# ## The Inception block
#
# Four branches: a 1x1 convolution; a 1x1 then a 3x3 convolution; a 1x1 then a 5x5
# convolution; a 3x3 max pool then a 1x1 convolution. All keep the height and width, so their
# outputs (`c1`, `c2[1]`, `c3[1]` and `c4` channels) concatenate along the channels; the 1x1
# convolutions in front of the larger kernels cut their cost.


# %%
def max_pool_3x3_s2_same(x):
    """A 3x3 max pool of stride 2 that halves the height and width (rounding up)."""
    return d2l.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")


# %%
class Inception(nn.Module):
    """Four parallel branches with `c1`, `c2[1]`, `c3[1]`, `c4` output channels, concatenated.

    `c2` and `c3` are (1x1 reduction channels, output channels) of the 3x3 and 5x5 branches.
    """

    c1: int
    c2: tuple
    c3: tuple
    c4: int
    kernel_init: object = KERNEL_INITS["lecun"]

    def setup(self):
        conv = partial(nn.Conv, kernel_init=self.kernel_init)
        self.b1_1 = conv(self.c1, kernel_size=(1, 1))
        self.b2_1 = conv(self.c2[0], kernel_size=(1, 1))
        self.b2_2 = conv(self.c2[1], kernel_size=(3, 3), padding="SAME")
        self.b3_1 = conv(self.c3[0], kernel_size=(1, 1))
        self.b3_2 = conv(self.c3[1], kernel_size=(5, 5), padding="SAME")
        self.b4_2 = conv(self.c4, kernel_size=(1, 1))

    def __call__(self, x):
        b1 = nn.relu(self.b1_1(x))
        b2 = nn.relu(self.b2_2(nn.relu(self.b2_1(x))))
        b3 = nn.relu(self.b3_2(nn.relu(self.b3_1(x))))
        b4 = nn.relu(self.b4_2(d2l.max_pool(x, window_shape=(3, 3), strides=(1, 1), padding="SAME")))
        return jnp.concatenate((b1, b2, b3, b4), axis=-1)


# %% [markdown]
# ## The network
#
# A stem (`b1`, `b2`), three stages of Inception blocks (`b3`, `b4`, `b5`) separated by 3x3 max
# pools of stride 2, a global average pool at the end of `b5`, and one dense layer.
#
# The book's JAX code writes the global pool as an `avg_pool` whose window is the feature
# map's size; here it is NiN's `global_avg_pool` (a mean over height and width), which is the
# same and needs no flatten. Every layer pads "SAME", so any input size works.


# %%
class GoogleNet(d2l.Classifier):
    """GoogLeNet: stem b1, b2; Inception stages b3, b4, b5 (global average pool); a dense layer."""

    lr: float = 0.01
    num_classes: int = 10
    weight_init: str = "lecun"  # a key of d2lite.models.KERNEL_INITS, for every kernel

    def setup(self):
        self.net = nn.Sequential(
            [self.b1(), self.b2(), self.b3(), self.b4(), self.b5(), self.layer(nn.Dense, self.num_classes)]
        )

    def layer(self, kind, *args, **kwargs):
        """A convolution, Inception block or dense layer with the model's kernel initialisation."""
        return kind(*args, kernel_init=KERNEL_INITS[self.weight_init], **kwargs)

    def b1(self):
        """A 7x7 convolution of stride 2 and a pool: a quarter of the height and width."""
        return nn.Sequential(
            [
                self.layer(nn.Conv, 64, kernel_size=(7, 7), strides=(2, 2), padding="SAME"),
                nn.relu,
                max_pool_3x3_s2_same,
            ]
        )

    def b2(self):
        return nn.Sequential(
            [
                self.layer(nn.Conv, 64, kernel_size=(1, 1)),
                nn.relu,
                self.layer(nn.Conv, 192, kernel_size=(3, 3), padding="SAME"),
                nn.relu,
                max_pool_3x3_s2_same,
            ]
        )

    def b3(self):
        return nn.Sequential(
            [
                self.layer(Inception, 64, (96, 128), (16, 32), 32),
                self.layer(Inception, 128, (128, 192), (32, 96), 64),
                max_pool_3x3_s2_same,
            ]
        )

    def b4(self):
        return nn.Sequential(
            [
                self.layer(Inception, 192, (96, 208), (16, 48), 64),
                self.layer(Inception, 160, (112, 224), (24, 64), 64),
                self.layer(Inception, 128, (128, 256), (24, 64), 64),
                self.layer(Inception, 112, (144, 288), (32, 64), 64),
                self.layer(Inception, 256, (160, 320), (32, 128), 128),
                max_pool_3x3_s2_same,
            ]
        )

    def b5(self):
        return nn.Sequential(
            [
                self.layer(Inception, 256, (160, 320), (32, 128), 128),
                self.layer(Inception, 384, (192, 384), (48, 128), 128),
                global_avg_pool,
            ]
        )


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = GoogleNet(lr=0.01, weight_init="he")
# model.layer_summary((1, 96, 96, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.01, batches of 128 images resized to 96x96, validated on
# the 10,000 test images after each epoch.
# The plot redraws as training goes.
#
# One change from the book: the kernels start from He et al.'s initialisation, not Flax's
# default. GoogLeNet stacks 22 layers of convolutions and ReLUs without BatchNorm. With Flax's
# default (LeCun: variance 1/fan-in), each ReLU passes on about half the variance it gets,
# so the signal fades stage by stage: on a batch of Fashion-MNIST images at 96x96, the
# standard deviation of b1's output is 0.29, of b5's 0.003, of the logits 0.005, and the
# gradients reaching the early layers fade alike. Every class then scores about the same,
# the loss sits at ln 10 = 2.30, and SGD at lr 0.01 takes hundreds of steps to climb out (on
# an H200 the book's setting was still at 2.30 after two epochs). The Xavier initialisation
# of the book's PyTorch code (`init_cnn`) starts smaller still (logits 0.004). He's doubles
# the variance, 2/fan-in, to make up for the half that each ReLU zeroes, and the signal keeps
# its size (b5 0.77, logits 1.8). Measured at 48x48 over 60 steps: He's loss goes 2.39 ->
# 1.45, LeCun's and Xavier's stay at 2.302. `--init lecun` trains as the book's JAX code,
# `--init xavier` as its PyTorch code. BatchNorm (section 8.5), the book's next section, is
# the lasting cure: it rescales each layer's output whatever the initialisation.


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
        "googlenet",
        "GoogLeNet (D2L 8.4)",
        epochs=10,
        batch_size=128,
        lr=0.01,
        resize=96,
        smoke_resize=32,
        options=partial(d2l.init_flag, default="he"),
        argv=argv,
    )
    model = GoogleNet(lr=args.lr, weight_init=args.init)
    if args.init == "he":
        print(
            "kernels initialised as He et al.'s, not the book's (Flax's default), with which GoogLeNet "
            "sits at loss 2.30 for hundreds of steps (--init lecun: the book's)"
        )
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
