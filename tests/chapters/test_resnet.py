"""The ResNet chapter: the book's blocks and shapes, the paper's family and its counts.

Training runs in test_notebooks.py, the chapter as a notebook.

Shapes and counts come from `jax.eval_shape` (tracing only: no weights drawn, nothing
compiled); the few checks of values run small modules under one `jax.jit` each.
"""

import argparse
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chapters import resnet

KEY = jax.random.PRNGKey(0)
BOOK_SHAPES = [  # D2L 8.6, ResNet18 on a (1, 96, 96, 1) input: b1, four stages, the head
    ("Sequential", (1, 24, 24, 64)),
    ("Sequential", (1, 24, 24, 64)),
    ("Sequential", (1, 12, 12, 128)),
    ("Sequential", (1, 6, 6, 256)),
    ("Sequential", (1, 3, 3, 512)),
    ("Sequential", (1, 10)),
]
TINY_ARCH = ((1, 8),)  # one stage of one block (with a projection from the stem's 64 channels)


def summary(model, input_shape):
    """`model.layer_summary(input_shape)` traced abstractly: the same shapes, no weights drawn."""
    pairs = []
    jax.eval_shape(lambda: pairs.extend(model.layer_summary(input_shape, key=KEY)) or jnp.zeros(()))
    return pairs


def shapes(module, X):
    """(output, variables) of `module.init_with_output` as shapes only."""
    return jax.eval_shape(module.init_with_output, KEY, X)


def param_count(model, input_shape):
    variables = jax.eval_shape(model.init, KEY, jnp.zeros(input_shape))
    return sum(p.size for p in jax.tree.leaves(variables["params"]))


def test_layer_summary_matches_the_book():
    assert summary(resnet.ResNet18(), (1, 96, 96, 1)) == BOOK_SHAPES


def test_book_resnet18_parameter_count():
    def residual(c_in, c):  # two biased 3x3 convs, two BatchNorms, a biased 1x1 projection if needed
        return 9 * c_in * c + c + 9 * c * c + c + 4 * c + (c_in * c + c if c_in != c else 0)

    stages = [residual(64, 64) * 2] + [residual(c // 2, c) + residual(c, c) for c in (128, 256, 512)]
    stem, head = 49 * 64 + 64 + 2 * 64, 512 * 10 + 10
    count = param_count(resnet.ResNet18(), (1, 96, 96, 1))
    assert count == stem + sum(stages) + head == 11_178_378


@pytest.mark.parametrize("preset, published", [(resnet.resnet18, 11_689_512), (resnet.resnet50, 25_557_032)])
def test_imagenet_configurations_have_the_published_counts(preset, published):
    assert param_count(preset(num_classes=1000), (1, 224, 224, 3)) == published


def test_family_layer_summary_has_the_same_layout():
    pairs = summary(resnet.resnet50(), (1, 96, 96, 1))
    assert [name for name, _ in pairs] == ["Sequential"] * 6
    assert [shape for _, shape in pairs] == [
        (1, 24, 24, 64),
        (1, 24, 24, 256),
        (1, 12, 12, 512),
        (1, 6, 6, 1024),
        (1, 3, 3, 2048),
        (1, 10),
    ]
    assert [len(stage.layers) for stage in resnet.resnet152().bind({}).net.layers[1:5]] == [3, 8, 36, 3]


def test_bottleneck_branches_start_at_zero():
    X = jax.nn.relu(jax.random.normal(KEY, (2, 8, 8, 32)))  # non-negative, 32 = 4 x 8 channels

    @jax.jit
    def init_blocks(X):
        identity = resnet.BottleneckBlock(8).init_with_output(KEY, X)
        projected = resnet.BottleneckBlock(8, strides=(2, 2)).init(KEY, X)["params"]
        basic = resnet.BasicBlock(32).init(KEY, X)["params"]
        return identity, projected, basic

    (Y, identity), projected, basic = init_blocks(X)
    for params in (identity["params"], projected):
        np.testing.assert_array_equal(params["bn3"]["scale"], 0.0)  # the last BatchNorm of the branch
        for name in ("bn1", "bn2"):
            np.testing.assert_array_equal(params[name]["scale"], 1.0)
    np.testing.assert_array_equal(projected["proj_bn"]["scale"], 1.0)
    assert projected["conv3"]["kernel"].shape == (1, 1, 8, 32)  # 4x expansion
    np.testing.assert_allclose(Y, X)  # so a bottleneck block without projection starts as the identity
    np.testing.assert_array_equal(basic["bn2"]["scale"], 1.0)  # basic blocks keep scale one


@pytest.mark.parametrize("block_cls", [resnet.BasicBlock, resnet.BottleneckBlock])
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_variants_output_logits_in_their_dtype(block_cls, preact, dtype):
    model = resnet.resnet50 if block_cls is resnet.BottleneckBlock else resnet.resnet18
    Y, variables = shapes(model(preact=preact, dtype=dtype), jnp.zeros((2, 64, 64, 1)))
    assert Y.shape == (2, 10) and Y.dtype == dtype
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}  # params, stats
    net = variables["params"]["net"]
    assert ("proj_bn" in net["layers_2"]["layers_0"]) != preact  # pre-activation: a bare projection
    assert ("layers_0" in net["layers_5"]) == preact  # the head's final BatchNorm


def test_preact_and_bfloat16_training_mode_gives_finite_float_logits():
    X = jax.random.uniform(KEY, (2, 32, 32, 1))
    preact = resnet.ResNetFamily(arch=TINY_ARCH, block_cls=resnet.BasicBlock, preact=True)
    half = resnet.ResNetFamily(arch=TINY_ARCH, block_cls=resnet.BottleneckBlock, dtype=jnp.bfloat16)

    def forward(model, X):
        variables = model.init(KEY, X)
        state = SimpleNamespace(apply_fn=model.apply, batch_stats=variables["batch_stats"], dropout_rng=KEY)
        loss, updates = model.loss(variables["params"], (X,), jnp.array([0, 1]), state)
        return model.apply(variables, X, mutable=["batch_stats"])[0], updates, loss

    results = jax.jit(lambda X: [forward(model, X) for model in (preact, half)])(X)
    for (Y, updates, loss), dtype in zip(results, (jnp.float32, jnp.bfloat16), strict=True):
        assert Y.shape == (2, 10) and Y.dtype == dtype and np.all(np.isfinite(np.asarray(Y, np.float32)))
        assert loss.dtype == jnp.float32 and np.isfinite(loss)  # Classifier.loss upcasts
        assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(updates["batch_stats"]))


def test_the_command_line_selects_the_family_member():
    def build(*argv):
        parser = argparse.ArgumentParser()
        parser.add_argument("--lr", type=float, default=0.01)
        resnet.options(parser)
        return resnet.build_model(parser.parse_args(argv))

    assert type(build()) is resnet.ResNet18 and build().lr == 0.01
    model = build("--depth", "50", "--preact")
    assert model.block_cls is resnet.BottleneckBlock and model.preact and model.dtype == jnp.float32
    assert model.arch == resnet.stages(3, 4, 6, 3)
    assert build("--preact").arch == resnet.stages(2, 2, 2, 2)
