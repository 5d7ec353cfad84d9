# %% [markdown]
# # ResNeXt (D2L 8.6.5)
#
# ResNeXt (Xie et al., 2017) splits the 3x3 convolution of a bottleneck residual block into
# independent groups of channels: many narrow paths side by side instead of one wide one, for
# a fraction of the weights and multiply-adds. The section builds the block; here it fills
# ResNet-18's template and trains on Fashion-MNIST at 96x96.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.resnext` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/resnext.ipynb`, where the same cells run one by one.


# %%
from flax import linen as nn

import d2lite as d2l
from d2lite.models.resnet import ResNet

# %% [markdown]
# ## The ResNeXt block in the ResNet template
#
# A 1x1 convolution to `bot_channels = num_channels * bot_mul` channels, a 3x3 convolution in
# which each of the `groups` groups maps its own `bot_channels / groups` channels to as many
# outputs (`groups` times fewer weights and multiply-adds than a dense 3x3), and a 1x1
# convolution back to `num_channels` that mixes the groups again. `ResNeXt` is the ResNet
# template of the ResNet chapter (same stem, stages and head; saved in `d2lite.models.resnet`)
# with these blocks.
#
# The network keeps ResNet-18's layout, stages of two blocks with 64, 128, 256 and 512
# channels, with `groups=16` and `bot_mul=1`, the book's example block. Cardinality 16 rather
# than the paper's 32 keeps every group at least 4 channels wide (64 / 16, like the groups of
# the paper's ResNeXt-50 32x4d), and a bottleneck as wide as the block keeps ResNet-18's
# widths. The blocks then need about 7x fewer multiply-adds than ResNet-18's
# (2 c^2 + 9 c^2 / 16 against 18 c^2 per pixel) and a sixth of the parameters (1.8 M).
#
# The block is the book's `d2l.ResNeXtBlock`, saved in d2lite. As in the book's code, its
# `groups` argument is the width of each group, so `ResNeXt.block` passes
# `bot_channels // groups` to get `groups` groups. On a CPU the Trainer runs its grouped 3x3
# convolution as a dense block-diagonal one (`d2lite/cpu_kernels.py`): XLA's CPU backend runs
# grouped convolutions 7 to 50 times slower, and this network's step would take 17 s at batch
# 32 instead of 1.1 s. Departures from the book's JAX code: the shortcut gets its 1x1 convolution
# and BatchNorm whenever the block's stride or channel count changes the shape, not only when
# `use_1x1conv=True`; the head is NiN's `global_avg_pool`, as in ResNet.


# %%
class ResNeXt(ResNet):
    """The ResNet template (stem, stages, head: `d2lite.models.resnet`) with ResNeXt blocks of
    `groups` groups each (cardinality)."""

    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    groups: int = 16
    bot_mul: float = 1.0

    def block(self, num_residuals, num_channels, first_block=False):
        blk = []
        for i in range(num_residuals):
            downsample = i == 0 and not first_block  # as in ResNet.block: halve, project
            strides = (2, 2) if downsample else (1, 1)
            group_width = round(num_channels * self.bot_mul) // self.groups  # the block's `groups`
            blk.append(
                d2l.ResNeXtBlock(
                    num_channels,
                    group_width,
                    self.bot_mul,
                    use_1x1conv=downsample,
                    strides=strides,
                    training=self.training,
                )
            )
        return nn.Sequential(blk)


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = ResNeXt(lr=0.01, groups=16, bot_mul=1.0)
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
def options(parser):
    """The chapter's own flags: the block's cardinality and bottleneck."""
    parser.add_argument("--groups", type=int, default=16, help="groups of each 3x3 convolution (cardinality)")
    parser.add_argument(
        "--bot-mul", type=float, default=1.0, help="bottleneck channels as a multiple of the block's channels"
    )


def main(argv=None):
    """The script: the cells above with the command line's values (`--help` lists the flags);
    returns its variables (`args`, `model`, `data`, `trainer`)."""
    args = d2l.chapter_args(
        "resnext",
        "ResNeXt (D2L 8.6.5)",
        epochs=10,
        batch_size=128,
        lr=0.01,
        resize=96,
        smoke_resize=32,
        options=options,
        argv=argv,
    )
    model = ResNeXt(lr=args.lr, groups=args.groups, bot_mul=args.bot_mul)
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
