"""Run directories: what a fit records, so that runs can be resumed, looked at and compared.

runs/<chapter>/<date>-<time>/      (the chapter CLI's default; any folder works)
    config.json    model, data and trainer settings, versions, devices, the chapter's flags
    metrics.csv    one row per epoch: epoch, step, train_loss, val_loss, val_acc,
                   examples_per_s, seconds (training time of the epoch), wall_time
                   (seconds since the run began, counting only time spent training)
    progress.png   the live plot (and progress.svg)
    checkpoints/   orbax checkpoints, one folder per training step (see checkpoint.py)
"""

import csv
import dataclasses
import datetime
import functools
import io
import json
import os
import platform
import re
import tempfile
from pathlib import Path

from .errors import D2LiteError

CONFIG, METRICS, CHECKPOINTS = "config.json", "metrics.csv", "checkpoints"


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
    from importlib import metadata

    import jax

    versions = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "host": {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()},
    }


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
def write_atomic(path, content):
    """Replace `path` with `content` so that a reader or a crash never sees half a file.

    `content` is text, or a function that writes the file given a binary file object.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the results from other users
        with os.fdopen(fd, "wb") as f:
            content(f) if callable(content) else f.write(content.encode())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_config(run_dir, config):
    write_atomic(Path(run_dir) / CONFIG, json.dumps(config, indent=2) + "\n")


def read_config(run_dir):
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
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
