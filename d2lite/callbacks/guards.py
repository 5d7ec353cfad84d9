"""Guards: a non-finite loss stops the fit, a diverging one is reported (or stops it), and running
out of memory says what to change."""

import sys

import jax
import numpy as np

from ..errors import D2LiteError, first_line
from ..trainer import Callback

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


def learning_rate(model):
    lr = getattr(model, "lr", None)
    return f"learning rate (lr={lr:g})" if isinstance(lr, int | float) else "learning rate"


class Guards(Callback):
    """Stops at a non-finite training loss; reports a diverging loss or a collapsing validation
    accuracy once an epoch (`stop_on_divergence`: stops there, keeping the last checkpoint,
    which precedes it); turns running out of memory into advice.

    `progress` (a Progress callback) prints the warnings; `run` (a RunDirectory) names the
    last good checkpoint.
    """

    def __init__(self, stop_on_divergence=False, progress=None, run=None):
        self.stop_on_divergence, self.progress, self.run = stop_on_divergence, progress, run

    def on_fit_start(self, trainer, snapshot):
        self.loss_levels = None  # see `divergence`; a resumed run's start from its epochs' means
        self.reported = set()  # (loss or accuracy, epoch) of each warning

    def on_read(self, trainer, losses):
        if not np.isfinite(losses).all():  # on the host already: checking is free
            raise self.nonfinite_loss(trainer, np.concatenate([trainer.epoch_losses, losses]))
        if self.loss_levels is None:
            self.loss_levels = [record["train_loss"] for record in trainer.history]
        self.loss_levels.append(float(np.median(losses)))
        jump = divergence(self.loss_levels)
        if jump:
            latest, lowest = jump
            self.diverged(
                trainer,
                "loss",
                f"the training loss diverges in epoch {trainer.epoch + 1}: {latest:.4g} (median of its last "
                f"{len(losses)} steps), {latest / lowest:.1f}x its lowest level so far, {lowest:.4g}",
            )

    def on_epoch_end(self, trainer, record):
        """A validation accuracy more than ACCURACY_DROP below its best has collapsed."""
        earlier = [r for r in trainer.history[:-1] if r.get("val_acc") is not None]
        accuracy = record.get("val_acc")
        best = max(earlier, key=lambda r: r["val_acc"], default=None)
        if best and accuracy is not None and accuracy < best["val_acc"] - ACCURACY_DROP:
            self.diverged(
                trainer,
                "accuracy",
                f"the validation accuracy collapsed in epoch {trainer.epoch + 1}: {accuracy:.4f}, down from "
                f"{best['val_acc']:.4f} in epoch {best['epoch']}",
            )

    def last_checkpoint(self):
        return self.run and self.run.last_checkpoint()

    def diverged(self, trainer, kind, what):
        if (kind, trainer.epoch) in self.reported:
            return  # once an epoch is enough
        self.reported.add((kind, trainer.epoch))
        cause = f"the {learning_rate(trainer.model)} is likely too high"
        if self.stop_on_divergence:
            last = self.last_checkpoint()
            kept = f"; the last checkpoint, from before it, is {last}" if last else ""
            raise D2LiteError(f"{what}: {cause}; stopped (stop_on_divergence){kept}")
        text = f"warning: {what}: {cause} (stop_on_divergence=True (--stop-on-divergence) stops a run here)"
        self.progress.note(text) if self.progress else print(text, file=sys.stderr, flush=True)

    def nonfinite_loss(self, trainer, values):
        index = int(np.flatnonzero(~np.isfinite(values))[0])
        last, steps = self.last_checkpoint(), trainer.num_train_batches
        return D2LiteError(
            f"the training loss is {float(np.mean(values))} in epoch {trainer.epoch + 1}: lower the "
            f"{learning_rate(trainer.model)} or turn on gradient clipping (gradient_clip_val); it first "
            f"became {values[index]} at step {index + 1} of {steps} of the epoch "
            f"(training step {trainer.epoch * steps + index + 1})"
            + (f"; the last good checkpoint is {last}" if last else "")
        )

    def on_fit_end(self, trainer, error):
        if isinstance(error, MemoryError) or (
            isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)
        ):
            return out_of_memory(trainer, error)
        return None


def out_of_memory(trainer, error):
    device = trainer.devices_in_use()[0]
    memory = "host memory" if device.platform == "cpu" else f"{device.device_kind} memory"
    size = len(trainer.devices_in_use())  # a batch must still split over the devices
    smaller = max(size, trainer.batch_size // 2 // size * size)
    return D2LiteError(
        f"out of {memory} at batch size {trainer.batch_size} ({first_line(error, 120)}): try "
        f"batch_size={smaller} (--batch-size {smaller}), a smaller resize, or precision='bfloat16' "
        "(--precision bfloat16)"
    )
