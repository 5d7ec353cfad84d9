"""Callbacks around the Trainer's loop (progress.py, stop.py, guards.py; the run directory is in
d2lite/runs), and `defaults`, which turns the Trainer's shorthands into callbacks and step
transforms."""

import io

from ..devices import CpuKernels, FastInitKey
from ..devices.precision import Precision
from ..devices.sharding import DataParallel
from ..errors import D2LiteError
from ..recipe import Recipe, RecipeSteps
from ..runs.directory import RunDirectory
from ..trainer import fast_dev_run
from .guards import Guards
from .progress import Progress
from .stop import StopOnSignals


def defaults(trainer):
    """(callbacks, transforms) for a Trainer's constructor arguments, in the order they run.

    Callbacks: the guards (first: a diverging run stops before its checkpoint is saved), the
    progress line, the run directory (with `run_dir` or `resume`), the stop on signals.
    Transforms: the devices, the precision, the recipe, the fast initial key; on a CPU the
    stand-ins for slow kernels, except in smoke runs, whose few steps never repay their
    compile time.
    """
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
