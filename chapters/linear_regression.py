# %% [markdown]
# # Linear regression (D2L 3.4-3.5)
#
# The smallest model the Trainer fits: one dense unit that learns `y = Xw + b` from noisy
# examples. Sections 3.4 and 3.5 write it from scratch, then with the framework's layers;
# both learn weights close to the true ones, which is the check that the training loop works.
#
# This file is a script and a notebook at once (jupytext's percent format):
# `python -m chapters.linear_regression` trains it (`--help` lists the flags), and
# `make notebooks` writes `notebooks/linear_regression.ipynb`, where the same cells run one by
# one.


# %%
import numpy as np

import d2lite as d2l

# %% [markdown]
# ## The data and the model
#
# The data are the book's `d2l.SyntheticRegressionData`: 1000 training and 1000 validation
# examples of `y = Xw + b + noise` with `w = [2, -3.4]`, `b = 4.2` and Gaussian noise of
# standard deviation 0.01. The model is the book's `d2l.LinearRegression`: one dense unit
# initialised from N(0, 0.01^2), trained with minibatch SGD on half the squared error.


# %%
TRUE_W = (2.0, -3.4)
TRUE_B = 4.2


# %% [markdown]
# ## Training
#
# The book's values: 3 epochs of SGD at lr 0.03 in batches of 32. The script (`main`, at the
# end of the file) takes them from its flags; there are no images, so it has no image flags
# (`--resize`, `--data-dir`, ...).


# %% active="ipynb"
# data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
# model = d2l.LinearRegression(lr=0.03)
# trainer = d2l.Trainer(max_epochs=3)
# trainer.fit(model, data)


# %% [markdown]
# ## Results
#
# How far the learned parameters are from the true ones.


# %% active="ipynb"
# w, b = model.get_w_b(trainer.state)
# print(f"error in estimating w: {data.w - w.reshape(data.w.shape)}")
# print(f"error in estimating b: {data.b - b}")


# %% active="py"
def main(argv=None):
    """The script: the cells above with the command line's values (`--help` lists the flags);
    returns its variables (`args`, `model`, `data`, `trainer`)."""
    args = d2l.chapter_args(
        "linear_regression",
        "Linear regression (D2L 3.4-3.5)",
        epochs=3,
        batch_size=32,
        lr=0.03,
        resize=None,
        argv=argv,
    )
    data = d2l.SyntheticRegressionData(w=d2l.tensor(TRUE_W), b=TRUE_B, batch_size=args.batch_size)
    model = d2l.LinearRegression(lr=args.lr)
    trainer = d2l.Trainer(max_epochs=args.epochs, **args.trainer_options)
    trainer.fit(model, data)
    w, b = model.get_w_b(trainer.state)
    print(f"error in estimating w: {np.asarray(TRUE_W) - np.asarray(w).reshape(-1)}")
    print(f"error in estimating b: {TRUE_B - float(b[0]):.4f}")
    return locals()


if __name__ == "__main__":
    main()
