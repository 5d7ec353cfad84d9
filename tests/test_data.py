"""FashionMNIST as a data module: arguments, subsets, preprocessing inside the jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import d2lite as d2l


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"batch_size": -5}, r"batch_size must be a positive integer, got -5"),
        ({"batch_size": "64"}, r"batch_size must be a positive integer, got '64'"),
        ({"resize": (0, 28)}, r"resize must be \(height, width\) in positive pixels"),
        ({"resize": (28, 28, 1)}, r"resize must be \(height, width\)"),
        ({"num_train": 0}, r"num_train must be a positive integer or None"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(d2l.D2LiteError, match=message):
        d2l.FashionMNIST(**kwargs)


def test_subsets_have_exact_sizes_and_stay_uint8():
    data = d2l.FashionMNIST(num_train=1000, num_val=300)
    X, y = data.arrays(True)
    assert X.shape == (1000, 28, 28) and X.dtype == np.uint8 and y.dtype == np.int32
    assert data.arrays(False)[0].shape == (300, 28, 28)
    assert "found in" in data.source
    full = d2l.FashionMNIST()
    assert len(full.arrays(True)[1]) == 60000 and len(full.arrays(False)[1]) == 10000


def test_a_holdout_validates_on_training_images_and_keeps_the_test_images_for_the_end():
    full = d2l.FashionMNIST()
    X, y = full.arrays(True)
    data = d2l.FashionMNIST(holdout=5000, num_train=2000)
    np.testing.assert_array_equal(data.arrays(False)[0], X[55000:])  # the last 5000 training images
    np.testing.assert_array_equal(data.arrays(True)[0], X[:2000])
    assert np.bincount(data.arrays(False)[1]).min() > 400  # every class, about 500 each
    test = data.test_data()
    np.testing.assert_array_equal(test.arrays(False)[0], full.arrays(False)[0])
    assert (test.batch_size, test.resize) == (data.batch_size, data.resize)
    with pytest.raises(d2l.D2LiteError, match="holdout=60000 leaves no training images of 60000"):
        d2l.FashionMNIST(holdout=60000).arrays(True)


def test_preprocess_scales_and_resizes_inside_jit():
    data = d2l.FashionMNIST(resize=(96, 96))
    images = np.zeros((2, 28, 28), np.uint8)
    images[0] = 255
    images[1, :, 14:] = 255  # left half black, right half white
    X, y = jax.jit(data.preprocess)((jnp.asarray(images), jnp.array([3, 4])))
    assert X.shape == (2, 96, 96, 1) and X.dtype == jnp.float32
    np.testing.assert_allclose(X[0], 1.0, atol=1e-6)  # a constant image stays constant
    row = np.asarray(X[1, 48, :, 0])
    assert row[:40].max() == 0 and row[-40:].min() == pytest.approx(1.0)
    assert np.all(np.diff(row) >= -1e-6)  # bilinear: a monotone ramp across the edge
    assert 0 < row[48] < 1


def test_no_resize_keeps_28_by_28():
    data = d2l.FashionMNIST()
    X, _ = data.preprocess((jnp.full((1, 28, 28), 51, jnp.uint8), jnp.zeros(1, jnp.int32)))
    assert X.shape == (1, 28, 28, 1) and float(X.max()) == pytest.approx(0.2)


def test_dataloader_text_labels_and_visualize(tmp_path):
    data = d2l.FashionMNIST(batch_size=16, resize=(32, 32), num_train=64, num_val=40)
    batches = list(data.val_dataloader())
    assert [len(b[1]) for b in batches] == [16, 16, 8]
    assert batches[0][0].shape == (16, 32, 32, 1)
    assert data.text_labels([0, 9, 5]) == ["t-shirt", "ankle boot", "sandal"]
    axes = data.visualize(batches[0], ncols=4)
    assert [ax.get_title() for ax in axes] == data.text_labels(batches[0][1][:4])
    axes[0].figure.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d2l.plt.close("all")
