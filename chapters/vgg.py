# %% [markdown]
# # VGG (D2L 8.2)
#
# VGG showed that a deep network can be described by a short list of repeated blocks: a few
# 3x3 convolutions, then a pool that halves the resolution. The section builds VGG-11 from
# such blocks and trains a slimmer version of it on Fashion-MNIST at 224x224.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.vgg` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/vgg.ipynb`, where the same cells run one by one.


# %%
from flax import linen as nn

import d2lite as d2l
from d2lite.models import dense_head

# %% [markdown]
# ## The VGG block
#
# `num_convs` 3x3 convolutions with padding 1 and ReLU keep the height and width; a 2x2 max
# pool with stride 2 then halves them. Five such pools need inputs of at least 32x32.


# %%
def max_pool_2x2(x):
    return d2l.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def vgg_block(num_convs, out_channels):
    """`num_convs` 3x3 convolutions with ReLU, then a 2x2 max pool that halves the size."""
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv(out_channels, kernel_size=(3, 3), padding=1), nn.relu]
    layers.append(max_pool_2x2)
    return nn.Sequential(layers)


# %% [markdown]
# ## The network
#
# `VGG(arch=...)` stacks one block per `(num_convs, out_channels)` pair of `arch` and ends
# with AlexNet's classifier: two dense layers of 4096 units with dropout 0.5, and a dense
# output layer. `VGG11_ARCH` is VGG-11. Like the book, the chapter divides every block's
# channels by 4 (`SMALL_VGG11_ARCH`): the full network (about 129 million parameters here)
# is too slow for Fashion-MNIST on one machine.
#
# Two departures from the book's JAX code, both in spelling: `arch` is a tuple of pairs,
# hashable as a Flax field should be, and `VGG` takes keyword arguments only
# (`VGG(arch=..., lr=...)`, as the book calls it). The book's `arch: list`, a field without a
# default after the base class's fields with defaults, is refused by Python's dataclasses
# unless the fields are keyword-only, and positionally `VGG(arch)` would set the base class's
# first field instead.


# %%
class VGG(d2l.Classifier, kw_only=True):
    """VGG: one `vgg_block` per (num_convs, out_channels) of `arch`, then three dense layers."""

    arch: tuple  # ((num_convs, out_channels), ...): one pair per block
    lr: float = 0.01
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential(
            [
                *(vgg_block(num_convs, channels) for num_convs, channels in self.arch),
                *dense_head(self.num_classes, self.training),  # AlexNet's
            ]
        )


VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
SMALL_VGG11_ARCH = tuple((num_convs, channels // 4) for num_convs, channels in VGG11_ARCH)


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = VGG(arch=((1, 16), (1, 32), (2, 64), (2, 128), (2, 128)), lr=0.01)
# model.layer_summary((1, 224, 224, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.01, batches of 128 images resized to 224x224, validated on
# the 10,000 test images after each epoch.
# The plot redraws as training goes.


# %% active="ipynb"
# data = d2l.FashionMNIST(batch_size=128, resize=(224, 224))
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
        "vgg", "VGG (D2L 8.2)", epochs=10, batch_size=128, lr=0.01, resize=224, smoke_resize=32, argv=argv
    )
    model = VGG(arch=SMALL_VGG11_ARCH, lr=args.lr)
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
