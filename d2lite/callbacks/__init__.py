"""Callbacks around the Trainer's loop (progress.py, stop.py, guards.py; the run directory is in
d2lite/runs), and `defaults`, which turns the Trainer's shorthands into callbacks and step
transforms."""

import io
import sys

from ..data import FAST_DEV_RUN, fast_dev_run
from ..devices import CpuKernels, FastInitKey
from ..devices.precision import Precision
from ..devices.sharding import DataParallel
from ..errors import D2LiteError
from ..recipe import Recipe, RecipeSteps
from ..runs.directory import RunDirectory
from .guards import Guards
from .progress import Progress
from .stop import StopOnSignals


def settle(trainer):
    """Check the Trainer's numbers (one-line errors), and make a smoke run of it under
    D2LITE_FAST_DEV_RUN=N: one epoch of at most N training and N validation batches."""
    settings = trainer.hparams
    smoke = fast_dev_run()
    if smoke:
        settings["max_epochs"] = 1
        for name in ("limit_train_batches", "limit_val_batches"):
            settings[name] = min(settings[name] or smoke, smoke)
            setattr(trainer, name, settings[name])
        trainer.max_epochs = 1
        print(
            f"{FAST_DEV_RUN}={smoke}: a smoke run of 1 epoch, {trainer.limit_train_batches} training "
            f"and {trainer.limit_val_batches} validation batches",
            file=sys.stderr,
        )
    counts = {name: settings[name] for name in ("max_epochs", "keep_checkpoints")}
    counts.update({name: settings[name] or 1 for name in ("limit_train_batches", "limit_val_batches")})
    if settings["steps_per_dispatch"] != "auto":
        counts["steps_per_dispatch"] = settings["steps_per_dispatch"]
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise D2LiteError(f"{name} must be a positive integer, got {value!r}")
    clip = settings["gradient_clip_val"]
    if not isinstance(clip, int | float) or clip < 0:
        raise D2LiteError(f"gradient_clip_val must be >= 0 (0 turns clipping off), got {clip!r}")


def defaults(trainer):
    """(callbacks, transforms) for a Trainer's constructor arguments, in the order they run.

    Callbacks: the guards (first: a diverging run stops before its checkpoint is saved), the
    progress line, the run directory (with `run_dir` or `resume`), the stop on signals.
    Transforms: the devices, the precision, the recipe, the fast initial key; on a CPU the
    stand-ins for slow kernels, except in smoke runs, whose few steps never repay their
    compile time.
    """
    settle(trainer)
    recipe = Recipe() if trainer.recipe is None else trainer.recipe
    if not isinstance(recipe, Recipe):
        raise D2LiteError(f"recipe must be a d2lite Recipe or None, got {recipe!r}")
    progress = Progress(stream=None if trainer.progress else io.StringIO())
    run = None
    if trainer.run_dir is not None or trainer.resume not in (None, False):
        run = RunDirectory(
            trainer.run_dir, trainer.resume, trainer.keep_checkpoints, trainer.run_info, trainer.plot
        )
    guards = Guards(trainer.stop_on_divergence, progress=progress, run=run)
    callbacks = [guards, progress, *([run] if run else []), StopOnSignals(saving=run is not None)]
    parallel = DataParallel(trainer.devices)
    transforms = [parallel, Precision(trainer.precision), RecipeSteps(recipe), FastInitKey()]
    if parallel.devices[0].platform == "cpu" and not fast_dev_run():
        transforms.append(CpuKernels())
    return callbacks, transforms
