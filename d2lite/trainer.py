"""Trainer: the data on the device once, one jitted step, metrics read only when plotted.

Per fit there are two compiled programs, both with fixed shapes:
- `train_chunk` runs `steps_per_dispatch` training steps (unrolled). Each step gathers
  a batch from the resident arrays by index, preprocesses it (scale, resize), runs the
  model's `training_step` (forward, loss, gradients, BatchNorm statistics, a fresh dropout
  key), clips gradients and applies the optax update. The state buffers are donated.
- `eval_batch` adds one batch's masked per-example metrics to running sums on the device;
  the validation set is padded to whole batches once, so every example counts exactly once.
Epochs differ only in traced values (the permutation, the chunk start), so nothing
recompiles after the first epoch.
"""
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax import lax

from .board import ProgressBoard, ProgressLine
from .errors import D2LiteError
from .hparams import HyperParameters
from .module import Classifier, for_evaluation, input_error


class TrainState(train_state.TrainState):
    """Parameters, optimizer state, BatchNorm statistics and the dropout key stream."""

    batch_stats: Any = None
    dropout_rng: jax.Array = None


class Trainer(HyperParameters):
    """Fit a `Module` to a `DataModule`: `Trainer(max_epochs=10).fit(model, data)`.

    `num_gpus` is accepted for the book's code and ignored: JAX uses its default devices.
    `steps_per_dispatch` runs several steps per call, for small models that Python would
    otherwise slow down. `limit_train_batches`/`limit_val_batches` shorten epochs for smoke
    runs. The live plot is rewritten in `out_dir` (default `runs/<model class>`).
    """

    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0, *, seed=0, out_dir=None,
                 steps_per_dispatch=1, limit_train_batches=None, limit_val_batches=None,
                 progress=True, plot=True):  # fmt: skip
        positive_ints = {"max_epochs": max_epochs, "steps_per_dispatch": steps_per_dispatch}
        positive_ints.update(limit_train_batches=limit_train_batches or 1,
                             limit_val_batches=limit_val_batches or 1)  # fmt: skip
        for name, value in positive_ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise D2LiteError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(gradient_clip_val, int | float) or gradient_clip_val < 0:
            raise D2LiteError(
                f"gradient_clip_val must be >= 0 (0 turns clipping off), got {gradient_clip_val!r}"
            )
        self.save_hyperparameters()
        self.state = None
        self.history = []

    # ----------------------------------------------------------------------------- set-up
    def prepare_data(self, data):
        self.data = data
        batch_size = data.batch_size
        train = data.arrays(True)
        val = data.arrays(False)
        num_train = len(train[-1])
        if batch_size > num_train:
            raise D2LiteError(
                f"batch_size {batch_size} is larger than the {num_train} training examples: "
                f"use a batch_size of at most {num_train}"
            )
        self.batch_size = batch_size
        self.num_train_batches = num_train // batch_size  # the last partial batch is dropped
        if self.limit_train_batches:
            self.num_train_batches = min(self.num_train_batches, self.limit_train_batches)
        self.num_train_examples = num_train
        self.train_arrays = jax.device_put(train)

        # Pad validation to whole batches once; the mask keeps the padding out of the means.
        self.num_val_batches = math.ceil(len(val[-1]) / batch_size)
        if self.limit_val_batches:
            self.num_val_batches = min(self.num_val_batches, self.limit_val_batches)
        self.num_val_examples = min(len(val[-1]), self.num_val_batches * batch_size)
        padded = self.num_val_batches * batch_size
        val = tuple(a[: self.num_val_examples] for a in val)
        self.val_arrays = jax.device_put(tuple(_pad_rows(a, padded) for a in val))
        self.val_mask = jax.device_put(np.arange(padded) < self.num_val_examples)

    def prepare_model(self, model):
        object.__setattr__(model, "trainer", self)  # the book's model.plot() reads model.trainer
        self.model = model
        self.eval_model = for_evaluation(model)
        out_dir = self.out_dir or f"runs/{type(model).__name__.lower()}"
        self.board = ProgressBoard(xlabel="epoch", xlim=[0, self.max_epochs],
                                   save_dir=out_dir if self.plot else None)  # fmt: skip

    def init_state(self, key):
        params_key, dropout_key, init_dropout_key = jax.random.split(key, 3)
        # Parameters come from XLA's RngBitGenerator: threefry, drawn once per parameter,
        # makes the init program compile 3-4x slower on CPU (14 s for a ResNet-18).
        params_key = jax.random.wrap_key_data(jnp.tile(jax.random.key_data(params_key), 2), impl="rbg")
        example = self.data.preprocess(tuple(a[: self.batch_size] for a in self.train_arrays))
        inputs = example[:-1]
        rngs = {"params": params_key, "dropout": init_dropout_key}
        try:
            variables = jax.jit(lambda rngs, inputs: self.model.apply_init(inputs, key=rngs))(
                rngs, inputs
            )
            outputs, intermediates = jax.eval_shape(
                lambda v, x: self.eval_model.apply(v, *x, capture_intermediates=True,
                                                   mutable=["intermediates"]),
                variables, inputs)  # fmt: skip
        except (TypeError, ValueError, ZeroDivisionError) as error:
            raise input_error(self.model, inputs[0].shape, error) from error
        self._check_shapes(inputs, outputs, intermediates)
        tx = self.model.configure_optimizers()
        if self.gradient_clip_val > 0:  # the book's JAX Trainer accepts this and ignores it
            tx = optax.chain(optax.clip_by_global_norm(self.gradient_clip_val), tx)
        return TrainState.create(
            apply_fn=self.model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            dropout_rng=dropout_key,
            tx=tx,
        )

    def _check_shapes(self, inputs, outputs, intermediates):
        name = type(self.model).__name__
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
            if 0 in leaf.shape:
                layer = jax.tree_util.keystr(path[1:-1]) or "a layer"
                problem = f"{layer} outputs shape {leaf.shape}"
                raise input_error(self.model, inputs[0].shape, problem)
        num_classes = getattr(self.data, "num_classes", None)
        if isinstance(self.model, Classifier) and num_classes:
            if outputs.ndim != 2 or outputs.shape[-1] != num_classes:
                raise D2LiteError(
                    f"{name} outputs shape {outputs.shape} but {type(self.data).__name__} has "
                    f"{num_classes} classes: make the last layer output {num_classes} values "
                    f"(e.g. num_classes={num_classes})"
                )

    # ------------------------------------------------------------------ compiled programs
    def _compile_programs(self):
        model, preprocess = self.model, self.data.preprocess
        batch_size, num_batches = self.batch_size, self.num_train_batches

        def epoch_order(key, epoch):
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), self.num_train_examples)
            return perm[: num_batches * batch_size].reshape(num_batches, batch_size)

        def train_step(state, arrays, indices):
            batch = preprocess(tuple(a[indices] for a in arrays))
            dropout_rng = jax.random.fold_in(state.dropout_rng, state.step)
            (loss, updates), grads = model.training_step(
                state.params, batch, state.replace(dropout_rng=dropout_rng)
            )
            batch_stats = updates.get("batch_stats", state.batch_stats)
            return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss

        def train_chunk(state, arrays, order, start, num_steps):
            indices = lax.dynamic_slice_in_dim(order, start, num_steps)
            if num_steps == 1:
                state, loss = train_step(state, arrays, indices[0])
                return state, loss[None]
            # Unrolled: XLA's CPU backend runs a loop body about 3x slower than the same
            # step outside a loop.
            return lax.scan(lambda s, i: train_step(s, arrays, i), state, indices,
                            unroll=num_steps)  # fmt: skip

        eval_apply = self.eval_model.apply

        def eval_batch(state, arrays, mask, index, totals):
            rows = [lax.dynamic_slice_in_dim(a, index * batch_size, batch_size) for a in arrays]
            weights = lax.dynamic_slice_in_dim(mask, index * batch_size, batch_size)
            eval_state = state.replace(apply_fn=eval_apply)
            metrics = model.validation_step(state.params, preprocess(tuple(rows)), eval_state)
            sums = {k: (v.reshape(batch_size, -1).mean(1) * weights).sum() for k, v in metrics.items()}
            return sums if totals is None else jax.tree.map(jnp.add, totals, sums)

        self._epoch_order = jax.jit(epoch_order)
        self._train_chunk = jax.jit(train_chunk, donate_argnums=0, static_argnames="num_steps")
        self._eval_batch = jax.jit(eval_batch, donate_argnums=4)

    # -------------------------------------------------------------------------- training
    def fit(self, model, data, key=None):
        """Train `model` on `data` for `max_epochs`; return the final TrainState."""
        self.prepare_data(data)
        self.prepare_model(model)
        key = jax.random.PRNGKey(self.seed) if key is None else key
        init_key, self._shuffle_key = jax.random.split(key)
        self.state = self.init_state(init_key)
        self._compile_programs()
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        self.history = []
        self.progress_line = ProgressLine(self.max_epochs, self.num_train_batches, self.batch_size,
                                     stream=sys.stderr if self.progress else _Silent())  # fmt: skip
        try:
            for epoch in range(self.max_epochs):
                self.epoch = epoch
                self.fit_epoch()
        finally:
            self.progress_line.close()
        return self.state

    def fit_epoch(self):
        self.progress_line.start_epoch(self.epoch)
        started = time.perf_counter()
        order = self._epoch_order(self._shuffle_key, self.epoch)
        plot_every = max(1, self.num_train_batches // self.model.plot_train_per_epoch)
        losses, done, plotted = [], 0, 0  # `done`: steps known to have finished
        chunks = range(0, self.num_train_batches, self.steps_per_dispatch)
        for start in list(chunks) + [None]:
            if start is not None:
                num_steps = min(self.steps_per_dispatch, self.num_train_batches - start)
                self.state, chunk_losses = self._train_chunk(
                    self.state, self.train_arrays, order, start, num_steps=num_steps
                )
                losses.append(chunk_losses)
            # Wait for the chunk before the one just queued: the device stays busy while the
            # progress line reports finished work, and the host never runs far ahead.
            ready = losses[:-1] if start is not None else losses
            if not ready or sum(len(c) for c in ready) == done:
                continue
            ready[-1].block_until_ready()
            newly_done = sum(len(c) for c in ready) - done
            done += newly_done
            if done // plot_every > plotted:  # a plot point is due: read the losses
                values = np.concatenate([np.asarray(c) for c in ready])
                while (plotted + 1) * plot_every <= done:
                    plotted += 1
                    window = values[(plotted - 1) * plot_every : plotted * plot_every]
                    self.train_batch_idx = self.epoch * self.num_train_batches + plotted * plot_every
                    self.model.plot("loss", float(window.mean()), train=True)
            # The live line shows the latest loss; reading it costs a transfer, so only on a TTY.
            latest = float(np.asarray(ready[-1])[-1]) if self.progress_line.tty else None
            self.progress_line.advance(newly_done, loss=latest)
        self.train_batch_idx = (self.epoch + 1) * self.num_train_batches
        train_loss = float(np.mean(np.concatenate([np.asarray(c) for c in losses])))
        seconds = time.perf_counter() - started
        record = {"epoch": self.epoch + 1, "train_loss": train_loss}
        for name, value in self.evaluate().items():
            record["val_" + name] = value
            self.model.plot(name, value, train=False)
        self.val_batch_idx += self.num_val_batches
        record.update(seconds=seconds,
                      examples_per_s=self.num_train_batches * self.batch_size / seconds)  # fmt: skip
        self.history.append(record)
        self.progress_line.end_epoch({k: v for k, v in record.items() if k.startswith(("train", "val"))})
        if not math.isfinite(train_loss):
            raise D2LiteError(
                f"the training loss is {train_loss} in epoch {self.epoch + 1}: lower the learning "
                "rate or turn on gradient clipping"
            )

    def evaluate(self, data=None):
        """Mean validation metrics of the current state, over exactly every validation example.

        With `data`, evaluate on that data module's validation split instead (same batch size).
        """
        if self.state is None:
            raise D2LiteError("evaluate() needs a trained state: call trainer.fit(model, data) first")
        if data is not None and data is not self.data:
            self.prepare_data(data)
            self._compile_programs()
        # One call per batch (a loop inside XLA runs slowly on CPU); the sums stay on the
        # device until the end.
        totals = None
        for index in range(self.num_val_batches):
            totals = self._eval_batch(self.state, self.val_arrays, self.val_mask, index, totals)
        return {name: float(value) / self.num_val_examples for name, value in totals.items()}


def _pad_rows(array, rows):
    padding = [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, padding)


class _Silent:
    """A stream for ProgressLine when progress output is off."""

    def write(self, text):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False
