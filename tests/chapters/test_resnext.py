"""The ResNeXt chapter: 16 groups in every stage, shapes, count; training: test_notebooks.py."""

import jax
import jax.numpy as jnp

from chapters import resnext

KEY = jax.random.PRNGKey(0)


def shapes(module, X):
    """(output, variables) of `module.init_with_output` as shapes only (nothing computed)."""
    return jax.eval_shape(module.init_with_output, KEY, X)


def test_each_stage_has_16_groups():
    net = jax.eval_shape(resnext.ResNeXt().init, KEY, jnp.zeros((1, 96, 96, 1)))["params"]["net"]
    for stage, width in zip(range(1, 5), (64, 128, 256, 512), strict=True):
        kernel = net[f"layers_{stage}"]["layers_0"]["conv2"]["kernel"]
        assert kernel.shape == (3, 3, width // 16, width)  # (3, 3, channels per group, out)


def test_layer_summary_and_parameter_count():
    model = resnext.ResNeXt()
    pairs = []
    jax.eval_shape(lambda: pairs.extend(model.layer_summary((1, 96, 96, 1), key=KEY)) or jnp.zeros(()))
    assert pairs == [  # the ResNet-18 layout of D2L 8.6, at 96x96
        ("Sequential", (1, 24, 24, 64)),
        ("Sequential", (1, 24, 24, 64)),
        ("Sequential", (1, 12, 12, 128)),
        ("Sequential", (1, 6, 6, 256)),
        ("Sequential", (1, 3, 3, 512)),
        ("Sequential", (1, 10)),
    ]

    def block(c_in, c, groups=16):  # bot_mul 1: the bottleneck is c wide
        convs = c_in * c + c + 9 * (c // groups) * c + c + c * c + c
        projection = c_in * c + c + 2 * c if c_in != c else 0
        return convs + 3 * 2 * c + projection

    stages = [2 * block(64, 64)] + [block(c // 2, c) + block(c, c) for c in (128, 256, 512)]
    stem, head = 49 * 64 + 64 + 2 * 64, 512 * 10 + 10
    variables = jax.eval_shape(model.init, KEY, jnp.zeros((1, 96, 96, 1)))
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert count == stem + sum(stages) + head == 1_812_746
