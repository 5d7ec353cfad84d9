"""The next edition's face (`from d2lite import nnx as d2l`): its names and signatures, and NNX
models on the core's Trainer: the trained variables back in the model, exact resume (the
model's own Rngs included), the recipe, bfloat16, a reader's own loop, errors as themselves."""

import inspect
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import count_compiles
from conftest import Blobs, TinyCNN
from flax import nnx

import d2lite
from d2lite import nnx as d2l


class TinyNet(d2l.Classifier):
    """Conv, BatchNorm, ReLU, Dropout, Linear on Blobs' 8x8 images: every kind of NNX state."""

    def __init__(self, lr=0.1, dropout=0.2, optimizer="sgd", seed=0):
        super().__init__()
        self.save_hyperparameters()
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.net = nnx.Sequential(
            nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs),
            nnx.BatchNorm(4, rngs=rngs),
            nnx.relu,
            lambda x: x.reshape((x.shape[0], -1)),
            nnx.Dropout(dropout, rngs=rngs),
            nnx.Linear(4 * 8 * 8, 3, rngs=rngs),
        )

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return optax.adam(self.lr / 10)
        return optax.sgd(self.lr, momentum=0.9)


CTRL_C = {}  # {"epoch": index}: where CtrlCNet presses Ctrl-C (not a hyperparameter: runs must match)


class CtrlCNet(TinyNet):
    def plot(self, key, value, train):
        super().plot(key, value, train)
        if train and "epoch" in CTRL_C and self.trainer.epoch == CTRL_C["epoch"]:
            del CTRL_C["epoch"]
            os.kill(os.getpid(), signal.SIGINT)


def fit(model, max_epochs=3, **kwargs):
    trainer = d2l.Trainer(max_epochs=max_epochs, progress=False, plot=False, **kwargs)
    trainer.fit(model, Blobs())
    return trainer


def leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]  # fmt: skip


def test_the_face_has_the_next_editions_names_and_signatures():
    for name in d2l.BOOK:
        assert hasattr(d2l, name), name
    assert issubclass(d2l.Module, nnx.Module) and issubclass(d2l.Trainer, d2lite.Trainer)
    assert d2l.DataModule is d2lite.DataModule and d2l.FashionMNIST is d2lite.FashionMNIST
    init = list(inspect.signature(d2l.Module.__init__).parameters)
    assert init == ["self", "plot_train_per_epoch", "plot_valid_per_epoch"]
    assert list(inspect.signature(d2l.Classifier.loss).parameters) == ["self", "Y_hat", "Y", "averaged"]
    assert list(inspect.signature(d2l.Module.training_step).parameters) == ["self", "batch"]
    assert "rngs" in inspect.signature(d2l.LeNet.__init__).parameters
    assert "in_channels" in inspect.signature(d2l.Residual.__init__).parameters
    assert callable(d2l.ProgressBoard.flush)
    # The current edition's face is unchanged: Linen modules and the core Trainer.
    assert d2lite.Module is not d2l.Module and d2lite.Trainer is not d2l.Trainer
    with pytest.raises(
        d2lite.D2LiteError, match="TinyNet is not a Flax Linen module: .*from d2lite import nnx"
    ):
        d2lite.Trainer(max_epochs=1, progress=False).fit(TinyNet(), Blobs())
    assert "params" in inspect.signature(d2lite.Classifier.loss).parameters


def test_the_books_helpers_compute_what_they_say():
    y_hat = jnp.array([[0.1, 0.3, 0.6], [0.3, 0.2, 0.5]])
    y = jnp.array([0, 2])
    assert float(d2l.cross_entropy(y_hat, y)) == pytest.approx(-(np.log(0.1) + np.log(0.5)) / 2)
    assert np.isfinite(float(d2l.cross_entropy(jnp.array([[0.0, 1.0]]), jnp.array([0]))))
    first, second = d2l.get_key(), d2l.get_key()
    assert not np.array_equal(first, second)
    w = jnp.array([2.0, -3.4])
    by_key = d2l.SyntheticRegressionData(w=w, b=4.2, key=jax.random.PRNGKey(1))
    default = d2l.SyntheticRegressionData(w=w, b=4.2)
    assert not np.allclose(by_key.X, default.X)
    np.testing.assert_allclose(default.X, d2lite.SyntheticRegressionData(w=w, b=4.2).X)
    assert d2l.Residual(6, strides=(2, 2), in_channels=3)(jnp.zeros((1, 6, 6, 3))).shape == (1, 3, 3, 6)
    assert d2l.ResNeXtBlock(32, 16, 1)(jnp.zeros((1, 4, 4, 32))).shape == (1, 4, 4, 32)
    fig = d2l.show_heatmaps(jnp.eye(3).reshape(1, 1, 3, 3), xlabel="x", ylabel="y")
    assert len(fig.axes) == 2  # the heatmap and its colorbar


def test_fit_writes_the_trained_variables_back_into_the_model():
    model = d2l.LinearRegression(2, lr=0.03, rngs=nnx.Rngs(0))
    data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
    trainer = d2l.Trainer(max_epochs=3, progress=False)
    trainer.fit(model, data)
    w, b = model.get_w_b()
    np.testing.assert_allclose(w.reshape(-1), [2, -3.4], atol=0.05)
    np.testing.assert_allclose(b, [4.2], atol=0.05)
    np.testing.assert_array_equal(w, trainer.state.params["net"]["kernel"][...])
    X = data.X[:5]
    np.testing.assert_allclose(trainer.val_model(X), model(X), rtol=1e-6)  # views share the variables
    assert isinstance(trainer.optim, nnx.Optimizer)


def test_an_nnx_fit_is_one_jitted_program_per_shape_with_no_recompiles_after_epoch_one():
    compiles = []

    class Counting(d2l.Trainer):
        def fit_epoch(self):
            with count_compiles() as counted:
                super().fit_epoch()
            compiles.append(counted.count)

    model = TinyNet()
    Counting(max_epochs=3, progress=False, plot=False).fit(model, Blobs())
    assert compiles[0] > 0 and compiles[1:] == [0, 0]


@pytest.fixture(scope="module", params=["sgd", "adam"])
def reference(request, tmp_path_factory):
    """An uninterrupted run with momentum or Adam (dropout on: the model's Rngs matter too)."""
    model = CtrlCNet(optimizer=request.param)
    return fit(model, run_dir=tmp_path_factory.mktemp("reference") / "run"), model


def test_ctrl_c_then_resume_gives_the_uninterrupted_run_and_the_trained_model(tmp_path, reference):
    reference, reference_model = reference
    optimizer = reference_model.optimizer
    run_dir = tmp_path / "run"
    CTRL_C["epoch"] = 1
    stopped_model = CtrlCNet(optimizer=optimizer)
    with pytest.raises(d2l.TrainingInterrupted):
        fit(stopped_model, run_dir=run_dir)
    assert not CTRL_C
    # The interrupted model holds what was trained until the stop: neither the start nor the end.
    start, stopped = CtrlCNet(optimizer=optimizer), nnx.state(stopped_model, nnx.Param)
    assert not np.allclose(leaves(stopped)[0], leaves(nnx.state(start, nnx.Param))[0])
    count = stopped_model.net.layers[4].rngs.count[...]
    assert 8 < int(count) < 16  # the Dropout's own key counter: one draw per step, in epoch 2

    model = CtrlCNet(optimizer=optimizer)  # a fresh process would build the same model
    resumed = fit(model, resume=run_dir)
    opt_state = leaves(resumed.state.opt_state)
    assert opt_state and all(np.abs(v).max() > 0 for v in opt_state if v.dtype.kind == "f")
    for mine, theirs in zip(leaves(resumed.state), leaves(reference.state), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in reference.history]
    )
    for mine, theirs in zip(leaves(nnx.state(model)), leaves(nnx.state(reference_model)), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)
    assert int(model.net.layers[4].rngs.count[...]) == 3 * 8


def test_label_smoothing_and_the_average_of_the_recipe_act_on_an_nnx_model():
    plain = fit(TinyNet(dropout=0.0), max_epochs=1)
    recipe = d2l.Recipe(label_smoothing=0.2, ema=0.9)
    smoothed = fit(TinyNet(dropout=0.0), max_epochs=1, recipe=recipe)
    # Same start, same batches: smoothed targets can never be fitted exactly, so the loss is higher.
    assert smoothed.history[0]["train_loss"] > plain.history[0]["train_loss"]
    assert smoothed.state.average is not None

    class OwnLoss(TinyNet):
        def loss(self, Y_hat, Y, averaged=True):
            return jnp.mean((Y_hat - jax.nn.one_hot(Y, 3)) ** 2)

    with pytest.raises(
        d2l.D2LiteError, match="label_smoothing needs the Classifier's loss; OwnLoss has its own"
    ):
        fit(OwnLoss(), max_epochs=1, recipe=d2l.Recipe(label_smoothing=0.1))


def test_bfloat16_trains_an_nnx_model_around_float32_state():
    model = TinyNet(dropout=0.0)
    trainer = fit(model, max_epochs=1, precision="bfloat16")
    assert np.isfinite(trainer.history[0]["train_loss"])
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    assert trainer.history[0]["val_loss"] == pytest.approx(
        fit(TinyNet(dropout=0.0), 1).history[0]["val_loss"], 0.05
    )


def test_a_readers_own_fit_epoch_and_the_books_sgd_run_as_that_edition_expects():
    @nnx.jit
    def train_step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(lambda m: m.training_step(batch))(model)
        optimizer.update(model, grads)
        return loss

    class BookLoop(d2l.Trainer):
        def fit_epoch(self):
            for batch in self.train_dataloader:
                self.model.plot("loss", train_step(self.train_model, self.optim, batch), train=True)
                self.train_batch_idx += 1

    model = d2l.LinearRegressionScratch(2, lr=0.03, rngs=nnx.Rngs(0))
    assert isinstance(model.configure_optimizers(), d2l.SGD)  # duck-typed: init and update
    data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2)
    BookLoop(max_epochs=10, progress=False).fit(model, data)
    np.testing.assert_allclose(model.w[...].reshape(-1), [2, -3.4], atol=0.05)
    assert len(model.board.data["train_loss"]) > 0
    core_trained = d2l.LinearRegressionScratch(2, lr=0.03, rngs=nnx.Rngs(0))
    d2l.Trainer(max_epochs=10, progress=False).fit(core_trained, data)  # the same SGD, in the core's loop
    np.testing.assert_allclose(core_trained.w[...], model.w[...], atol=0.02)


def test_a_models_own_error_is_raised_as_itself_not_as_an_input_size_problem():
    class Broken(TinyNet):
        def forward(self, X):
            return self.net(X).reshape((3, 3, 3, 3))  # a bug in the model: no shape fits it

    with pytest.raises(TypeError, match="reshape") as raised:
        fit(Broken(), max_epochs=1)
    assert any(frame.name == "forward" for frame in raised.traceback)  # the model's own line

    class BrokenLinen(TinyCNN):
        def __call__(self, X):
            return self.net(X).reshape((3, 3, 3, 3))

    with pytest.raises(TypeError, match="reshape"):
        d2lite.Trainer(max_epochs=1, progress=False, plot=False).fit(BrokenLinen(), Blobs())
    with pytest.raises(d2lite.D2LiteError, match="TinyCNN cannot run on inputs of shape"):  # empty images
        TinyCNN().layer_summary((1, 0, 8, 1))


def test_fashion_mnist_splits_can_be_assigned_as_the_recipes_section_does():
    data = d2l.FashionMNIST(batch_size=64)
    images, labels = data.train
    data.train = (images[:256], labels[:256])  # a subset, as a reader's own split would be
    data.val = (images[256:320], labels[256:320])
    assert len(data.train[0]) == 256 and data.arrays(False)[0].shape == (64, 28, 28)
    trainer = d2l.Trainer(max_epochs=1, progress=False, plot=False)
    trainer.fit(d2l.SoftmaxRegression(num_outputs=10, lr=0.1, rngs=nnx.Rngs(0)), data)
    assert trainer.num_train_examples == 256 and trainer.num_val_examples == 64


def test_after_fit_the_books_optimizer_holds_the_trained_optimizer_state():
    trainer = fit(TinyNet(optimizer="adam"), max_epochs=1)
    assert int(trainer.optim.step[...]) == int(trainer.state.step) == 8
    mine = [v for v in leaves(nnx.state(trainer.optim, nnx.OptState)) if v.ndim]
    trained = [v for v in leaves(trainer.state.opt_state) if v.ndim]
    assert len(mine) == len(trained) > 0
    for a, b in zip(mine, trained, strict=True):
        np.testing.assert_array_equal(a, b)


class ScratchBatchNorm(nnx.Module):
    """A block with its own view hook, as the edition's BatchNorm from scratch: `set_view`
    switches it, the Trainer's views must call it."""

    def __init__(self, features):
        self.deterministic = False
        self.moving_mean = nnx.BatchStat(jnp.zeros(features))
        self.scale = nnx.Param(jnp.ones(features))

    def set_view(self, *, deterministic):
        self.deterministic = deterministic

    def __call__(self, X):
        if self.deterministic:
            return (X - self.moving_mean[...]) * self.scale
        mean = X.mean(axis=0)
        self.moving_mean[...] = 0.9 * self.moving_mean[...] + 0.1 * mean
        return (X - mean) * self.scale


def test_the_trainers_views_honour_a_blocks_own_view_hook():
    class Net(d2l.Classifier):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            rngs = nnx.Rngs(0)
            flat = lambda x: x.reshape((x.shape[0], -1))  # noqa: E731
            self.net = nnx.Sequential(
                flat, nnx.Linear(64, 8, rngs=rngs), ScratchBatchNorm(8), nnx.Linear(8, 3, rngs=rngs)
            )

    model = Net()
    trainer = fit(model, max_epochs=1)
    norm = model.net.layers[2]
    assert not norm.deterministic  # the reader's model is left in its own mode
    assert (
        trainer.val_model.net.layers[2].deterministic and not trainer.train_model.net.layers[2].deterministic
    )
    assert np.abs(norm.moving_mean[...]).max() > 0  # training steps updated the statistics
    X = jnp.asarray(Blobs().X[:4, :, :, None])
    expected = model.net.layers[3](
        (model.net.layers[1](X.reshape(4, -1)) - norm.moving_mean[...]) * norm.scale
    )
    np.testing.assert_allclose(trainer.val_model(X), expected, rtol=1e-5, atol=1e-6)


def test_the_weight_decay_sections_mask_is_reproduced_and_its_fix_decays():
    def trained_norm(wd, kernel):
        class WeightDecay(d2l.LinearRegression):
            def configure_optimizers(self):
                mask = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: kernel(p), params)  # noqa: E731
                return optax.chain(optax.masked(optax.add_decayed_weights(wd), mask), optax.sgd(self.lr))

        model = WeightDecay(200, lr=0.01, rngs=nnx.Rngs(0))
        data = d2l.SyntheticRegressionData(
            w=jnp.full(200, 0.01), b=0.05, num_train=20, num_val=20, batch_size=5
        )
        d2l.Trainer(max_epochs=5, progress=False, plot=False).fit(model, data)
        return float((model.get_w_b()[0] ** 2).sum())

    books = lambda path: getattr(path[-1], "name", None) == "kernel"  # noqa: E731 (ends at the Variable's value)
    fixed = lambda path: any(getattr(k, "key", None) == "kernel" for k in path)  # noqa: E731
    # The data module shuffles its rows when the Trainer reads them, so runs differ slightly.
    assert trained_norm(3, books) == pytest.approx(trained_norm(0, books), rel=0.03)  # never decays
    assert trained_norm(3, fixed) < 0.9 * trained_norm(0, fixed)
