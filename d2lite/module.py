"""Module and Classifier: the book's model base classes, as Flax Linen modules.

The book's JAX code computes the loss from `(params, X, Y, state)` and plots from inside
`training_step`, which forces a host sync per step. Here `training_step` and
`validation_step` are pure functions that the Trainer runs inside its jitted step, `loss`
takes predictions and targets like the book's PyTorch code, and the Trainer calls `plot`
on the host only when a point is due.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from .errors import D2LiteError
from .hparams import HyperParameters
from .utils import get_key


def has_training_flag(model):
    return any(field.name == "training" for field in dataclasses.fields(model))


def for_evaluation(model):
    """The model in evaluation mode: `training=False` for models with BatchNorm or Dropout."""
    return model.clone(training=False) if has_training_flag(model) else model


class Module(nn.Module, HyperParameters):
    """The base class of models: a Flax Linen module with the book's training vocabulary."""

    # Keyword-only, so that subclasses may declare required fields such as `lr: float`.
    plot_train_per_epoch: int = dataclasses.field(default=2, kw_only=True)
    plot_valid_per_epoch: int = dataclasses.field(default=1, kw_only=True)

    def loss(self, Y_hat, Y, averaged=True):
        raise NotImplementedError

    def forward(self, X, *args, **kwargs):
        assert hasattr(self, "net"), "define self.net in setup() or override forward()"
        return self.net(X, *args, **kwargs)

    def __call__(self, X, *args, **kwargs):
        return self.forward(X, *args, **kwargs)

    def predict(self, params, X, state):
        """Outputs for the inputs `X` (a tuple) with the state's apply function, no updates."""
        return state.apply_fn({"params": params, "batch_stats": state.batch_stats}, *X)

    def training_step(self, params, batch, state):
        """Loss, BatchNorm updates and gradients for one batch; runs inside the jitted step."""

        def objective(params):
            Y_hat, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                *batch[:-1],
                mutable=["batch_stats"],
                rngs={"dropout": state.dropout_rng},
            )
            return self.loss(Y_hat, batch[-1]), updates

        (loss, updates), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return (loss, updates), grads

    def validation_step(self, params, batch, state):
        """Per-example metrics of one batch; the Trainer masks padding and averages them."""
        Y_hat = self.predict(params, batch[:-1], state)
        return {"loss": self.loss(Y_hat, batch[-1], averaged=False)}

    def plot(self, key, value, train):
        """Add a point to the trainer's board: train points at fractional epochs, val at ends."""
        assert hasattr(self, "trainer"), "plot() needs a Trainer: call trainer.fit(model, data)"
        trainer = self.trainer
        if train:
            x = trainer.train_batch_idx / trainer.num_train_batches
        else:
            x = trainer.epoch + 1
        trainer.board.draw(x, value, ("train_" if train else "val_") + key)

    def apply_init(self, dummy_input, key):
        """Initial variables from a tuple of example inputs."""
        return self.init(key, *dummy_input)

    def configure_optimizers(self):
        return optax.sgd(self.lr)


class Classifier(Module):
    """The base class of classification models: cross-entropy loss and accuracy."""

    def loss(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1])).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(Y_hat, Y.reshape(-1))
        return losses.mean() if averaged else losses

    def accuracy(self, Y_hat, Y, averaged=True):
        """Fraction (or, unaveraged, indicator) of correct predictions."""
        predictions = Y_hat.reshape((-1, Y_hat.shape[-1])).argmax(axis=1)
        correct = (predictions == Y.reshape(-1)).astype(jnp.float32)
        return correct.mean() if averaged else correct

    def validation_step(self, params, batch, state):
        Y_hat = self.predict(params, batch[:-1], state)
        Y = batch[-1]
        return {
            "loss": self.loss(Y_hat, Y, averaged=False),
            "acc": self.accuracy(Y_hat, Y, averaged=False),
        }

    def layer_summary(self, X_shape, key=None):
        """Print the output shape of each top-level layer of `self.net`; return the pairs."""
        model = for_evaluation(self)  # same shapes, and neither dropout keys nor stat updates
        key = get_key() if key is None else key
        summary = []

        def trace(X):  # abstract: no parameter is drawn and no convolution compiled
            bound = model.bind(model.init(key, X))
            for layer in bound.net.layers:
                X = layer(X)
                summary.append((layer_name(layer), X.shape))
            return X

        try:
            jax.eval_shape(trace, jax.ShapeDtypeStruct(tuple(X_shape), jnp.float32))
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise input_error(self, X_shape, error) from error
        for name, shape in summary:
            print(f"{name} output shape:\t {shape}")
            if 0 in shape:
                raise input_error(self, X_shape, f"{name} outputs shape {shape}")
        return summary


def input_error(model, input_shape, problem):
    """The error for inputs a model cannot take, most often images resized too small."""
    text = str(problem).strip().splitlines()
    return D2LiteError(
        f"{type(model).__name__} cannot run on inputs of shape {tuple(input_shape)}: "
        f"{text[0] if text else type(problem).__name__} (if the inputs are too small for the "
        "model, use a larger resize)"
    )


def layer_name(layer):
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    name = getattr(layer, "__name__", type(layer).__name__)
    return "lambda" if name == "<lambda>" else name
