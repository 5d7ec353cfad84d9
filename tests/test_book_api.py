"""The book's names in d2lite: helpers, aliases, devices, data and the saved models, each
doing what the book's does."""

import math
import random

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from flax import linen as nn

import d2lite as d2l


def param_count(model, input_shape):
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(input_shape))
    return sum(p.size for p in jax.tree.leaves(variables["params"]))


def test_every_book_name_is_there():
    assert [name for name in d2l.BOOK if not hasattr(d2l, name)] == []
    assert d2l.plt is matplotlib.pyplot and d2l.nn_Module is d2l.Module.__mro__[1]


def test_tensor_aliases_behave_like_the_frameworks_they_stand_for():
    X = d2l.reshape(d2l.arange(6, dtype=d2l.float32), (2, 3))
    assert X.shape == (2, 3) and X.dtype == jnp.float32
    assert d2l.reduce_sum(X, 0, keepdims=True).tolist() == [[3.0, 5.0, 7.0]]
    assert d2l.reduce_mean(X, 1).tolist() == [1.0, 4.0]
    assert d2l.transpose(X).shape == (3, 2)
    assert d2l.concat([X, X + 1], 1).shape == (2, 6) and d2l.stack([X, X], 0).shape == (2, 2, 3)
    assert d2l.argmax(d2l.tensor([[0.1, 0.7, 0.2]]), axis=1).tolist() == [1]
    assert d2l.astype(d2l.tensor([1.7]), d2l.int32).tolist() == [1]
    assert d2l.numpy(d2l.ones(2)).tolist() == [1.0, 1.0] and isinstance(d2l.numpy(X), np.ndarray)
    assert d2l.to(X, d2l.cpu()).devices() == {d2l.cpu()}


def test_get_key_is_random_but_repeats_after_random_seed():
    random.seed(3)
    first = [np.asarray(d2l.get_key()).tobytes() for _ in range(3)]
    random.seed(3)
    again = [np.asarray(d2l.get_key()).tobytes() for _ in range(3)]
    assert first == again and len(set(first)) == 3
    assert 0 <= d2l.get_seed() <= 10**6


def test_devices_fall_back_to_the_cpu():
    assert d2l.cpu().platform == "cpu"
    if d2l.num_gpus() == 0:
        assert d2l.try_gpu() == d2l.cpu() and d2l.try_all_gpus() == [d2l.cpu()]
        with pytest.raises(d2l.D2LiteError, match="there is no GPU 0: this machine has 0"):
            d2l.gpu(0)
    else:
        assert d2l.try_gpu().platform == "gpu" and len(d2l.try_all_gpus()) == d2l.num_gpus()
    assert d2l.Trainer(max_epochs=1, num_gpus=8).gpus == d2l.try_all_gpus()[: d2l.num_gpus()]


def test_corr2d_against_hand_computed_values_and_a_convolution():
    X = d2l.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    K = d2l.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert d2l.corr2d(X, K).tolist() == [[19.0, 25.0], [37.0, 43.0]]
    X, K = jax.random.normal(jax.random.PRNGKey(0), (6, 8)), jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    conv = jax.lax.conv_general_dilated(X[None, None], K[None, None], (1, 1), "VALID")[0, 0]
    np.testing.assert_allclose(d2l.corr2d(X, K), conv, rtol=1e-5, atol=1e-5)


def test_plot_draws_each_curve_on_the_current_axes():
    plt = d2l.plt
    plt.close("all")  # a figure another test left open (the predictions grid) would be the current one
    x = np.arange(0, 3, 0.5)
    d2l.plot(x, [x, x**2], xlabel="x", ylabel="f(x)", legend=["x", "x^2"], xlim=[0, 3])
    axes = plt.gca()
    assert [list(line.get_ydata()) for line in axes.get_lines()] == [list(x), list(x**2)]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["x", "x^2"]
    assert axes.get_xlabel() == "x" and tuple(axes.get_xlim()) == (0.0, 3.0)
    assert tuple(plt.gcf().get_size_inches()) == (3.5, 2.5)
    d2l.plot([1.0, 2.0, 4.0])  # one curve without x: plotted against its index, axes cleared
    (line,) = axes.get_lines()
    assert list(line.get_xdata()) == [0, 1, 2] and list(line.get_ydata()) == [1.0, 2.0, 4.0]
    plt.close("all")


def test_show_images_returns_the_axes_with_titles():
    axes = d2l.show_images(np.zeros((3, 4, 4)), 2, 2, titles=["a", "b", "c"])
    assert len(axes) == 4 and [ax.get_title() for ax in axes] == ["a", "b", "c", ""]
    d2l.use_svg_display()  # outside a kernel: nothing to do, and no error
    d2l.plt.close("all")


def test_synthetic_regression_data_as_in_the_book():
    data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
    assert data.X.shape == (2000, 2) and data.y.shape == (2000, 1)
    residual = data.y - (data.X @ d2l.tensor([[2.0], [-3.4]]) + 4.2)
    assert abs(float(residual.std()) - 0.01) < 0.002  # only the noise is left
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 32 and [len(b[0]) for b in batches[-2:]] == [32, 8]
    assert isinstance(batches[0][0], np.ndarray)
    rows = np.concatenate([X for X, _ in batches])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), np.sort(np.asarray(data.X[:1000, 0])))  # a permutation
    val = np.concatenate([X for X, _ in data.val_dataloader()])
    np.testing.assert_array_equal(val, np.asarray(data.X[1000:]))  # in order
    again = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
    np.testing.assert_array_equal(again.X, data.X)  # the book's fixed key


def test_sgd_steps_against_the_gradient_inside_jit():
    sgd = d2l.SGD(lr=0.5)
    params = {"w": jnp.array([1.0, 2.0])}
    state = sgd.init(params)
    assert state == optax.EmptyState()
    update = jax.jit(lambda g, s: sgd.update(g, s))  # the book's EmptyState class would fail here
    updates, _ = update({"w": jnp.array([2.0, -4.0])}, state)
    assert updates["w"].tolist() == [-1.0, 2.0]
    assert isinstance(sgd(), optax.GradientTransformation)


def test_the_library_names_the_book_calls_are_back_as_their_successors():
    # 7.2's kernel learning loop: p - lr * g over a parameter tree
    params, grads = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([10.0, -10.0])}
    stepped = jax.tree_map(lambda p, g: p - 0.03 * g, params, grads)
    np.testing.assert_allclose(stepped["w"], [0.7, 2.3])
    # 3.7's WeightDecay: decay wd * w is added to the gradient before SGD scales it by -lr
    tx = optax.chain(optax.additive_weight_decay(0.5), optax.sgd(0.1))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1 * (10.0 + 0.5 * 1.0), -0.1 * (-10.0 + 0.5 * 2.0)])


def test_linear_regression_scratch_learns_with_the_books_recipe(quiet_trainer):
    data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
    model = d2l.LinearRegressionScratch(2, lr=0.03)
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(model, data)
    w, b = trainer.state.params["w"].reshape(-1), trainer.state.params["b"]
    error = np.abs(np.asarray(w) - [2.0, -3.4]).max()
    assert error < 0.4 and abs(float(b[0]) - 4.2) < 0.4  # from 3.4 and 4.2 away at the start
    losses = [r["train_loss"] for r in trainer.history]
    assert losses[-1] < 0.05 * losses[0]
    assert trainer.history[-1]["val_loss"] < 0.1


def test_linear_regression_concise_reports_its_weights(quiet_trainer):
    data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
    model = d2l.LinearRegression(lr=0.1)
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(model, data)
    w, b = model.get_w_b(trainer.state)
    assert w.shape == (2, 1) and b.shape == (1,)
    np.testing.assert_allclose(w.reshape(-1), [2.0, -3.4], atol=0.02)
    assert abs(float(b[0]) - 4.2) < 0.02


def test_softmax_regression_shapes_and_parameters():
    model = d2l.SoftmaxRegression(num_outputs=10, lr=0.1)
    assert model.layer_summary((2, 28, 28, 1)) == [("SoftmaxRegression", (2, 10))]
    assert param_count(model, (1, 28, 28, 1)) == 784 * 10 + 10


def test_lenet_is_the_books(capsys):
    model = d2l.LeNet()
    assert (model.lr, model.num_classes) == (0.1, 10)
    assert param_count(model, (1, 28, 28, 1)) == 61706
    shapes = [shape for _, shape in model.layer_summary((1, 28, 28, 1))]
    assert shapes[2] == (1, 14, 14, 6) and shapes[5] == (1, 5, 5, 16) and shapes[-1] == (1, 10)
    assert isinstance(model.configure_optimizers(), optax.GradientTransformation)


def shapes(module, X):
    """(output, variables) of `module.init_with_output` as shapes only (nothing computed)."""
    return jax.eval_shape(module.init_with_output, jax.random.PRNGKey(0), X)


def test_residual_block_shapes():
    X = jnp.zeros((4, 6, 6, 3))
    Y, variables = shapes(d2l.Residual(3), X)
    assert Y.shape == (4, 6, 6, 3) and "conv3" not in variables["params"]  # identity shortcut
    Y, _ = shapes(d2l.Residual(6, use_1x1conv=True, strides=(2, 2)), X)
    assert Y.shape == (4, 3, 3, 6)
    # A stride or a channel change alone also gets the 1x1 projection (the book's code fails).
    Y, variables = shapes(d2l.Residual(6), X)
    assert Y.shape == (4, 6, 6, 6) and variables["params"]["conv3"]["kernel"].shape == (1, 1, 3, 6)
    Y, _ = shapes(d2l.Residual(3, strides=(2, 2)), X)
    assert Y.shape == (4, 3, 3, 3)


def test_resnext_block_groups_is_the_group_width_as_in_the_books_code():
    # The book's example block: 32 bottleneck channels in groups of 16, so 2 groups.
    _, variables = shapes(d2l.ResNeXtBlock(32, 16, 1), jnp.zeros((4, 96, 96, 32)))
    assert variables["params"]["conv2"]["kernel"].shape == (3, 3, 16, 32)  # (3, 3, per group, out)
    _, variables = shapes(d2l.ResNeXtBlock(64, 4, 0.5), jnp.zeros((1, 8, 8, 64)))
    assert variables["params"]["conv2"]["kernel"].shape == (3, 3, 4, 32)  # 8 groups of 4
    assert variables["batch_stats"]["bn1"]["mean"].shape == (32,)
    with pytest.raises(d2l.D2LiteError, match="32 bottleneck channels .* groups of 5"):
        shapes(d2l.ResNeXtBlock(32, 5, 1), jnp.zeros((1, 8, 8, 32)))


def test_resnext_block_shapes_with_and_without_stride_and_projection():
    X = jnp.zeros((4, 96, 96, 32))
    Y, variables = shapes(d2l.ResNeXtBlock(32, 16, 1), X)
    assert Y.shape == (4, 96, 96, 32) and "conv4" not in variables["params"]
    Y, variables = shapes(d2l.ResNeXtBlock(64, 16, 1, use_1x1conv=True, strides=(2, 2)), X)
    assert Y.shape == (4, 48, 48, 64)
    assert variables["params"]["conv4"]["kernel"].shape == (1, 1, 32, 64) and "bn4" in variables["params"]
    Y, variables = shapes(d2l.ResNeXtBlock(32, 16, 1, strides=(2, 2)), X)  # a stride alone projects
    assert Y.shape == (4, 48, 48, 32) and "conv4" in variables["params"]


@pytest.mark.parametrize(
    "kernel, strides, padding, groups",
    [
        ((3, 3, 32, 12), (1, 1), "SAME", 1),  # ResNet's 3x3 convolutions
        ((1, 1, 32, 12), (2, 2), "SAME", 1),  # a shortcut's 1x1 convolution
        ((5, 5, 32, 6), (3, 2), ((2, 1), (0, 3)), 1),  # explicit, uneven padding, uneven strides
        ((3, 3, 8, 12), (2, 2), "SAME", 4),  # grouped (ResNeXt's), 32 channels once dense
        ((5, 5, 6, 16), (1, 1), "VALID", 1),  # LeNet's second: few channels, widening
        ((5, 5, 1, 6), (1, 1), "SAME", 1),  # LeNet's first, on gray images
        ((4, 3, 1, 5), (3, 2), ((2, 0), (1, 2)), 1),  # one channel, uneven everything
    ],
)
def test_cpu_kernels_give_xla_convolutions_outputs_and_gradients(kernel, strides, padding, groups):
    """The stand-ins (kernel gradients as matrix products, one-channel convolutions as shifted
    multiply-adds, grouped convolutions as dense ones) compute what XLA's convolutions compute;
    the groups are real groups."""
    from d2lite.devices.cpu_kernels import conv_general_dilated

    rng = np.random.default_rng(0)  # drawn by NumPy: no RNG program to compile
    lhs = jnp.asarray(rng.normal(size=(2, 9, 9, kernel[2] * groups)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=kernel), jnp.float32)

    def loss(conv, lhs, rhs):
        y = conv(
            lhs, rhs, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
        )
        return (y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size).sum(), y

    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    (ours_dlhs, ours_drhs), ours = jax.jit(lambda x, k: grad(conv_general_dilated, x, k))(lhs, rhs)
    (xla_dlhs, xla_drhs), xla = jax.jit(lambda x, k: grad(jax.lax.conv_general_dilated, x, k))(lhs, rhs)
    assert ours.shape == xla.shape
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x, k: grad(conv_general_dilated, x, k))(lhs, rhs))
    for a, b in ((ours, xla), (ours_dlhs, xla_dlhs), (ours_drhs, xla_drhs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    if groups > 1:  # a dense convolution of the same shapes would differ
        dense_rhs = jnp.tile(rhs, (1, 1, groups, 1))
        dense = jax.lax.conv_general_dilated(
            lhs, dense_rhs, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        assert not np.allclose(dense, xla, atol=1e-3)


@pytest.mark.parametrize(
    "window, strides, padding",
    [
        ((3, 3), (1, 1), "SAME"),  # GoogLeNet's Inception branch
        ((3, 3), (2, 2), "SAME"),  # ResNet's stem, padded on one side only
        ((3, 3), (2, 2), "VALID"),  # AlexNet's
        ((2, 3), (2, 1), ((1, 0), (0, 2))),  # uneven window, strides and padding
    ],
)
def test_cpu_max_pools_give_xla_max_pools_outputs_and_gradients(window, strides, padding):
    """The max pool stand-in computes XLA's values and sends each window's gradient to its
    first maximum, as XLA does, also where ReLU zeros tie; `d2l.max_pool`, Flax's pool
    otherwise, takes it inside `cpu_kernels()`."""
    from d2lite.devices.cpu_kernels import cpu_kernels

    rng = np.random.default_rng(0)
    X = jnp.asarray(np.maximum(rng.normal(size=(2, 9, 8, 3)), 0).round(1), jnp.float32)  # many ties
    weights = jnp.asarray(rng.normal(size=nn.max_pool(X, window, strides, padding).shape), jnp.float32)

    def pool_and_grad():  # new functions each time: jit caches its traces by function
        pool = lambda X: d2l.max_pool(X, window, strides, padding)  # noqa: E731
        grad = jax.grad(lambda X: (pool(X) * weights).sum())
        return jax.jit(pool)(X), jax.jit(grad)(X), str(jax.make_jaxpr(grad)(X))

    xla = pool_and_grad()
    with cpu_kernels():
        ours = pool_and_grad()
    assert "select_and_scatter_add" in xla[2] and "select_and_scatter" not in ours[2]
    np.testing.assert_array_equal(ours[0], xla[0])
    np.testing.assert_allclose(ours[1], xla[1], atol=1e-6)
    assert np.count_nonzero(ours[1]) == np.count_nonzero(xla[1])  # the same winners
    X = X.at[1, 4, 5, 2].set(np.nan)  # a NaN wins its windows, as in XLA's max
    with cpu_kernels():
        ours = d2l.max_pool(X, window, strides, padding)
    np.testing.assert_array_equal(ours, nn.max_pool(X, window, strides, padding))


def test_flax_convolutions_trace_the_stand_ins_only_inside_cpu_kernels():
    from flax.linen import linear

    from d2lite.devices.cpu_kernels import cpu_kernels

    conv = nn.Conv(4, (3, 3))
    x = jnp.ones((1, 6, 6, 32))
    variables = conv.init(jax.random.PRNGKey(0), x)

    def jaxpr():
        return str(jax.make_jaxpr(jax.grad(lambda v: conv.apply(v, x).sum()))(variables))

    assert "custom_vjp" not in jaxpr()
    original = linear.lax
    with cpu_kernels():
        assert "custom_vjp" in jaxpr()
        with cpu_kernels():  # nested: still on, and left on
            pass
        assert "custom_vjp" in jaxpr()
    assert linear.lax is original and "custom_vjp" not in jaxpr()
    with cpu_kernels(enabled=False):
        assert "custom_vjp" not in jaxpr()


def test_intercepted_convolutions_keep_their_variables_and_intermediates():
    """Under `cpu_kernels()` a Linen conv runs as a copy bound to its own scope: a conv called
    twice, one built in `setup` and one inside a lifted transform draw and use the same
    parameters as without, and a capture records each output once."""
    from d2lite.devices.cpu_kernels import cpu_kernels

    class Net(nn.Module):
        def setup(self):
            self.shared = nn.Conv(32, (3, 3))

        def __call__(self, x):
            return self.rest(self.shared(self.shared(x)))

        @nn.compact
        def rest(self, x):
            return nn.Conv(4, (3, 3))(nn.remat(nn.Conv)(32, (3, 3))(x))

    net, x = Net(), jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6, 32)), jnp.float32)
    variables = net.init(jax.random.PRNGKey(0), x)
    captured = net.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    with cpu_kernels():
        ours = net.init(jax.random.PRNGKey(0), x)
        grad = jax.grad(lambda v: net.apply(v, x).sum())
        assert str(jax.make_jaxpr(grad)(variables)).count("custom_vjp") >= 4
        y = jax.jit(net.apply)(variables, x)
        ours_captured = net.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    assert jax.tree.structure(ours) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(y, net.apply(variables, x), rtol=1e-5, atol=1e-5)
    shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
    assert shapes(ours_captured) == shapes(captured)


def test_nnx_convolutions_trace_the_stand_ins_inside_cpu_kernels():
    """An NNX Conv takes its convolution as a constructor argument: built with
    `conv_general_dilated_if_on`, as the NNX chapter builds its convolutions, and called
    through the NNX-to-Linen bridge (the NNX chapter's way into the Trainer)."""
    from flax import nnx
    from flax.nnx import bridge

    from d2lite.devices.cpu_kernels import conv_general_dilated_if_on, cpu_kernels

    class Net(nnx.Module):
        def __init__(self, *, rngs):
            self.conv = nnx.Conv(32, 4, (3, 3), conv_general_dilated=conv_general_dilated_if_on, rngs=rngs)

        def __call__(self, x):
            return self.conv(x)

    model, x = bridge.ToLinen(Net), jnp.ones((1, 6, 6, 32))
    variables = model.init(jax.random.PRNGKey(0), x)

    def jaxpr():
        return str(jax.make_jaxpr(jax.grad(lambda v: model.apply(v, x).sum()))(variables))

    default = nnx.Conv.__init__.__kwdefaults__["conv_general_dilated"]
    assert "custom_vjp" not in jaxpr()
    with cpu_kernels():
        assert "custom_vjp" in jaxpr()
    assert nnx.Conv.__init__.__kwdefaults__["conv_general_dilated"] is default
    assert "custom_vjp" not in jaxpr()


def test_fashion_mnist_loaders_as_in_the_book():
    data = d2l.FashionMNIST(batch_size=100, resize=(32, 32), num_train=250, num_val=120)
    assert len(data.train[0]) == 250 and data.train[0][0].shape == (28, 28)
    loader = data.train_dataloader()
    X, y = next(iter(loader))
    assert len(loader) == math.ceil(250 / 100) == 3
    assert X.shape == (100, 32, 32, 1) and X.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= X.min() and X.max() <= 1.0
    assert data.text_labels([0, 9]) == ["t-shirt", "ankle boot"]
    axes = data.visualize(next(iter(data.val_dataloader())), ncols=4)
    assert [ax.get_title() for ax in axes] == data.text_labels(data.val[1][:4])
    d2l.plt.close("all")
