"""Checkpoints and resume: an interrupted run ends exactly where an uninterrupted one does."""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import Blobs, TinyCNN
from flax import linen as nn

import d2lite as d2l
from d2lite.runs import directory as runs
from d2lite.runs.checkpoint import Checkpoints

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3  # Blobs: 8 steps per epoch, so checkpoints at steps 8, 16, 24


CTRL_C = {}  # {"epoch": index}: where CtrlC models press Ctrl-C (not a field: runs must match)


class CtrlC(TinyCNN):
    """Sends itself Ctrl-C at the first training plot point of epoch CTRL_C["epoch"], once."""

    def plot(self, key, value, train):
        super().plot(key, value, train)
        if train and "epoch" in CTRL_C and self.trainer.epoch == CTRL_C["epoch"]:
            del CTRL_C["epoch"]
            os.kill(os.getpid(), signal.SIGINT)


class MomentumCtrlC(CtrlC):
    """CtrlC with SGD at momentum 0.9: its optimizer state (the velocity) must survive a resume."""

    def configure_optimizers(self):
        return optax.sgd(self.lr, momentum=0.9)


def fit(model, max_epochs=EPOCHS, data=None, **kwargs):
    trainer = d2l.Trainer(max_epochs=max_epochs, progress=False, plot=False, **kwargs)
    trainer.fit(model, data or Blobs())
    return trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (dropout on, so the dropout key stream matters too)."""
    return fit(CtrlC(dropout=0.2), run_dir=tmp_path_factory.mktemp("reference") / "run")


@pytest.fixture(scope="module")
def momentum_reference(tmp_path_factory):
    """The reference with momentum."""
    return fit(MomentumCtrlC(dropout=0.2), run_dir=tmp_path_factory.mktemp("momentum_reference") / "run")


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The reference's first 2 epochs as a run: checkpoints 8 and 16. Copy it to change it."""
    run_dir = tmp_path_factory.mktemp("two_epochs") / "run"
    fit(CtrlC(dropout=0.2), max_epochs=2, run_dir=run_dir)
    return run_dir


def assert_same_run(trainer, reference):
    for a, b in zip(jax.tree.leaves(trainer.state), jax.tree.leaves(reference.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(trainer.history) == len(reference.history)
    for mine, theirs in zip(trainer.history, reference.history, strict=True):
        for key in ("epoch", "step", "train_loss", "val_loss", "val_acc"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6), key
    assert trainer.board.data.keys() == reference.board.data.keys()
    for label, points in trainer.board.data.items():
        np.testing.assert_allclose(points, reference.board.data[label], rtol=1e-6)


def test_ctrl_c_in_the_middle_of_an_epoch_then_resume_gives_the_uninterrupted_run(
    tmp_path, momentum_reference, capsys
):
    # With momentum, so that the optimizer state has to come back too, not only the parameters.
    reference = momentum_reference
    run_dir = tmp_path / "run"
    CTRL_C["epoch"] = 1
    with pytest.raises(d2l.TrainingInterrupted) as stop:
        fit(MomentumCtrlC(dropout=0.2), run_dir=run_dir)
    assert not CTRL_C  # it did press
    # The first plot point of epoch 2 is due once step 4 is done, when step 5 is already queued:
    # the loop stops before it queues step 6.
    position = 5
    assert stop.value.checkpoint == (run_dir / "checkpoints" / str(8 + position)).absolute()
    assert f"interrupted in epoch 2 after step {position} of 8: checkpoint saved in" in str(stop.value)
    assert "Ctrl-C again to stop at once" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    resumed = fit(MomentumCtrlC(dropout=0.2), resume=run_dir)
    assert f"from checkpoint {8 + position} at epoch 2, step {position + 1}" in capsys.readouterr().out
    velocity = jax.tree.leaves(resumed.state.opt_state)
    assert velocity and all(np.abs(v).max() > 0 for v in velocity)  # there is a state to restore
    assert_same_run(resumed, reference)
    assert runs.read_metrics(run_dir)[-1]["train_loss"] == pytest.approx(reference.history[-1]["train_loss"])


def test_resuming_a_finished_run_with_more_epochs_continues_it(tmp_path, reference, two_epochs, capsys):
    run_dir = shutil.copytree(two_epochs, tmp_path / "run")
    fit(CtrlC(dropout=0.2), max_epochs=2, run_dir=run_dir, resume=True)  # done: trains nothing
    assert "all 2 epochs are done" in capsys.readouterr().out
    assert runs.read_config(run_dir)["resumed"] == []  # and records no resume
    resumed = fit(CtrlC(dropout=0.2), max_epochs=EPOCHS, run_dir=run_dir, resume=True)
    assert_same_run(resumed, reference)
    config = runs.read_config(run_dir)
    assert config["trainer"]["max_epochs"] == EPOCHS
    assert [r["step"] for r in config["resumed"]] == [16]
    assert len(runs.read_metrics(run_dir)) == EPOCHS


def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    # The checkpoint of step 16 (end of epoch 2) stops with every file written, before orbax's
    # commit (the rename of its temporary folder).
    script = (
        "import sys, time; sys.path[:0] = ['.', 'tests']\n"
        "from orbax.checkpoint.path import atomicity\n"
        "from conftest import Blobs, TinyCNN\n"
        "import d2lite as d2l\n"
        "commit = atomicity.AtomicRenameTemporaryPath.finalize\n"
        "async def pause_before_commit(self):\n"
        "    if self.get_final().name == '16':\n"
        "        print('checkpoint 16 written, pausing before its commit', file=sys.stderr, flush=True)\n"
        "        time.sleep(600)\n"
        "    await commit(self)\n"
        "atomicity.AtomicRenameTemporaryPath.finalize = pause_before_commit\n"
        "d2l.Trainer(max_epochs=3, run_dir=sys.argv[1], progress=False).fit(TinyCNN(dropout=0.2), Blobs())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(run_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(300, child.kill)  # never hang the test suite
    watchdog.start()
    try:
        for line in child.stderr:
            if "checkpoint 16 written, pausing before its commit" in line:
                break
        else:
            pytest.fail(f"the run ended (status {child.wait()}) without writing checkpoint 16")
        assert (run_dir / "checkpoints" / "16.orbax-checkpoint-tmp" / "state").is_dir()
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        watchdog.cancel()
        child.kill()
        child.wait()
        child.stderr.close()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["16.orbax-checkpoint-tmp", "8"]

    resumed = fit(TinyCNN(dropout=0.2), run_dir=run_dir, resume=True)
    out = capsys.readouterr().out
    assert "removed 16.orbax-checkpoint-tmp: a checkpoint whose writing was cut off" in out
    assert "from checkpoint 8 at epoch 2" in out
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [8, 16, 24]
    for a, b in zip(
        jax.tree.leaves(resumed.state.params), jax.tree.leaves(reference.state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# A run of the reference's model in a child that, at the first training plot point of epoch 2,
# prints a line and waits there until it has handled SIGNALS (argv[2]) signals: the test
# signals it at a known place, and the Trainer's handler has run before the loop goes on.
WAITS_FOR_SIGNALS = (
    "import os, select, signal, sys; sys.path[:0] = ['.', 'tests']\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored\n"
    "from conftest import Blobs, TinyCNN\n"
    "import d2lite as d2l\n"
    "plot, (woken, wake), waits = TinyCNN.plot, os.pipe(), [int(sys.argv[2])]\n"
    "os.set_blocking(wake, False)\n"
    "def plot_then_wait(self, key, value, train):\n"
    "    plot(self, key, value, train)\n"
    "    if train and self.trainer.epoch == 1 and waits[0]:\n"
    "        signal.set_wakeup_fd(wake)  # each signal from now on writes a byte to the pipe\n"
    "        print('mid-epoch: waiting for signals', flush=True)\n"
    "        while waits[0] and select.select([woken], [], [], 60)[0]:  # its handler has run\n"
    "            os.read(woken, 1)\n"
    "            waits[0] -= 1\n"
    "TinyCNN.plot = plot_then_wait\n"
    "trainer = d2l.Trainer(max_epochs=3, run_dir=sys.argv[1], progress=False, plot=False)\n"
    "trainer.fit(TinyCNN(dropout=0.2), Blobs())\n"
)


class Child:
    """A Python child process whose output (stdout and stderr) a thread reads line by line."""

    def __init__(self, script, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines, self.output = queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def wait_for(self, text, timeout=60):
        """The first line from now on that contains `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} within {timeout} s; the output so far:\n{''.join(self.output)}")
            if line is None:
                status = self.process.wait()
                pytest.fail(f"it exited (status {status}) before {text!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return line

    def finish(self, timeout=60):
        """(exit status, all its output)."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout} s later; its output:\n{''.join(self.output)}")
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.output.append(line)
        return status, "".join(self.output)


def test_sigusr1_mid_epoch_saves_a_checkpoint_and_the_run_resumes(tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    with Child(WAITS_FOR_SIGNALS, run_dir, 1) as child:
        child.wait_for("mid-epoch: waiting for signals")
        child.process.send_signal(signal.SIGUSR1)  # as Slurm warns a job before its time limit
        status, output = child.finish()
    assert "SIGUSR1: stopping after the current step and saving a checkpoint\n" in output
    (step,) = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name != "8"]
    assert 8 < step < 16  # between two steps of epoch 2
    checkpoint = run_dir.absolute() / "checkpoints" / str(step)
    stopped = f"interrupted in epoch 2 after step {step - 8} of 8: checkpoint saved in {checkpoint}"
    assert f"TrainingInterrupted: {stopped}" in output
    assert status not in (0, -signal.SIGUSR1)  # handled (its default kills), then raised

    resumed = fit(TinyCNN(dropout=0.2), run_dir=run_dir, resume=True)
    assert f"from checkpoint {step} at epoch 2, step {step - 8 + 1}" in capsys.readouterr().out
    assert_same_run(resumed, reference)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    with Child(WAITS_FOR_SIGNALS, run_dir, 2) as child:  # it waits on after the first Ctrl-C
        child.wait_for("mid-epoch: waiting for signals")
        child.process.send_signal(signal.SIGINT)
        first = child.wait_for("Ctrl-C: stopping")
        child.process.send_signal(signal.SIGINT)
        status, output = child.finish()
    stopping = "Ctrl-C: stopping after the current step and saving a checkpoint"
    assert first == f"{stopping} (Ctrl-C again to stop at once)\n"
    assert output.rstrip().endswith("\nKeyboardInterrupt"), output  # the plain one, from the waiting step
    assert "TrainingInterrupted" not in output and "checkpoint saved" not in output
    assert status == -signal.SIGINT
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["8"]  # epoch 1's alone


def test_one_writer_per_run_directory_and_a_killed_owner_leaves_it_free(tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    with Child(WAITS_FOR_SIGNALS, run_dir, 1) as owner:  # in epoch 2, after checkpoint 8
        owner.wait_for("mid-epoch: waiting for signals")
        in_use = f"{run_dir} is in use by pid {owner.process.pid} on {socket.gethostname()}: "
        with pytest.raises(d2l.D2LiteError) as error:  # this process, a second writer
            fit(TinyCNN(dropout=0.2), run_dir=run_dir, resume=True)
        assert str(error.value).startswith(in_use) and "\n" not in str(error.value)
        owner.process.kill()  # kill -9: no handler runs, the kernel drops its lock
        owner.process.wait()
    resumed = fit(TinyCNN(dropout=0.2), run_dir=run_dir, resume=True)
    assert "from checkpoint 8 at epoch 2" in capsys.readouterr().out
    assert_same_run(resumed, reference)


def test_a_full_disk_is_a_one_line_error_and_keeps_the_last_checkpoint(tmp_path, reference):
    """Writes fail for real: the child lowers its file size limit (RLIMIT_FSIZE), as a full disk would."""
    script = (
        "import resource, signal, sys; sys.path[:0] = ['.', 'tests']\n"
        "from conftest import Blobs, TinyCNN\n"
        "import d2lite as d2l\n"
        "def fit(epochs, **kwargs):\n"
        "    trainer = d2l.Trainer(max_epochs=epochs, run_dir=sys.argv[1], progress=False, **kwargs)\n"
        "    trainer.fit(TinyCNN(dropout=0.2), Blobs())\n"
        "fit(1)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG\n"
        "for limit in (200, 3000):  # config.json fails, then the next checkpoint does\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))\n"
        "    try:\n"
        "        fit(2, resume=True)\n"
        "    except d2l.D2LiteError as error:\n"
        "        print(f'error: {error}')\n"
    )
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("error: ")]
    fix = (
        f"free disk space or make the folder writable, then resume the run (--resume {run_dir}, resume=True)"
    )
    kept = f"its last complete checkpoint, {run_dir / 'checkpoints' / '8'}, is intact"
    assert errors == [
        f"error: cannot write config.json and metrics.csv in {run_dir} (File too large): {fix}; {kept}",
        f"error: cannot write checkpoint 16 in {run_dir} (File too large): {fix}; {kept}",
    ]
    assert "warning: cannot write the live plot" in done.stdout  # which training does without
    # orbax's own log of the failure (a traceback through its files) is held back too
    assert "ERROR:absl" not in done.stderr and "orbax/checkpoint" not in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["8"]  # no half-written one
    resumed = fit(TinyCNN(dropout=0.2), max_epochs=EPOCHS, run_dir=run_dir, resume=True)  # space again
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2, 3]
    for a, b in zip(
        jax.tree.leaves(resumed.state.params), jax.tree.leaves(reference.state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("damaged", ["meta/metadata", "state/manifest.ocdbt"])
def test_a_corrupted_checkpoint_names_the_previous_one_which_then_resumes(tmp_path, two_epochs, damaged):
    run_dir = shutil.copytree(two_epochs, tmp_path / "run")
    (run_dir / "checkpoints" / "16" / damaged).write_bytes(b"garbage")
    with pytest.raises(d2l.D2LiteError) as error:
        fit(CtrlC(dropout=0.2), run_dir=run_dir, resume=True)
    previous = run_dir.absolute() / "checkpoints" / "8"
    message = str(error.value)
    assert message.startswith(f"checkpoint {run_dir.absolute() / 'checkpoints' / '16'} cannot be read")
    assert f"{damaged} changed since it was saved" in message
    assert f"resume from the previous checkpoint instead with --resume {previous}" in message
    assert "\n" not in message

    if damaged == "meta/metadata":  # once is enough: resuming from the named fallback works
        resumed = fit(CtrlC(dropout=0.2), run_dir=run_dir, resume=previous)  # discards the damaged one
        assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
        assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [8, 16, 24]


def test_resuming_with_other_settings_is_refused(two_epochs):
    run_dir = two_epochs
    refused = r"cannot resume .* with different settings: model lr: 0\.1 in the run, 0\.05 now \(resume"
    with pytest.raises(d2l.D2LiteError, match=refused):
        fit(CtrlC(dropout=0.2, lr=0.05), run_dir=run_dir, resume=True)
    with pytest.raises(d2l.D2LiteError, match=r"model class: 'test_checkpoint.CtrlC' in the run, 'conftest"):
        fit(TinyCNN(dropout=0.2), run_dir=run_dir, resume=True)
    with pytest.raises(d2l.D2LiteError, match=r"data batch_size: 32 in the run, 16 now"):
        fit(CtrlC(dropout=0.2), run_dir=run_dir, resume=True, data=Blobs(batch_size=16))
    with pytest.raises(d2l.D2LiteError, match=r"trainer gradient_clip_val: 0 in the run, 1\.0 now"):
        fit(CtrlC(dropout=0.2), run_dir=run_dir, resume=True, gradient_clip_val=1.0)
    # Without resume, a run directory that holds a run is never overwritten.
    with pytest.raises(d2l.D2LiteError, match=r"run already holds a run \(checkpoint 16\): resume it"):
        fit(CtrlC(dropout=0.2), run_dir=run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["16", "8"]  # untouched


def test_a_checkpoint_from_other_model_code_is_refused(tmp_path):
    def make(features):
        class Net(d2l.Classifier):  # same class name and fields, other parameters
            lr: float = 0.1
            num_classes: int = 3

            @nn.compact
            def __call__(self, X):
                return nn.Dense(self.num_classes)(nn.Dense(features)(X.reshape((X.shape[0], -1))))

        return Net()

    run_dir = tmp_path / "run"
    fit(make(4), max_epochs=1, run_dir=run_dir, limit_train_batches=1, limit_val_batches=1)
    refused = r"holds other arrays than this model has \(.*\['params'\].*\(4, 3\) float32 in the checkpoint, "
    with pytest.raises(d2l.D2LiteError, match=refused + r"\(5, 3\) float32 now\): resume with the model"):
        fit(make(5), run_dir=run_dir, resume=True, limit_train_batches=1, limit_val_batches=1)


def test_checkpoints_of_other_versions_or_programs_are_refused_in_one_line(tmp_path, two_epochs):
    run_dir = tmp_path / "run"
    shutil.copytree(two_epochs, run_dir)
    meta = Checkpoints(run_dir / "checkpoints").read_meta(16)
    assert meta["d2lite"] == version("d2lite")  # who wrote it
    # A newer d2lite that saved the epoch's losses under another name (and says which version it was).
    renamed = {("epoch_losses" if k == "losses_in_epoch" else k): v for k, v in meta.items()} | {
        "d2lite": "9.0"
    }
    newer = Checkpoints(run_dir / "checkpoints")
    newer.save(17, {"w": np.zeros(2)}, renamed)
    checkpoint = run_dir.absolute() / "checkpoints" / "17"
    with pytest.raises(d2l.D2LiteError) as error:
        fit(CtrlC(dropout=0.2), run_dir=run_dir, resume=True)
    message = (
        f"checkpoint {checkpoint} was written by d2lite 9.0: it lacks losses_in_epoch; resume it with "
        "that version"
    )
    assert str(error.value).startswith(message)
    # Another program's orbax checkpoint, with no meta at all.
    shutil.rmtree(checkpoint)
    with ocp.CheckpointManager(run_dir / "checkpoints", item_names=("weights",)) as other:
        other.save(18, args=ocp.args.Composite(weights=ocp.args.StandardSave({"w": np.ones(3)})))
    unreadable = r"checkpoint .*/18 cannot be read: it may be corrupted, or not a d2lite checkpoint"
    with pytest.raises(d2l.D2LiteError, match=unreadable + r" \(KeyError: .*meta") as error:
        fit(CtrlC(dropout=0.2), run_dir=run_dir, resume=True)
    assert "\n" not in str(error.value)


def test_bad_resume_requests_are_clear_errors(tmp_path):
    with pytest.raises(d2l.D2LiteError, match="resume=True continues the run in run_dir: give run_dir"):
        d2l.Trainer(max_epochs=1, resume=True)
    with pytest.raises(d2l.D2LiteError, match="is not a run directory"):
        fit(TinyCNN(), resume=tmp_path)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(d2l.D2LiteError, match="has no checkpoint to resume from"):
        fit(TinyCNN(), resume=tmp_path / "empty")


def test_checkpoints_keep_the_newest_and_restore_dtypes_and_typed_keys(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints", keep=2)
    tree = {
        "w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
        "step": jnp.int32(7),
        "key": jax.random.key(3),
        "raw_key": jax.random.PRNGKey(4),
        "empty": {},
    }
    for step in (1, 2, 3):
        assert checkpoints.save(step, tree, {"step": step})
    assert not checkpoints.save(3, tree, {})  # never overwritten
    assert checkpoints.steps() == [2, 3]
    restored = checkpoints.restore(3, tree)
    assert checkpoints.read_meta(3) == {"step": 3}
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
        assert a.dtype == b.dtype and isinstance(a, jax.Array)
    assert jnp.array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(tree["key"]))
    checkpoints.discard_after(2)
    assert checkpoints.steps() == [2]
    checkpoints.close()
