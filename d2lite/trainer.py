"""Trainer: the data on the device once, one jitted step, metrics read only when plotted.

Per fit there are two compiled programs, both with fixed shapes:
- `train_chunk` runs `steps_per_dispatch` training steps. Each step gathers
  a batch from the resident arrays by index, preprocesses it (scale, resize), runs the
  model's `training_step` (forward, loss, gradients, BatchNorm statistics, a fresh dropout
  key), clips gradients and applies the optax update. The state buffers are donated. What
  the step passes to `model.plot` comes back as outputs; the host reads them in bulk when a
  point of the live plot is due and replays them through `model.plot`, as the book's loop
  would have called it.
- `eval_batch` runs the model's `validation_step` on each example of a batch (`vmap`), so
  whatever it plots is known per example, and adds the masked values to running sums on the
  device; the validation set is padded to whole batches once, so every example counts
  exactly once however the step averages.
Epochs differ only in traced values (the permutation, the chunk start), so nothing
recompiles after the first epoch. A `fit_epoch` of the reader's own (the book's loop of
section 3.4) runs instead of ours, over `train_dataloader` and `val_dataloader`. With
several devices each batch is split over them (sharding.py); `precision="bfloat16"`
computes in bfloat16 around float32 state (precision.py); a `recipe` (recipe.py) adds
augmentation and a weight average to the step and mirrored images to evaluation. With a
run directory the host also writes, between epochs, the metrics and a checkpoint, and a
run resumes exactly (runs.py).
"""

import contextlib
import io
import itertools
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax import lax

from . import book
from .board import ProgressLine
from .devices.cpu_kernels import cpu_kernels
from .devices.init_key import init_key
from .devices.precision import compute_dtype, compute_in
from .devices.sharding import DataParallel, to_host
from .errors import D2LiteError, first_line
from .hparams import HyperParameters
from .module import Classifier, for_evaluation, input_error, recording_plots
from .recipe import Recipe
from .runs.directory import RunDirectory

# Off CPU, a step lighter than LIGHT_STEP_FLOPS runs up to AUTO_STEPS_PER_DISPATCH to a call
# (see `Trainer.auto_dispatch_steps`).
AUTO_STEPS_PER_DISPATCH = 32
LIGHT_STEP_FLOPS = 10e9
FAST_DEV_RUN = "D2LITE_FAST_DEV_RUN"
MID_EPOCH_PICTURE_SECONDS = 2.0  # the live plot's mid-epoch pictures come at most this often


def fast_dev_run():
    """N when the environment asks for smoke runs (D2LITE_FAST_DEV_RUN=N, N >= 1), else None."""
    text = os.environ.get(FAST_DEV_RUN, "").strip()
    if text in ("", "0"):
        return None
    if not text.isdigit():
        raise D2LiteError(f"{FAST_DEV_RUN} must be a number of batches, got {text!r}")
    return int(text)


class TrainState(train_state.TrainState):
    """Parameters, optimizer state, BatchNorm statistics and the dropout key stream; with a
    recipe (recipe.py), the average of the weights and the label smoothing of the loss."""

    batch_stats: Any = None
    dropout_rng: jax.Array = None
    average: Any = None  # {"params": ..., "batch_stats": ...}, the EMA of both
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGUSR1) stopped `fit` between two steps; `checkpoint` is where the
    state was saved."""

    def __init__(self, message, checkpoint=None, run_dir=None):
        super().__init__(message)
        self.checkpoint, self.run_dir = checkpoint, run_dir


class Trainer(HyperParameters):
    """Fit a `Module` to a `DataModule`: `Trainer(max_epochs=10).fit(model, data)`.

    `num_gpus` is accepted for the book's code (`gpus` lists those GPUs) but picks no devices:
    the Trainer trains data-parallel on all of `devices` (default: `jax.devices()`, every
    GPU or TPU there is), each batch split evenly over them. `precision="bfloat16"`
    computes forward and backward passes in bfloat16 while parameters, optimizer state,
    BatchNorm statistics and the loss stay float32. `steps_per_dispatch` runs several steps
    per call, for small models that Python would otherwise slow down; "auto" means 1 on a
    CPU, where a step takes milliseconds or more and unrolled chunks only add compile time,
    and on GPUs up to 32 (one loop) for a light step, 1 for a heavy one (see
    `auto_dispatch_steps`).
    `limit_train_batches`/`limit_val_batches` shorten epochs for smoke runs. The environment
    variable D2LITE_FAST_DEV_RUN=N (as Lightning's `fast_dev_run`) makes every fit a smoke
    run without touching the code, a notebook's included: one epoch of at most N training
    and N validation batches.

    Without `run_dir`, a fit keeps its results in memory and shows the live plot in a
    notebook. With `run_dir` it is a recorded run (runs.py): the plot (unless `plot=False`),
    config.json, metrics.csv and a checkpoint after every epoch (the newest
    `keep_checkpoints` kept) all go there. `resume=True` continues the run in `run_dir`
    from its latest checkpoint; `resume=PATH` continues the run directory PATH, or from the
    checkpoint PATH (`RUN/checkpoints/STEP`). Ctrl-C, SIGTERM or SIGUSR1 stops between two
    steps, saves a checkpoint when there is a run directory, and raises `TrainingInterrupted`.

    A non-finite training loss stops the fit at once. A loss that diverges while staying
    finite, or a validation accuracy that collapses (see `divergence`), is reported on the
    progress output when the host reads the losses; `stop_on_divergence=True` stops the fit
    there instead, keeping the last checkpoint, which precedes the divergence.

    `recipe` adds what the book leaves out (recipe.py): augmentation on the device, a
    learning-rate schedule, label smoothing, weight decay on kernels only, an average of the
    weights and mirrored images for evaluation. None is the book's recipe.
    """

    def __init__(
        self,
        max_epochs,
        num_gpus=0,
        gradient_clip_val=0,
        *,
        seed=0,
        run_dir=None,
        resume=None,
        keep_checkpoints=3,
        run_info=None,
        steps_per_dispatch="auto",
        limit_train_batches=None,
        limit_val_batches=None,
        devices=None,
        precision="float32",
        progress=True,
        plot=True,
        stop_on_divergence=False,
        recipe=None,
    ):
        smoke = fast_dev_run()
        if smoke:
            max_epochs = 1
            limit_train_batches = min(limit_train_batches or smoke, smoke)
            limit_val_batches = min(limit_val_batches or smoke, smoke)
            print(
                f"{FAST_DEV_RUN}={smoke}: a smoke run of 1 epoch, {limit_train_batches} training "
                f"and {limit_val_batches} validation batches",
                file=sys.stderr,
            )
        counts = dict(max_epochs=max_epochs, keep_checkpoints=keep_checkpoints)
        counts.update(limit_train_batches=limit_train_batches or 1, limit_val_batches=limit_val_batches or 1)
        if steps_per_dispatch != "auto":
            counts["steps_per_dispatch"] = steps_per_dispatch
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise D2LiteError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(gradient_clip_val, int | float) or gradient_clip_val < 0:
            message = f"gradient_clip_val must be >= 0 (0 turns clipping off), got {gradient_clip_val!r}"
            raise D2LiteError(message)
        compute_dtype(precision)  # a one-line error now rather than in fit
        recipe = Recipe() if recipe is None else recipe
        if not isinstance(recipe, Recipe):
            raise D2LiteError(f"recipe must be a d2lite Recipe or None, got {recipe!r}")
        if resume is True and run_dir is None:
            raise D2LiteError("resume=True continues the run in run_dir: give run_dir (or resume=PATH)")
        self.save_hyperparameters()
        self.gpus = [book.gpu(i) for i in range(min(num_gpus, book.num_gpus()))]
        self.state, self.history, self.run = None, [], None
        self._stop_requested = False

    @property
    def run_path(self):
        """The run directory of the last fit, or None."""
        return None if self.run is None else self.run.path

    # ----------------------------------------------------------------------------- set-up
    def prepare_data(self, data):
        self.data = data
        # The book's loaders, for a fit_epoch of the reader's own; ours reads resident arrays.
        self.train_dataloader = _Limited(data.train_dataloader(), self.limit_train_batches)
        self.val_dataloader = _Limited(data.val_dataloader(), self.limit_val_batches)
        self.batch_size = batch_size = data.batch_size
        train, val = data.arrays(True), data.arrays(False)
        self.num_train_examples = len(train[-1])
        if batch_size > self.num_train_examples:
            raise D2LiteError(
                f"batch_size {batch_size} (--batch-size) is larger than the {self.num_train_examples} "
                f"training examples: use a batch size of at most {self.num_train_examples}"
            )
        self.parallel = DataParallel(self.devices)
        self.parallel.check_batch_size(batch_size)
        self.unroll_chunks = self.parallel.devices[0].platform == "cpu"
        # The CPU stand-ins (cpu_kernels.py) cost compile time that a smoke run's few steps
        # never repay (GoogLeNet's: 49 s with XLA's own kernels, 60 s with them).
        self.use_cpu_kernels = self.unroll_chunks and not fast_dev_run()
        # The last partial batch is dropped.
        self.num_train_batches = min(
            self.num_train_examples // batch_size, self.limit_train_batches or math.inf
        )
        # "auto" is decided in fit, where the step can be traced (auto_dispatch_steps); 1 until then.
        self.dispatch_steps = 1 if self.steps_per_dispatch == "auto" else self.steps_per_dispatch
        self.train_arrays = self.parallel.replicate(train)

        # Pad validation to whole batches once; the mask keeps the padding out of the means.
        self.num_val_batches = min(math.ceil(len(val[-1]) / batch_size), self.limit_val_batches or math.inf)
        self.num_val_examples = min(len(val[-1]), self.num_val_batches * batch_size)
        padded = self.num_val_batches * batch_size
        val = [a[: self.num_val_examples] for a in val]
        val = tuple(np.pad(a, [(0, padded - len(a))] + [(0, 0)] * (a.ndim - 1)) for a in val)
        self.val_arrays = self.parallel.replicate(val)
        self.val_mask = self.parallel.replicate(np.arange(padded) < self.num_val_examples)

    def prepare_model(self, model):
        model.trainer = self  # model.plot() reads the batch counters
        self.model = model
        self.eval_model = for_evaluation(model)
        self.board = model.board
        self.board.xlim = [0, self.max_epochs]
        self.board.save_dir = self.run_path if self.plot else None
        self.board.display_handle = None  # in a notebook, each fit plots in its own cell

    def prepare_batch(self, batch):
        """A batch as the model takes it, inside the jitted step (the data is on the device already)."""
        return batch

    def init_state(self, key):
        def first_inputs(arrays):
            return self.data.preprocess(tuple(a[: self.batch_size] for a in arrays))[:-1]

        def initial_variables(key, arrays):  # one program, not a dozen small eager ones
            params_key, dropout_key, init_dropout_key = jax.random.split(key, 3)
            rngs = {"params": init_key(params_key), "dropout": init_dropout_key}  # compiles fast
            return self.model.apply_init(first_inputs(arrays), key=rngs), dropout_key

        inputs = jax.eval_shape(first_inputs, self.train_arrays)
        try:
            variables, dropout_key = jax.jit(initial_variables)(key, self.train_arrays)
            outputs, intermediates = jax.eval_shape(
                lambda v, x: self.eval_model.apply(
                    v, *x, capture_intermediates=True, mutable=["intermediates"]
                ),
                variables,
                inputs,
            )
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise input_error(self.model, inputs[0].shape, error) from error
        self._check_shapes(inputs, outputs, intermediates)
        tx = self.recipe.optimizer(self.model.configure_optimizers(), self.num_train_batches, self.max_epochs)
        if self.gradient_clip_val > 0:  # the book's JAX Trainer accepts this and ignores it
            tx = optax.chain(optax.clip_by_global_norm(self.gradient_clip_val), tx)
        smoothing = self.recipe.label_smoothing
        if smoothing and type(self.model).loss is not Classifier.loss:
            raise D2LiteError(
                f"label_smoothing needs the Classifier's loss; {type(self.model).__name__} has its own"
            )
        average = None
        if self.recipe.ema:  # its own buffers: the state is donated, and a buffer only once
            average = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
            average = jax.tree.map(jnp.copy, average)
        state = TrainState.create(
            apply_fn=compute_in(self.precision, self.model.apply),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            dropout_rng=dropout_key,
            tx=tx,
            average=average,
            label_smoothing=smoothing,
        )
        return self.parallel.replicate(state)

    def evaluation_state(self, state):
        """`state` as evaluation uses it: the eval-mode model, averaged weights with an EMA,
        mirrored images with flip TTA, and the plain loss (no label smoothing)."""
        apply = self.recipe.evaluation_apply(compute_in(self.precision, self.eval_model.apply))
        state = state.replace(apply_fn=apply, label_smoothing=0.0)
        if state.average is not None:
            state = state.replace(**state.average)
        return state

    def _check_shapes(self, inputs, outputs, intermediates):
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
            if 0 in leaf.shape:
                layer = jax.tree_util.keystr(path[1:-1]) or "a layer"
                raise input_error(self.model, inputs[0].shape, f"{layer} outputs shape {leaf.shape}")
        classes = getattr(self.data, "num_classes", None)
        wrong = outputs.ndim != 2 or outputs.shape[-1] != classes
        if isinstance(self.model, Classifier) and classes and wrong:
            raise D2LiteError(
                f"{type(self.model).__name__} outputs shape {outputs.shape} but {type(self.data).__name__} "
                f"has {classes} classes: make the last layer output {classes} values "
                f"(e.g. num_classes={classes})"
            )

    # ------------------------------------------------------------------ compiled programs
    def _compile_programs(self):
        model, preprocess, parallel, recipe = self.model, self.data.preprocess, self.parallel, self.recipe
        batch_size, num_batches = self.batch_size, self.num_train_batches

        def epoch_order(key, epoch):
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), self.num_train_examples)
            return perm[: num_batches * batch_size].reshape(num_batches, batch_size)

        def train_step(state, arrays, indices):
            indices = parallel.split(indices)  # each device gathers and runs its own slice
            batch = self.prepare_batch(preprocess(tuple(a[indices] for a in arrays)))
            step_key = jax.random.fold_in(state.dropout_rng, state.step)
            if recipe.augments:
                batch = (recipe.augment(jax.random.fold_in(step_key, 1), batch[0]), *batch[1:])
            batch = jax.tree.map(parallel.split, batch)
            step_state = state.replace(dropout_rng=step_key)
            with recording_plots() as plotted:
                value, grads = model.training_step(state.params, batch, step_state)
            # The book's Module returns the loss, its Classifier (loss, variable updates).
            loss, updates = value if isinstance(value, tuple) else (value, {})
            batch_stats = updates.get("batch_stats", state.batch_stats)
            new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
            if recipe.ema:
                latest = {"params": new.params, "batch_stats": new.batch_stats}
                new = new.replace(average=recipe.update_average(state.average, latest, state.step))
            return new, (loss, plotted)

        def train_chunk(state, arrays, order, start, num_steps):
            indices = lax.dynamic_slice_in_dim(order, start, num_steps)
            if num_steps == 1:
                state, outputs = train_step(state, arrays, indices[0])
                outputs = jax.tree.map(lambda x: x[None], outputs)
            else:  # unrolled on CPU, whose loops run ~3x slower than straight code; GPUs loop fine
                unroll = num_steps if self.unroll_chunks else 1
                state, outputs = lax.scan(
                    lambda s, i: train_step(s, arrays, i), state, indices, unroll=unroll
                )
            return parallel.keep_replicated(state), outputs

        eval_model = self.eval_model

        def batch_sums(state, arrays, mask, index):
            rows = [
                parallel.split(lax.dynamic_slice_in_dim(a, index * batch_size, batch_size)) for a in arrays
            ]
            weights = parallel.split(lax.dynamic_slice_in_dim(mask, index * batch_size, batch_size))
            eval_state = self.evaluation_state(state)

            def plotted_for(example):  # a batch of one: what the step plots is this example's
                with recording_plots() as plotted:
                    eval_model.validation_step(eval_state.params, tuple(a[None] for a in example), eval_state)
                return plotted

            values = jax.vmap(plotted_for)(tuple(self.prepare_batch(preprocess(tuple(rows)))))
            return {k: (v.reshape(batch_size, -1).mean(1) * weights).sum() for k, v in values.items()}

        # Jitted on its own too, so that tracing it for the shapes of the sums (see `_evaluate`)
        # is the one trace that eval_batch reuses.
        batch_sums = jax.jit(batch_sums)

        def eval_batch(state, arrays, mask, index, totals):
            return jax.tree.map(jnp.add, totals, batch_sums(state, arrays, mask, index))

        self._epoch_order = jax.jit(epoch_order, out_shardings=parallel.replicated)
        self._train_chunk = jax.jit(train_chunk, donate_argnums=0, static_argnames="num_steps")
        self._eval_batch = jax.jit(eval_batch, donate_argnums=4)
        self._batch_sums = batch_sums

    def auto_dispatch_steps(self):
        """Training steps per call under `steps_per_dispatch="auto"`.

        One on a CPU. Off it, several only for a light step, under LIGHT_STEP_FLOPS in its
        products and convolutions (LeNet's: 0.3 GFLOP at batch 128), which a GPU runs in less
        time than Python needs to dispatch it. A heavier step (RegNet's 31 GFLOP, ResNet-18's
        203) keeps the device busy one call at a time, so a loop of steps would only add
        compile time (on an H200 GoogLeNet's first epoch took 25.9 s one step at a time, and
        none ended within 50 s in loops of 32). A light epoch is cut into equal chunks of at
        most 32 steps where its length allows, so that one program runs them all: 468 batches
        make 18 chunks of 26, not 14 of 32 and one of 20, which would compile a second program.
        """
        if self.unroll_chunks:
            return 1
        order = self._epoch_order(self.shuffle_key, 0)
        # Counted on a trace, not a compiled program; a heavy step's first call reuses the trace.
        step = self._train_chunk.trace(self.state, self.train_arrays, order, 0, num_steps=1)
        if matmul_flops(step.jaxpr) >= LIGHT_STEP_FLOPS:
            return 1
        return equal_chunks(self.num_train_batches)

    # -------------------------------------------------------------------------- training
    def fit(self, model, data, key=None):
        """Train `model` on `data` for `max_epochs`; the final TrainState is `self.state`."""
        self.run = RunDirectory.locate(self)
        self.prepare_data(data)
        self.prepare_model(model)
        key = jax.random.PRNGKey(self.seed) if key is None else key
        init_key, shuffle_key = jax.random.split(key)
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        self.history = []
        self.partial_epoch = None  # (losses, seconds) of an epoch resumed midway
        self._divergence_reported = set()  # (loss or accuracy, epoch) of each warning
        self.earlier_sessions_time = 0.0  # training seconds of the run's earlier sessions
        stream = sys.stderr if self.progress else io.StringIO()
        self.progress_line = ProgressLine(
            self.max_epochs, self.num_train_batches, self.batch_size, stream=stream
        )
        try:
            if self.run is not None:
                self.run.open()
                if getattr(data, "source", None):
                    print(f"data: {data.source}", flush=True)  # which copy of the files a recorded run read
            self.state = self.init_state(init_key)
            self.shuffle_key = self.parallel.replicate(shuffle_key)
            self._compile_programs()
            if self.steps_per_dispatch == "auto":
                self.dispatch_steps = self.auto_dispatch_steps()
            if self.run is not None:
                self.run.start_or_restore()
            self.loss_levels = [record["train_loss"] for record in self.history]  # see `divergence`
            self._session_started = time.perf_counter()
            # On a CPU, Flax's convolutions and max pools trace as XLA:CPU runs them fast (cpu_kernels.py).
            with self._stop_on_signals(), cpu_kernels(self.use_cpu_kernels):
                for epoch in range(self.epoch, self.max_epochs):
                    self.epoch = epoch
                    self.fit_epoch()
                    checkpoint = self.run and self.run.save()
                    if self._stop_agreed(vote=True):
                        raise self._interrupted(f"after epoch {self.epoch + 1}", checkpoint)
        except (jax.errors.JaxRuntimeError, MemoryError) as error:
            if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
                raise self._out_of_memory(error) from error
            raise
        finally:
            self.progress_line.close()
            if self.run is not None:
                self.run.close()

    def fit_epoch(self):
        """Train one epoch, hand what the steps plotted to `model.plot`, then validate."""
        self.progress_line.start_epoch(self.epoch)
        started = time.perf_counter()
        order = self._epoch_order(self.shuffle_key, self.epoch)
        plot_every = max(1, int(self.num_train_batches / self.model.plot_train_per_epoch))
        # The losses read so far; an epoch resumed midway continues its permutation after them.
        losses, seconds_before = self.partial_epoch or ([], 0.0)
        self.partial_epoch = None
        pending = []  # the outputs of dispatched chunks, not yet read by the host
        for start in range(len(losses), self.num_train_batches, self.dispatch_steps):
            # A plot point is due: the host reads the chunks before this one (processes also agree
            # whether to stop there, see _stop_agreed). Never at an epoch's first dispatch.
            plot_due = start // plot_every > len(losses) // plot_every
            if self._stop_agreed(plot_due):  # Ctrl-C or SIGTERM: stop here, between two steps
                with self.board.held():  # the picture shows every step read
                    self._read(pending, losses)
                checkpoint = self.run and self.run.save(
                    (losses, seconds_before + time.perf_counter() - started)
                )
                where = f"in epoch {self.epoch + 1} after step {start} of {self.num_train_batches}"
                raise self._interrupted(where, checkpoint)
            num_steps = min(self.dispatch_steps, self.num_train_batches - start)
            self.state, outputs = self._train_chunk(
                self.state, self.train_arrays, order, start, num_steps=num_steps
            )
            pending.append(outputs)
            if len(pending) > 1:
                # Wait for the chunk before this one: the device stays busy with this one while
                # the progress line reports finished work, and the host never runs far ahead.
                finished = pending[-2][0].block_until_ready()
                # The live line shows the latest loss; reading it costs a transfer, so only on a TTY.
                latest = float(to_host(finished)[-1]) if self.progress_line.tty else None
                if plot_due:
                    self._read(pending[:-1], losses)
                    del pending[:-1]
                self.progress_line.advance(len(finished), loss=latest)
        last_chunk = len(pending[-1][0]) if pending else 0
        with self.board.held():  # the epoch's last points, training and validation, in one picture
            self._read(pending, losses)
            self.progress_line.advance(last_chunk, loss=losses[-1])
            self.train_batch_idx = (self.epoch + 1) * self.num_train_batches
            seconds = seconds_before + time.perf_counter() - started
            train_loss = float(np.mean(losses))
            record = {"epoch": self.epoch + 1, "step": self.train_batch_idx, "train_loss": train_loss}
            metrics = sorted(self.evaluate().items(), key=lambda item: item[0] != "loss")  # loss first
            for key, value in metrics:
                record["val_" + key] = value
                self.board.draw(self.epoch + 1, value, "val_" + key)  # exact means: one point an epoch
        self.val_batch_idx += self.num_val_batches
        self._check_accuracy(record)
        examples_per_s = self.num_train_batches * self.batch_size / seconds
        record.update(examples_per_s=examples_per_s, seconds=seconds, wall_time=self.wall_time())
        self.history.append(record)
        self.progress_line.end_epoch({k: v for k, v in record.items() if k.startswith(("train", "val"))})

    def _read(self, chunks, losses):
        """Copy finished chunks to the host: append their losses to `losses` and replay what
        their steps plotted through `model.plot`, each step at its place in the epoch."""
        before = len(losses)
        with self.board.held(unless_drawn_within=MID_EPOCH_PICTURE_SECONDS):  # see ProgressBoard.held
            for chunk in chunks:
                step_losses, plotted = jax.tree.map(to_host, chunk)
                if not np.isfinite(step_losses).all():  # on the host already: checking is free
                    raise self._nonfinite_loss(np.concatenate([losses, step_losses]))
                for i, loss in enumerate(step_losses):
                    self.train_batch_idx = self.epoch * self.num_train_batches + len(losses)
                    for (key, train), values in plotted.items():
                        self.model.plot(key, values[i], train)
                    losses.append(float(loss))
        if len(losses) > before:
            self._check_loss(losses[before:])

    def _check_loss(self, new_losses):
        """Report a training loss that diverges (see `divergence`) over the steps just read."""
        self.loss_levels.append(float(np.median(new_losses)))
        jump = divergence(self.loss_levels)
        if jump:
            latest, lowest = jump
            self._diverged(
                "loss",
                f"the training loss diverges in epoch {self.epoch + 1}: {latest:.4g} (median of its last "
                f"{len(new_losses)} steps), {latest / lowest:.1f}x its lowest level so far, {lowest:.4g}",
            )

    def _check_accuracy(self, record):
        """Report a validation accuracy that falls more than ACCURACY_DROP below its best."""
        earlier = [r for r in self.history if r.get("val_acc") is not None]  # `record` is not in it yet
        accuracy = record.get("val_acc")
        best = max(earlier, key=lambda r: r["val_acc"], default=None)
        if best and accuracy is not None and accuracy < best["val_acc"] - ACCURACY_DROP:
            self._diverged(
                "accuracy",
                f"the validation accuracy collapsed in epoch {self.epoch + 1}: {accuracy:.4f}, down from "
                f"{best['val_acc']:.4f} in epoch {best['epoch']}",
            )

    def _diverged(self, kind, what):
        if (kind, self.epoch) in self._divergence_reported:
            return  # once an epoch is enough
        self._divergence_reported.add((kind, self.epoch))
        cause = f"the {self._learning_rate()} is likely too high"
        if self.stop_on_divergence:
            last = self.run and self.run.last_checkpoint()
            kept = f"; the last checkpoint, from before it, is {last}" if last else ""
            raise D2LiteError(f"{what}: {cause}; stopped (stop_on_divergence){kept}")
        stop = "stop_on_divergence=True (--stop-on-divergence) stops a run here"
        self.progress_line.note(f"warning: {what}: {cause} ({stop})")

    def _learning_rate(self):
        lr = getattr(self.model, "lr", None)
        return f"learning rate (lr={lr:g})" if isinstance(lr, int | float) else "learning rate"

    def _nonfinite_loss(self, values):
        index = int(np.flatnonzero(~np.isfinite(values))[0])
        rate = self._learning_rate()
        last = self.run and self.run.last_checkpoint()
        return D2LiteError(
            f"the training loss is {float(np.mean(values))} in epoch {self.epoch + 1}: lower the "
            f"{rate} or turn on gradient clipping (gradient_clip_val); it first became "
            f"{values[index]} at step {index + 1} of {self.num_train_batches} of the epoch "
            f"(training step {self.epoch * self.num_train_batches + index + 1})"
            + (f"; the last good checkpoint is {last}" if last else "")
        )

    def _out_of_memory(self, error):
        device = self.parallel.devices[0]
        memory = "host memory" if device.platform == "cpu" else f"{device.device_kind} memory"
        reason = first_line(error, 120)
        size = self.parallel.size  # a batch must still split over the devices
        smaller = max(size, self.batch_size // 2 // size * size)
        return D2LiteError(
            f"out of {memory} at batch size {self.batch_size} ({reason}): try batch_size={smaller} "
            f"(--batch-size {smaller}), a smaller resize, or precision='bfloat16' (--precision bfloat16)"
        )

    def _stop_agreed(self, vote):
        """Whether to stop before the next dispatch, after a stop was requested.

        A process alone stops at once. Processes of a multi-host run stop together, at the
        same step, so that they save one checkpoint together and none waits forever for the
        others in a collective: they agree at the points where `vote` holds (the plot points
        and the epoch ends, the same steps on every process) whether any of them was asked.
        """
        if jax.process_count() == 1:
            return self._stop_requested
        if not vote:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self._stop_requested))))

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """Ctrl-C, SIGTERM and SIGUSR1 ask the loop to stop at the next step boundary.

        Stopping between dispatches (never inside one, where the donated state could be lost)
        leaves `self.state` consistent, and with a run directory lets us save it. SIGTERM is
        how `timeout`, Colab and Slurm stop a job (Slurm can send SIGUSR1 ahead of its time
        limit). A second Ctrl-C stops at once; a repeated SIGTERM or SIGUSR1 is ignored, since
        `timeout` signals the whole process group and `make` passes it on again, and neither
        may cut the checkpoint short.
        """
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        names = {
            signal.SIGINT: "Ctrl-C",
            signal.SIGTERM: "SIGTERM",
            getattr(signal, "SIGUSR1", None): "SIGUSR1",
        }
        names.pop(None, None)  # Windows has no SIGUSR1
        previous = {s: signal.getsignal(s) for s in names}
        handled = [s for s in names if previous[s] is not signal.SIG_IGN]

        def request_stop(signum, frame):
            if signum == signal.SIGINT:  # the next Ctrl-C goes to the previous handler: at once
                signal.signal(signal.SIGINT, previous[signal.SIGINT] or signal.default_int_handler)
            if not self._stop_requested:
                self._stop_requested = True
                saving = " and saving a checkpoint" if self.run is not None else ""
                alone = jax.process_count() == 1
                when = "after the current step" if alone else "at the next plot point, as every process will,"
                again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
                print(
                    f"\n{names[signum]}: stopping {when}{saving}{again}",
                    file=sys.stderr,
                    flush=True,
                )

        for s in handled:
            signal.signal(s, request_stop)
        try:
            yield
        finally:
            for s in handled:  # None: a handler installed outside Python, which Python cannot restore
                signal.signal(s, previous[s] if previous[s] is not None else signal.SIG_DFL)

    def _interrupted(self, where, checkpoint):
        if checkpoint is None:
            return TrainingInterrupted(f"interrupted {where} (no run directory, so no checkpoint)")
        return TrainingInterrupted(
            f"interrupted {where}: checkpoint saved in {checkpoint}", checkpoint, self.run_path
        )

    def wall_time(self):
        """Seconds spent in `fit` over all sessions of the run."""
        return self.earlier_sessions_time + time.perf_counter() - self._session_started

    def evaluate(self, data=None):
        """Mean validation metrics of the current state, over exactly every validation example.

        With `data`, evaluate on that data module's validation split instead (same batch size).
        """
        if self.state is None:
            raise D2LiteError("evaluate() needs a trained state: call trainer.fit(model, data) first")
        if data is not None and data is not self.data:
            self.prepare_data(data)
            self._compile_programs()
        with cpu_kernels(self.use_cpu_kernels):
            return self._evaluate()

    def _evaluate(self):
        # One call per batch (a loop inside XLA runs slowly on CPU); the sums stay on the device.
        # They start from zeros shaped like what validation_step plots (traced, not compiled), so
        # that every batch runs the same program.
        shapes = jax.eval_shape(self._batch_sums, self.state, self.val_arrays, self.val_mask, 0)
        totals = self.parallel.replicate(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
        for index in range(self.num_val_batches):
            totals = self._eval_batch(self.state, self.val_arrays, self.val_mask, index, totals)
        return {key: float(to_host(value)) / self.num_val_examples for (key, _), value in totals.items()}


# A loss level this many times the lowest one before it, and LOSS_MARGIN above it, diverges.
LOSS_JUMP, LOSS_MARGIN = 2.0, 0.5
ACCURACY_DROP = 0.15  # a validation accuracy this far below its best has collapsed


def divergence(levels):
    """(latest, lowest) when the latest training-loss level diverges from the earlier ones, else None.

    `levels` are the median training losses of the stretches the host reads, oldest first:
    half an epoch each at the book's plotting cadence, and an epoch's mean for each epoch of
    a resumed run. The latest level diverges when it is more than LOSS_JUMP times the lowest
    level before it and more than LOSS_MARGIN above it: a loss that climbs far above where it
    had come down to. Medians ignore single spikes; the margin keeps a loss that is already
    small from counting for rising from 0.01 to 0.03. A curve still on its way down, however
    noisy, never does.
    """
    if len(levels) < 2:
        return None
    latest, lowest = levels[-1], min(levels[:-1])
    return (latest, lowest) if latest > LOSS_JUMP * lowest and latest > lowest + LOSS_MARGIN else None


def equal_chunks(steps, most=AUTO_STEPS_PER_DISPATCH):
    """Steps per chunk: the most, up to `most`, that cut `steps` into equal chunks, if that is
    at least 8 (or all of them); else `most`, and a shorter last chunk."""
    divisor = max(d for d in range(1, most + 1) if steps % d == 0)
    return divisor if divisor >= 8 or divisor == steps else min(most, steps)


def matmul_flops(jaxpr):
    """Floating-point operations of the matrix products and convolutions in a jaxpr (2 per
    multiply-add), inner jaxprs included: what decides a step's time on an accelerator.

    Every tap of a kernel counts, over padding and over the zeros that strided convolutions'
    gradients insert too, so this is an upper bound: for the chapters' steps 3-33% above XLA's
    cost analysis, which a program offers before compiling only on some backends (not
    through the PJRT plugins that run GPUs).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            outputs = math.prod(eqn.outvars[0].aval.shape)
            if name == "dot_general":
                (contracting, _), _ = eqn.params["dimension_numbers"]
                total += 2 * outputs * math.prod(lhs[d] for d in contracting)
            else:  # each output sums the kernel's taps over its input features
                total += 2 * outputs * math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for value in eqn.params.values():
            for inner in value if isinstance(value, list | tuple) else [value]:
                if hasattr(inner, "eqns") or hasattr(getattr(inner, "jaxpr", None), "eqns"):
                    total += repeat * matmul_flops(inner)
    return total


class _Limited:
    """The first `limit` batches of a loader (all when `limit` is None), as often as iterated."""

    def __init__(self, loader, limit):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        return itertools.islice(self.loader, self.limit)

    def __len__(self):
        return len(self.loader) if self.limit is None else min(len(self.loader), self.limit)
