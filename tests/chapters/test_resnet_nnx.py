"""The NNX ResNet chapter: shapes, parameter counts, both modes; training: test_notebooks.py."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chapters import resnet_nnx


def param_count(model, shape):
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape))
    return sum(p.size for p in jax.tree.leaves(variables["params"]))


def test_layer_summary_has_the_book_resnet18_shapes():
    shapes = [shape for _, shape in resnet_nnx.resnet18_nnx().layer_summary((1, 96, 96, 1))]
    assert shapes == [
        (1, 24, 24, 64),
        (1, 24, 24, 64),
        (1, 12, 12, 128),
        (1, 6, 6, 256),
        (1, 3, 3, 512),
        (1, 10),
    ]


def test_imagenet_parameter_counts_match_the_published_ones():
    # The NNX stem conv keeps its bias (9,408 weights + 64): torchvision's counts + 64.
    imagenet = {"num_classes": 1000, "in_features": 3}
    assert param_count(resnet_nnx.resnet18_nnx(**imagenet), (1, 224, 224, 3)) == 11_689_512 + 64
    assert param_count(resnet_nnx.resnet50_nnx(**imagenet), (1, 224, 224, 3)) == 25_557_032 + 64


def test_bottleneck_blocks_start_as_identity_on_the_residual_branch():
    block = resnet_nnx.BottleneckBlock(256, 64, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(block.bn3.scale[...], 0.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 256))
    np.testing.assert_allclose(block(x, train=True), jax.nn.relu(x), atol=1e-6)


def test_training_and_evaluation_modes_differ_only_through_batchnorm():
    model = resnet_nnx.resnet18_nnx()
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    train_out, updates = model.apply(variables, x, mutable=["batch_stats"])
    eval_out = model.clone(training=False).apply(variables, x)
    assert train_out.shape == eval_out.shape == (4, 10)
    assert not np.allclose(train_out, eval_out)  # batch statistics vs running statistics
    before, after = variables["batch_stats"], updates["batch_stats"]
    assert not all(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
