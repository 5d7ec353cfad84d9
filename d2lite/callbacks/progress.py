"""The terminal progress line: a callback that reports each epoch as it trains."""

import sys
import time

from ..trainer import Callback, to_host


def _hms(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fmt(value):
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


class ProgressLine:
    """Terminal progress: a live '\\r' line on a TTY, plus exactly one summary line per epoch.

    In a log (not a TTY) the live line is written as a plain line every `log_interval`
    seconds instead, so a slow epoch still shows that it moves and when it will end.

    Hand-written rather than tqdm: we need the per-epoch summary line in logs and an ETA
    over all remaining epochs, which would mean fighting tqdm more than using it.
    """

    def __init__(
        self,
        total_epochs,
        steps_per_epoch,
        batch_size,
        stream=None,
        tty=None,
        clock=time.perf_counter,
        min_interval=0.1,
        log_interval=60.0,
    ):
        self.total_epochs, self.steps_per_epoch = total_epochs, steps_per_epoch
        self.batch_size = batch_size
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock, self.min_interval, self.log_interval = clock, min_interval, log_interval
        self.epoch = 0
        self._start = self._last_step_time = self._last_draw = None
        self._steps, self._loss, self._width = 0, None, 0

    def start_epoch(self, epoch):
        self.epoch, self._steps, self._loss = epoch, 0, None
        self._start = self._last_step_time = self.clock()
        self._last_draw = None

    def advance(self, steps, loss=None):
        if self._start is None:
            self.start_epoch(self.epoch)
        self._steps += steps
        self._last_step_time = now = self.clock()
        if loss is not None:
            self._loss = float(loss)
        done = self._steps >= self.steps_per_epoch
        if not self.tty:
            if not done and now - (self._last_draw or self._start) >= self.log_interval:
                self._last_draw = now
                self._write(self._live_text(), end="\n")
            return
        # Throttled so a fast loop does not spend its time writing to the terminal,
        # but the epoch's final step is always shown.
        if self._last_draw is not None and now - self._last_draw < self.min_interval and not done:
            return
        self._last_draw = now
        self._write(self._live_text())

    def end_epoch(self, metrics):
        now = self.clock()
        if self._start is None:
            self._start = self._last_step_time = now
        elapsed = now - self._start
        parts = [f"epoch {self.epoch + 1}/{self.total_epochs}"]
        parts += [f"{key} {_fmt(value)}" for key, value in metrics.items()]
        # Throughput counts training time only, so evaluation after the last step
        # does not make the model look slower than it trains.
        rate = self._rate()
        if rate is not None:
            parts.append(f"{rate:.0f} ex/s")
        parts.append(f"{elapsed:.1f} s")
        remaining = self.total_epochs - self.epoch - 1
        if remaining > 0:
            # The whole epoch (validation included) is the best guess for the next ones.
            parts.append(f"ETA {_hms(remaining * elapsed)}")
        self._write("  ".join(parts), end="\n")
        self._start = None

    def note(self, text):
        """A line of its own (a warning), below the live line, which is drawn again after it."""
        live = self._width
        self.close()
        self._write(text, end="\n")
        if live and self._start is not None:
            self._write(self._live_text())

    def close(self):
        if self._width:  # a live line is still open: do not leave the cursor on it
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def _rate(self):
        """Training examples per second in this epoch, or None before any timed step."""
        busy = self._last_step_time - self._start
        return self._steps * self.batch_size / busy if self._steps and busy > 0 else None

    def _live_text(self):
        total = max(self.steps_per_epoch, 1)
        filled = min(10, 10 * self._steps // total)
        text = (
            f"epoch {self.epoch + 1}/{self.total_epochs} [{'#' * filled}{'.' * (10 - filled)}]"
            f" {self._steps}/{self.steps_per_epoch}"
        )
        if self._loss is not None:
            text += f" loss {self._loss:.3f}"
        rate = self._rate()
        if rate is not None:
            left = max(total - self._steps, 0)
            left += (self.total_epochs - self.epoch - 1) * total
            text += f" {rate:.0f} ex/s ETA {_hms(left * self.batch_size / rate)}"
        return text

    def _write(self, line, end=""):
        # Spaces, not an ANSI erase code, clear what is left of the previous live line:
        # not every terminal or CI log viewer understands the codes.
        pad = " " * max(self._width - len(line), 0)
        self.stream.write(("\r" if self.tty else "") + line + pad + end)
        self.stream.flush()
        self._width = 0 if end else len(line)


class Progress(Callback):
    """The progress line of a fit, on `stream` (stderr): live steps, loss and ETA, a line an epoch.

    `note` prints a line of its own (a warning) without breaking the live line.
    """

    def __init__(self, stream=None):
        self.stream, self.line = stream, None

    def on_fit_start(self, trainer, snapshot):
        stream = sys.stderr if self.stream is None else self.stream
        self.line = ProgressLine(
            trainer.max_epochs, trainer.num_train_batches, trainer.batch_size, stream=stream
        )

    def on_epoch_start(self, trainer):
        self.line.start_epoch(trainer.epoch)

    def on_dispatch(self, trainer, losses):
        # The live line shows the latest loss; reading it costs a transfer, so only on a TTY.
        latest = float(to_host(losses)[-1]) if self.line.tty else None
        self.line.advance(len(losses), loss=latest)

    def on_epoch_end(self, trainer, record):
        self.line.end_epoch({k: v for k, v in record.items() if k.startswith(("train", "val"))})

    def note(self, text):
        if self.line is None:
            print(text, file=sys.stderr if self.stream is None else self.stream, flush=True)
        else:
            self.line.note(text)

    def on_fit_end(self, trainer, error):
        if self.line is not None:
            self.line.close()
