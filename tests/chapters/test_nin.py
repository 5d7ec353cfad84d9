"""The NiN chapter: the book's shapes, a real global average pool, the parameter count.

Training runs in test_notebooks.py, the chapter as a notebook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chapter_helpers import forward, param_count

import d2lite as d2l
from chapters import nin
from d2lite.models import global_avg_pool


def test_layer_summary_matches_the_book():
    # D2L 8.3 on (1, 224, 224, 1); the book's fixed 5x5 avg_pool + flatten are one global pool.
    assert nin.NiN().layer_summary((1, 224, 224, 1)) == [
        ("Sequential", (1, 54, 54, 96)),
        ("max_pool_3x3_s2", (1, 26, 26, 96)),
        ("Sequential", (1, 26, 26, 256)),
        ("max_pool_3x3_s2", (1, 12, 12, 256)),
        ("Sequential", (1, 12, 12, 384)),
        ("max_pool_3x3_s2", (1, 5, 5, 384)),
        ("Dropout", (1, 5, 5, 384)),
        ("Sequential", (1, 5, 5, 10)),
        ("global_avg_pool", (1, 10)),
    ]


def test_parameter_count():
    def block(c_in, c_out, k):
        return (k * k * c_in * c_out + c_out) + 2 * (c_out * c_out + c_out)

    expected = block(1, 96, 11) + block(96, 256, 5) + block(256, 384, 3) + block(384, 10, 3)
    assert param_count(nin.NiN(), (1, 224, 224, 1)) == expected == 1_992_166


@pytest.mark.parametrize("size", [96, 224])
def test_runs_at_96_and_224(size):
    # At 96x96 the last feature map is 1x1: the book's fixed 5x5 pool would leave nothing.
    logits, _, _ = forward(nin.NiN(training=False), (1, size, size, 1))
    assert logits.shape == (1, 10) and bool(jnp.isfinite(logits).all())


def test_global_avg_pool_averages_the_whole_map():
    x = jnp.arange(2 * 3 * 5 * 4, dtype=jnp.float32).reshape(2, 3, 5, 4)
    np.testing.assert_allclose(global_avg_pool(x), np.asarray(x).mean(axis=(1, 2)))


def test_smallest_input_is_67_pixels():
    assert nin.NiN().layer_summary((1, 67, 67, 1))[-1] == ("global_avg_pool", (1, 10))
    with pytest.raises(d2l.D2LiteError, match=r"resize it to at least 67 \(--resize 67\)"):
        nin.NiN().layer_summary((1, 66, 66, 1))


@pytest.mark.parametrize("init", ["lecun", "xavier"])
def test_kernel_initialisation(init):
    # The first convolution, 11x11 over 1 channel into 96: fan in 121, fan out 121 * 96.
    variables = nin.NiN(weight_init=init).init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 1)))
    kernel = variables["params"]["net"]["layers_0"]["layers_0"]["kernel"]
    fan_in, fan_out = 121, 121 * 96
    expected = (1 / fan_in) ** 0.5 if init == "lecun" else (2 / (fan_in + fan_out)) ** 0.5
    assert float(jnp.std(kernel)) == pytest.approx(expected, rel=0.05)
