"""The RegNet chapter: the book's shapes, group width 16, parameter count; training: test_notebooks.py."""

import jax
import jax.numpy as jnp
from chapter_helpers import param_count

from chapters import regnet

KEY = jax.random.PRNGKey(0)


def regnet_params(model=None):
    model = model or regnet.RegNetX32()
    return jax.eval_shape(model.init, KEY, jnp.zeros((1, 96, 96, 1)))["params"]


def test_layer_summary_matches_the_book():
    assert regnet.RegNetX32().layer_summary((1, 96, 96, 1)) == [
        ("Sequential", (1, 48, 48, 32)),  # stem
        ("Sequential", (1, 24, 24, 32)),  # stage 1: 4 blocks, width 32
        ("Sequential", (1, 12, 12, 80)),  # stage 2: 6 blocks, width 80
        ("Sequential", (1, 10)),  # head
    ]


def test_group_width_is_16_in_both_stages():
    net = regnet_params()["net"]
    # Grouped 3x3 kernels are (3, 3, channels per group, out channels): 16 per group, as in the book.
    assert net["layers_1"]["layers_0"]["conv2"]["kernel"].shape == (3, 3, 16, 32)
    assert net["layers_2"]["layers_5"]["conv2"]["kernel"].shape == (3, 3, 16, 80)
    assert len(net["layers_1"]) == 4 and len(net["layers_2"]) == 6


def test_parameter_count():
    stem = 9 * 32 + 32 + 2 * 32

    def block(c_in, c, first):  # conv1 1x1, grouped conv2 3x3 (16 per group), conv3 1x1, BatchNorms
        count = (c_in * c + c) + (9 * 16 * c + c) + (c * c + c) + 3 * 2 * c
        return count + (c_in * c + c + 2 * c if first else 0)  # the strided 1x1 shortcut

    stage1 = block(32, 32, True) + 3 * block(32, 32, False)
    stage2 = block(32, 80, True) + 5 * block(80, 80, False)
    head = 80 * 10 + 10
    count = param_count(regnet.RegNetX32(), (1, 96, 96, 1))
    assert count == stem + stage1 + stage2 + head == 179_290


def test_anynet_builds_other_designs():
    model = regnet.AnyNet(arch=((1, 32, 8, 0.5), (2, 64, 8, 0.5), (1, 96, 16, 1)), stem_channels=16)
    assert [shape for _, shape in model.layer_summary((1, 64, 64, 1))] == [
        (1, 32, 32, 16),
        (1, 16, 16, 32),
        (1, 8, 8, 64),
        (1, 4, 4, 96),
        (1, 10),
    ]
    net = jax.eval_shape(model.init, KEY, jnp.zeros((1, 64, 64, 1)))["params"]["net"]
    assert net["layers_1"]["layers_0"]["conv2"]["kernel"].shape == (3, 3, 8, 16)  # 2 groups of 8
