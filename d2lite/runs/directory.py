"""Run directories: what a fit records, so that runs can be resumed, looked at and compared.

runs/<chapter>/<date>-<time>/      (the chapter CLI's default; any folder works)
    config.json    model, data and trainer settings, versions, devices, the chapter's flags
    metrics.csv    one row per epoch: epoch, step, train_loss, val_loss, val_acc,
                   examples_per_s, seconds (training time of the epoch), wall_time
                   (seconds since the run began, counting only time spent training)
    progress.png   the live plot (and progress.svg)
    checkpoints/   orbax checkpoints, one folder per training step (see runs/checkpoint.py)
    .lock          held while a fit writes the run (one writer at a time), naming its process

`RunDirectory` is the callback a Trainer's fit records one with: it saves a `Snapshot` between
epochs (and at a stop), hands a resumed fit the snapshot of its checkpoint, and never runs
inside the jit; the epoch and the position in it are the state's step. A run
resumes exactly: epoch e's batches come from the permutation `fold_in(shuffle_key, e)` and
step s's dropout key from `fold_in(dropout_rng, s)`, so restoring the TrainState, the
shuffle key and the position in the epoch continues the same stream of batches and keys.
"""

import contextlib
import csv
import dataclasses
import datetime
import functools
import io
import json
import os
import platform
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from ..board import write_atomic
from ..errors import D2LiteError, first_line
from ..recipe import Recipe
from ..trainer import Callback, Snapshot, to_host
from .lock import lock

CONFIG, METRICS, CHECKPOINTS = "config.json", "metrics.csv", "checkpoints"
# What a checkpoint's meta must hold for fit to continue from it.
CHECKPOINT_META = "losses_in_epoch seconds_in_epoch wall_time board settings".split()


# ------------------------------------------------------------------------------ finding runs
def new_run_dir(parent):
    """A fresh `parent/<date>-<time>` folder name (with a suffix if that one is taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path(parent) / stamp, 1
    while path.exists():
        n += 1
        path = Path(parent) / f"{stamp}-{n}"
    return path


def latest_run(parent):
    """The run in `parent` with the most recent checkpoint, or None."""
    saved = {}
    for run in Path(parent).glob("*"):
        steps = [p.stat().st_mtime for p in (run / CHECKPOINTS).glob("*") if p.name.isdigit()]
        if steps:
            saved[run] = max(steps)
    return max(saved, key=saved.get) if saved else None


def resume_target(path):
    """(run directory, checkpoint step or None) for a run directory or one of its checkpoints."""
    path = Path(path)
    if path.parent.name == CHECKPOINTS and path.name.isdigit():
        return path.parent.parent, int(path.name)
    if not (path / CHECKPOINTS).is_dir():
        raise D2LiteError(
            f"{path} is not a run directory (it has no {CHECKPOINTS}/ folder) nor one of its "
            f"checkpoints (RUN/{CHECKPOINTS}/STEP): give one of those to resume"
        )
    return path, None


# ----------------------------------------------------------------------- what a run records
def describe(value):
    """A JSON value that names `value` the same way in every process (no memory addresses)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if isinstance(value, functools.partial):
        return {
            "partial": describe(value.func),
            "args": describe(value.args),
            "keywords": describe(value.keywords),
        }
    if hasattr(value, "__qualname__"):  # functions and classes
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def model_settings(model):
    """The model's class and hyperparameters (its dataclass fields; an NNX model's `hparams`)."""
    if not dataclasses.is_dataclass(model):  # the NNX face's adapter: the reader's model's settings
        model = model.model
        hparams = getattr(model, "hparams", {})
        return {"class": describe(type(model)), **{k: describe(v) for k, v in hparams.items()}}
    fields = {
        f.name: describe(getattr(model, f.name))
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name", "training")
    }
    return {"class": describe(type(model)), **fields}


def data_settings(data):
    """The data module's class and the settings that decide the examples and their order."""
    hparams = getattr(data, "hparams", {})
    where = ("data_dir", "root", "num_workers")  # where the files are, not what they hold
    return {"class": describe(type(data)), **{k: describe(v) for k, v in hparams.items() if k not in where}}


def environment():
    """What the speed and the numbers of a run depend on: the fields `make report` reads (backend,
    devices, the host's processor), the versions JAX does not list, and JAX's own report."""
    devices = jax.devices()
    return {
        "versions": {dist: _version(dist) for dist in ("d2lite", "flax", "optax", "orbax-checkpoint")},
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "host": {"cpu": _cpu_name(), "cpu_count": os.cpu_count()},
        "jax": jax.print_environment_info(return_string=True).strip().splitlines(),
    }


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def mismatches(saved, current):
    """'section.name: A in the run, B now' for each setting that differs."""
    found = []
    for section in sorted(set(saved) | set(current)):
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                found.append(f"{section} {key}: {old.get(key)!r} in the run, {new.get(key)!r} now")
    return found


# ----------------------------------------------------------------------------- the files
def write_config(run_dir, config):
    write_atomic(Path(run_dir) / CONFIG, json.dumps(config, indent=2) + "\n")


def read_config(run_dir):
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        if not path.exists() and (Path(run_dir) / CHECKPOINTS).is_dir():  # stopped while compiling
            raise D2LiteError(
                f"{run_dir} has no checkpoint to resume from (the run stopped before one was saved): "
                "start a new run"
            ) from error
        raise D2LiteError(f"cannot read {path} ({error}): is {run_dir} a run directory?") from error


def write_metrics(run_dir, history):
    """metrics.csv from the history, rewritten whole: after a resume it matches the checkpoint."""
    columns = list(dict.fromkeys(key for record in history for key in record))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(Path(run_dir) / METRICS, out.getvalue())


def read_metrics(run_dir):
    """The rows of metrics.csv with numbers as floats (ints for epoch and step); [] if none."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: _number(k, v) for k, v in row.items()})
    return rows


def _number(key, text):
    if text in ("", None):
        return None
    try:
        return int(text) if key in ("epoch", "step") else float(text)
    except ValueError:
        return text


# ------------------------------------------------------------------------- a fit's run
class RunDirectory(Callback):
    """The run directory of a fit, as a callback: its config, metrics and checkpoints, and resume.

    `run_dir` records a new run there; `resume=True` continues the run in `run_dir`, `resume=PATH`
    the run directory or checkpoint PATH. A resume hands the Trainer the state of the
    checkpoint (`on_fit_start` returns it); the epoch and the position in it are the state's
    step, the finished epochs come from metrics.csv.
    """

    def __init__(self, run_dir=None, resume=None, keep_checkpoints=3, run_info=None, plot=True):
        if resume is True and run_dir is None:
            raise D2LiteError("resume=True continues the run in run_dir: give run_dir (or resume=PATH)")
        path, self.step = (
            Path(run_dir) if run_dir is not None else None,
            None,
        )  # step: the checkpoint to resume
        if resume not in (None, False, True):
            path, self.step = resume_target(resume)
            if run_dir is not None and Path(run_dir).resolve() != path.resolve():
                raise D2LiteError(f"resume={str(resume)!r} is not in run_dir={str(run_dir)!r}")
        self.run_path, self.resume, self.keep, self.run_info, self.plot = (
            path,
            resume,
            keep_checkpoints,
            run_info,
            plot,
        )
        self.checkpoints = self.lock = None

    @property
    def path(self):
        return self.run_path

    def settings(self, trainer):
        """What a resumed run must share with the run it continues."""
        names = ("gradient_clip_val", "seed", "limit_train_batches", "limit_val_batches")
        recipe = trainer.recipe or Recipe()
        if recipe.schedule:  # the schedule spans the run's epochs
            names += ("max_epochs",)
        return {
            "model": model_settings(trainer.model),
            "data": data_settings(trainer.data),
            "trainer": describe({k: trainer.hparams[k] for k in names}),
            # Only what differs from the book's recipe: runs from before recipes still resume.
            "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if v != getattr(Recipe, k)},
        }

    def on_fit_start(self, trainer, snapshot):
        """Open the checkpoints; write a new run's config, or return the checkpoint's snapshot."""
        from .checkpoint import Checkpoints  # imports orbax, which takes seconds

        self.lock = None if jax.process_index() else lock(self.path)  # see lock.py
        if getattr(trainer.data, "source", None):
            print(f"data: {trainer.data.source}", flush=True)  # which copy of the files a recorded run read
        trainer.board.save_dir = self.path if self.plot else None
        self.checkpoints = Checkpoints(self.path / CHECKPOINTS, keep=self.keep)
        steps = self.checkpoints.steps()
        if not self.resume:
            if steps:
                raise D2LiteError(
                    f"{self.path} already holds a run (checkpoint {steps[-1]}): resume it (--resume, "
                    "resume=True) or use another run directory"
                )
            print(f"run directory: {self.path}", flush=True)
            with self.writing("config.json"):
                self.write_config(trainer, snapshot)
            return None
        for name in self.checkpoints.unfinished:
            print(f"removed {name}: a checkpoint whose writing was cut off", flush=True)
        if not steps:
            raise D2LiteError(
                f"{self.path} has no checkpoint to resume from (the run stopped before one was saved): "
                "start a new run"
            )
        step = steps[-1] if self.step is None else self.step
        if step not in steps:
            raise D2LiteError(f"{self.path} has no checkpoint {step}; it has {steps}")
        meta = self.checkpoints.read_meta(step)
        missing = [key for key in CHECKPOINT_META if key not in meta]
        if missing:  # written by another program, or by a d2lite that saved other things
            writer = f"d2lite {meta['d2lite']}" if "d2lite" in meta else "another d2lite version"
            raise D2LiteError(
                f"checkpoint {self.checkpoints.path(step)} was written by {writer}: it lacks "
                f"{', '.join(missing)}; resume it with that version, or start a new run"
            )
        differences = mismatches(meta["settings"], self.settings(trainer))
        if differences:
            raise D2LiteError(
                f"cannot resume {self.path} with different settings: {'; '.join(differences)} (resume "
                "with the run's settings, or start a new run)"
            )
        with self.writing("config.json and metrics.csv"):
            return self.restore(trainer, snapshot, step, meta)

    @contextlib.contextmanager
    def writing(self, what):
        """A full disk or an unwritable folder, as a one-line error that says what to do.

        orbax (through tensorstore) reports a failed write as a ValueError naming the OS error.
        """
        try:
            yield
        except D2LiteError:
            raise
        except (OSError, ValueError) as error:
            found = re.search(r": ([^:\[]+) \[os_error_code", str(error))
            if found:
                reason = found.group(1)
            elif isinstance(error, OSError) and error.strerror:
                reason = error.strerror
            else:
                reason = first_line(error, 160)
            last = self.last_checkpoint()
            kept = f"; its last complete checkpoint, {last}, is intact" if last else ""
            raise D2LiteError(
                f"cannot write {what} in {self.path} ({reason}): free disk space or make the folder "
                f"writable, then resume the run (--resume {self.path}, resume=True){kept}"
            ) from error

    def write_config(self, trainer, snapshot, resumed=None):
        if resumed and (self.path / CONFIG).is_file():
            config = read_config(self.path)
        else:
            config = {
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                **(describe(self.run_info) or {}),
                **self.settings(trainer),
                "parameters": sum(int(p.size) for p in jax.tree.leaves(snapshot.state.params)),
                "environment": environment(),
                "resumed": [],
            }
        not_settings = ("run_dir", "resume", "run_info", "progress", "plot")
        config["trainer"] = describe({k: v for k, v in trainer.hparams.items() if k not in not_settings})
        if resumed:
            config.setdefault("resumed", []).append(resumed)
        write_config(self.path, config)

    def on_epoch_end(self, trainer, record):
        with self.writing("metrics.csv"):
            write_metrics(self.path, trainer.history)
        self.save(trainer, trainer.snapshot())

    def on_stop(self, trainer, snapshot):
        return self.save(trainer, snapshot)

    def save(self, trainer, snapshot):
        """Save what fit needs to go on from `snapshot`; return the checkpoint's path."""
        step = int(to_host(snapshot.state.step))
        arrays = {"state": serialization.to_state_dict(snapshot.state), "shuffle_key": snapshot.shuffle_key}
        meta = {
            "losses_in_epoch": snapshot.epoch_losses,
            "seconds_in_epoch": snapshot.epoch_seconds,
            "wall_time": snapshot.seconds,
            "board": {"data": trainer.board.data, "raw_points": trainer.board.raw_points},
            "settings": self.settings(trainer),
            "arrays": _shapes(arrays),
            "d2lite": _version("d2lite"),
        }
        with self.writing(f"checkpoint {step}"):
            self.checkpoints.save(step, arrays, meta)
        return self.checkpoints.path(step)

    def last_checkpoint(self):
        steps = self.checkpoints.steps() if self.checkpoints is not None else []
        return self.checkpoints.path(steps[-1]) if steps else None

    def restore(self, trainer, snapshot, step, meta):
        """The snapshot of checkpoint `step`, in the structure of `snapshot`."""
        like = {"state": serialization.to_state_dict(snapshot.state), "shuffle_key": snapshot.shuffle_key}
        saved, now = meta.get("arrays", {}), _shapes(like)
        if saved != now:  # same hyperparameters, yet other parameters: the model's code changed
            differ = [k for k in set(saved) | set(now) if saved.get(k) != now.get(k)]
            name = min(differ, key=lambda k: ("['params']" not in k, k))  # parameters first
            raise D2LiteError(
                f"checkpoint {self.checkpoints.path(step)} holds other arrays than this model has ({name}: "
                f"{saved.get(name)} in the checkpoint, {now.get(name)} now): resume with the model code "
                "the run was trained with"
            )
        arrays = trainer.place(self.checkpoints.restore(step, like))
        self.checkpoints.discard_after(step)  # a resume from an older checkpoint forks
        epoch, position = divmod(step, trainer.num_train_batches)
        history = [record for record in read_metrics(self.path) if record["epoch"] <= epoch]
        # Put the plotted points back, and those still to be averaged into the next one.
        for name, lines in meta["board"].items():
            setattr(trainer.board, name, {label: [tuple(p) for p in line] for label, line in lines.items()})
        write_metrics(self.path, history)
        restored = Snapshot(
            serialization.from_state_dict(snapshot.state, arrays["state"]),
            arrays["shuffle_key"],
            history,
            meta["losses_in_epoch"],
            meta["seconds_in_epoch"],
            meta["wall_time"],
        )
        where = f"epoch {epoch + 1}" + (f", step {position + 1}" if position else "")
        if epoch >= trainer.max_epochs:  # nothing trains, so the run records no resume
            where = (
                f"its end: all {trainer.max_epochs} epochs are done (raise max_epochs, --epochs, to go on)"
            )
        else:
            now = time.strftime("%Y-%m-%d %H:%M:%S")
            resumed = {"at": now, "step": step, "epoch": epoch, "position": position}
            self.write_config(trainer, restored, resumed=resumed)
        print(f"resuming {self.path} from checkpoint {step} at {where}", flush=True)
        return restored

    def on_fit_end(self, trainer, error):
        if self.checkpoints is not None:
            self.checkpoints.close()
        if self.lock is not None:
            os.close(self.lock)  # which releases the lock
            self.lock = None
        return None


def _shapes(arrays):
    """{'path': 'shape dtype'} of a pytree's leaves, to tell whether a checkpoint fits a model."""
    leaves = jax.tree_util.tree_leaves_with_path(arrays)
    return {
        jax.tree_util.keystr(path): f"{tuple(np.shape(leaf))} {jnp.result_type(leaf)}"
        for path, leaf in leaves
    }
