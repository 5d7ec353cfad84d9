"""Run directories: what a fit records, non-finite losses, the predictions grid, the chapter CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import count_compiles
from conftest import Blobs, TinyCNN, run_chapter

import d2lite as d2l
from d2lite.callbacks import guards
from d2lite.cli import one_line_errors
from d2lite.runs import directory as runs
from d2lite.runs.predictions import predict_validation

COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "examples_per_s", "seconds", "wall_time"]


class CountingTrainer(d2l.Trainer):
    """Counts XLA compilations from the start of an epoch to the start of the next (or the end
    of the fit), the checkpoint written after the epoch included."""

    def fit_epoch(self):
        if self.epoch > 0:
            self.compiles.__exit__(None, None, None)
            self.compiles_per_epoch.append(self.counter.count)
        self.compiles = count_compiles()
        self.counter = self.compiles.__enter__()
        super().fit_epoch()

    def fit(self, model, data):
        super().fit(model, data)
        self.compiles.__exit__(None, None, None)
        self.compiles_per_epoch.append(self.counter.count)


def test_a_run_directory_holds_config_metrics_plot_and_the_newest_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    trainer = CountingTrainer(
        max_epochs=3, run_dir=run_dir, keep_checkpoints=2, progress=False, run_info={"chapter": "tiny"}
    )
    trainer.compiles_per_epoch = []
    trainer.fit(TinyCNN(dropout=0.1), Blobs())
    assert trainer.compiles_per_epoch[1:] == [0, 0]  # checkpointing compiles nothing either

    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",  # one writer at a time: pid and host of the last one
        "checkpoints",
        "config.json",
        "metrics.csv",
        "progress.png",
        "progress.svg",
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["16", "24"]  # keep 2

    config = json.loads((run_dir / "config.json").read_text())
    assert config["chapter"] == "tiny"
    assert config["model"] == {
        "class": "conftest.TinyCNN",
        "plot_train_per_epoch": 2,
        "plot_valid_per_epoch": 1,
        "lr": 0.1,
        "num_classes": 3,
        "use_bn": True,
        "dropout": 0.1,
    }
    assert config["data"] == {
        "class": "conftest.Blobs",
        "num_train": 256,
        "num_val": 70,
        "batch_size": 32,
        "seed": 0,
    }
    assert config["trainer"]["max_epochs"] == 3 and config["trainer"]["keep_checkpoints"] == 2
    assert config["parameters"] == 40 + 8 + 256 * 3 + 3  # conv, BatchNorm scale+bias, dense
    env = config["environment"]
    assert env["backend"] == "cpu" and env["devices"] == ["cpu:0"]
    assert f"jax:    {__import__('jax').__version__}" in env["jax"] and env["versions"]["orbax-checkpoint"]

    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == COLUMNS
    rows = runs.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [8, 16, 24]
    for row, record in zip(rows, trainer.history, strict=True):
        assert row == pytest.approx(record)
    assert rows[0]["wall_time"] < rows[1]["wall_time"] < rows[2]["wall_time"]


def test_without_a_run_directory_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = d2l.Trainer(max_epochs=1, progress=False, limit_train_batches=2)
    trainer.fit(TinyCNN(), Blobs())
    assert (
        not any(isinstance(c, runs.RunDirectory) for c in trainer.callbacks)
        and trainer.run_path is None
        and len(trainer.history) == 1
    )
    assert list(tmp_path.iterdir()) == []


class LossTurnsNaN(TinyCNN):
    """The reported loss is NaN from training step 12 on (epoch 2, its 4th step)."""

    def training_step(self, params, batch, state):
        (loss, updates), grads = super().training_step(params, batch, state)
        return (jnp.where(state.step >= 11, jnp.nan, loss), updates), grads


def test_a_nonfinite_loss_stops_at_once_naming_the_step_and_keeping_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    trainer = d2l.Trainer(max_epochs=3, run_dir=run_dir, progress=False, plot=False)
    with pytest.raises(d2l.D2LiteError) as error:
        trainer.fit(LossTurnsNaN(), Blobs())
    checkpoint = run_dir.absolute() / "checkpoints" / "8"
    assert str(error.value) == (
        "the training loss is nan in epoch 2: lower the learning rate (lr=0.1) or turn on gradient "
        "clipping (gradient_clip_val); it first became nan at step 4 of 8 of the epoch (training "
        f"step 12); the last good checkpoint is {checkpoint}"
    )
    assert int(trainer.state.step) < 16  # stopped at the plot point in the middle of epoch 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["8"]
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1]  # the bad epoch is not recorded


def test_the_predictions_grid_shows_mistakes_first(tmp_path):
    trainer = d2l.Trainer(max_epochs=1, limit_train_batches=1, progress=False, plot=False)
    trainer.fit(TinyCNN(), Blobs(num_val=20))  # one step: some right, some wrong
    X, y, predicted = predict_validation(trainer)
    assert X.shape == (20, 8, 8, 1) and y.shape == predicted.shape == (20,)
    model = TinyCNN(training=False)
    variables = {"params": trainer.state.params, "batch_stats": trainer.state.batch_stats}
    np.testing.assert_array_equal(predicted, np.asarray(model.apply(variables, X)).argmax(1))
    mistakes = int((predicted != y).sum())
    assert 0 < mistakes < 20

    fig = d2l.plot_predictions(trainer, path=tmp_path / "predictions.png", num_rows=3, num_cols=8)
    assert (tmp_path / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    titles = [ax.title for ax in fig.axes if ax.get_images()]
    assert len(titles) == 20
    shown = [tuple(t.get_text().split("\n")) for t in titles]
    assert all(true != guess for true, guess in shown[:mistakes])
    assert all(true == guess for true, guess in shown[mistakes:])
    red = [t.get_color() == "C3" for t in titles]
    assert red == [True] * mistakes + [False] * (20 - mistakes)
    wrong = np.flatnonzero(predicted != y)
    assert shown[0] == (str(y[wrong[0]]), str(predicted[wrong[0]]))  # in validation order


# ----------------------------------------------------------------------- the chapter CLI
QUICK = ["--quick", "--batch-size", "16"]


def test_chapter_ctrl_c_saves_and_resume_continues_the_latest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(d2l.D2LiteError, match="no run of lenet to resume in runs/lenet"):
        run_chapter("lenet", "--resume")

    plot = d2l.LeNet.plot  # what the chapter's LeNet inherits

    def plot_and_press_ctrl_c(self, key, value, train):  # as step 4's loss reaches the board
        plot(self, key, value, train)
        if train and self.trainer.epoch == 0 and self.trainer.train_batch_idx == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(d2l.LeNet, "plot", plot_and_press_ctrl_c)
    with pytest.raises(d2l.TrainingInterrupted) as stop:
        run_chapter("lenet", *QUICK, "--epochs", "2")
    (run_dir,) = Path("runs/lenet").iterdir()
    assert f"interrupted in epoch 1 after step 6 of 10: checkpoint saved in {run_dir.absolute()}" in str(
        stop.value
    )
    assert json.loads((run_dir / "config.json").read_text())["args"]["batch_size"] == 16
    # What a script prints on its way out (Python then exits with status 130).
    one_line_errors("lenet", type(stop.value), stop.value, None)
    assert f"resume with: python -m chapters.lenet --resume {run_dir}\n" in capsys.readouterr().err

    monkeypatch.setattr(d2l.LeNet, "plot", plot)
    chapter = run_chapter("lenet", "--resume", "--predictions")  # the run's: --quick, batch 16, 2 epochs
    out = capsys.readouterr().out
    assert f"resuming {run_dir} from checkpoint 6 at epoch 1, step 7" in out
    assert chapter["args"].batch_size == 16 and chapter["args"].epochs == 2
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2]
    assert (run_dir / "predictions.png").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["10", "20", "6"]


def test_sigterm_mid_epoch_saves_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    # 150 steps of batch 16 in one epoch; the live plot's first drawing comes after step 75. Adam
    # (the chapter's default, named so that it stays): the resume must bring back its moments too.
    flags = ["--epochs", "1", "--num-train", "2400", "--num-val", "64", "--batch-size", "16"]
    flags += ["--optimizer", "adam"]
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    lenet = [sys.executable, "-m", "chapters.lenet", *flags]
    # Through make, as `timeout 1h make lenet` runs it: -o skips the set-up targets.
    make = ["make", "-s", "-o", "install", "-o", "data", "lenet", f"PY={sys.executable}"]
    output = []
    with subprocess.Popen(
        [*make, f"ARGS={' '.join(flags)} --out-dir {stopped}"],
        cwd=Path(__file__).parents[1],
        start_new_session=True,  # its own process group, as `timeout` makes one
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as child:
        for line in child.stdout:
            output.append(line)
            # Mid-epoch, then again while the checkpoint is written: `timeout` signals the whole
            # group (make and python), and make passes the signal on again.
            if line.startswith(("live plot:", "SIGTERM: stopping")):
                os.killpg(child.pid, signal.SIGTERM)
    with pytest.raises(ProcessLookupError):  # no process of the group is left
        os.killpg(child.pid, 0)
    assert child.returncode != 0
    text = "".join(output)
    assert "SIGTERM: stopping after the current step and saving a checkpoint" in text
    assert f"resume with: python -m chapters.lenet --resume {stopped}" in text
    (step,) = [int(p.name) for p in (stopped / "checkpoints").iterdir()]
    assert 75 <= step < 150  # stopped within the epoch, its checkpoint intact
    subprocess.run([*lenet, "--resume", str(stopped)], check=True, capture_output=True, timeout=300)
    subprocess.run([*lenet, "--out-dir", str(whole)], check=True, capture_output=True, timeout=300)

    def metrics(run_dir):
        return [
            {k: r[k] for k in ("epoch", "step", "train_loss", "val_loss", "val_acc")}
            for r in runs.read_metrics(run_dir)
        ]

    assert metrics(stopped) == metrics(whole) and len(metrics(whole)) == 1


def test_a_script_prints_d2lite_errors_in_one_line(capsys):
    one_line_errors("lenet", d2l.D2LiteError, d2l.D2LiteError("no such thing"), None)
    assert capsys.readouterr().err == "error: no such thing\n"


def test_a_bad_resume_path_is_one_line_in_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chapters.softmax_regression", "--resume", str(tmp_path / "nothing")],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "is not a run directory" in result.stderr


def test_a_run_stopped_before_its_first_checkpoint_has_nothing_to_resume(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # what Ctrl-C while compiling leaves
    with pytest.raises(d2l.D2LiteError, match="run has no checkpoint to resume from .*start a new run"):
        runs.read_config(tmp_path / "run")  # what a chapter's --resume reads first
    with pytest.raises(d2l.D2LiteError, match=r"cannot read .*config.json .*is .* a run directory\?"):
        runs.read_config(tmp_path)


def test_latest_run_is_the_one_checkpointed_last(tmp_path):
    for name, mtime in (("b-older", 1000), ("a-newer", 2000)):
        step = tmp_path / name / "checkpoints" / "8"
        step.mkdir(parents=True)
        os.utime(step, (mtime, mtime))
    (tmp_path / "z-no-checkpoint").mkdir()
    assert runs.latest_run(tmp_path) == tmp_path / "a-newer"
    assert runs.latest_run(tmp_path / "missing") is None


def test_settings_are_described_without_memory_addresses():
    from chapters.lenet import LeNet

    settings = runs.model_settings(LeNet())
    assert settings["class"] == "chapters.lenet.LeNet"
    assert settings["kernel_init"] == "jax.nn.initializers.glorot_uniform"  # xavier_uniform's home
    assert runs.describe(object()) == "<object object>"
    assert runs.mismatches({"model": {"lr": 0.1, "depth": 3}}, {"model": {"lr": 0.2, "depth": 3}}) == [
        "model lr: 0.1 in the run, 0.2 now"
    ]


# --------------------------------------------------------------------------- divergence
class TooHotLater(TinyCNN):
    """SGD at lr 0.1, then from step 25 (epoch 4) at 3.0: the loss climbs a thousandfold, finite."""

    def configure_optimizers(self):
        return optax.sgd(optax.piecewise_constant_schedule(self.lr, {24: 30.0}))


def test_the_divergence_rule_fires_on_a_jump_and_stays_quiet_on_noisy_falling_curves():
    rng = np.random.default_rng(0)
    for _ in range(200):  # noisy curves on their way down, with spikes and plateaus
        steps = np.arange(40)
        level = 2.3 * np.exp(-steps / rng.uniform(2, 15)) + rng.uniform(0.0, 0.5)
        levels = level * rng.lognormal(0, 0.15, size=40)
        assert all(guards.divergence(list(levels[: n + 1])) is None for n in range(40))
    assert guards.divergence([0.02, 0.01, 0.03]) is None  # small numbers: within the margin
    nin = [2.3, 1.1, 0.7, 0.55, 0.48, 1.52]  # NiN's train loss per epoch with the book's recipe
    assert guards.divergence(nin) == (1.52, 0.48)


def test_a_diverging_loss_is_reported_once_an_epoch_or_stops_the_run(tmp_path, capsys):
    trainer = d2l.Trainer(max_epochs=4, limit_train_batches=8)
    trainer.fit(TooHotLater(use_bn=False), Blobs())
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(trainer.history) == 4  # warned, not stopped: once in the epoch for each kind
    assert [w.split(":")[1] for w in warnings] == [
        " the training loss diverges in epoch 4",
        " the validation accuracy collapsed in epoch 4",
    ]
    assert (
        "its lowest level so far" in warnings[0]
        and "learning rate (lr=0.1) is likely too high" in warnings[0]
    )

    quiet = d2l.Trainer(max_epochs=3)  # the same model before its learning rate rises
    quiet.fit(TinyCNN(use_bn=False), Blobs())
    assert "warning" not in capsys.readouterr().err

    run_dir = tmp_path / "run"
    stopping = d2l.Trainer(max_epochs=4, run_dir=run_dir, progress=False, stop_on_divergence=True)
    with pytest.raises(d2l.D2LiteError) as error:
        stopping.fit(TooHotLater(use_bn=False), Blobs())
    checkpoint = run_dir.absolute() / "checkpoints" / "24"
    assert str(error.value).startswith("the training loss diverges in epoch 4: ")
    assert str(error.value).endswith(
        f"stopped (stop_on_divergence); the last checkpoint, from before it, is {checkpoint}"
    )
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2, 3]


def test_an_accuracy_collapse_counts_from_the_best_epoch_including_the_last_one():
    check = guards.Guards(stop_on_divergence=True)
    check.on_fit_start(None, None)
    trainer = d2l.Trainer(max_epochs=3, stop_on_divergence=True)
    trainer.model, trainer.epoch = TinyCNN(), 2
    for accuracy, raises in ((0.6, True), (0.8, False)):  # within ACCURACY_DROP of the best: quiet
        record = {"epoch": 3, "val_acc": accuracy}
        trainer.history = [
            {"epoch": 1, "val_acc": 0.5},
            {"epoch": 2, "val_acc": 0.9},
            record,
        ]  # epoch 3's is in
        if raises:
            with pytest.raises(
                d2l.D2LiteError, match=r"collapsed in epoch 3: 0\.6000, down from 0\.9000 in epoch 2"
            ):
                check.on_epoch_end(trainer, record)
        else:
            check.on_epoch_end(trainer, record)


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(28, "No space left on device"), "No space left on device"),
        (OSError(), "OSError"),  # no message at all: still one line, naming the error
        (ValueError("write failed: No space left on device [os_error_code=28]"), "No space left on device"),
    ],
)
def test_a_failed_write_is_one_line_that_names_the_reason(tmp_path, error, reason):
    run = runs.RunDirectory(run_dir=tmp_path)
    with pytest.raises(d2l.D2LiteError) as raised, run.writing("metrics.csv"):
        raise error
    assert str(raised.value).startswith(f"cannot write metrics.csv in {tmp_path} ({reason}): free disk space")
