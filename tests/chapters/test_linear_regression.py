"""The linear regression chapter: the loss, recovering w and b, the CLI."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_chapter

import d2lite as d2l
from chapters import linear_regression as lr


def test_model_has_one_dense_unit_and_half_squared_error_loss():
    model = d2l.LinearRegression(lr=0.03)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
    assert jax.tree.map(jnp.shape, variables["params"]) == {"net": {"kernel": (2, 1), "bias": (1,)}}
    assert float(jnp.abs(variables["params"]["net"]["kernel"]).max()) < 0.05  # N(0, 0.01^2)
    params = {"net": {"kernel": jnp.array([[1.0], [0.0]]), "bias": jnp.zeros(1)}}
    X, Y = jnp.array([[1.0, 5.0], [2.0, 5.0]]), jnp.array([[0.0], [4.0]])
    state = SimpleNamespace(apply_fn=model.apply)
    assert float(model.loss(params, (X,), Y, state)) == pytest.approx((1 + 4) / 2 / 2)


def test_learns_w_and_b(tmp_path, capsys):
    trainer = run_chapter("linear_regression", "--epochs", "2", "--lr", "0.1", "--out-dir", str(tmp_path))[
        "trainer"
    ]  # 62 steps
    w, b = trainer.model.get_w_b(trainer.state)
    np.testing.assert_allclose(w.reshape(-1), lr.TRUE_W, atol=0.05)
    assert abs(float(b[0]) - lr.TRUE_B) < 0.05
    assert len(trainer.history) == 2 and trainer.history[-1]["val_loss"] < 0.01
    assert "error in estimating w" in capsys.readouterr().out


def test_quick_run_and_its_run_directory(tmp_path, capsys):
    trainer = run_chapter("linear_regression", "--quick", "--out-dir", str(tmp_path))["trainer"]
    assert trainer.num_train_batches == 10 and len(trainer.history) == 2
    out = capsys.readouterr().out
    assert "error in estimating w" in out and "error in estimating b" in out
    assert (tmp_path / "progress.png").is_file() and (tmp_path / "metrics.csv").is_file()


def test_bad_flag_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_chapter("linear_regression", "--lr", "-1")
    assert exit_info.value.code == 2
    assert "expected a positive" in capsys.readouterr().err
