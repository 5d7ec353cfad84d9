"""The VGG chapter: blocks, the book's shapes, VGG-11's parameter count; training: test_notebooks.py."""

import jax
import pytest
from chapter_helpers import forward, param_count

from chapters import vgg

DENSE_SHAPES = [
    ("Dense", (1, 4096)),
    ("relu", (1, 4096)),
    ("Dropout", (1, 4096)),
    ("Dense", (1, 4096)),
    ("relu", (1, 4096)),
    ("Dropout", (1, 4096)),
    ("Dense", (1, 10)),
]


def test_vgg_block_halves_the_size_and_sets_the_channels():
    block = vgg.vgg_block(2, 8)
    Y, variables, _ = forward(block, (2, 10, 10, 3))
    assert Y.shape == (2, 5, 5, 8) and bool((Y >= 0).all())  # ReLU, then max pool
    assert sum(p.size for p in jax.tree.leaves(variables)) == (9 * 3 * 8 + 8) + (9 * 8 * 8 + 8)


def test_vgg11_layer_summary_matches_the_book():  # D2L 8.2, on a (1, 224, 224, 1) input
    assert vgg.VGG(arch=vgg.VGG11_ARCH).layer_summary((1, 224, 224, 1)) == [
        ("Sequential", (1, 112, 112, 64)),
        ("Sequential", (1, 56, 56, 128)),
        ("Sequential", (1, 28, 28, 256)),
        ("Sequential", (1, 14, 14, 512)),
        ("Sequential", (1, 7, 7, 512)),
        ("flatten", (1, 25088)),
        *DENSE_SHAPES,
    ]


def test_the_chapters_small_vgg11_shapes():
    assert vgg.SMALL_VGG11_ARCH == ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))
    assert vgg.VGG(arch=vgg.SMALL_VGG11_ARCH).layer_summary((1, 224, 224, 1)) == [
        ("Sequential", (1, 112, 112, 16)),
        ("Sequential", (1, 56, 56, 32)),
        ("Sequential", (1, 28, 28, 64)),
        ("Sequential", (1, 14, 14, 128)),
        ("Sequential", (1, 7, 7, 128)),
        ("flatten", (1, 6272)),
        *DENSE_SHAPES,
    ]


def test_vgg11_parameter_count():
    # The published VGG-11 (3 input channels, 1000 classes) has 132,863,336 parameters; here
    # the first convolution sees 1 channel (1,152 weights fewer) and the output layer has 10
    # classes (4096 * 990 + 990 = 4,056,030 fewer).
    assert (
        param_count(vgg.VGG(arch=vgg.VGG11_ARCH), (1, 224, 224, 1))
        == 132_863_336 - 1_152 - 4_056_030
        == 128_806_154
    )
    assert param_count(vgg.VGG(arch=vgg.SMALL_VGG11_ARCH), (1, 224, 224, 1)) == 43_093_322


def test_arch_is_a_required_keyword():
    with pytest.raises(TypeError):
        vgg.VGG(vgg.VGG11_ARCH)  # positionally it would land in a base class field
    with pytest.raises(TypeError):
        vgg.VGG()
