"""Data parallelism: each batch split over the devices, everything else replicated.

A one-axis `Mesh` ("batch") over the devices. Parameters, optimizer state, BatchNorm
statistics and the resident data are replicated; the indices of each step's batch are
sharded along the mesh, so every device gathers, preprocesses and runs its own slice. The
step itself is written for the whole batch: XLA's SPMD partitioner adds the all-reduces,
so gradients and BatchNorm statistics are those of the global batch and the losses equal
one device's up to the order of summation.

Several hosts: call `jax.distributed.initialize()` first (the chapters' `--distributed`);
`jax.devices()` then lists every host's devices and each host feeds the same replicated data.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from ..errors import D2LiteError
from ..trainer import StepTransform
from .dispatch import auto_dispatch_steps


class DataParallel(StepTransform):
    """Where the Trainer's arrays live: `replicate` them all, `split` a batch over the mesh."""

    def __init__(self, devices=None):
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise D2LiteError("devices is empty: give at least one device (default: jax.devices())")
        self.devices = devices
        self.mesh = Mesh(np.array(devices), ("batch",))
        # On one device, the sharding jit gives its outputs anyway: a different one would
        # make the second call compile again.
        if len(devices) == 1:
            self.replicated = SingleDeviceSharding(devices[0])
        else:
            self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self):
        return len(self.devices)

    def initial_state(self, state, trainer):
        batch_size = trainer.batch_size  # checked before the first step: it splits each batch
        if batch_size % self.size:
            raise D2LiteError(
                f"batch_size {batch_size} does not split evenly over {self.size} devices: use a "
                f"multiple of {self.size}, or fewer devices (Trainer(devices=...))"
            )
        return state

    def place(self, tree):
        """Put every array of `tree` on every device (a global array across hosts).

        Other leaves stay as they are: the book's `SGD.init` returns a class for its state,
        which its eager loop (and a reader's `fit_epoch`) handles and no device can hold.
        """

        def place(leaf):
            if not hasattr(leaf, "dtype") and not isinstance(leaf, int | float | complex):
                return leaf
            if jax.process_count() == 1:
                return jax.device_put(leaf, self.replicated)
            host = np.asarray(leaf)  # each host holds the same values: it supplies its own shards
            return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])

        return jax.tree.map(place, tree)

    def split(self, x, axis=0):
        """Inside jit: shard `x` along `axis` over the mesh (a no-op on one device)."""
        if self.size == 1:
            return x
        spec = PartitionSpec(*([None] * axis), "batch")
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def keep(self, tree):
        """Inside jit: keep `tree` replicated, so the next call sees the same shardings."""
        if self.size == 1:
            return tree
        return jax.lax.with_sharding_constraint(tree, self.replicated)

    def dispatch_steps(self, trainer):
        return auto_dispatch_steps(trainer)
