"""The NNX ResNet chapter (the next edition's ResNet-18): shapes, parameter count, both modes;
training: test_notebooks.py and test_nnx.py."""

import jax
import numpy as np
from flax import nnx

from chapters import resnet_nnx


def param_count(model):
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_layer_summary_has_the_book_resnet18_shapes():
    model = resnet_nnx.ResNet18(rngs=nnx.Rngs(0))
    shapes = [shape for _, shape in model.layer_summary((1, 96, 96, 1))]
    assert shapes == [
        (1, 24, 24, 64),
        (1, 24, 24, 64),
        (1, 12, 12, 128),
        (1, 6, 6, 256),
        (1, 3, 3, 512),
        (1, 10),
    ]


def test_imagenet_parameter_count_is_the_published_one_with_the_books_departures():
    # torchvision's ResNet-18 has 11,689,512 parameters. The edition's keeps a bias on each of
    # its 20 convolutions (stem 64; stages 4x64, 5x128, 5x256, 5x512 with the projections) and
    # has no BatchNorm (scale and bias) after its three projections (128, 256, 512 channels).
    model = resnet_nnx.ResNet18(num_classes=1000, in_channels=3, rngs=nnx.Rngs(0))
    conv_biases = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512
    projection_batchnorms = 2 * (128 + 256 + 512)
    assert param_count(model) == 11_689_512 + conv_biases - projection_batchnorms


def test_training_and_evaluation_modes_differ_only_through_batchnorm():
    model = resnet_nnx.ResNet18(rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 1))
    train = nnx.view(model, use_running_average=False, raise_if_not_found=False)
    evaluate = nnx.view(model, use_running_average=True, raise_if_not_found=False)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    eval_out = evaluate(x)
    assert all(  # evaluation reads the running statistics and leaves them as they are
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(before), jax.tree.leaves(nnx.state(model, nnx.BatchStat)), strict=True
        )
    )
    train_out = train(x)
    assert train_out.shape == eval_out.shape == (4, 10)
    assert not np.allclose(train_out, eval_out)  # batch statistics vs running statistics
    after = nnx.state(model, nnx.BatchStat)
    assert not all(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
