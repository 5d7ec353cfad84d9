"""Stopping safely: Ctrl-C, SIGTERM and SIGUSR1 stop a fit between two steps."""

import signal
import sys
import threading

import jax
import numpy as np

from ..trainer import Callback


class StopOnSignals(Callback):
    """Ctrl-C, SIGTERM and SIGUSR1 ask the loop to stop at the next step boundary.

    Stopping between dispatches (never inside one, where the donated state could be lost)
    leaves the state consistent, and lets a run directory save it. SIGTERM is how `timeout`,
    Colab and Slurm stop a job (Slurm can send SIGUSR1 ahead of its time limit). A second
    Ctrl-C stops at once; a repeated SIGTERM or SIGUSR1 is ignored, since `timeout` signals the
    whole process group and `make` passes it on again, and neither may cut the checkpoint short.
    `saving` says in the message that a checkpoint will be saved.
    """

    def __init__(self, saving=False):
        self.saving, self.requested, self.previous = saving, False, {}

    def on_fit_start(self, trainer, snapshot):
        self.requested, self.previous = False, {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals
        self.names = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
        if hasattr(signal, "SIGUSR1"):  # Windows has none
            self.names[signal.SIGUSR1] = "SIGUSR1"
        for signum in self.names:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self.previous[signum] = previous
                signal.signal(signum, self.request_stop)

    def request_stop(self, signum, frame):
        if signum == signal.SIGINT:  # the next Ctrl-C goes to the previous handler: at once
            signal.signal(signal.SIGINT, self.previous[signal.SIGINT] or signal.default_int_handler)
        if not self.requested:
            self.requested = True
            saving = " and saving a checkpoint" if self.saving else ""
            when = (
                "after the current step"
                if jax.process_count() == 1
                else ("at the next plot point, as every process will,")
            )
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            print(f"\n{self.names[signum]}: stopping {when}{saving}{again}", file=sys.stderr, flush=True)

    def should_stop(self, trainer, read_point):
        """A process alone stops at once. Processes of a multi-host run stop together, at the
        same step, so that they save one checkpoint together and none waits forever for the
        others in a collective: they agree at the read points (the same steps on every
        process) whether any of them was asked."""
        if jax.process_count() == 1:
            return self.requested
        if not read_point:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def on_fit_end(self, trainer, error):
        for signum, previous in self.previous.items():  # None: a handler set outside Python
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.previous = {}
