"""The softmax regression chapter: the book's model, learning on real data."""

import numpy as np
from conftest import run_chapter

import d2lite as d2l


def test_quick_run_of_the_books_model_learns(tmp_path, capsys):
    # 30 SGD steps of 256 images: validation accuracy 0.71 on the first 512 test images
    # (0.70-0.73 over seeds 0-3; chance is 0.10).
    trainer = run_chapter("softmax_regression", "--quick", "--epochs", "3", "--out-dir", str(tmp_path))[
        "trainer"
    ]
    assert isinstance(trainer.model, d2l.SoftmaxRegression) and trainer.model.num_outputs == 10
    losses = [record["train_loss"] for record in trainer.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert trainer.num_val_examples == 512
    assert trainer.history[-1]["val_acc"] > 0.6
    assert "epoch 3/3" in capsys.readouterr().err
