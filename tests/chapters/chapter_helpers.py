"""Helpers shared by the chapter tests (imported as `from chapter_helpers import ...`)."""

import jax
import jax.numpy as jnp
import numpy as np


def param_count(model, input_shape):
    """The number of parameters `model` has on inputs of `input_shape`, found without drawing them."""
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(input_shape))
    return sum(p.size for p in jax.tree.leaves(variables["params"]))


def forward(module, shape, fill=None):
    """`module`'s output on random inputs of `shape`, its variables and the inputs, all drawn by
    NumPy: jitting Flax's initialisers (truncated normals) compiles slowly on CPU, and the checks
    here need shapes and values, not a good initialisation. The variables are drawn from
    N(0, 0.1), or all equal `fill` when it is given (needed with BatchNorm, whose running
    variances must not be negative)."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.uniform(size=shape), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), X)

    def draw(s):
        values = rng.normal(0, 0.1, s.shape) if fill is None else np.full(s.shape, fill)
        return jnp.asarray(values, s.dtype)

    variables = jax.tree.map(draw, shapes)
    return jax.jit(module.apply)(variables, X), variables, X
