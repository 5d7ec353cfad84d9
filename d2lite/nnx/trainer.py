"""The next edition's Trainer: the core Trainer, its fully jitted programs and callbacks, with
what that edition's cells read (`trainer.optim`, `trainer.train_model`, `trainer.val_model`),
and the reader's model holding the trained variables after `fit`, as NNX models do."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .. import trainer as core
from ..board import ProgressBoard
from .module import Functional, views


class Trainer(core.Trainer):
    """`Trainer(max_epochs).fit(model, data)` for NNX models (`Module`s of this face).

    `fit` trains through the core's jitted programs (the model is split into its variables
    and merged back inside them) and then writes the trained variables into `model`, also
    when Ctrl-C or a signal stops it. `optim` is the book's `nnx.Optimizer`; `train_model`
    and `val_model` are the model's views in training and evaluation mode (`nnx.view`, so a
    block's own `set_view` decides). A `fit_epoch` of the reader's own (the book's loop over
    `train_dataloader` with `optim`) runs instead of the core's and updates `model` itself.
    """

    def prepare_model(self, model):
        if isinstance(model, nnx.Module):
            model.trainer = self
            self.train_model, self.val_model = views(model)
            model = Functional(model, self.train_model, self.val_model)
            tx = model.configure_optimizers()
            if self.gradient_clip_val > 0:
                tx = optax.chain(optax.clip_by_global_norm(self.gradient_clip_val), tx)
            self.optim = nnx.Optimizer(model.model, tx, wrt=nnx.Param)
        super().prepare_model(model)

    def own_loop(self):
        """Whether `fit_epoch` is the core's: then the trained variables are in `self.state`."""
        return type(self).fit_epoch is core.Trainer.fit_epoch

    def write_back_optimizer(self, state):
        """`optim` as the trained state has it (its step and, when the trees match, as without a
        recipe, its optax state), so that a loop of the reader's own goes on from there."""
        self.optim.step.set_value(state.step.astype(self.optim.step.get_value().dtype))
        is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
        variables = jax.tree.leaves(self.optim.opt_state, is_leaf=is_variable)
        trained = jax.tree.leaves(state.opt_state)
        shapes = lambda leaves: [jnp.shape(x) for x in leaves]  # noqa: E731
        if all(map(is_variable, variables)) and shapes(v.get_value() for v in variables) == shapes(trained):
            for variable, value in zip(variables, trained, strict=True):
                variable.set_value(value)

    def fit(self, model, data, key=None):
        try:
            super().fit(model, data, key)
        finally:
            held = getattr(self, "model", None)  # None: the fit stopped before it took the model
            ours = isinstance(held, Functional) and held.model is model
            if ours and self.state is not None and self.own_loop():
                self.model.write_back(self.state)
                self.write_back_optimizer(self.state)
            if isinstance(getattr(model, "board", None), ProgressBoard):
                model.board.flush()
