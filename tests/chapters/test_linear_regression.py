"""The linear regression chapter: the synthetic data, the loss, recovering w and b, the CLI."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chapters import linear_regression as lr


def test_synthetic_data_follow_the_linear_model():
    data = lr.SyntheticRegressionData(w=[2, -3.4], b=4.2)
    X, y = data.arrays(train=True)
    assert X.shape == (1000, 2) and y.shape == (1000, 1) and X.dtype == y.dtype == np.float32
    residual = y - (X @ np.array([[2], [-3.4]]) + 4.2)
    assert abs(residual.std() - 0.01) < 0.002  # only the noise is left
    X_val, _ = data.arrays(train=False)
    assert X_val.shape == (1000, 2) and not np.allclose(X_val, X)  # a separate split
    batches = list(data.get_dataloader(train=True))  # the book's iterator still works
    assert len(batches) == 32 and batches[0][0].shape == (32, 2) and batches[-1][0].shape == (8, 2)


def test_model_has_one_dense_unit_and_half_squared_error_loss():
    model = lr.LinearRegression(lr=0.03)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
    assert jax.tree.map(jnp.shape, variables["params"]) == {"net": {"kernel": (2, 1), "bias": (1,)}}
    assert float(jnp.abs(variables["params"]["net"]["kernel"]).max()) < 0.05  # N(0, 0.01^2)
    Y_hat, Y = jnp.array([[1.0], [2.0]]), jnp.array([[0.0], [4.0]])
    assert float(model.loss(Y_hat, Y)) == pytest.approx((1 + 4) / 2 / 2)
    np.testing.assert_allclose(model.loss(Y_hat, Y, averaged=False), [[0.5], [2.0]])


def test_learns_w_and_b(tmp_path, capsys):
    trainer = lr.run(["--epochs", "2", "--lr", "0.1", "--out-dir", str(tmp_path)])  # 62 steps
    w, b = trainer.model.get_w_b(trainer.state)
    np.testing.assert_allclose(w, lr.TRUE_W, atol=0.05)
    assert abs(float(b) - lr.TRUE_B) < 0.05
    assert len(trainer.history) == 2 and trainer.history[-1]["val_loss"] < 0.01
    assert "error in estimating w" in capsys.readouterr().out


def test_quick_run_through_main(tmp_path, capsys):
    assert lr.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "error in estimating w" in out and "error in estimating b" in out
    assert (tmp_path / "progress.png").is_file()


def test_bad_flag_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lr.main(["--lr", "-1"])
    assert exit_info.value.code == 2
    assert "expected a positive" in capsys.readouterr().err
