"""Run directories: what a fit records, so that runs can be resumed, looked at and compared.

runs/<chapter>/<date>-<time>/      (the chapter CLI's default; any folder works)
    config.json    model, data and trainer settings, versions, devices, the chapter's flags
    metrics.csv    one row per epoch: epoch, step, train_loss, val_loss, val_acc,
                   examples_per_s, seconds (training time of the epoch), wall_time
                   (seconds since the run began, counting only time spent training)
    progress.png   the live plot (and progress.svg)
    checkpoints/   orbax checkpoints, one folder per training step (see checkpoint.py)

`RunDirectory` is what a Trainer's fit does with one: it reads and writes the Trainer's state
(`state`, `epoch`, `history`, the board) between epochs and never runs inside the jit. A run
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

CONFIG, METRICS, CHECKPOINTS = "config.json", "metrics.csv", "checkpoints"
# What a checkpoint's meta must hold for fit to continue from it (checkpoints of d2lite 0.1 on).
CHECKPOINT_META = "epoch position losses_in_epoch seconds_in_epoch wall_time history board settings".split()


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
    """The model's class and hyperparameters (its dataclass fields)."""
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
    """Versions, devices and host: what the speed and the numbers of a run depend on."""
    versions = {"python": platform.python_version()}
    for dist in ("d2lite", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        versions[dist] = _version(dist)
    devices = jax.devices()
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "host": {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()},
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
class RunDirectory:
    """The run directory of one `Trainer.fit`: its config, metrics and checkpoints, and resume."""

    def __init__(self, trainer, path, step=None):
        self.trainer, self.path, self.step = trainer, Path(path), step  # step: the checkpoint to resume
        self.checkpoints = self.meta = None

    @classmethod
    def locate(cls, trainer):
        """The trainer's run directory (from `run_dir` or `resume`), or None without one."""
        resume, run_dir = trainer.resume, trainer.run_dir
        if resume not in (None, False, True):
            path, step = resume_target(resume)
            if run_dir is not None and Path(run_dir).resolve() != path.resolve():
                raise D2LiteError(f"resume={str(resume)!r} is not in run_dir={str(run_dir)!r}")
            return cls(trainer, path, step)
        return None if run_dir is None else cls(trainer, run_dir)

    def settings(self):
        """What a resumed run must share with the run it continues."""
        names = ("gradient_clip_val", "seed", "limit_train_batches", "limit_val_batches")
        trainer = self.trainer
        if trainer.recipe.schedule:  # the schedule spans the run's epochs
            names += ("max_epochs",)
        return {
            "model": model_settings(trainer.model),
            "data": data_settings(trainer.data),
            "trainer": describe({k: trainer.hparams[k] for k in names}),
            # Only what differs from the book's recipe: runs from before recipes still resume.
            "recipe": {
                k: v for k, v in dataclasses.asdict(trainer.recipe).items() if v != getattr(Recipe, k)
            },
        }

    def open(self):
        """Open the checkpoints; for a resume, check the run and read the checkpoint's meta."""
        from .checkpoint import Checkpoints  # imports orbax, which takes seconds

        self.checkpoints = Checkpoints(self.path / CHECKPOINTS, keep=self.trainer.keep_checkpoints)
        steps = self.checkpoints.steps()
        if not self.trainer.resume:
            if steps:
                raise D2LiteError(
                    f"{self.path} already holds a run (checkpoint {steps[-1]}): resume it (--resume, "
                    "resume=True) or use another run directory"
                )
            print(f"run directory: {self.path}", flush=True)
            return
        for name in self.checkpoints.unfinished:
            print(f"removed {name}: a checkpoint whose writing was cut off", flush=True)
        if not steps:
            raise D2LiteError(
                f"{self.path} has no checkpoint to resume from (the run stopped before one was saved): "
                "start a new run"
            )
        self.step = steps[-1] if self.step is None else self.step
        if self.step not in steps:
            raise D2LiteError(f"{self.path} has no checkpoint {self.step}; it has {steps}")
        self.meta = self.checkpoints.read_meta(self.step)
        missing = [key for key in CHECKPOINT_META if key not in self.meta]
        if missing:  # written by another program, or by a d2lite that saved other things
            writer = f"d2lite {self.meta['d2lite']}" if "d2lite" in self.meta else "another d2lite version"
            raise D2LiteError(
                f"checkpoint {self.checkpoints.path(self.step)} was written by {writer}: it lacks "
                f"{', '.join(missing)}; resume it with that version, or start a new run"
            )
        differences = mismatches(self.meta["settings"], self.settings())
        if differences:
            raise D2LiteError(
                f"cannot resume {self.path} with different settings: {'; '.join(differences)} (resume "
                "with the run's settings, or start a new run)"
            )

    def start_or_restore(self):
        """Write a new run's config, or put the checkpoint's state back into the trainer."""
        with self.writing("config.json and metrics.csv"):
            if self.meta is None:
                self.write_config()
            else:
                self.restore()

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

    def write_config(self, resumed=None):
        trainer = self.trainer
        if resumed and (self.path / CONFIG).is_file():
            config = read_config(self.path)
        else:
            config = {
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                **(describe(trainer.run_info) or {}),
                **self.settings(),
                "parameters": sum(int(p.size) for p in jax.tree.leaves(trainer.state.params)),
                "environment": environment(),
                "resumed": [],
            }
        not_settings = ("run_dir", "resume", "run_info", "progress", "plot")
        config["trainer"] = describe({k: v for k, v in trainer.hparams.items() if k not in not_settings})
        if resumed:
            config.setdefault("resumed", []).append(resumed)
        write_config(self.path, config)

    def arrays(self):
        """The arrays a checkpoint holds: the TrainState and the shuffle key."""
        return {
            "state": serialization.to_state_dict(self.trainer.state),
            "shuffle_key": self.trainer.shuffle_key,
        }

    def save(self, partial=None):
        """Save what fit needs to continue; return the checkpoint's path.

        At the end of an epoch `partial` is None; after Ctrl-C in the middle of one it is
        (the losses of its steps so far, seconds so far).
        """
        trainer = self.trainer
        losses, seconds = partial or ([], 0.0)
        finished = trainer.epoch if partial else trainer.epoch + 1
        step = finished * trainer.num_train_batches + len(losses)
        if not partial:
            with self.writing("metrics.csv"):
                write_metrics(self.path, trainer.history)
        arrays = self.arrays()
        meta = {
            "epoch": finished,
            "position": len(losses),
            "seconds_in_epoch": seconds,
            "losses_in_epoch": losses,
            "wall_time": trainer.wall_time(),
            "history": trainer.history,
            "board": {"data": trainer.board.data, "raw_points": trainer.board.raw_points},
            "settings": self.settings(),
            "arrays": _shapes(arrays),
            "d2lite": _version("d2lite"),
        }
        with self.writing(f"checkpoint {step}"):
            self.checkpoints.save(step, arrays, meta)
        return self.checkpoints.path(step)

    def last_checkpoint(self):
        steps = self.checkpoints.steps() if self.checkpoints is not None else []
        return self.checkpoints.path(steps[-1]) if steps else None

    def restore(self):
        trainer, meta, step = self.trainer, self.meta, self.step
        like = self.arrays()
        saved, now = meta.get("arrays", {}), _shapes(like)
        if saved != now:  # same hyperparameters, yet other parameters: the model's code changed
            differ = [k for k in set(saved) | set(now) if saved.get(k) != now.get(k)]
            name = min(differ, key=lambda k: ("['params']" not in k, k))  # parameters first
            raise D2LiteError(
                f"checkpoint {self.checkpoints.path(step)} holds other arrays than this model has ({name}: "
                f"{saved.get(name)} in the checkpoint, {now.get(name)} now): resume with the model code "
                "the run was trained with"
            )
        arrays = self.checkpoints.restore(step, like)
        trainer.state = trainer.parallel.replicate(
            serialization.from_state_dict(trainer.state, arrays["state"])
        )
        trainer.shuffle_key = trainer.parallel.replicate(arrays["shuffle_key"])
        self.checkpoints.discard_after(step)  # a resume from an older checkpoint forks
        trainer.epoch, position = meta["epoch"], meta["position"]
        trainer.history = meta["history"]
        trainer.earlier_sessions_time = meta["wall_time"]
        if position:
            trainer.partial_epoch = (meta["losses_in_epoch"], meta["seconds_in_epoch"])
        trainer.train_batch_idx = trainer.epoch * trainer.num_train_batches + position
        trainer.val_batch_idx = trainer.epoch * trainer.num_val_batches
        # Put the plotted points back, and those still to be averaged into the next one
        # (checkpoints of d2lite 0.1 hold only the plotted points).
        board = meta["board"] if "raw_points" in meta["board"] else {"data": meta["board"], "raw_points": {}}
        for name, lines in board.items():
            setattr(trainer.board, name, {label: [tuple(p) for p in line] for label, line in lines.items()})
        write_metrics(self.path, trainer.history)
        where = f"epoch {trainer.epoch + 1}" + (f", step {position + 1}" if position else "")
        if trainer.epoch >= trainer.max_epochs:  # nothing trains, so the run records no resume
            where = (
                f"its end: all {trainer.max_epochs} epochs are done (raise max_epochs, --epochs, to go on)"
            )
        else:
            now = time.strftime("%Y-%m-%d %H:%M:%S")
            self.write_config(resumed={"at": now, "step": step, "epoch": trainer.epoch, "position": position})
        print(f"resuming {self.path} from checkpoint {step} at {where}", flush=True)

    def close(self):
        if self.checkpoints is not None:
            self.checkpoints.close()


def _shapes(arrays):
    """{'path': 'shape dtype'} of a pytree's leaves, to tell whether a checkpoint fits a model."""
    leaves = jax.tree_util.tree_leaves_with_path(arrays)
    return {
        jax.tree_util.keystr(path): f"{tuple(np.shape(leaf))} {jnp.result_type(leaf)}"
        for path, leaf in leaves
    }
