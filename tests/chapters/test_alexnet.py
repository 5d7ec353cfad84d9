"""The AlexNet chapter: the book's shapes, its parameter count, the smallest input.

Training runs in test_notebooks.py, the chapter as a notebook."""

import pytest
from chapter_helpers import param_count

import d2lite as d2l
from chapters import alexnet

BOOK_SHAPES = [  # D2L 8.1, on a (1, 224, 224, 1) input
    ("Conv", (1, 54, 54, 96)),
    ("relu", (1, 54, 54, 96)),
    ("max_pool_3x3_s2", (1, 26, 26, 96)),
    ("Conv", (1, 26, 26, 256)),
    ("relu", (1, 26, 26, 256)),
    ("max_pool_3x3_s2", (1, 12, 12, 256)),
    ("Conv", (1, 12, 12, 384)),
    ("relu", (1, 12, 12, 384)),
    ("Conv", (1, 12, 12, 384)),
    ("relu", (1, 12, 12, 384)),
    ("Conv", (1, 12, 12, 256)),
    ("relu", (1, 12, 12, 256)),
    ("max_pool_3x3_s2", (1, 5, 5, 256)),
    ("flatten", (1, 6400)),
    ("Dense", (1, 4096)),
    ("relu", (1, 4096)),
    ("Dropout", (1, 4096)),
    ("Dense", (1, 4096)),
    ("relu", (1, 4096)),
    ("Dropout", (1, 4096)),
    ("Dense", (1, 10)),
]


def test_layer_summary_matches_the_book():
    assert alexnet.AlexNet().layer_summary((1, 224, 224, 1)) == BOOK_SHAPES


def test_parameter_count():
    convs = (
        (11 * 11 * 1 * 96 + 96)
        + (5 * 5 * 96 * 256 + 256)
        + (3 * 3 * 256 * 384 + 384)
        + (3 * 3 * 384 * 384 + 384)
        + (3 * 3 * 384 * 256 + 256)
    )
    dense = (6400 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    assert param_count(alexnet.AlexNet(), (1, 224, 224, 1)) == convs + dense == 46_764_746


def test_smallest_input_is_65_pixels():
    assert alexnet.AlexNet().layer_summary((1, 65, 65, 1))[-8] == ("flatten", (1, 256))
    with pytest.raises(
        d2l.D2LiteError, match=r"shrink the image to nothing; resize it to at least 65 \(--resize 65\)"
    ):
        alexnet.AlexNet().layer_summary((1, 64, 64, 1))
