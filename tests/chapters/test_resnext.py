"""The ResNeXt chapter: really `groups` groups, the CPU's dense stand-in, shapes, count, training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from chapters import resnext

KEY = jax.random.PRNGKey(0)


def shapes(module, X):
    """(output, variables) of `module.init_with_output` as shapes only (nothing computed)."""
    return jax.eval_shape(module.init_with_output, KEY, X)


def test_the_3x3_convolution_has_groups_groups():
    # The book's example block: 32 channels, 16 groups, bottleneck multiplier 1.
    _, variables = shapes(resnext.ResNeXtBlock(32, 16, 1), jnp.zeros((4, 96, 96, 32)))
    assert variables["params"]["conv2"]["kernel"].shape == (3, 3, 32 // 16, 32)  # 16 groups of 2
    _, variables = shapes(resnext.ResNeXtBlock(64, 4, 0.5), jnp.zeros((1, 8, 8, 64)))
    assert variables["params"]["conv2"]["kernel"].shape == (3, 3, 32 // 4, 32)  # 4 groups of 8
    with pytest.raises(ValueError, match="do not split into 5 groups"):
        shapes(resnext.ResNeXtBlock(32, 5, 1), jnp.zeros((1, 8, 8, 32)))


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_grouped_conv_matches_xla_grouped_convolution(strides):
    """The dense block-diagonal stand-in gives the grouped convolution's outputs and gradients.

    (On a CPU, where the tests run, `grouped_conv` takes the stand-in; elsewhere it is XLA's.)
    """
    groups = 4
    lhs = jax.random.normal(KEY, (2, 7, 7, 8))
    rhs = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8 // groups, 12))
    numbers = ("NHWC", "HWIO", "NHWC")

    def loss(conv, lhs, rhs):
        y = conv(lhs, rhs, strides, "SAME", dimension_numbers=numbers, feature_group_count=groups)
        return (y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size).sum(), y

    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    (ours_dlhs, ours_drhs), ours = jax.jit(lambda x, k: grad(resnext.grouped_conv, x, k))(lhs, rhs)
    (xla_dlhs, xla_drhs), xla = jax.jit(lambda x, k: grad(lax.conv_general_dilated, x, k))(lhs, rhs)
    size = {1: 7, 2: 4}[strides[0]]  # 'SAME': ceil(7 / stride)
    assert ours.shape == xla.shape == (2, size, size, 12)
    for a, b in ((ours, xla), (ours_dlhs, xla_dlhs), (ours_drhs, xla_drhs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # A dense (ungrouped) convolution of the same shapes would differ: the groups are real.
    dense_rhs = jnp.tile(rhs, (1, 1, groups, 1))
    dense = lax.conv_general_dilated(lhs, dense_rhs, strides, "SAME", dimension_numbers=numbers)
    assert not np.allclose(dense, xla, atol=1e-3)


def test_block_shapes_with_and_without_stride_and_projection():
    X = jnp.zeros((4, 96, 96, 32))
    Y, variables = shapes(resnext.ResNeXtBlock(32, 16, 1), X)  # the book's example
    assert Y.shape == (4, 96, 96, 32) and "conv4" not in variables["params"]
    Y, variables = shapes(resnext.ResNeXtBlock(64, 16, 1, use_1x1conv=True, strides=(2, 2)), X)
    assert Y.shape == (4, 48, 48, 64)
    assert variables["params"]["conv4"]["kernel"].shape == (1, 1, 32, 64) and "bn4" in variables["params"]
    Y, variables = shapes(resnext.ResNeXtBlock(32, 16, 1, strides=(2, 2)), X)  # a stride alone projects
    assert Y.shape == (4, 48, 48, 32) and "conv4" in variables["params"]


def test_layer_summary_and_parameter_count():
    model = resnext.ResNeXt()
    pairs = []
    jax.eval_shape(lambda: pairs.extend(model.layer_summary((1, 96, 96, 1), key=KEY)) or jnp.zeros(()))
    assert pairs == [  # the ResNet-18 layout of D2L 8.6, at 96x96
        ("Sequential", (1, 24, 24, 64)), ("Sequential", (1, 24, 24, 64)), ("Sequential", (1, 12, 12, 128)),
        ("Sequential", (1, 6, 6, 256)), ("Sequential", (1, 3, 3, 512)), ("Sequential", (1, 10)),
    ]  # fmt: skip

    def block(c_in, c, groups=16):  # bot_mul 1: the bottleneck is c wide
        convs = c_in * c + c + 9 * (c // groups) * c + c + c * c + c
        projection = c_in * c + c + 2 * c if c_in != c else 0
        return convs + 3 * 2 * c + projection

    stages = [2 * block(64, 64)] + [block(c // 2, c) + block(c, c) for c in (128, 256, 512)]
    stem, head = 49 * 64 + 64 + 2 * 64, 512 * 10 + 10
    variables = jax.eval_shape(model.init, KEY, jnp.zeros((1, 96, 96, 1)))
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert count == stem + sum(stages) + head == 1_812_746


def test_quick_training_run(tmp_path, capsys):
    trainer = resnext.run(["--quick", "--resize", "32", "--batch-size", "16", "--out-dir", str(tmp_path)])
    assert isinstance(trainer.model, resnext.ResNeXt) and trainer.model.groups == 16
    losses = [record["train_loss"] for record in trainer.history]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert trainer.state.batch_stats
    assert "Sequential output shape:\t (1, 1, 1, 512)" in capsys.readouterr().out
