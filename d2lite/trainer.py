"""Trainer: `fit` -> `prepare_data` / `prepare_model` -> the `fit_epoch` loop -> `evaluate`.

The data goes to the device once. Two programs are compiled per fit, with fixed shapes, from
the pure functions `train_chunk` (a few training steps: gather a batch by index, preprocess,
`training_step`, the optax update) and `batch_sums` (`validation_step` on each example of a
padded validation batch, masked, so that every example counts exactly once). What a step
passes to `model.plot` comes back as outputs; the host reads them in bulk when a point of the
live plot is due and replays them through `model.plot`, so no step waits for the host.
Epochs differ only in traced values (the permutation, the chunk start): nothing recompiles.

Everything else comes in through two seams: `Callback`s on the host around the loop (progress
line, signals, run directories, guards) and `StepTransform`s inside the jitted programs
(devices, bfloat16, the recipe, the CPU stand-ins). The constructor's shorthands build both
through `Trainer.defaults`, which d2lite's `__init__` installs: this file imports none of them.
"""

import contextlib
import dataclasses
import functools
import math
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
from .data import Limited
from .errors import D2LiteError, check_outputs, raise_traced
from .hparams import HyperParameters
from .module import Classifier, for_evaluation, recording_plots

MID_EPOCH_PICTURE_SECONDS = 2.0  # the live plot's mid-epoch pictures come at most this often


class TrainState(train_state.TrainState):
    """Parameters, optimizer state, BatchNorm statistics, an NNX model's other variables and the
    dropout key stream; with a
    recipe, the average of the weights and the label smoothing of the loss."""

    batch_stats: Any = None
    model_state: Any = None  # an NNX model's other variables (its Rngs' keys and counts), or None
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
    """What acts around the loop, on the host; every hook is optional, run in list order."""

    def on_fit_start(self, trainer, snapshot):  # the state exists; a Snapshot returned replaces it
        return None

    def on_epoch_start(self, trainer):
        pass

    def should_stop(self, trainer, read_point):  # before each dispatch: True stops between steps
        return False  # read_point: a plot point or an epoch end, the same steps on every process

    def on_dispatch(self, trainer, losses):  # a chunk of steps finished; its losses on the device
        pass

    def on_read(self, trainer, losses):  # the host read a stretch of training losses (NumPy)
        pass

    def on_epoch_end(self, trainer, record):  # the record was just added to trainer.history
        pass

    def on_stop(self, trainer, snapshot):  # a stop was agreed: where the snapshot was saved, or None
        return None

    def on_fit_end(self, trainer, error):  # always; an exception returned is raised instead
        return None


class StepTransform:
    """What acts inside the jitted programs, composed in list order when they are built; each
    method's default leaves its input as it is."""

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
    num_val_examples: int  # those of the `num_val_batches` batches: the batch counts are the book's


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
    new = state.apply_gradients(
        grads=grads,
        batch_stats=updates.get("batch_stats", state.batch_stats),
        model_state=updates.get("model_state", state.model_state),
    )
    return _compose(transforms, "update", new, state), (loss, plotted)


def train_chunk(state, arrays, order, start, *, num_steps, unrolled, step, transforms):
    """`num_steps` training `step`s from row `start` of the epoch's `order` of batches."""
    indices = lax.dynamic_slice_in_dim(order, start, num_steps)
    if num_steps == 1:
        state, outputs = step(state, arrays, indices[0])
        outputs = jax.tree.map(lambda x: x[None], outputs)
    else:  # unrolled on CPU, whose loops run ~3x slower than straight code; GPUs loop fine
        unroll = num_steps if unrolled else 1
        state, outputs = lax.scan(lambda s, i: step(s, arrays, i), state, indices, unroll=unroll)
    return _compose(transforms, "keep", state), outputs


def batch_sums(state, arrays, mask, index, *, model, preprocess, prepare_batch, transforms, batch_size):
    """The masked sums of what `validation_step` plots over validation batch `index`, with
    `state` as evaluation uses it (`Trainer.evaluation_state`)."""
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
        self.train_dataloader = Limited(data.train_dataloader(), self.limit_train_batches)
        self.val_dataloader = Limited(data.val_dataloader(), self.limit_val_batches)
        self.num_train_batches = min(len(train[-1]) // self.batch_size, self.limit_train_batches or math.inf)
        self.num_val_batches = min(
            math.ceil(len(val[-1]) / self.batch_size), self.limit_val_batches or math.inf
        )
        num_val = min(len(val[-1]), self.num_val_batches * self.batch_size)
        padded = self.num_val_batches * self.batch_size
        val = tuple(np.pad(a[:num_val], [(0, padded - num_val)] + [(0, 0)] * (a.ndim - 1)) for a in val)
        mask = np.arange(padded) < num_val
        return Resident(self.place(train), self.place(val), self.place(mask), len(train[-1]), num_val)

    def prepare_model(self, model):
        if not callable(getattr(model, "apply", None)):  # e.g. an NNX model handed to this face
            raise D2LiteError(
                f"{type(model).__name__} is not a Flax Linen module: an NNX model (the next edition's) "
                "trains with `from d2lite import nnx as d2l` and its d2l.Trainer"
            )
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

        def initial_variables(key, arrays, held):  # one program, not a dozen small eager ones
            params_key, dropout_key, init_dropout_key = jax.random.split(key, 3)
            if held is not None:  # copies: the state's buffers are donated, the model's must stay
                return jax.tree.map(jnp.copy, held), dropout_key
            params_key = _compose(self.transforms, "initial_key", params_key)
            rngs = {"params": params_key, "dropout": init_dropout_key}
            return self.model.apply_init(first_inputs(arrays), key=rngs), dropout_key

        inputs = jax.eval_shape(first_inputs, arrays)
        try:
            held = self.model.initial_variables()
            variables, dropout_key = jax.jit(initial_variables)(key, arrays, held)
            traced = functools.partial(
                self.eval_model.apply, capture_intermediates=True, mutable=["intermediates"]
            )
            outputs, intermediates = jax.eval_shape(lambda v, x: traced(v, *x), variables, inputs)
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise_traced(self.eval_model, inputs[0].shape, error)
        classifier = isinstance(self.model, Classifier)
        check_outputs(self.eval_model, self.data, inputs, outputs, intermediates, classifier)
        tx = _compose(self.transforms, "optimizer", self.model.configure_optimizers(), self)
        if self.gradient_clip_val > 0:  # the book's JAX Trainer accepts this and ignores it
            tx = optax.chain(optax.clip_by_global_norm(self.gradient_clip_val), tx)
        state = TrainState.create(
            apply_fn=_compose(self.transforms, "apply", self.model.apply, True),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            model_state=variables.get("model_state"),
            dropout_rng=dropout_key,
            tx=tx,
        )
        return self.place(_compose(self.transforms, "initial_state", state, self))

    def evaluation_state(self, state):
        """`state` as evaluation uses it: the eval-mode model, and what the transforms change."""
        apply = _compose(self.transforms, "apply", self.eval_model.apply, False)
        return _compose(self.transforms, "evaluation_state", state.replace(apply_fn=apply))

    def compile_programs(self):
        """Jit the epoch's order of batches, the training chunk and the validation sums."""
        batches, batch_size, transforms = self.num_train_batches, self.batch_size, self.transforms
        common = dict(
            preprocess=self.data.preprocess, prepare_batch=self.prepare_batch, transforms=transforms
        )

        def epoch_order(key, epoch):
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), self.resident.num_train_examples)
            return perm[: batches * batch_size].reshape(batches, batch_size)

        step = functools.partial(train_step, model=self.model, **common)
        chunk = functools.partial(train_chunk, step=step, unrolled=self.unroll_chunks, transforms=transforms)
        sums_of = functools.partial(batch_sums, model=self.eval_model, batch_size=batch_size, **common)
        # Jitted on its own too, on the training state: `evaluate` traces it for the shapes of the
        # sums once (an evaluation state's apply function is made anew at each call).
        sums = jax.jit(lambda state, *args: sums_of(self.evaluation_state(state), *args))

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
            snapshot = Snapshot(state, self.place(shuffle_key), [], [])
            for callback in self.callbacks:  # a run directory's resume hands back another snapshot
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
        seconds = time.perf_counter() - self._epoch_started + self._epoch_seconds if self.epoch_losses else 0
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
        self._each("on_epoch_start")
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
                self._each("on_dispatch", pending[-2][0].block_until_ready())
                if read_point:
                    self._read(pending[:-1])
                    del pending[:-1]
        with self.board.held():  # the epoch's last points, training and validation, in one picture
            self._read(pending)
            if pending:
                self._each("on_dispatch", pending[-1][0])
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
        self._each("on_epoch_end", record)

    def _read(self, chunks):
        """Copy finished chunks to the host: their losses to the callbacks and `epoch_losses`,
        what their steps plotted to `model.plot`, each step at its place in the epoch."""
        if not chunks:
            return
        chunks = [jax.tree.map(to_host, chunk) for chunk in chunks]
        self._each("on_read", np.concatenate([losses for losses, _ in chunks]))
        with self.board.held(unless_drawn_within=MID_EPOCH_PICTURE_SECONDS):  # see ProgressBoard.held
            for losses, plotted in chunks:
                for i, loss in enumerate(losses):
                    self.train_batch_idx = self.epoch * self.num_train_batches + len(self.epoch_losses)
                    for (key, train), values in plotted.items():
                        self.model.plot(key, values[i], train)
                    self.epoch_losses.append(float(loss))

    def _each(self, hook, *args):
        """Every callback's answer to `hook`, in list order."""
        return [getattr(callback, hook)(self, *args) for callback in self.callbacks]

    def _should_stop(self, read_point):
        return any(self._each("should_stop", read_point))  # every callback votes

    def _stop(self, where):
        checkpoint = next((s for s in self._each("on_stop", self.snapshot()) if s is not None), None)
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
            totals = self.place(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
            for index in range(self.num_val_batches):  # one call a batch: XLA:CPU loops run slowly
                totals = self.eval_batch(*args, index, totals)
        return {key: float(to_host(value)) / resident.num_val_examples for (key, _), value in totals.items()}
