"""Run by test_sharding.py as one of two processes with 2 CPU devices each: print the history.

`python multi_process_run.py PROCESS_ID PORT RUN_DIR`; the processes meet on localhost:PORT
as `jax.distributed` does across hosts, and train one model on the 4 devices as a recorded
run in the shared RUN_DIR. Process 0 alone gets SIGTERM in epoch 2, as one host of a
preempted job might: both stop at the same step and save, then both resume the run.
"""

import json
import os
import signal
import sys

import jax

jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))

from conftest import Blobs, TinyCNN  # noqa: E402  (after initialize, which must come first)

import d2lite as d2l  # noqa: E402

SIGNAL = {"epoch": 1}  # where process 0 is signalled, once (not a field: the runs must match)


class SignalledOnce(TinyCNN):
    def plot(self, key, value, train):
        super().plot(key, value, train)
        if train and jax.process_index() == 0 and SIGNAL.get("epoch") == self.trainer.epoch:
            del SIGNAL["epoch"]
            os.kill(os.getpid(), signal.SIGTERM)


def fit(**kwargs):
    trainer = d2l.Trainer(max_epochs=3, run_dir=sys.argv[3], progress=False, plot=False, **kwargs)
    trainer.fit(SignalledOnce(dropout=0.2), Blobs(num_train=256, num_val=70, batch_size=32))
    return trainer


try:
    fit()
    stopped = None
except d2l.TrainingInterrupted as stop:
    stopped = str(stop)
trainer = fit(resume=True)
print(
    json.dumps(
        {
            "process": jax.process_index(),
            "devices": jax.device_count(),
            "stopped": stopped,
            "history": trainer.history,
        }
    )
)
