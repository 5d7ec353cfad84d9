"""Train a Flax NNX model with the same Trainer, through Flax's NNX-to-Linen bridge.

The Trainer is functional (apply function, variables, optax state), so an NNX model only
has to look like a Linen module: `nnx.bridge.ToLinen` splits the NNX module's state into
Linen collections (`params`, and `batch_stats` for `nnx.BatchNorm`) and merges it back for
each call. The NNX model's `__call__(x, *, train)` receives this module's `training` flag,
so evaluation with `model.clone(training=False)` works as for Linen models.
"""

from collections.abc import Callable

import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.core import FrozenDict
from flax.nnx import bridge

from .module import Classifier, layer_name


class NNXClassifier(Classifier):
    """A classifier whose network is `nnx_class(**nnx_kwargs, rngs=...)`, an NNX module.

    Optimised with AdamW by default, as NNX tutorials train their ResNets.
    """

    nnx_class: Callable = None
    nnx_kwargs: FrozenDict = FrozenDict()
    lr: float = 1e-3
    weight_decay: float = 1e-4
    training: bool = True

    @nn.compact
    def __call__(self, X):
        network = bridge.ToLinen(self.nnx_class, kwargs=self.nnx_kwargs, name="nnx")
        return network(X, train=self.training)

    def configure_optimizers(self):
        return optax.adamw(self.lr, weight_decay=self.weight_decay)

    def layer_summary(self, X_shape, key=None):
        """Output shapes of the NNX model's `layers` (each called as `layer(x, train=False)`)."""
        from flax import nnx

        model = nnx.eval_shape(lambda: self.nnx_class(**self.nnx_kwargs, rngs=nnx.Rngs(0)))
        X = jnp.zeros(X_shape)
        summary = []
        for layer in model.layers:
            X = nnx.eval_shape(lambda layer, x: layer(x, train=False), layer, X)
            summary.append((layer_name(layer), X.shape))
            print(f"{summary[-1][0]} output shape:\t {X.shape}")
        return summary
