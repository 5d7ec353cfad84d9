"""The softmax regression chapter: the book's model, learning on real data through main."""
import numpy as np

import d2lite as d2l
from chapters import softmax_regression


def test_the_chapter_trains_the_books_model(tmp_path):
    trainer = softmax_regression.run(["--quick", "--epochs", "1", "--out-dir", str(tmp_path)])
    assert isinstance(trainer.model, d2l.SoftmaxRegression) and trainer.model.num_outputs == 10


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
