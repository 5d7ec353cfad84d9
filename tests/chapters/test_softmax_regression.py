"""The softmax regression chapter: shapes, parameter count, learning on real data through main."""
import jax
import jax.numpy as jnp
import numpy as np

from chapters import softmax_regression


def test_layer_summary():
    summary = softmax_regression.SoftmaxRegression().layer_summary((1, 28, 28, 1))
    assert summary == [("lambda", (1, 784)), ("Dense", (1, 10))]


def test_parameter_count():
    model = softmax_regression.SoftmaxRegression()
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert sum(p.size for p in jax.tree.leaves(variables["params"])) == 784 * 10 + 10 == 7850


def test_quick_run_learns(tmp_path, capsys):
    # 30 SGD steps of 256 images: validation accuracy 0.71 on the first 512 test images
    # (0.70-0.73 over seeds 0-3; chance is 0.10).
    trainer = softmax_regression.run(["--quick", "--epochs", "3", "--out-dir", str(tmp_path)])
    losses = [record["train_loss"] for record in trainer.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert trainer.num_val_examples == 512
    assert trainer.history[-1]["val_acc"] > 0.6


def test_main_returns_zero(tmp_path, capsys):
    assert softmax_regression.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert "epoch 2/2" in capsys.readouterr().err
