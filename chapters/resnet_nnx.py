# %% [markdown]
# # ResNet in Flax NNX (D2L 8.6, the next edition)
#
# The book's next edition (d2l-neu) writes its models with Flax NNX: a model is a Python
# object holding its parameters and BatchNorm statistics, built with `rngs=` and the input
# widths its layers need, and called as `model(X)`; the Trainer switches BatchNorm and Dropout
# between training and evaluation with `nnx.view`. This chapter builds that edition's
# ResNet-18 through d2lite's second face, `from d2lite import nnx as d2l`, and trains it with
# the same Trainer as the Linen chapter (`chapters/resnet.py`), on the same data: the face
# splits the model into its variables for the Trainer's jitted programs and writes the trained
# ones back into it.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.resnet_nnx` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/resnet_nnx.ipynb`, where the same cells run one by one.


# %%
from flax import nnx

from d2lite import nnx as d2l

# %% [markdown]
# ## ResNet-18
#
# The residual block is the edition's `d2l.Residual` (two 3x3 convolutions with BatchNorm, a
# 1x1 convolution on the shortcut when the block downsamples). `ResNet` is its template: a
# 7x7 stem with BatchNorm and a 3x3 max pool, four stages of residual blocks, a global average
# pool and a linear layer; `arch` lists (blocks, channels) per stage, and each layer is told
# how many channels it receives. The paper's family (bottleneck and pre-activation blocks,
# the published parameter counts) stays with the Linen chapter.
#
# One departure from the edition's code, as in the Linen chapter: the stem pools with
# `d2l.max_pool` (Flax's max pool, or on a CPU while the Trainer traces its steps a stand-in
# whose gradient XLA:CPU runs faster) instead of `nnx.max_pool`; the numbers are the same.


# %%
class ResNet(d2l.Classifier):
    """The edition's ResNet template: stem, the stages of `arch`, global average pool, head."""

    def __init__(self, arch, lr=0.1, num_classes=10, in_channels=1, rngs=None):
        super().__init__()
        self.save_hyperparameters(ignore=["rngs"])
        rngs = nnx.Rngs(d2l.get_key()) if rngs is None else rngs
        self.net = self.create_net(in_channels, rngs)

    def b1(self, in_channels, rngs):
        """The stem: a quarter of the resolution, 64 channels."""
        return nnx.Sequential(
            nnx.Conv(in_channels, 64, kernel_size=(7, 7), strides=(2, 2), padding="SAME", rngs=rngs),
            nnx.BatchNorm(64, rngs=rngs),
            nnx.relu,
            lambda x: d2l.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME"),
        )

    def block(self, num_residuals, num_channels, in_channels, first_block=False, rngs=None):
        """A stage: the first block halves the resolution (except after the stem)."""
        blocks = []
        for i in range(num_residuals):
            downsample = i == 0 and not first_block
            blocks.append(
                d2l.Residual(
                    num_channels,
                    use_1x1conv=downsample,
                    strides=(2, 2) if downsample else (1, 1),
                    in_channels=in_channels,
                    rngs=rngs,
                )
            )
            in_channels = num_channels
        return nnx.Sequential(*blocks)

    def create_net(self, in_channels, rngs):
        layers, channels = [self.b1(in_channels, rngs)], 64
        for i, (num_residuals, num_channels) in enumerate(self.arch):
            layers.append(self.block(num_residuals, num_channels, channels, first_block=i == 0, rngs=rngs))
            channels = num_channels
        head = nnx.Sequential(
            lambda x: x.mean(axis=(1, 2)), nnx.Linear(channels, self.num_classes, rngs=rngs)
        )
        return nnx.Sequential(*layers, head)


class ResNet18(ResNet):
    """Four stages of two residual blocks: 64, 128, 256 and 512 channels."""

    def __init__(self, lr=0.1, num_classes=10, in_channels=1, rngs=None):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes, in_channels, rngs)


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = ResNet18(lr=0.01)
# model.layer_summary((1, 96, 96, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of the book's plain SGD at lr 0.01, batches of 128 images resized to 96x96,
# validated on the 10,000 test images after each epoch, as in the Linen chapter. After `fit`,
# `model` holds the trained variables.
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
        "resnet_nnx",
        "ResNet in Flax NNX (D2L 8.6)",
        epochs=10,
        batch_size=128,
        lr=0.01,
        resize=96,
        smoke_resize=32,
        argv=argv,
    )
    model = ResNet18(lr=args.lr)
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
