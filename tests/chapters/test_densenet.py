"""The DenseNet chapter: blocks, channel widths carried across blocks, parameter count.

Training runs in test_notebooks.py, the chapter as a notebook."""

import jax
import jax.numpy as jnp
import numpy as np
from chapter_helpers import forward, param_count

from chapters import densenet

KEY = jax.random.PRNGKey(0)


# D2L 8.7 on a (1, 96, 96, 1) input, with the channel count carried from block to block.
SHAPES = [
    ("Conv", (1, 48, 48, 64)),
    ("BatchNorm", (1, 48, 48, 64)),
    ("relu", (1, 48, 48, 64)),
    ("lambda", (1, 24, 24, 64)),
    ("DenseBlock", (1, 24, 24, 192)),
    ("Sequential", (1, 12, 12, 96)),
    ("DenseBlock", (1, 12, 12, 224)),
    ("Sequential", (1, 6, 6, 112)),
    ("DenseBlock", (1, 6, 6, 240)),
    ("Sequential", (1, 3, 3, 120)),
    ("DenseBlock", (1, 3, 3, 248)),
    ("BatchNorm", (1, 3, 3, 248)),
    ("relu", (1, 3, 3, 248)),
    ("global_avg_pool", (1, 248)),
    ("Dense", (1, 10)),
]


def test_dense_block_and_transition_shapes_match_the_book():
    blk = densenet.DenseBlock(2, 10, training=False)
    Y, _, X = forward(blk, (4, 8, 8, 3), fill=0.1)  # constant weights: BatchNorm variances stay positive
    assert Y.shape == (4, 8, 8, 23)  # 3 + 2 * 10 channels
    np.testing.assert_array_equal(Y[..., :3], X)  # the input is passed through, then concatenated
    assert not np.allclose(Y[..., 3:], 0)
    Z = jax.eval_shape(densenet.transition_block(10).init_with_output, KEY, Y)[0]
    assert Z.shape == (4, 4, 4, 10)


def test_layer_summary_carries_the_channels_across_blocks():
    summary = densenet.DenseNet().layer_summary((1, 96, 96, 1))
    assert summary == SHAPES
    transitions = [shape[-1] for name, shape in summary if name == "Sequential"]
    assert transitions == [96, 112, 120]  # the book's JAX code gives 96, 96, 96
    assert summary[-2] == ("global_avg_pool", (1, 248))  # the features the classifier sees (book's JAX: 224)


def test_transition_and_head_weights_have_the_carried_widths():
    model = densenet.DenseNet()
    variables = jax.eval_shape(model.init, KEY, jnp.zeros((1, 96, 96, 1)))
    net = variables["params"]["net"]
    kernels = [net[f"layers_{i}"]["layers_2"]["kernel"].shape for i in (5, 7, 9)]
    assert kernels == [(1, 1, 192, 96), (1, 1, 224, 112), (1, 1, 240, 120)]
    assert net["layers_14"]["kernel"].shape == (248, 10)


def test_parameter_count():
    count = param_count(densenet.DenseNet(), (1, 96, 96, 1))
    # A dense block of 4 convs on c channels: sum over its inputs c_k = c + 32k of
    # (BatchNorm 2 c_k + conv 9 * 32 c_k + 32) = 290 * (4c + 192) + 128.
    dense = [290 * (4 * c + 192) + 128 for c in (64, 96, 112, 120)]
    transitions = [2 * c_in + c_in * c_out + c_out for c_in, c_out in ((192, 96), (224, 112), (240, 120))]
    stem = 49 * 64 + 64 + 2 * 64
    head = 2 * 248 + 248 * 10 + 10
    assert count == stem + sum(dense) + sum(transitions) + head == 758_226
