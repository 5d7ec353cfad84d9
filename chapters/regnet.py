# %% [markdown]
# # RegNet (D2L 8.8)
#
# Instead of one more hand-made network, the section describes a whole design space, AnyNet,
# and the simple rules (widths and depths that grow from stage to stage, one group width)
# that its best networks follow: RegNet. It trains the book's 32-layer RegNetX on
# Fashion-MNIST at 96x96.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.regnet` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/regnet.ipynb`, where the same cells run one by one.


# %%
from flax import linen as nn

import d2lite as d2l
from d2lite.book import BatchNorm
from d2lite.models import global_avg_pool

# %% [markdown]
# ## AnyNet and RegNetX
#
# `AnyNet` is the template that Radosavovic et al. (2020) search over: a stem (3x3/2
# convolution, BatchNorm, ReLU), stages of ResNeXt blocks whose first block halves the
# resolution, and a head (global average pool, dense layer). Each stage is described by
# `(depth, num_channels, group_width, bot_mul)`. `RegNetX32` is the book's instance: stem
# width 32, two stages of depth 4 and 6 and width 32 and 80, group width 16, no bottleneck
# (`bot_mul` 1).
#
# The blocks are the book's `d2l.ResNeXtBlock`, from d2lite, whose `groups` argument is, as in
# the book's code, the width of each group: RegNet's group width 16 is passed as it is (2
# groups in the first stage, 5 in the second). One departure from the book's JAX code: the
# head averages over the whole feature map with NiN's `global_avg_pool` (a true global pool)
# instead of an average pool whose window is read off the input shape.


# %%
class AnyNet(d2l.Classifier):
    """Stem, stages of ResNeXt blocks, head; `arch` holds `(depth, num_channels, group_width, bot_mul)`
    for each stage. (Both fields have defaults only because the base class's fields do.)"""

    arch: tuple = ()
    stem_channels: int = 32
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def stem(self, num_channels):
        """3x3/2 convolution, BatchNorm, ReLU: half the resolution."""
        return nn.Sequential(
            [
                nn.Conv(num_channels, kernel_size=(3, 3), strides=(2, 2), padding=(1, 1)),
                BatchNorm(not self.training),
                nn.relu,
            ]
        )

    def stage(self, depth, num_channels, group_width, bot_mul):
        """`depth` ResNeXt blocks of width `num_channels`; the first halves the resolution."""
        blocks = [
            d2l.ResNeXtBlock(
                num_channels, group_width, bot_mul, use_1x1conv=True, strides=(2, 2), training=self.training
            )
        ]
        blocks += [
            d2l.ResNeXtBlock(num_channels, group_width, bot_mul, training=self.training)
            for _ in range(depth - 1)
        ]
        return nn.Sequential(blocks)

    def head(self):
        """Global average pool, at any input size, then the dense classifier."""
        return nn.Sequential([global_avg_pool, nn.Dense(self.num_classes)])

    def setup(self):
        if not self.arch:
            raise ValueError("AnyNet needs arch: one (depth, num_channels, group_width, bot_mul) per stage")
        self.net = nn.Sequential(
            [self.stem(self.stem_channels), *(self.stage(*s) for s in self.arch), self.head()]
        )


# %%
class RegNetX32(AnyNet):
    """The book's 32-layer RegNetX: stem 32; stages (depth, width) (4, 32) and (6, 80); group
    width 16; bot_mul 1."""

    arch: tuple = ((4, 32, 16, 1), (6, 80, 16, 1))
    stem_channels: int = 32
    lr: float = 0.1
    num_classes: int = 10


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = RegNetX32(lr=0.05)
# model.layer_summary((1, 96, 96, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.05, batches of 128 images resized to 96x96, validated on
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
        "regnet",
        "RegNet (D2L 8.8)",
        epochs=10,
        batch_size=128,
        lr=0.05,
        resize=96,
        smoke_resize=32,
        argv=argv,
    )
    model = RegNetX32(lr=args.lr)
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
