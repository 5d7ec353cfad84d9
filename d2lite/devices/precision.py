"""Mixed precision: compute in bfloat16, keep parameters, optimizer state and loss in float32.

The Trainer wraps the model's apply function: floating parameters and inputs are cast to
the compute dtype on the way in and the outputs back to float32 on the way out. The
casts are differentiable, so gradients arrive in float32 for the float32 parameters, and
the optimizer never sees a bfloat16 number. BatchNorm statistics are not parameters: they
stay float32 and Flax computes them in float32. bfloat16 has float32's exponent range, so
unlike float16 it needs no loss scaling.
"""

import jax
import jax.numpy as jnp

from ..errors import D2LiteError
from ..trainer import StepTransform

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(precision):
    """The dtype for a `precision` name; a one-line error for anything else."""
    if precision not in PRECISIONS:
        raise D2LiteError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def cast_floating(tree, dtype):
    """`tree` with its floating-point arrays cast to `dtype` (integers such as labels untouched)."""

    def cast(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def compute_in(precision, apply_fn):
    """`apply_fn(variables, *inputs, **kwargs)` computing in `precision`, returning float32."""
    dtype = compute_dtype(precision)
    if dtype == jnp.float32:
        return apply_fn

    def apply(variables, *inputs, **kwargs):
        variables = {**variables, "params": cast_floating(variables["params"], dtype)}
        outputs = apply_fn(variables, *cast_floating(inputs, dtype), **kwargs)
        return cast_floating(outputs, jnp.float32)

    return apply


class Precision(StepTransform):
    """The model's apply function computing in `precision` (both in training and evaluation)."""

    def __init__(self, precision):
        compute_dtype(precision)  # a one-line error now rather than in fit
        self.precision = precision

    def apply(self, apply_fn, training):
        return compute_in(self.precision, apply_fn)
