"""The GoogLeNet chapter: Inception's channels, the book's shapes, the parameter count.

Training runs in test_notebooks.py, the chapter as a notebook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chapter_helpers import forward, param_count
from flax import linen as nn

from chapters import googlenet
from d2lite.devices.init_key import init_key

# (c1, c2, c3, c4) of the nine Inception blocks of b3, b4 and b5, as in D2L 8.4
INCEPTIONS = [
    (64, (96, 128), (16, 32), 32),
    (128, (128, 192), (32, 96), 64),
    (192, (96, 208), (16, 48), 64),
    (160, (112, 224), (24, 64), 64),
    (128, (128, 256), (24, 64), 64),
    (112, (144, 288), (32, 64), 64),
    (256, (160, 320), (32, 128), 128),
    (256, (160, 320), (32, 128), 128),
    (384, (192, 384), (48, 128), 128),
]


def test_inception_concatenates_its_four_branches():
    Y, variables, X = forward(googlenet.Inception(3, (4, 5), (2, 7), 6), (2, 5, 5, 4))
    assert Y.shape == (2, 5, 5, 3 + 5 + 7 + 6)  # c1 + c2[1] + c3[1] + c4, same height and width
    assert bool((Y >= 0).all())  # every branch ends in a ReLU
    # In the book's order: the 1x1 branch first, the pooling branch last.
    params = variables["params"]

    def conv1x1(x, name):
        return jax.nn.relu(x @ params[name]["kernel"][0, 0] + params[name]["bias"])

    np.testing.assert_allclose(Y[..., :3], conv1x1(X, "b1_1"), rtol=1e-5, atol=1e-6)
    pooled = nn.max_pool(X, (3, 3), strides=(1, 1), padding="SAME")
    np.testing.assert_allclose(Y[..., -6:], conv1x1(pooled, "b4_2"), rtol=1e-5, atol=1e-6)
    first = googlenet.Inception(*INCEPTIONS[0])
    out = jax.eval_shape(first.init_with_output, jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 192)))[0]
    assert out.shape == (1, 12, 12, 64 + 128 + 32 + 32)


def test_layer_summary_matches_the_book():  # D2L 8.4, on a (1, 96, 96, 1) input
    assert googlenet.GoogleNet().layer_summary((1, 96, 96, 1)) == [
        ("Sequential", (1, 24, 24, 64)),
        ("Sequential", (1, 12, 12, 192)),
        ("Sequential", (1, 6, 6, 480)),
        ("Sequential", (1, 3, 3, 832)),
        ("Sequential", (1, 1024)),
        ("Dense", (1, 10)),
    ]


def test_any_input_size_works():
    for size in (1, 32, 224):
        assert googlenet.GoogleNet().layer_summary((1, size, size, 1))[-2:] == [
            ("Sequential", (1, 1024)),
            ("Dense", (1, 10)),
        ]


def test_parameter_count():
    def inception(c_in, c1, c2, c3, c4):
        return (
            (c_in * c1 + c1)
            + (c_in * c2[0] + c2[0])
            + (9 * c2[0] * c2[1] + c2[1])
            + (c_in * c3[0] + c3[0])
            + (25 * c3[0] * c3[1] + c3[1])
            + (c_in * c4 + c4)
        )

    expected = (49 * 1 * 64 + 64) + (64 * 64 + 64) + (9 * 64 * 192 + 192)  # b1, b2
    channels = 192
    for c1, c2, c3, c4 in INCEPTIONS:
        expected += inception(channels, c1, c2, c3, c4)
        channels = c1 + c2[1] + c3[1] + c4
    expected += 1024 * 10 + 10
    assert channels == 1024
    assert param_count(googlenet.GoogleNet(), (1, 96, 96, 1)) == expected == 5_977_530


def test_he_initialisation_keeps_the_signal_that_the_books_fades():
    # The first convolution, 7x7 over 1 channel: fan in 49. LeCun's variance is 1/fan-in
    # (Flax's default, the book's JAX code), He's 2/fan-in.
    # Drawn through the Trainer's `init_key`, whose eager draws take a fifth of threefry's time.
    X = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1))
    logits = {}
    for init, variance in (("lecun", 1 / 49), ("he", 2 / 49)):
        logits[init], variables = googlenet.GoogleNet(weight_init=init).init_with_output(
            init_key(jax.random.PRNGKey(0)), X
        )
        kernel = variables["params"]["net"]["layers_0"]["layers_0"]["kernel"]
        assert float(jnp.std(kernel)) == pytest.approx(variance**0.5, rel=0.05)
    # Through 22 ReLU layers LeCun's logits all but vanish (every class scores the same: loss
    # ln 10); He's stay over 30 times larger (110-120x for seeds 0-2).
    assert float(jnp.std(logits["he"])) > 30 * float(jnp.std(logits["lecun"]))
