"""Module and Classifier: the book's model base classes, as Flax Linen modules.

The book's JAX methods are the contract: `loss(params, X, Y, state, averaged=True)`,
`training_step(params, batch, state)` returning `(value, grads)`, `validation_step`, and
`plot` called from inside them; a reader may replace any of them with `add_to_class`. The
Trainer runs the two steps inside its jitted programs. There `plot` cannot draw: it records
the traced value (`recording_plots`), the step returns it, and the Trainer hands it to `plot`
on the host when the book's cadence says a point is due, so no step waits for the host.

d2lite's shorter style works too: a `loss(Y_hat, Y, averaged=True)` that takes predictions
(the book's PyTorch signature). `objective` runs whichever kind of `loss` a model has.
"""

import contextlib
import dataclasses
import inspect

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from .board import ProgressBoard
from .errors import input_error, raise_traced
from .hparams import HyperParameters

_recorders = []  # one {(key, train): value} per step being traced, innermost last


@contextlib.contextmanager
def recording_plots():
    """Collect what `Module.plot` receives while a step is traced, as {(key, train): value}."""
    values = {}
    _recorders.append(values)
    try:
        yield values
    finally:
        _recorders.pop()


def takes_predictions(loss):
    """Whether `loss` is d2lite's `loss(Y_hat, Y, ...)`, not the book's `loss(params, X, Y, state, ...)`."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in inspect.signature(loss).parameters.values()) < 4


def has_training_flag(model):
    return dataclasses.is_dataclass(model) and any(
        field.name == "training" for field in dataclasses.fields(model)
    )


def for_evaluation(model):
    """The model in evaluation mode: `training=False` for models with BatchNorm or Dropout; a
    model that is no Linen module (the NNX face's adapter) says itself (`in_evaluation`)."""
    if hasattr(model, "in_evaluation"):
        return model.in_evaluation()
    return model.clone(training=False) if has_training_flag(model) else model


def plot_point(model, key, value, train):
    """`Module.plot` for both faces: inside a traced step record `value`, else draw it on
    `model.board` at the book's cadence (`model.trainer`'s batch counters)."""
    if _recorders:
        _recorders[-1][key, train] = value
        return
    assert getattr(model, "trainer", None) is not None, (
        "plot() needs a Trainer: call trainer.fit(model, data)"
    )
    trainer = model.trainer
    model.board.xlabel = "epoch"
    if train:
        x = trainer.train_batch_idx / trainer.num_train_batches
        n = trainer.num_train_batches / model.plot_train_per_epoch
    else:
        x = trainer.epoch + 1
        n = trainer.num_val_batches / model.plot_valid_per_epoch
    # At least 1: the book's int(n) is 0 for an epoch of one batch, and nothing is drawn.
    model.board.draw(x, value, ("train_" if train else "val_") + key, every_n=max(1, int(n)))


class Module(nn.Module, HyperParameters):
    """The base class of models: a Flax Linen module with the book's training vocabulary."""

    # Keyword-only, so that subclasses may declare required fields such as `lr: float`.
    plot_train_per_epoch: int = dataclasses.field(default=2, kw_only=True)
    plot_valid_per_epoch: int = dataclasses.field(default=1, kw_only=True)
    # Each model gets its own board, so a cell can set `model.board.yscale = 'log'` before fit.
    board: ProgressBoard = dataclasses.field(
        default_factory=ProgressBoard, init=False, repr=False, compare=False
    )

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X, *args, **kwargs):
        assert hasattr(self, "net"), "define self.net in setup() or override forward()"
        return self.net(X, *args, **kwargs)

    def __call__(self, X, *args, **kwargs):
        return self.forward(X, *args, **kwargs)

    def predict(self, params, X, state):
        """Outputs for the inputs `X` (a tuple) with the state's apply function, no updates."""
        return state.apply_fn({"params": params, "batch_stats": state.batch_stats}, *X)

    def objective(self, params, batch, state):
        """(loss, variable updates) of one batch, whichever way `loss` is written.

        The book's `loss(params, X, Y, state)` returns the loss or (loss, updates); for
        d2lite's `loss(Y_hat, Y)` the predictions come from `state.apply_fn`, with BatchNorm
        statistics updated and the state's dropout key.
        """
        if takes_predictions(self.loss):
            Y_hat, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                *batch[:-1],
                mutable=["batch_stats"],
                rngs={"dropout": state.dropout_rng},
            )
            return self.loss(Y_hat, batch[-1]), updates
        value = self.loss(params, batch[:-1], batch[-1], state)
        return value if isinstance(value, tuple) else (value, {})

    def training_step(self, params, batch, state):
        """`((loss, updates), grads)` of one batch; plots the loss."""
        (loss, updates), grads = jax.value_and_grad(self.objective, has_aux=True)(params, batch, state)
        self.plot("loss", loss, train=True)
        return (loss, updates), grads

    def validation_step(self, params, batch, state):
        self.plot("loss", self.objective(params, batch, state)[0], train=False)

    def plot(self, key, value, train):
        """Add a point to the board: train points at fractional epochs, averaged over
        `1 / plot_train_per_epoch` of an epoch, validation points at epoch ends.

        Inside the Trainer's jitted steps the value is recorded instead, and drawn later.
        """
        plot_point(self, key, value, train)

    def apply_init(self, dummy_input, key):
        """Initial variables from a tuple of example inputs."""
        return self.init(key, *dummy_input)

    def initial_variables(self):
        """The variables training starts from, when the model holds them already (NNX models
        do); None: the Trainer draws them with `apply_init`."""
        return None

    def smooths_labels(self):
        """Whether the loss takes a recipe's label smoothing (the Classifier's own loss does)."""
        return False

    def configure_optimizers(self):
        return optax.sgd(self.lr)


class Classifier(Module):
    """The base class of classification models: cross-entropy loss and accuracy."""

    def loss(self, params, X, Y, state, averaged=True):
        """Cross-entropy of the logits for the inputs `X` (a tuple), and the variable updates.

        The book's last version (section 8.5): BatchNorm statistics are updated and the
        dropout layers get the state's key; `(losses, updates)` per example when not averaged.
        With a recipe's `label_smoothing` (in the state) the targets are smoothed.
        """
        Y_hat, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            *X,
            mutable=["batch_stats"],
            rngs={"dropout": state.dropout_rng},
        )
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1])).astype(jnp.float32)
        # A recipe's label smoothing travels in the state (d2lite/recipe); the book's has none.
        losses = smoothed_cross_entropy(Y_hat, Y.reshape(-1), getattr(state, "label_smoothing", 0.0))
        return (losses.mean() if averaged else losses), updates

    def accuracy(self, params, X, Y, state, averaged=True):
        """Fraction (or, unaveraged, indicator) of correct predictions for the inputs `X` (a tuple)."""
        Y_hat = self.predict(params, X, state)
        predictions = Y_hat.reshape((-1, Y_hat.shape[-1])).argmax(axis=1)
        correct = (predictions == Y.reshape(-1)).astype(jnp.float32)
        return correct.mean() if averaged else correct

    def validation_step(self, params, batch, state):
        self.plot("loss", self.objective(params, batch, state)[0], train=False)
        self.plot("acc", self.accuracy(params, batch[:-1], batch[-1], state), train=False)

    def smooths_labels(self):
        return type(self).loss is Classifier.loss

    def layer_summary(self, X_shape, key=None):
        """Print the output shape of each top-level layer of `self.net` (of the whole model
        when it has no `net`); return the pairs.

        Unlike the book's, it draws no parameters and runs no layer: the shapes are traced.
        """
        model = for_evaluation(self)  # same shapes, and neither dropout keys nor stat updates
        key = jax.random.PRNGKey(0) if key is None else key
        summary = []

        def trace(X):
            bound = model.bind(model.init(key, X))
            net = getattr(bound, "net", None)
            for layer in net.layers if isinstance(net, nn.Sequential) else [bound]:
                X = layer(X)
                summary.append((layer_name(layer), X.shape))
            return X

        try:
            jax.eval_shape(trace, jax.ShapeDtypeStruct(tuple(X_shape), jnp.float32))
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise_traced(model, X_shape, error)
        for name, shape in summary:
            print(f"{name} output shape:\t {shape}")
            if 0 in shape:
                raise input_error(model, X_shape, f"{name} outputs shape {shape}")
        return summary


def layer_name(layer):
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    name = getattr(layer, "__name__", type(layer).__name__)
    return "lambda" if name == "<lambda>" else name


def smoothed_cross_entropy(logits, labels, smoothing):
    """Cross-entropy per example against labels smoothed by `smoothing` (0: the usual one)."""
    if not smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)
