"""bfloat16 compute around float32 state: what is cast, what is not, and training still works."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TinyCNN

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


def test_unknown_precisions_are_refused():
    with pytest.raises(d2l.D2LiteError, match="precision must be one of float32, bfloat16, got 'float16'"):
        d2l.Trainer(max_epochs=1, precision="float16")
