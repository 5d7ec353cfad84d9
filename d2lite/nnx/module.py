"""The next edition's `Module` and `Classifier` (stateful Flax NNX modules called as `model(X)`),
and `Functional`, which shows such a model to the core Trainer as the functional model its
jitted programs train.

The core's programs are pure functions of a TrainState. `Functional` splits the reader's model
into a graph definition and three states (parameters, BatchNorm statistics, the rest: the
`nnx.Rngs` keys and counts) and, inside a traced step, merges a model from the state it is
handed and calls the reader's own `training_step(batch)` or `validation_step(batch)` on it. The
model's forward pass inside those steps goes through the state's apply function, so the
Trainer's step transforms (bfloat16, a recipe's flip averaging) act on NNX models as on Linen
ones; the loss stays with the model's own code, in float32.
"""

import contextlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from ..board import ProgressBoard
from ..devices.cpu_kernels import conv_general_dilated_if_on
from ..errors import raise_traced
from ..hparams import HyperParameters
from ..module import layer_name, plot_point, smoothed_cross_entropy

_forwards = []  # (model, forward) while a step is traced: that model's calls go to `forward`
_smoothing = [0.0]  # a recipe's label smoothing while a training step is traced


@contextlib.contextmanager
def _pushed(stack, value):
    stack.append(value)
    try:
        yield
    finally:
        stack.pop()


class Module(nnx.Module, HyperParameters):
    """The base class of models: an NNX module with the book's training vocabulary."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__()
        self.save_hyperparameters()
        self.board = ProgressBoard()
        self.trainer = None

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X, *args, **kwargs):
        assert hasattr(self, "net"), "define self.net in __init__ or override forward()"
        return self.net(X, *args, **kwargs)

    def __call__(self, X, *args, **kwargs):
        if _forwards and _forwards[-1][0] is self:  # inside the Trainer's step: its apply function
            return _forwards[-1][1](X, *args, **kwargs)
        return self.forward(X, *args, **kwargs)

    def plot(self, key, value, train):
        """Add a point to the board (inside the Trainer's jitted steps: record it for later)."""
        plot_point(self, key, value, train)

    def training_step(self, batch):
        return self.loss(self(*batch[:-1]), batch[-1])

    def validation_step(self, batch):
        return self.loss(self(*batch[:-1]), batch[-1])

    def configure_optimizers(self):
        return optax.sgd(self.lr)


class Classifier(Module):
    """The base class of classification models: cross-entropy loss and accuracy."""

    def validation_step(self, batch):
        Y_hat = self(*batch[:-1])
        return self.loss(Y_hat, batch[-1]), self.accuracy(Y_hat, batch[-1])

    def accuracy(self, Y_hat, Y, averaged=True):
        """Fraction (or, unaveraged, indicator) of correct predictions."""
        predictions = Y_hat.reshape((-1, Y_hat.shape[-1])).argmax(axis=1).astype(Y.dtype)
        correct = (predictions == Y.reshape(-1)).astype(jnp.float32)
        return correct.mean() if averaged else correct

    def loss(self, Y_hat, Y, averaged=True):
        """Cross-entropy of the logits, in float32 (also under bfloat16); with a recipe's label
        smoothing while the Trainer trains."""
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1])).astype(jnp.float32)
        losses = smoothed_cross_entropy(Y_hat, Y.reshape(-1), _smoothing[-1])
        return losses.mean() if averaged else losses

    def layer_summary(self, X_shape):
        """Print the output shape of each layer of `self.net`; return the pairs.

        Unlike the book's, it runs no layer (shapes are traced, so BatchNorm statistics stay as
        they are), in evaluation mode.
        """
        net = nnx.view(self, deterministic=True, use_running_average=True, raise_if_not_found=False).net
        X, summary = jax.ShapeDtypeStruct(tuple(X_shape), jnp.float32), []
        try:
            for layer in net.layers:
                X = jax.eval_shape(layer, X)  # evaluation mode: nothing in the model changes
                summary.append((layer_name(layer), X.shape))
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise_traced(Functional(self, training=False), X_shape, error)
        for name, shape in summary:
            print(f"{name} output shape:\t {shape}")
        return summary


def views(model):
    """The model in training and in evaluation mode (`nnx.view`: each block's `set_view` decides),
    their convolutions calling `conv_general_dilated_if_on`, which picks XLA's convolution, or
    on a CPU while the Trainer traces its programs the faster stand-in, as the Linen layers do
    (devices/cpu_kernels.py). The views are copies of the model's modules sharing its Variables:
    the reader's model keeps its own convolutions."""
    made = []
    for training in (True, False):
        view = nnx.view(
            model, deterministic=not training, use_running_average=not training, raise_if_not_found=False
        )
        for _, module in nnx.iter_modules(view):
            if isinstance(module, nnx.Conv) and module.conv_general_dilated is lax.conv_general_dilated:
                module.conv_general_dilated = conv_general_dilated_if_on
        made.append(view)
    return made


def split(model):
    """(graph definition, parameters, BatchNorm statistics, the other variables) of `model`."""
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


class Functional:
    """The core Trainer's model interface for an NNX `model`: its variables, an apply function,
    and the steps, with the train (or evaluation) view's graph; the book's attributes (`board`,
    `lr`, `plot`, ...) are the model's own."""

    def __init__(self, model, train_view=None, eval_view=None, training=True):
        self.model = model
        if train_view is None:
            train_view, eval_view = views(model)
        self.views, self.training = (train_view, eval_view), training
        self.graphdef = split(train_view if training else eval_view)[0]

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    @property
    def display_name(self):  # what errors call the model
        return type(self.model).__name__

    def in_evaluation(self):
        return Functional(self.model, *self.views, training=False)

    def initial_variables(self):
        _, params, batch_stats, rest = split(self.model)
        return {"params": params, "batch_stats": batch_stats, "model_state": rest}

    def write_back(self, state):
        """Put the trained variables of `state` into the reader's model (and so its views)."""
        nnx.update(self.model, state.params, state.batch_stats, state.model_state)

    def merge(self, params, state):
        return self._merge(
            {"params": params, "batch_stats": state.batch_stats, "model_state": state.model_state}
        )

    def _merge(self, variables):
        # Copies: the model's Variables are then made in the trace that mutates them (a Dropout's
        # RngCount inside the gradient's trace), not in the jitted program's, which NNX refuses.
        names = ("params", "batch_stats", "model_state")
        return nnx.merge(self.graphdef, *(variables[name] for name in names), copy=True)

    def apply(self, variables, *inputs, mutable=False, rngs=None, capture_intermediates=False):
        """The model's outputs for `inputs` (Linen's apply signature, which the step transforms
        wrap); with `mutable`, also its changed variables. `rngs`: NNX models hold their own."""
        model = self._merge(variables)
        with _pushed(_forwards, (None, None)):  # the model's own forward, not the hook
            outputs = model(*inputs)
        if not mutable:
            return outputs
        if mutable is not True:  # the Trainer's shape check asks for Linen's intermediates
            return outputs, {}
        _, _, batch_stats, rest = split(model)
        return outputs, {"batch_stats": batch_stats, "model_state": rest}

    def init(self, key, X, capture_intermediates=False):
        """The outputs on `X` (for errors.smallest_image_size, which traces a model's shapes)."""
        return self.apply(self.initial_variables(), X)

    def _run(self, params, state, step, batch, training):
        """`step(model, batch)` on a model merged from `params` and `state`, its forward pass
        through `state.apply_fn`; (value, changed variables)."""
        variables = {"params": params, "batch_stats": state.batch_stats, "model_state": state.model_state}
        model, updates = self.merge(params, state), {}

        def forward(*inputs):
            outputs, changed = state.apply_fn(variables, *inputs, mutable=True)
            updates.update(changed)
            return outputs

        smoothing = getattr(state, "label_smoothing", 0.0) if training else 0.0
        with _pushed(_forwards, (model, forward)), _pushed(_smoothing, smoothing):
            value = step(model, batch)
        if not updates:  # the step never called the model: what changed is in its own variables
            _, _, batch_stats, rest = split(model)
            updates = {"batch_stats": batch_stats, "model_state": rest}
        return value, updates

    def training_step(self, params, batch, state):
        """`((loss, updates), grads)` of the reader's `training_step(batch)`; plots the loss."""
        step = lambda model, batch: model.training_step(batch)  # noqa: E731 (the reader's, maybe add_to_class'd)
        run = lambda params: self._run(params, state, step, batch, training=True)  # noqa: E731
        (loss, updates), grads = jax.value_and_grad(run, has_aux=True)(params)
        plot_point(self.model, "loss", loss, True)
        return (loss, updates), grads

    def validation_step(self, params, batch, state):
        """Plots what the reader's `validation_step(batch)` returns: the loss, or (loss, accuracy)."""
        step = lambda model, batch: model.validation_step(batch)  # noqa: E731
        metrics = self._run(params, state, step, batch, training=False)[0]
        loss, accuracy = metrics if isinstance(metrics, tuple) else (metrics, None)
        plot_point(self.model, "loss", loss, False)
        if accuracy is not None:
            plot_point(self.model, "acc", accuracy, False)

    def predict(self, params, X, state):
        variables = {"params": params, "batch_stats": state.batch_stats, "model_state": state.model_state}
        return state.apply_fn(variables, *X)

    def configure_optimizers(self):
        """The model's optimizer; a duck-typed one (the book's `SGD`: `init` and `update`) as optax's."""
        tx = self.model.configure_optimizers()
        if not isinstance(tx, optax.GradientTransformation) and hasattr(tx, "init") and hasattr(tx, "update"):
            tx = optax.GradientTransformation(tx.init, tx.update)
        return tx

    def smooths_labels(self):
        return type(self.model).loss is Classifier.loss
