# %% [markdown]
# # AlexNet (D2L 8.1)
#
# AlexNet, the network that won ImageNet in 2012, is LeNet made deep and wide: five
# convolutions instead of two, ReLU instead of the sigmoid, max pooling, and dropout in its
# large dense layers. The section trains the book's one-channel variant on Fashion-MNIST
# resized to 224x224.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.alexnet` trains it (`--help` lists the flags), and `make notebooks`
# writes `notebooks/alexnet.ipynb`, where the same cells run one by one.


# %%
from flax import linen as nn

import d2lite as d2l
from d2lite.models import dense_head, max_pool_3x3_s2

# %% [markdown]
# ## The model
#
# Five convolutions with 96, 256, 384, 384 and 256 channels (the first 11x11 with stride 4),
# 3x3 max pools with stride 2 (overlapping windows, AlexNet's choice), then two dense layers
# of 4096 units with dropout 0.5 and a dense output layer. The three pools need inputs of at
# least 65x65: smaller ones leave no pixels. The pool (`max_pool_3x3_s2`) and the dense layers
# (`dense_head`) are saved in `d2lite.models`, since NiN and VGG reuse them.
#
# Nothing departs from the book's JAX code except spelling: the paddings are written out as
# the book's PyTorch paddings (2 for the 5x5 convolution, 1 for the 3x3 ones), which give the
# same shapes as Flax's default "SAME", and dropout is switched off through the `training`
# field, which the Trainer sets to False for evaluation.


# %%
class AlexNet(d2l.Classifier):
    """AlexNet for 1-channel images: five convolutions, three dense layers."""

    lr: float = 0.01
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential(
            [
                nn.Conv(96, kernel_size=(11, 11), strides=(4, 4), padding=1),
                nn.relu,
                max_pool_3x3_s2,
                nn.Conv(256, kernel_size=(5, 5), padding=2),
                nn.relu,
                max_pool_3x3_s2,
                nn.Conv(384, kernel_size=(3, 3), padding=1),
                nn.relu,
                nn.Conv(384, kernel_size=(3, 3), padding=1),
                nn.relu,
                nn.Conv(256, kernel_size=(3, 3), padding=1),
                nn.relu,
                max_pool_3x3_s2,
                *dense_head(self.num_classes, self.training),
            ]
        )


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = AlexNet(lr=0.01)
# model.layer_summary((1, 224, 224, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.01, batches of 128 images resized to 224x224, validated on
# the 10,000 test images after each epoch. On a CPU this takes hours; `--quick` is a smoke run.
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
        "alexnet",
        "AlexNet (D2L 8.1)",
        epochs=10,
        batch_size=128,
        lr=0.01,
        resize=224,
        smoke_resize=65,
        argv=argv,
    )
    model = AlexNet(lr=args.lr)
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
