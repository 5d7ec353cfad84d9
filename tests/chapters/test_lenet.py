"""The LeNet chapter: the book's shapes, its parameter count, learning on real data, the CLI."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from chapter_helpers import param_count
from conftest import run_chapter

import d2lite as d2l
from chapters import lenet

BOOK_SHAPES = [  # D2L 7.6, on a (1, 28, 28, 1) input
    ("Conv", (1, 28, 28, 6)),
    ("sigmoid", (1, 28, 28, 6)),
    ("lambda", (1, 14, 14, 6)),
    ("Conv", (1, 10, 10, 16)),
    ("sigmoid", (1, 10, 10, 16)),
    ("lambda", (1, 5, 5, 16)),
    ("lambda", (1, 400)),
    ("Dense", (1, 120)),
    ("sigmoid", (1, 120)),
    ("Dense", (1, 84)),
    ("sigmoid", (1, 84)),
    ("Dense", (1, 10)),
]


def test_layer_summary_matches_the_book():
    assert lenet.LeNet().layer_summary((1, 28, 28, 1)) == BOOK_SHAPES


def test_parameter_count():
    # conv 6*25+6, conv 16*6*25+16, dense 400*120+120, 120*84+84, 84*10+10
    assert param_count(lenet.LeNet(), (1, 28, 28, 1)) == 156 + 2416 + 48120 + 10164 + 850 == 61706


def test_lenet_learns_fashion_mnist(tmp_path):
    data = d2l.FashionMNIST(batch_size=128, num_train=128 * 50, num_val=1000)
    trainer = d2l.Trainer(max_epochs=2, progress=False)
    trainer.fit(lenet.LeNet(lr=0.003, optimizer="adam"), data)  # the chapter's recipe, 100 steps
    assert trainer.num_val_examples == 1000
    assert trainer.history[-1]["val_acc"] > 0.5  # chance is 0.10
    # Sigmoids start on a plateau: over 6 seeds the second epoch's loss was 0.66-0.88 of the first's.
    assert trainer.history[-1]["train_loss"] < 0.85 * trainer.history[0]["train_loss"]


def test_quick_run_of_the_chapter(tmp_path, capsys):
    chapter = run_chapter("lenet", "--quick", "--out-dir", str(tmp_path))
    assert chapter["args"].optimizer == "adam" and chapter["model"].lr == 0.003  # the chapter's defaults
    assert chapter["trainer"].num_train_batches == 10 and chapter["data"].resize == (28, 28)
    assert (tmp_path / "progress.png").is_file() and (tmp_path / "progress.svg").is_file()
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.err and "data: found in" in captured.out
    assert "validation accuracy:" in captured.out
    assert "training with Adam at lr 0.003, not the book's SGD at 0.1" in captured.out


def test_the_books_optimizer_brings_the_books_learning_rate(tmp_path):
    chapter = run_chapter(
        "lenet",
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--num-train",
        "64",
        "--num-val",
        "64",
        "--batch-size",
        "64",
        "--out-dir",
        str(tmp_path),
    )
    assert chapter["model"].optimizer == "sgd" and chapter["model"].lr == 0.1


def test_subset_and_precision_flags(tmp_path):
    trainer = run_chapter(
        "lenet",
        "--epochs",
        "1",
        "--num-train",
        "640",
        "--num-val",
        "70",
        "--batch-size",
        "64",
        "--precision",
        "bfloat16",
        "--out-dir",
        str(tmp_path),
    )["trainer"]
    assert trainer.num_train_examples == 640 and trainer.num_train_batches == 10
    assert trainer.num_val_examples == 70 and trainer.precision == "bfloat16"
    assert int(trainer.state.step) == 10


def test_a_script_reports_a_too_small_resize_in_one_line(tmp_path):
    # A real script: its one-line errors come from the excepthook that chapter_args installs.
    command = [sys.executable, "-m", "chapters.lenet", "--quick", "--resize", "8", "--out-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err.startswith("error: LeNet cannot run on inputs of shape (1, 8, 8, 1)")
    assert "resize it to at least 12 (--resize 12)" in err and "\n" not in err


@pytest.mark.parametrize(
    "flag", ["--batch-size=0", "--epochs=-1", "--lr=abc", "--num-train=0", "--steps-per-dispatch=fast"]
)
def test_bad_flags_exit_with_usage(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_chapter("lenet", flag)
    assert exit_info.value.code == 2
    assert "expected a positive" in capsys.readouterr().err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        run_chapter("lenet", "--help")
    out = capsys.readouterr().out
    for flag in [
        "--epochs",
        "--batch-size",
        "--lr",
        "--resize",
        "--num-train",
        "--num-val",
        "--data-dir",
        "--out-dir",
        "--precision",
        "--distributed",
        "--steps-per-dispatch",
        "--quick",
    ]:
        assert flag in out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "(default: 10, or 2 with --quick)" in " ".join(out.split()) and out.count("default: 10") == 1
    assert "(default: 128)" in out and "(default: adam)" in out


def test_the_class_trains_as_the_books_does():
    model = lenet.LeNet()
    assert model.lr == 0.1 and model.optimizer == "sgd"
    tx = model.configure_optimizers()
    grads = {"w": jax.numpy.array([1.0, -2.0])}
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], [-0.1, 0.2])  # plain SGD at 0.1: no momentum, no scaling
