"""Convolutions and max pools as XLA's CPU backend runs them fast, for the Flax layers the Trainer traces.

XLA:CPU computes parts of a training step far slower than PyTorch does (figures: README,
"Devices, precision, compilation"), and these stand-ins compute them otherwise:
- the gradient of the kernel: as one matrix product per kernel offset, of the shifted inputs
  with the output gradient. Below 32 input channels the products win only where a layer
  widens, so only there;
- the first layer on gray images, with one input channel: its forward pass as one
  multiply-add of a shifted view of the image per kernel offset, with XLA's own gradients;
- grouped convolutions and their gradients: as a dense convolution with a block-diagonal
  kernel (the weights of group g connect only input group g to output group g, the zeros get
  no gradient), at dense speed;
- the gradient of a max pool (XLA's select-and-scatter): `max_pool` below keeps which offset
  of each window won and sends the gradient back through one shifted (and, with strides,
  spread) copy per offset.
All give the same numbers up to the order of summation (a pool's gradient goes to the first
maximum of a window, as XLA's does). While `cpu_kernels()` is on (the Trainer turns it on when
it trains on a CPU, around its traces), three routes that Flax supports lead to them, and
nothing of Flax's is replaced: a Linen method interceptor runs each `nn.Conv` as a copy of
itself whose `conv_general_dilated` field is the stand-in; an NNX `Conv` built with
`conv_general_dilated=conv_general_dilated_if_on` (the NNX chapter's) picks it when called;
and `d2l.max_pool` (book.py), with which the chapters pool, picks `max_pool` below. Other
devices keep XLA's own, and so do average pools everywhere (there is no stand-in for them).
"""

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from ..book import MAX_POOL

NHWC = ("NHWC", "HWIO", "NHWC")  # Flax's layout for images
# Input channels from which the kernel gradient is faster as products (below: if the layer widens).
MATMUL_MIN_CHANNELS = 32


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    **kwargs,
):
    """`lax.conv_general_dilated`, with the stand-ins above for 2-D NHWC convolutions."""
    plain = functools.partial(
        lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        **kwargs,
    )
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    layout = lhs.ndim == 4 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    )
    if dilated or not layout or kwargs.get("batch_group_count", 1) != 1:
        return plain(lhs, rhs, feature_group_count=feature_group_count)
    if feature_group_count > 1:
        rhs = block_diagonal(rhs, feature_group_count)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
    if rhs.shape[2] == 1 and min(sum(pads, ())) >= 0:  # a first layer on gray images
        return _one_channel_conv(lhs, rhs, strides, pads)
    channels_in, channels_out = rhs.shape[2:]
    if channels_in < MATMUL_MIN_CHANNELS and channels_out <= channels_in:
        return plain(lhs, rhs, feature_group_count=1)
    return _conv(lhs, rhs, strides, pads)


def block_diagonal(rhs, groups):
    """The dense HWIO kernel of a grouped one: zeros wherever input and output groups differ."""
    *window, group_in, out = rhs.shape
    blocks = rhs.reshape(*window, group_in, groups, out // groups)
    # full[..., G * group_in + i, g * group_out + o] = blocks[..., i, g, o] if G == g else 0
    full = jnp.einsum("...igo,Gg->...Gigo", blocks, jnp.eye(groups, dtype=rhs.dtype))
    return full.reshape(*window, groups * group_in, out)


def _xla_conv(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=NHWC)


def _xla_gradients(strides, pads, saved, grad):
    """XLA's own gradients of `_xla_conv` with respect to the input and the kernel (under jit,
    XLA drops the one a caller leaves unused)."""
    return jax.vjp(lambda x, kernel: _xla_conv(x, kernel, strides, pads), *saved)[1](grad)


_conv = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3))


def _conv_forward(x, kernel, strides, pads):
    return _conv(x, kernel, strides, pads), (x, kernel)


def _conv_backward(strides, pads, saved, grad):
    x, kernel = saved
    # The kernel's gradient at offset (i, j) is the product of the inputs that offset reads
    # (the padded input shifted by (i, j), every stride-th pixel) with the output gradient.
    views = offset_views(jnp.pad(x, ((0, 0), *pads, (0, 0))), kernel.shape[:2], strides)
    flat_grad = grad.reshape(-1, grad.shape[-1]).astype(x.dtype)
    products = [view.reshape(-1, kernel.shape[2]).T @ flat_grad for view in views]
    kernel_grad = jnp.stack(products).reshape(kernel.shape).astype(kernel.dtype)
    return _xla_gradients(strides, pads, saved, grad)[0], kernel_grad


_conv.defvjp(_conv_forward, _conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _one_channel_conv(x, kernel, strides, pads):
    # One multiply-add of a shifted, strided view of the image per kernel offset, in float32
    # as XLA accumulates its convolutions.
    views = offset_views(jnp.pad(x, ((0, 0), *pads, (0, 0))).astype(jnp.float32), kernel.shape[:2], strides)
    weights = kernel.reshape(len(views), -1).astype(jnp.float32)  # (offsets, output channels)
    return sum(view * weight for view, weight in zip(views, weights, strict=True)).astype(x.dtype)


def _one_channel_forward(x, kernel, strides, pads):
    return _one_channel_conv(x, kernel, strides, pads), (x, kernel)


# Autodiff through the sum above runs slower than XLA's own gradients.
_one_channel_conv.defvjp(_one_channel_forward, _xla_gradients)


def reduce_window(operand, init_value, computation, window_dimensions, window_strides, padding, **kwargs):
    """`lax.reduce_window`, with `max_pool` below for the max pools of images (NHWC)."""
    pads = padding
    if operand.ndim == 4 and isinstance(padding, str):
        pads = lax.padtype_to_pads(operand.shape, window_dimensions, window_strides, padding)
    over_height_and_width = operand.ndim == 4 and all(
        (window_dimensions[d], window_strides[d], tuple(pads[d])) == (1, 1, (0, 0)) for d in (0, 3)
    )
    if (
        computation is not lax.max
        or not isinstance(init_value, float)
        or init_value != -math.inf
        or kwargs
        or not over_height_and_width
        or min(sum(map(tuple, pads), ())) < 0
        or window_dimensions[1] * window_dimensions[2] > 127  # offsets are kept as int8
    ):
        return lax.reduce_window(
            operand, init_value, computation, window_dimensions, window_strides, padding, **kwargs
        )
    window, strides = tuple(window_dimensions[1:3]), tuple(window_strides[1:3])
    return max_pool(operand, window, strides, tuple(tuple(p) for p in pads[1:3]))


def offset_views(padded, window, strides):
    """The strided view of the padded images (NHWC) that each window offset reads, row-major:
    view k = (i, j) holds, at output pixel (y, x), pixel (i + y * stride, j + x * stride)."""
    rows = (padded.shape[1] - window[0]) // strides[0] * strides[0] + 1
    cols = (padded.shape[2] - window[1]) // strides[1] * strides[1] + 1
    offsets = [(i, j) for i in range(window[0]) for j in range(window[1])]
    return [padded[:, i : i + rows : strides[0], j : j + cols : strides[1]] for i, j in offsets]


def _window_maxima(x, window, strides, pads):
    """The maximum of each window and which offset holds it: the first on ties, a NaN if any
    (as XLA's max pool)."""
    views = offset_views(jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf), window, strides)
    best, which = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for k, view in enumerate(views[1:], start=1):
        wins = (view > best) | jnp.isnan(view)  # strictly greater: an earlier offset keeps a tie
        best, which = jnp.where(wins, view, best), jnp.where(wins, jnp.int8(k), which)
    return best, which


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window, strides, pads):
    return _window_maxima(x, window, strides, pads)[0]


def _max_pool_forward(x, window, strides, pads):
    best, which = _window_maxima(x, window, strides, pads)
    return best, (which, x.shape)


def _max_pool_backward(window, strides, pads, saved, grad):
    which, (_, height, width, _) = saved
    padded_height, padded_width = height + sum(pads[0]), width + sum(pads[1])
    total = 0
    for k, (i, j) in enumerate((i, j) for i in range(window[0]) for j in range(window[1])):
        won = jnp.where(which == k, grad, 0)
        # Output (y, x) read padded input (i + y * stride, j + x * stride): pad to put it back,
        # with stride - 1 zeros between neighbours.
        last_row, last_col = i + (grad.shape[1] - 1) * strides[0], j + (grad.shape[2] - 1) * strides[1]
        spread = [
            (0, 0, 0),
            (i, padded_height - 1 - last_row, strides[0] - 1),
            (j, padded_width - 1 - last_col, strides[1] - 1),
            (0, 0, 0),
        ]
        total = total + lax.pad(won, jnp.zeros((), grad.dtype), spread)
    return (total[:, pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def flax_max_pool(inputs, window_shape, strides=None, padding="VALID"):
    """Flax's `nn.max_pool` (same arguments), with `max_pool` above for the max pools of images."""
    window_shape = tuple(window_shape)
    strides = tuple(strides or (1,) * len(window_shape))
    if len(window_shape) != 2 or inputs.ndim not in (3, 4):
        return nn.max_pool(inputs, window_shape, strides, padding)
    if inputs.ndim == 3:  # one image, as Flax takes it
        return flax_max_pool(inputs[None], window_shape, strides, padding)[0]
    if not isinstance(padding, str):
        padding = ((0, 0), *map(tuple, padding), (0, 0))
    # Anything `max_pool` cannot take goes on to `lax.reduce_window`, as in Flax's.
    return reduce_window(inputs, -math.inf, lax.max, (1, *window_shape, 1), (1, *strides, 1), padding)


_ON = contextvars.ContextVar("d2lite_cpu_kernels", default=False)


def active():
    """Whether `cpu_kernels()` is on (in this thread, as Flax's method interceptors are)."""
    return _ON.get()


def conv_general_dilated_if_on(*args, **kwargs):
    """`lax.conv_general_dilated`, or the stand-in while `cpu_kernels()` is on: for NNX's
    `Conv(..., conv_general_dilated=...)`, which calls it at each trace."""
    return (conv_general_dilated if active() else lax.conv_general_dilated)(*args, **kwargs)


def _linen_convs_stand_in(next_fun, args, kwargs, context):
    """A Linen method interceptor: an `nn.Conv` left at Flax's convolution runs as a copy of
    itself with the stand-in, bound to the same scope (the same variables and random keys).
    The copy is intercepted too, and goes on as it is. A call that records intermediates
    (`capture_intermediates`: shape checks, summaries) keeps Flax's convolution, since the copy
    would record each output a second time."""
    module = context.module
    if (
        context.method_name == "__call__"
        and isinstance(module, nn.Conv)
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
        and not module.is_mutable_collection("intermediates")
    ):
        copy = module.clone(parent=module.scope, conv_general_dilated=conv_general_dilated)
        return copy(*args, **kwargs)
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def cpu_kernels(enabled=True):
    """While active (and `enabled`), Flax's convolutions and d2lite's max pools trace the
    stand-ins above: Linen's `nn.Conv` through a method interceptor (`nn.intercept_methods`),
    NNX convolutions built with `conv_general_dilated_if_on` and `d2l.max_pool` through
    `book.MAX_POOL`. Nested, it stays on until the outermost one ends."""
    if not enabled or active():  # off, or already on
        yield
        return
    token, pool = _ON.set(True), MAX_POOL.set(flax_max_pool)
    try:
        with nn.intercept_methods(_linen_convs_stand_in):
            yield
    finally:
        _ON.reset(token)
        MAX_POOL.reset(pool)
