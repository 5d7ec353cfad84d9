"""The batch normalization chapter: the scratch layer against Flax's, the BN-LeNets, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_chapter
from flax import linen as nn

from chapters import batchnorm

# Flax's convention, which the scratch layer follows: moving = momentum * moving + (1 - momentum)
# * batch, with the biased batch variance.
MOMENTUM, EPS = 0.9, 1e-5

SHAPES = [  # D2L 8.5 on a (1, 28, 28, 1) input, unpadded 5x5 convolutions
    ("Conv", (1, 24, 24, 6)),
    ("BatchNorm", (1, 24, 24, 6)),
    ("sigmoid", (1, 24, 24, 6)),
    ("lambda", (1, 12, 12, 6)),
    ("Conv", (1, 8, 8, 16)),
    ("BatchNorm", (1, 8, 8, 16)),
    ("sigmoid", (1, 8, 8, 16)),
    ("lambda", (1, 4, 4, 16)),
    ("lambda", (1, 256)),
    ("Dense", (1, 120)),
    ("BatchNorm", (1, 120)),
    ("sigmoid", (1, 120)),
    ("Dense", (1, 84)),
    ("BatchNorm", (1, 84)),
    ("sigmoid", (1, 84)),
    ("Dense", (1, 10)),
]


def batches(shape, count=4):
    """Batches whose statistics differ per feature and from batch to batch."""
    keys = jax.random.split(jax.random.PRNGKey(42), count)
    features = shape[-1]
    offsets = jnp.arange(features, dtype=jnp.float32) - features / 2  # mean far from 0
    scales = 0.5 + jnp.arange(features, dtype=jnp.float32) / features  # variance far from 1
    return [offsets + scales * (1 + i) * jax.random.normal(k, shape) for i, k in enumerate(keys)]


@pytest.mark.parametrize("shape", [(8, 5, 7, 3), (16, 6)], ids=["NHWC", "dense"])
def test_scratch_layer_matches_flax_batchnorm(shape):
    X = batches(shape)
    features = shape[-1]
    ours = batchnorm.BatchNorm(features, num_dims=len(shape), momentum=MOMENTUM, eps=EPS)
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)
    key = jax.random.PRNGKey(0)
    ours_vars, flax_vars = ours.init(key, X[0]), flax_bn.init(key, X[0])
    # Learned scale and shift that are not the identity, the same in both layers.
    gamma = 1.0 + 0.1 * jnp.arange(features, dtype=jnp.float32)
    beta = -0.2 * jnp.arange(features, dtype=jnp.float32)
    ours_params = {
        "gamma": gamma.reshape(ours_vars["params"]["gamma"].shape),
        "beta": beta.reshape(ours_vars["params"]["beta"].shape),
    }
    flax_params = {"scale": gamma, "bias": beta}
    ours_stats, flax_stats = ours_vars["batch_stats"], flax_vars["batch_stats"]
    np.testing.assert_array_equal(ours_stats["moving_mean"].reshape(-1), flax_stats["mean"])
    np.testing.assert_array_equal(ours_stats["moving_var"].reshape(-1), flax_stats["var"])

    for batch in X:  # training mode: batch statistics normalize, running statistics move
        Y, ours_update = ours.apply(
            {"params": ours_params, "batch_stats": ours_stats}, batch, mutable=["batch_stats"]
        )
        Y_flax, flax_update = flax_bn.apply(
            {"params": flax_params, "batch_stats": flax_stats}, batch, mutable=["batch_stats"]
        )
        np.testing.assert_allclose(Y, Y_flax, rtol=1e-5, atol=1e-5)
        ours_stats, flax_stats = ours_update["batch_stats"], flax_update["batch_stats"]
        np.testing.assert_allclose(
            ours_stats["moving_mean"].reshape(-1), flax_stats["mean"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            ours_stats["moving_var"].reshape(-1), flax_stats["var"], rtol=1e-5, atol=1e-6
        )

    # After 4 updates the running statistics are far from their initial 0 and 1.
    assert np.abs(np.asarray(flax_stats["mean"])).max() > 0.5
    assert np.abs(np.asarray(flax_stats["var"]) - 1).max() > 0.5
    # The convention itself: 0.9 * old + 0.1 * (biased) batch statistics, per feature.
    axes = tuple(range(len(shape) - 1))
    last_mean = MOMENTUM * running_mean_before_last(X, axes) + (1 - MOMENTUM) * X[-1].mean(axis=axes)
    np.testing.assert_allclose(ours_stats["moving_mean"].reshape(-1), last_mean, rtol=1e-5, atol=1e-6)

    # Evaluation mode: the running statistics normalize; nothing changes.
    evaluate = batchnorm.BatchNorm(
        features, num_dims=len(shape), deterministic=True, momentum=MOMENTUM, eps=EPS
    )
    probe = X[0][: len(X[0]) // 2] * 0.5 + 3.0
    Y, unchanged = evaluate.apply(
        {"params": ours_params, "batch_stats": ours_stats}, probe, mutable=["batch_stats"]
    )
    flax_evaluate = nn.BatchNorm(use_running_average=True, momentum=MOMENTUM, epsilon=EPS)
    Y_flax = flax_evaluate.apply({"params": flax_params, "batch_stats": flax_stats}, probe)
    np.testing.assert_allclose(Y, Y_flax, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(unchanged["batch_stats"]["moving_mean"], ours_stats["moving_mean"])
    expected = gamma * (probe - flax_stats["mean"]) / jnp.sqrt(flax_stats["var"] + EPS) + beta
    np.testing.assert_allclose(Y, expected, rtol=1e-5, atol=1e-5)


def running_mean_before_last(X, axes):
    """The running mean after all batches but the last, computed directly."""
    mean = 0.0
    for batch in X[:-1]:
        mean = MOMENTUM * mean + (1 - MOMENTUM) * batch.mean(axis=axes)
    return mean


def test_training_mode_normalizes_each_channel_of_nhwc_inputs():
    X = batches((8, 5, 7, 3))[1]
    variables = batchnorm.BatchNorm(3, num_dims=4).init(jax.random.PRNGKey(0), X)
    Y, _ = batchnorm.BatchNorm(3, num_dims=4).apply(variables, X, mutable=["batch_stats"])
    np.testing.assert_allclose(Y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(Y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    assert variables["batch_stats"]["moving_mean"].shape == (1, 1, 1, 3)


@pytest.mark.parametrize("model", [batchnorm.BNLeNetScratch, batchnorm.BNLeNet])
def test_layer_summary_and_parameter_count(model):
    key, X = jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))
    pairs = []  # layer_summary traced abstractly: the same shapes, no weights drawn
    jax.eval_shape(lambda: pairs.extend(model().layer_summary(X.shape, key=key)) or jnp.zeros(()))
    assert pairs == SHAPES
    variables = jax.eval_shape(model().init, key, X)
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    # conv 6*25+6, conv 16*6*25+16, dense 256*120+120, 120*84+84, 84*10+10, BatchNorm 2*(6+16+120+84)
    assert count == 156 + 2416 + 30840 + 10164 + 850 + 452 == 44878
    stats = sum(p.size for p in jax.tree.leaves(variables["batch_stats"]))
    assert stats == 452


def test_quick_training_run_with_the_scratch_layer(tmp_path, capsys):
    chapter = run_chapter(
        "batchnorm", "--quick", "--scratch", "--batch-size", "32", "--epochs", "3", "--out-dir", str(tmp_path)
    )
    trainer = chapter["trainer"]
    assert type(trainer.model) is chapter["BNLeNetScratch"] and trainer.model.lr == 0.1
    losses = [record["train_loss"] for record in trainer.history]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    layers = list(trainer.state.batch_stats["net"].values())  # the four scratch BatchNorm layers
    assert len(layers) == 4 and all(np.all(np.isfinite(np.asarray(s))) for s in jax.tree.leaves(layers))
    assert all(np.abs(np.asarray(layer["moving_mean"])).max() > 0 for layer in layers)  # they moved
    assert "BatchNorm output shape:\t (1, 24, 24, 6)" in capsys.readouterr().out


def test_bn_lenet_keeps_its_running_statistics_with_momentum_0_9():
    model = batchnorm.BNLeNet()
    X = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 28, 28, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), X)
    _, state = model.apply(variables, X, capture_intermediates=True, mutable=["batch_stats", "intermediates"])
    (conv_out,) = state["intermediates"]["net"]["layers_0"]["__call__"]
    moving_mean = state["batch_stats"]["net"]["layers_1"]["mean"]  # started at 0
    np.testing.assert_allclose(moving_mean, (1 - 0.9) * conv_out.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7)
