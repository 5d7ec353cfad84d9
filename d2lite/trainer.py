"""Trainer: `fit` -> `prepare_data` / `prepare_model` -> the `fit_epoch` loop -> `evaluate`.

The data goes to the device once (`prepare_data`). Per fit two programs are compiled, both
with fixed shapes, from the pure functions `train_chunk` and `batch_sums` below:
- `train_chunk` runs a few training steps: each gathers a batch from the resident arrays by
  index, preprocesses it, runs the model's `training_step` and applies the optax update. What
  a step passes to `model.plot` comes back as outputs; the host reads them in bulk when a
  point of the live plot is due and replays them through `model.plot`, as the book's loop
  would have called it, so no step waits for the host.
- `batch_sums` runs the model's `validation_step` on each example of a validation batch
  (`vmap`) and sums what it plots, masked: the validation set is padded to whole batches
  once, so every example counts exactly once.
Epochs differ only in traced values (the permutation, the chunk start): nothing recompiles.

Two seams reach everything else, which lives in d2lite's sub-packages:
- `Callback`s act on the host around the loop: the progress line, the stop on Ctrl-C, run
  directories with checkpoints and exact resume, the guards against a diverging loss.
- `StepTransform`s act inside the jitted programs, composed when they are built: devices and
  sharding, bfloat16, the modern recipe, the CPU stand-ins for slow XLA:CPU kernels.
The constructor's shorthands (`run_dir=`, `precision=`, `recipe=`, ...) build both; d2lite's
`__init__` installs the function that does (`Trainer.defaults`), so this file imports none
of that layer.
"""

import contextlib
import dataclasses
import itertools
import math
import os
import sys
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
from .errors import D2LiteError
from .hparams import HyperParameters
from .module import Classifier, for_evaluation, input_error, recording_plots

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
    recipe, the average of the weights and the label smoothing of the loss."""

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


@dataclasses.dataclass
class Snapshot:
    """What a fit needs to go on from where it is; the epoch and the position in it are the
    state's step."""

    state: TrainState
    shuffle_key: jax.Array
    history: list  # one record per finished epoch
    epoch_losses: list  # the training losses of the current epoch read so far
    epoch_seconds: float = 0.0  # training seconds of the current epoch so far
    seconds: float = 0.0  # training seconds of the run so far (its wall_time)


class Callback:
    """What acts around the loop, on the host. Every hook is optional; hooks run in list order.

    on_fit_start(trainer, snapshot): the state exists; return a Snapshot to go on from another
        (a run directory's resume), or None.
    on_epoch_start(trainer): before the epoch's first dispatch.
    should_stop(trainer, read_point): before each dispatch; True stops between two steps.
        `read_point` is True where every process reads its losses (a plot point, an epoch end).
    on_dispatch(trainer, losses): a chunk of steps finished; `losses` stay on the device.
    on_read(trainer, losses): the host read these training losses (NumPy), in order: a stretch
        of the epoch's steps, before they are plotted.
    on_epoch_end(trainer, record): the epoch's record, just added to `trainer.history`.
    on_stop(trainer, snapshot): a stop was agreed; return where the state was saved, or None.
    on_fit_end(trainer, error): always, last; `error` is what stopped the fit (None when it
        ended); return an exception to raise in its place, or None.
    """

    def on_fit_start(self, trainer, snapshot):
        return None

    def on_epoch_start(self, trainer):
        pass

    def should_stop(self, trainer, read_point):
        return False

    def on_dispatch(self, trainer, losses):
        pass

    def on_read(self, trainer, losses):
        pass

    def on_epoch_end(self, trainer, record):
        pass

    def on_stop(self, trainer, snapshot):
        return None

    def on_fit_end(self, trainer, error):
        return None


class StepTransform:
    """What acts inside the jitted programs, composed in list order when the Trainer builds them.

    Each method's default leaves its input as it is.
    """

    def optimizer(self, tx, trainer):  # the model's optax transformation
        return tx

    def initial_key(self, key):  # the key that draws the initial parameters
        return key

    def initial_state(self, state, trainer):  # the TrainState before the first step
        return state

    def apply(self, apply_fn, training):  # the model's apply function, in training or evaluation
        return apply_fn

    def augment(self, batch, key):  # a training batch, after `preprocess`
        return batch

    def update(self, after, before):  # the state after each step, and before it
        return after

    def evaluation_state(self, state):  # the state evaluation uses
        return state

    def place(self, tree):  # host arrays onto the devices
        return tree

    def split(self, x):  # inside jit: a batch's arrays over the devices
        return x

    def keep(self, tree):  # inside jit: the state's placement from one call to the next
        return tree

    def tracing(self):  # a context entered while the programs are traced
        return contextlib.nullcontext()

    def dispatch_steps(self, trainer):  # steps per call under steps_per_dispatch="auto", or None
        return None


def _compose(transforms, method, value, *args):
    for transform in transforms:
        value = getattr(transform, method)(value, *args)
    return value


@dataclasses.dataclass(frozen=True)
class Resident:
    """The data on the device: training and validation arrays, the validation set padded to
    whole batches with a mask that keeps the padding out of the means, and the counts."""

    train: tuple
    val: tuple
    val_mask: jax.Array
    num_train_examples: int
    num_val_examples: int
    num_train_batches: int  # the last partial batch is dropped
    num_val_batches: int


# ------------------------------------------------------------------ the jitted programs
def train_step(state, arrays, indices, *, model, preprocess, prepare_batch, transforms):
    """One training step on the batch of `arrays` at `indices`; (new state, (loss, plotted))."""
    indices = _compose(transforms, "split", indices)  # each device gathers and runs its own slice
    batch = prepare_batch(preprocess(tuple(a[indices] for a in arrays)))
    step_key = jax.random.fold_in(state.dropout_rng, state.step)
    batch = _compose(transforms, "augment", batch, jax.random.fold_in(step_key, 1))
    batch = jax.tree.map(lambda x: _compose(transforms, "split", x), batch)
    with recording_plots() as plotted:
        value, grads = model.training_step(state.params, batch, state.replace(dropout_rng=step_key))
    # The book's Module returns the loss, its Classifier (loss, variable updates).
    loss, updates = value if isinstance(value, tuple) else (value, {})
    new = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return _compose(transforms, "update", new, state), (loss, plotted)


def train_chunk(state, arrays, order, start, *, num_steps, unroll, step):
    """`num_steps` training steps from row `start` of the epoch's `order` of batches."""
    indices = lax.dynamic_slice_in_dim(order, start, num_steps)
    if num_steps == 1:
        state, outputs = step(state, arrays, indices[0])
        outputs = jax.tree.map(lambda x: x[None], outputs)
    else:  # unrolled on CPU, whose loops run ~3x slower than straight code; GPUs loop fine
        state, outputs = lax.scan(lambda s, i: step(s, arrays, i), state, indices, unroll=unroll)
    return state, outputs


def batch_sums(state, arrays, mask, index, *, model, preprocess, prepare_batch, transforms, batch_size):
    """The masked sums of what `validation_step` plots over validation batch `index`."""
    split = lambda x: _compose(transforms, "split", x)  # noqa: E731
    rows = tuple(split(lax.dynamic_slice_in_dim(a, index * batch_size, batch_size)) for a in arrays)
    weights = split(lax.dynamic_slice_in_dim(mask, index * batch_size, batch_size))

    def plotted_for(example):  # a batch of one: what the step plots is this example's
        with recording_plots() as plotted:
            model.validation_step(state.params, tuple(a[None] for a in example), state)
        return plotted

    values = jax.vmap(plotted_for)(tuple(prepare_batch(preprocess(rows))))
    return {k: (v.reshape(batch_size, -1).mean(1) * weights).sum() for k, v in values.items()}


def to_host(array):
    """A NumPy copy of a replicated array (one shard of it, also when other hosts hold the rest)."""
    return np.asarray(array.addressable_data(0) if isinstance(array, jax.Array) else array)


class Trainer(HyperParameters):
    """Fit a `Module` to a `DataModule`: `Trainer(max_epochs=10).fit(model, data)`.

    `num_gpus` is accepted for the book's code (`gpus` lists those GPUs) but picks no devices:
    the Trainer trains data-parallel on all of `devices` (default: `jax.devices()`), each
    batch split evenly over them. `precision="bfloat16"` computes forward and backward passes
    in bfloat16 around float32 state. `steps_per_dispatch` runs several steps per call, for
    small models that Python would otherwise slow down ("auto": 1 on a CPU, up to 32 on an
    accelerator for a light step). `limit_train_batches`/`limit_val_batches` shorten epochs;
    D2LITE_FAST_DEV_RUN=N (as Lightning's `fast_dev_run`) makes every fit one epoch of at most
    N training and N validation batches, a notebook's included.

    Without `run_dir` a fit keeps its results in memory and shows the live plot in a notebook.
    With `run_dir` it is a recorded run (d2lite/runs): the plot (unless `plot=False`),
    config.json, metrics.csv and a checkpoint after every epoch (the newest `keep_checkpoints`
    kept). `resume=True` continues the run in `run_dir`; `resume=PATH` the run directory or
    checkpoint PATH. Ctrl-C, SIGTERM or SIGUSR1 stops between two steps, saves a checkpoint when
    there is a run directory, and raises `TrainingInterrupted`. A non-finite training loss stops
    the fit; a diverging one is reported (`stop_on_divergence=True`: stops). `recipe` adds what
    the book leaves out (d2lite/recipe). `callbacks` adds callbacks of your own (`Callback`).
    """

    defaults = None  # (trainer) -> (callbacks, transforms) from the shorthands: set by d2lite/__init__

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
        callbacks=(),
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
        self.save_hyperparameters(ignore=["callbacks"])
        self.gpus = [book.gpu(i) for i in range(min(num_gpus, book.num_gpus()))]
        made = type(self).defaults(self) if type(self).defaults else ([], [])
        self.callbacks, self.transforms = made[0] + list(callbacks), made[1]
        self.state, self.history = None, []

    @property
    def num_train_examples(self):
        return self.resident.num_train_examples

    @property
    def num_val_examples(self):
        return self.resident.num_val_examples

    @property
    def run_path(self):
        """The folder of the run directory that records the fit, or None."""
        return next((c.run_path for c in self.callbacks if getattr(c, "run_path", None)), None)

    # ----------------------------------------------------------------------------- set-up
    def prepare_data(self, data):
        """The book's loaders and batch counts, and the data on the device (returned)."""
        self.data, self.batch_size = data, data.batch_size
        train, val = data.arrays(True), data.arrays(False)
        if self.batch_size > len(train[-1]):
            raise D2LiteError(
                f"batch_size {self.batch_size} (--batch-size) is larger than the {len(train[-1])} "
                f"training examples: use a batch size of at most {len(train[-1])}"
            )
        self.unroll_chunks = self.devices_in_use()[0].platform == "cpu"  # see train_chunk
        # The book's loaders, for a fit_epoch of the reader's own; ours reads resident arrays.
        self.train_dataloader = _Limited(data.train_dataloader(), self.limit_train_batches)
        self.val_dataloader = _Limited(data.val_dataloader(), self.limit_val_batches)
        self.num_train_batches = min(len(train[-1]) // self.batch_size, self.limit_train_batches or math.inf)
        self.num_val_batches = min(
            math.ceil(len(val[-1]) / self.batch_size), self.limit_val_batches or math.inf
        )
        num_val = min(len(val[-1]), self.num_val_batches * self.batch_size)
        padded = self.num_val_batches * self.batch_size
        val = tuple(np.pad(a[:num_val], [(0, padded - num_val)] + [(0, 0)] * (a.ndim - 1)) for a in val)
        place = lambda tree: _compose(self.transforms, "place", tree)  # noqa: E731
        mask = np.arange(padded) < num_val
        return Resident(
            place(train),
            place(val),
            place(mask),
            len(train[-1]),
            num_val,
            self.num_train_batches,
            self.num_val_batches,
        )

    def prepare_model(self, model):
        model.trainer = self  # model.plot() reads the batch counters
        self.model, self.eval_model = model, for_evaluation(model)
        self.board = model.board
        self.board.xlim = [0, self.max_epochs]
        self.board.display_handle = None  # in a notebook, each fit plots in its own cell

    def prepare_batch(self, batch):
        """A batch as the model takes it, inside the jitted step (the data is on the device already)."""
        return batch

    def init_state(self, key):
        """The initial TrainState, drawn from `key` in one jitted program."""
        arrays = self.resident.train

        def first_inputs(arrays):
            return self.data.preprocess(tuple(a[: self.batch_size] for a in arrays))[:-1]

        def initial_variables(key, arrays):  # one program, not a dozen small eager ones
            params_key, dropout_key, init_dropout_key = jax.random.split(key, 3)
            rngs = {
                "params": _compose(self.transforms, "initial_key", params_key),
                "dropout": init_dropout_key,
            }
            return self.model.apply_init(first_inputs(arrays), key=rngs), dropout_key

        inputs = jax.eval_shape(first_inputs, arrays)
        try:
            variables, dropout_key = jax.jit(initial_variables)(key, arrays)
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
        tx = _compose(self.transforms, "optimizer", self.model.configure_optimizers(), self)
        if self.gradient_clip_val > 0:  # the book's JAX Trainer accepts this and ignores it
            tx = optax.chain(optax.clip_by_global_norm(self.gradient_clip_val), tx)
        state = TrainState.create(
            apply_fn=_compose(self.transforms, "apply", self.model.apply, True),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            dropout_rng=dropout_key,
            tx=tx,
        )
        return _compose(self.transforms, "place", _compose(self.transforms, "initial_state", state, self))

    def evaluation_state(self, state):
        """`state` as evaluation uses it: the eval-mode model, and what the transforms change."""
        apply = _compose(self.transforms, "apply", self.eval_model.apply, False)
        return _compose(self.transforms, "evaluation_state", state.replace(apply_fn=apply))

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

    def compile_programs(self):
        """Jit the epoch's order of batches, the training chunk and the validation sums."""
        resident, batch_size, transforms = self.resident, self.batch_size, self.transforms
        common = dict(model=self.model, preprocess=self.data.preprocess, prepare_batch=self.prepare_batch)

        def epoch_order(key, epoch):
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), resident.num_train_examples)
            return perm[: self.num_train_batches * batch_size].reshape(self.num_train_batches, batch_size)

        step = _bind(train_step, **common, transforms=transforms)

        def chunk(state, arrays, order, start, num_steps):
            state, outputs = train_chunk(
                state,
                arrays,
                order,
                start,
                num_steps=num_steps,
                unroll=num_steps if self.unroll_chunks else 1,
                step=step,
            )
            return _compose(transforms, "keep", state), outputs

        eval_model = self.eval_model
        sums = jax.jit(
            lambda state, arrays, mask, index: batch_sums(
                self.evaluation_state(state),
                arrays,
                mask,
                index,
                **{**common, "model": eval_model},
                transforms=transforms,
                batch_size=batch_size,
            )
        )  # jitted on its own too: `evaluate` traces it for the shapes of the sums, once

        def eval_batch(state, arrays, mask, index, totals):
            return jax.tree.map(jnp.add, totals, sums(state, arrays, mask, index))

        self.epoch_order = jax.jit(epoch_order)
        self.train_chunk = jax.jit(chunk, donate_argnums=0, static_argnames="num_steps")
        self.eval_batch, self.batch_sums = jax.jit(eval_batch, donate_argnums=4), sums

    def devices_in_use(self):
        return list(self.devices) if self.devices else jax.devices()

    # -------------------------------------------------------------------------- training
    def fit(self, model, data, key=None):
        """Train `model` on `data` for `max_epochs`; the final TrainState is `self.state`."""
        self.resident = self.prepare_data(data)
        self.prepare_model(model)
        key = jax.random.PRNGKey(self.seed) if key is None else key
        init_key, shuffle_key = jax.random.split(key)
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        self.state, self.history, self.epoch_losses = None, [], []
        error = None
        try:
            state = self.init_state(init_key)
            self.compile_programs()
            self.dispatch_steps = self._dispatch_steps(state)
            snapshot = Snapshot(state, _compose(self.transforms, "place", shuffle_key), [], [])
            for callback in self.callbacks:
                snapshot = callback.on_fit_start(self, snapshot) or snapshot
            self._go_on_from(snapshot)
            with self.tracing():
                for epoch in range(self.epoch, self.max_epochs):
                    self.epoch = epoch
                    self.fit_epoch()
                    if self._should_stop(read_point=True):
                        self._stop(f"after epoch {self.epoch + 1}")
        except BaseException as raised:
            error = raised
        for callback in self.callbacks:
            replaced = callback.on_fit_end(self, error)
            if replaced is not None and replaced is not error:
                replaced.__cause__, error = error, replaced
        if error is not None:
            raise error

    def _go_on_from(self, snapshot):
        self.state, self.shuffle_key = snapshot.state, snapshot.shuffle_key
        self.history, self.epoch_losses = list(snapshot.history), list(snapshot.epoch_losses)
        self.earlier_sessions_time, self._session_started = snapshot.seconds, time.perf_counter()
        self._epoch_seconds = snapshot.epoch_seconds  # of an epoch resumed midway
        self.epoch, position = divmod(int(to_host(self.state.step)), self.num_train_batches)
        assert position == len(self.epoch_losses), "a snapshot's losses are those of its epoch so far"
        self.train_batch_idx = self.epoch * self.num_train_batches + position
        self.val_batch_idx = self.epoch * self.num_val_batches

    def place(self, tree):
        """Host arrays where the transforms put the state (every device, by default)."""
        return _compose(self.transforms, "place", tree)

    def snapshot(self):
        seconds = (
            time.perf_counter() - self._epoch_started + self._epoch_seconds if self.epoch_losses else 0.0
        )
        return Snapshot(
            self.state, self.shuffle_key, self.history, self.epoch_losses, seconds, self.wall_time()
        )

    def _dispatch_steps(self, state):
        if self.steps_per_dispatch != "auto":
            return self.steps_per_dispatch
        self.state = state  # the transforms may trace a step with it
        return next((n for t in self.transforms if (n := t.dispatch_steps(self))), 1)

    def tracing(self):
        """The transforms' contexts for tracing the programs (the CPU stand-ins)."""
        stack = contextlib.ExitStack()
        for transform in self.transforms:
            stack.enter_context(transform.tracing())
        return stack

    def fit_epoch(self):
        """Train one epoch, hand what the steps plotted to `model.plot`, then validate."""
        for callback in self.callbacks:
            callback.on_epoch_start(self)
        started = self._epoch_started = time.perf_counter()
        order = self.epoch_order(self.shuffle_key, self.epoch)
        plot_every = max(1, int(self.num_train_batches / self.model.plot_train_per_epoch))
        pending = []  # the outputs of dispatched chunks, not yet read by the host
        for start in range(len(self.epoch_losses), self.num_train_batches, self.dispatch_steps):
            # A plot point is due: the host reads the chunks before this one. Never at the
            # epoch's first dispatch.
            read_point = start // plot_every > len(self.epoch_losses) // plot_every
            if self._should_stop(read_point):  # Ctrl-C or SIGTERM: stop here, between two steps
                with self.board.held():  # the picture shows every step read
                    self._read(pending)
                self._stop(f"in epoch {self.epoch + 1} after step {start} of {self.num_train_batches}")
            num_steps = min(self.dispatch_steps, self.num_train_batches - start)
            self.state, outputs = self.train_chunk(
                self.state, self.resident.train, order, start, num_steps=num_steps
            )
            pending.append(outputs)
            if len(pending) > 1:
                # Wait for the chunk before this one: the device stays busy with this one, and
                # the host never runs far ahead.
                pending[-2][0].block_until_ready()
                for callback in self.callbacks:
                    callback.on_dispatch(self, pending[-2][0])
                if read_point:
                    self._read(pending[:-1])
                    del pending[:-1]
        with self.board.held():  # the epoch's last points, training and validation, in one picture
            self._read(pending)
            if pending:
                for callback in self.callbacks:
                    callback.on_dispatch(self, pending[-1][0])
            self.train_batch_idx = (self.epoch + 1) * self.num_train_batches
            seconds = time.perf_counter() - started + self._epoch_seconds
            record = {"epoch": self.epoch + 1, "step": self.train_batch_idx}
            record["train_loss"] = float(np.mean(self.epoch_losses))
            metrics = sorted(self.evaluate().items(), key=lambda item: item[0] != "loss")  # loss first
            for key, value in metrics:
                record["val_" + key] = value
                self.board.draw(self.epoch + 1, value, "val_" + key)  # exact means: one point an epoch
        self.val_batch_idx += self.num_val_batches
        examples_per_s = self.num_train_batches * self.batch_size / seconds
        record.update(examples_per_s=examples_per_s, seconds=seconds, wall_time=self.wall_time())
        self.history.append(record)
        self.epoch_losses, self._epoch_seconds = [], 0.0
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)

    def _read(self, chunks):
        """Copy finished chunks to the host: their losses to the callbacks and `epoch_losses`,
        what their steps plotted to `model.plot`, each step at its place in the epoch."""
        if not chunks:
            return
        chunks = [jax.tree.map(to_host, chunk) for chunk in chunks]
        for callback in self.callbacks:
            callback.on_read(self, np.concatenate([losses for losses, _ in chunks]))
        with self.board.held(unless_drawn_within=MID_EPOCH_PICTURE_SECONDS):  # see ProgressBoard.held
            for losses, plotted in chunks:
                for i, loss in enumerate(losses):
                    self.train_batch_idx = self.epoch * self.num_train_batches + len(self.epoch_losses)
                    for (key, train), values in plotted.items():
                        self.model.plot(key, values[i], train)
                    self.epoch_losses.append(float(loss))

    def _should_stop(self, read_point):
        return any([callback.should_stop(self, read_point) for callback in self.callbacks])  # all vote

    def _stop(self, where):
        saved = [c.on_stop(self, self.snapshot()) for c in self.callbacks]
        checkpoint = next((s for s in saved if s is not None), None)
        if checkpoint is None:
            raise TrainingInterrupted(f"interrupted {where} (no run directory, so no checkpoint)")
        raise TrainingInterrupted(
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
            self.resident = self.prepare_data(data)
            self.compile_programs()
        resident = self.resident
        with self.tracing():
            # The sums start from zeros shaped like what validation_step plots (traced, not
            # compiled), so that every batch runs the same program; they stay on the device.
            args = (self.state, resident.val, resident.val_mask)
            shapes = jax.eval_shape(self.batch_sums, *args, 0)
            totals = _compose(
                self.transforms, "place", jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
            )
            for index in range(resident.num_val_batches):  # one call a batch: XLA:CPU loops run slowly
                totals = self.eval_batch(*args, index, totals)
        return {key: float(to_host(value)) / resident.num_val_examples for (key, _), value in totals.items()}


def _bind(function, **static):
    return lambda *args: function(*args, **static)


class _Limited:
    """The first `limit` batches of a loader (all when `limit` is None), as often as iterated."""

    def __init__(self, loader, limit):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        return itertools.islice(self.loader, self.limit)

    def __len__(self):
        return len(self.loader) if self.limit is None else min(len(self.loader), self.limit)
