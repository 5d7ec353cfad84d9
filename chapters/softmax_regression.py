# %% [markdown]
# # Softmax regression (D2L 4.4-4.5)
#
# The simplest classifier of images: one linear layer from pixels to class scores, and a
# softmax that turns the scores into probabilities. Sections 4.4 and 4.5 write it from
# scratch, then concisely, and train it on Fashion-MNIST.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.softmax_regression` trains it (`--help` lists the flags), and `make notebooks` writes
# `notebooks/softmax_regression.ipynb`, where the same cells run one by one.


# %%
import d2lite as d2l

# %% [markdown]
# ## The model
#
# Each 28x28 image is flattened to 784 values and mapped by a single dense layer to 10
# scores: the book's `d2l.SoftmaxRegression`, the concise model of section 4.5 (`nn.Dense`),
# which computes what section 4.4's from-scratch version does. The Classifier's cross-entropy
# applies the softmax inside the loss, in the numerically stable log-sum-exp form. There is no
# code to write here: the model comes from d2lite as the book's comes from `d2l`.


# %% [markdown]
# ## Shapes, layer by layer
#
# The notebook's cells write the chapter's values out, as the book does; the script (`main`,
# at the end of the file) takes them from its flags, `--help` lists them.


# %% active="ipynb"
# model = d2l.SoftmaxRegression(num_outputs=10, lr=0.1)
# model.layer_summary((1, 28, 28, 1))


# %% [markdown]
# ## Training
#
# Ten epochs of plain SGD at lr 0.1, batches of 256 images at 28x28, validated on the
# 10,000 test images after each epoch.
# The plot redraws as training goes.


# %% active="ipynb"
# data = d2l.FashionMNIST(batch_size=256)
# trainer = d2l.Trainer(max_epochs=10)
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
        "softmax_regression",
        "Softmax regression (D2L 4.4-4.5)",
        epochs=10,
        batch_size=256,
        lr=0.1,
        resize=28,
        argv=argv,
    )
    model = d2l.SoftmaxRegression(num_outputs=10, lr=args.lr)
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
