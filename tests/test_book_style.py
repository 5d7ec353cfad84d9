"""Code written the book's way trains through the same jitted Trainer: its loss and step
signatures, methods replaced with add_to_class, its own fit_epoch loop, its plot cadence."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Blobs, TinyCNN
from flax import linen as nn

import d2lite as d2l
from d2lite.module import recording_plots


class PredictionLoss(TinyCNN):
    """d2lite's own style: the loss of the predictions."""

    def loss(self, Y_hat, Y, averaged=True):
        losses = optax.softmax_cross_entropy_with_integer_labels(Y_hat, Y)
        return losses.mean() if averaged else losses


def test_one_step_gives_the_same_loss_and_gradients_in_both_styles(blobs):
    batch = blobs.preprocess(tuple(a[:32] for a in blobs.arrays(True)))
    model, key = TinyCNN(dropout=0.3), jax.random.PRNGKey(7)
    variables = model.init({"params": key, "dropout": key}, batch[0])
    state = d2l.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.sgd(0.1),
        batch_stats=variables["batch_stats"],
        dropout_rng=key,
    )

    @partial(jax.jit, static_argnums=0)
    def step(model, state):
        with recording_plots() as plotted:  # what the step hands to plot(), as inside the Trainer
            return model.training_step(state.params, batch, state), plotted

    ((book_loss, book_updates), book_grads), plotted = step(TinyCNN(dropout=0.3), state)
    assert plotted == {("loss", True): book_loss}
    ((own_loss, own_updates), own_grads), _ = step(PredictionLoss(dropout=0.3), state)
    assert float(book_loss) == pytest.approx(float(own_loss), rel=1e-6)
    book, own = jax.tree.leaves((book_grads, book_updates)), jax.tree.leaves((own_grads, own_updates))
    for a, b in zip(book, own, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # ... and both are the cross-entropy of what the network computes, dropout key included.
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch[0],
        mutable=["batch_stats"],
        rngs={"dropout": state.dropout_rng},
    )
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    assert float(book_loss) == pytest.approx(float(expected), rel=1e-6)


def test_both_styles_train_to_the_same_state(blobs, quiet_trainer):
    book, own = quiet_trainer(max_epochs=2), quiet_trainer(max_epochs=2)
    book.fit(TinyCNN(), blobs)
    own.fit(PredictionLoss(), blobs)
    for a, b in zip(jax.tree.leaves(book.state.params), jax.tree.leaves(own.state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert book.history[-1]["val_acc"] == own.history[-1]["val_acc"]


def test_a_loss_replaced_with_add_to_class_is_the_one_that_trains(blobs, quiet_trainer, monkeypatch):
    calls = []

    @partial(jax.jit, static_argnums=(0, 5))
    def loss(self, params, X, Y, state, averaged=True):  # the book's 4.5 shape: no BatchNorm updates
        calls.append(averaged)
        Y_hat = state.apply_fn({"params": params}, *X, mutable=False, rngs=None)
        losses = optax.softmax_cross_entropy_with_integer_labels(Y_hat, Y) + 1.0  # visibly ours
        return (losses.mean() if averaged else losses), {}

    monkeypatch.setattr(d2l.Classifier, "loss", loss)  # what @d2l.add_to_class(d2l.Classifier) does
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(TinyCNN(use_bn=False), blobs)
    assert calls  # traced into both the training and the validation programs
    assert trainer.history[0]["train_loss"] > 1.0 and trainer.history[-1]["val_loss"] > 1.0
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]


def test_training_points_are_plotted_at_the_books_cadence(blobs, quiet_trainer):
    class PlotsItsStep(TinyCNN):
        def training_step(self, params, batch, state):
            self.plot("step", state.step, train=True)  # a value we can predict
            return super().training_step(params, batch, state)

    trainer = quiet_trainer(max_epochs=2)  # 8 steps an epoch, 2 points an epoch: every 4 steps
    trainer.fit(PlotsItsStep(), blobs)
    # x: the mean of step / 8 over each group of 4 steps, as the book's board averages them.
    assert trainer.board.data["train_step"] == [(0.1875, 1.5), (0.6875, 5.5), (1.1875, 9.5), (1.6875, 13.5)]
    losses = trainer.board.data["train_loss"]
    assert [x for x, _ in losses] == [0.1875, 0.6875, 1.1875, 1.6875]
    # One validation point an epoch, at its end, with the exact means of the history.
    assert trainer.board.data["val_acc"] == [
        (epoch + 1.0, record["val_acc"]) for epoch, record in enumerate(trainer.history)
    ]
    assert trainer.board is trainer.model.board and trainer.board.xlim == [0, 2]


def test_a_validation_step_that_plots_batch_means_still_counts_each_example_once(quiet_trainer):
    class BatchMeans(TinyCNN):
        def validation_step(self, params, batch, state):  # the book's way: averaged values
            Y_hat = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, *batch[:-1])
            self.plot("loss", optax.softmax_cross_entropy_with_integer_labels(Y_hat, batch[-1]).mean(), False)
            self.plot("acc", (Y_hat.argmax(-1) == batch[-1]).mean(), train=False)

    data = Blobs(num_val=70, batch_size=32)  # 70 = 2 * 32 + 6: the last batch is padded
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(BatchMeans(), data)
    X, y = data.preprocess(data.arrays(False))
    variables = {"params": trainer.state.params, "batch_stats": trainer.state.batch_stats}
    logits = TinyCNN(training=False).apply(variables, X)
    metrics = trainer.evaluate()
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["acc"] == pytest.approx(float((logits.argmax(-1) == y).mean()), abs=1e-6)


def books_fit_epoch(self):
    """The book's section 3.4 loop, on the host, one batch at a time (as a reader writes it)."""
    self.model.training = True
    for batch in self.train_dataloader:
        self.seen["modes"].add(self.model.training)
        batch = self.prepare_batch(batch)
        (_, updates), grads = self.model.training_step(self.state.params, batch, self.state)
        self.state = self.state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
        self.train_batch_idx += 1
        self.seen["train"] += 1
    self.model.training = False
    for batch in self.val_dataloader:
        self.model.validation_step(self.state.params, self.prepare_batch(batch), self.state)
        self.val_batch_idx += 1
        self.seen["val"] += 1


def test_a_fit_epoch_of_the_readers_own_runs_instead(quiet_trainer, monkeypatch):
    monkeypatch.setattr(d2l.Trainer, "fit_epoch", books_fit_epoch)  # as @d2l.add_to_class(d2l.Trainer) does
    trainer = quiet_trainer(max_epochs=2)
    trainer.seen = {"modes": set(), "train": 0, "val": 0}
    model = TinyCNN()
    model.board.yscale = "log"  # the book sets this before fit
    trainer.fit(model, Blobs(num_train=64, num_val=40))
    assert trainer.seen == {"modes": {True}, "train": 2 * 2, "val": 2 * 2}  # 64 / 32 and ceil(40 / 32)
    assert int(trainer.state.step) == 4 and trainer.history == []
    assert len(model.board.data["train_loss"]) == 4 and len(model.board.data["val_acc"]) == 2
    assert trainer.board.yscale == "log"


def test_the_books_sgd_whose_state_is_a_class_trains_in_the_books_loop(quiet_trainer, monkeypatch):
    class BookSGD(d2l.SGD):
        def init(self, params):
            return optax.EmptyState  # the class, not an instance, as the book's code has it

    class Regression(d2l.LinearRegressionScratch):
        def configure_optimizers(self):
            return BookSGD(self.lr)

    monkeypatch.setattr(d2l.Trainer, "fit_epoch", books_fit_epoch)
    trainer = quiet_trainer(max_epochs=2)
    trainer.seen = {"modes": set(), "train": 0, "val": 0}
    trainer.fit(Regression(2, lr=0.1), d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2))
    assert trainer.state.opt_state is optax.EmptyState and trainer.seen["train"] == 2 * 32
    np.testing.assert_allclose(trainer.state.params["w"].reshape(-1), [2.0, -3.4], atol=0.05)


def test_modules_written_the_books_way_match_d2lites_own(quiet_trainer):
    from chapters.lenet import LeNet as ChapterLeNet

    class BookLeNet(d2l.Classifier):  # the book's way: hyperparameter fields, setup, nn.Sequential
        lr: float = 0.1
        num_classes: int = 10

        def setup(self):
            init = nn.initializers.xavier_uniform()
            self.net = nn.Sequential(
                [
                    nn.Conv(6, (5, 5), padding="SAME", kernel_init=init),
                    nn.sigmoid,
                    lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2)),
                    nn.Conv(16, (5, 5), padding="VALID", kernel_init=init),
                    nn.sigmoid,
                    lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2)),
                    lambda x: x.reshape((x.shape[0], -1)),
                    nn.Dense(120, kernel_init=init),
                    nn.sigmoid,
                    nn.Dense(84, kernel_init=init),
                    nn.sigmoid,
                    nn.Dense(self.num_classes, kernel_init=init),
                ]
            )

    data = d2l.FashionMNIST(batch_size=64, num_train=256, num_val=100)
    book, own = quiet_trainer(max_epochs=1, num_gpus=1), quiet_trainer(max_epochs=1)
    book.fit(BookLeNet(), data)
    own.fit(ChapterLeNet(lr=0.1, optimizer="sgd"), data)
    assert book.history[0]["train_loss"] == pytest.approx(own.history[0]["train_loss"], rel=1e-6)
    assert book.history[0]["val_acc"] == own.history[0]["val_acc"]


def test_a_datamodule_with_only_the_books_get_dataloader_trains(quiet_trainer):
    class Points(d2l.DataModule):  # NumPy batches from a generator, as a reader might write
        def __init__(self, batch_size=8):
            super().__init__()
            self.save_hyperparameters()
            rng = np.random.default_rng(1)
            self.X = rng.normal(size=(320, 3)).astype(np.float32)
            self.y = (self.X @ np.array([[1.0], [-2.0], [0.5]]) - 1.0).astype(np.float32)

        def get_dataloader(self, train):
            rows = range(0, 256) if train else range(256, 320)
            for start in range(rows.start, rows.stop, self.batch_size):
                yield self.X[start : start + self.batch_size], self.y[start : start + self.batch_size]

    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(d2l.LinearRegression(lr=0.1), Points())
    w, b = trainer.model.get_w_b(trainer.state)
    np.testing.assert_allclose(w.reshape(-1), [1.0, -2.0, 0.5], atol=0.02)
    assert abs(float(b[0]) + 1.0) < 0.02 and trainer.num_val_examples == 64


def test_layer_summary_replaced_the_books_way_runs(monkeypatch, capsys):
    def layer_summary(self, X_shape, key=d2l.get_key()):  # noqa: B008 (the book's 7.6 version)
        X = jnp.zeros(X_shape)
        bound = self.clone().bind(self.init(key, X), mutable=["batch_stats"])
        for layer in bound.net.layers:
            X = layer(X)
            print(type(layer).__name__, "output shape:\t", X.shape)

    monkeypatch.setattr(d2l.Classifier, "layer_summary", layer_summary)
    TinyCNN().layer_summary((2, 8, 8, 1))
    assert "Dense output shape:\t (2, 3)" in capsys.readouterr().out


def test_a_replaced_prepare_batch_runs_inside_the_step(blobs, quiet_trainer, monkeypatch):
    def prepare_batch(self, batch):  # blank every image: the convolution can learn nothing
        return (batch[0] * 0.0, *batch[1:])

    monkeypatch.setattr(d2l.Trainer, "prepare_batch", prepare_batch)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(TinyCNN(use_bn=False), blobs)
    start = trainer.init_state(jax.random.split(jax.random.PRNGKey(0))[0]).params
    np.testing.assert_array_equal(
        trainer.state.params["net"]["layers_0"]["kernel"], start["net"]["layers_0"]["kernel"]
    )
    dense = sorted(start["net"])[-1]  # the last layer still learns the class frequencies
    assert not np.array_equal(trainer.state.params["net"][dense]["bias"], start["net"][dense]["bias"])
