"""bfloat16 compute around float32 state: what is cast, what is not, and training still works."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TinyCNN
from flax import linen as nn

import d2lite as d2l
from d2lite.devices.precision import cast_floating, compute_in


def test_only_floating_arrays_are_cast():
    tree = {"x": jnp.ones(3), "labels": jnp.arange(3), "flag": True}
    cast = cast_floating(tree, jnp.bfloat16)
    assert cast["x"].dtype == jnp.bfloat16 and cast["labels"].dtype == jnp.int32 and cast["flag"] is True


def test_bfloat16_forward_and_backward_with_float32_results(blobs):
    model = TinyCNN()
    X, y = blobs.preprocess(blobs.arrays(True))
    X = X[:32]
    variables = model.init(jax.random.PRNGKey(0), X)
    mixed = compute_in("bfloat16", model.apply)

    program = str(jax.make_jaxpr(lambda v, x: mixed(v, x, mutable=["batch_stats"]))(variables, X))
    convolutions = [line for line in program.splitlines() if "conv_general_dilated" in line]
    assert convolutions and all("bf16[" in line for line in convolutions)  # computed in bfloat16

    full, _ = model.apply(variables, X, mutable=["batch_stats"])
    half, updates = mixed(variables, X, mutable=["batch_stats"])
    assert half.dtype == jnp.float32
    assert jax.tree.leaves(updates)[0].dtype == jnp.float32  # statistics stay float32
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05)
    assert not np.allclose(half, full, rtol=1e-6, atol=1e-6)  # and did lose bits

    def loss(apply, params):
        logits, _ = apply({**variables, "params": params}, X, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[:32]).mean()

    g_full = jax.grad(lambda p: loss(model.apply, p))(variables["params"])
    g_half = jax.grad(lambda p: loss(mixed, p))(variables["params"])
    a, b = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(g)]) for g in (g_full, g_half))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g_half))
    assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.99


def test_trainer_in_bfloat16_learns_with_float32_state(blobs, quiet_trainer):
    full = quiet_trainer(max_epochs=4)
    full.fit(TinyCNN(), blobs)
    half = quiet_trainer(max_epochs=4, precision="bfloat16")
    half.fit(TinyCNN(), blobs)
    state = half.state
    leaves = jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
    floating = {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert floating == {jnp.dtype("float32")}
    assert half.history[-1]["train_loss"] < 0.8 * half.history[0]["train_loss"]
    assert half.history[-1]["val_loss"] == pytest.approx(full.history[-1]["val_loss"], rel=0.1)
    assert half.history[-1]["val_acc"] == pytest.approx(full.history[-1]["val_acc"], abs=0.05)


CONV_DTYPES = []  # what ConvDtypes saw each time it was traced, outside initialisation


class ConvDtypes(TinyCNN):
    """TinyCNN as one convolution, BatchNorm and a dense layer that records, whenever a forward
    pass is traced, (training, the convolution's input, kernel and output dtypes)."""

    def setup(self):
        self.conv = nn.Conv(4, (3, 3))
        self.bn = nn.BatchNorm(use_running_average=not self.training)
        self.dense = nn.Dense(self.num_classes)

    def forward(self, X):
        Y = self.conv(X)
        if not self.is_initializing():
            kernel = self.conv.variables["params"]["kernel"]
            CONV_DTYPES.append((self.training, *(str(a.dtype) for a in (X, kernel, Y))))
        Y = nn.relu(self.bn(Y))
        return self.dense(Y.reshape((Y.shape[0], -1)))


def test_a_bfloat16_fit_convolves_in_bfloat16_and_trains_otherwise_than_float32(blobs, quiet_trainer):
    def fit(precision):
        CONV_DTYPES.clear()
        trainer = quiet_trainer(max_epochs=2, precision=precision)
        trainer.fit(ConvDtypes(), blobs)
        return trainer, set(CONV_DTYPES)

    full, traced_full = fit("float32")
    half, traced_half = fit("bfloat16")
    f32, bf16 = ("float32",) * 3, ("bfloat16",) * 3
    assert traced_full == {(True, *f32), (False, *f32)}  # training and validation
    assert {seen for seen in traced_half if seen[0]} == {(True, *bf16)}  # every training step
    assert (False, *bf16) in traced_half  # and validation

    for trainer in (full, half):  # both keep float32 state
        leaves = jax.tree.leaves((trainer.state.params, trainer.state.opt_state, trainer.state.batch_stats))
        assert {leaf.dtype for leaf in leaves} == {jnp.dtype("float32")}
    losses = [[record["train_loss"] for record in t.history] for t in (full, half)]
    assert len(losses[0]) == len(losses[1]) == 2
    assert all(a != b for a, b in zip(*losses, strict=True)), losses  # the same seed, other numbers
    assert losses[1] == pytest.approx(losses[0], rel=0.1)  # yet the same training


def test_unknown_precisions_are_refused():
    with pytest.raises(d2l.D2LiteError, match="precision must be one of float32, bfloat16, got 'float16'"):
        d2l.Trainer(max_epochs=1, precision="float16")
