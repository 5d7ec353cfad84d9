"""Run by test_sharding.py as one of two processes with 2 CPU devices each: print the history.

`python multi_process_run.py PROCESS_ID PORT OUT_DIR`; the processes meet on localhost:PORT
as `jax.distributed` does across hosts, and train one model on the 4 devices.
"""

import json
import sys

import jax

jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))

from multi_device_run import fit  # noqa: E402  (after initialize, which must come first)

trainer, _ = fit(jax.devices())
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "history": trainer.history}))
