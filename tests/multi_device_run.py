"""Run by test_sharding.py in a process with 4 CPU devices: train on 1 and on 4, print JSON.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts, hence a
process of its own.
"""

import json
import sys

import jax
import numpy as np
from compiles import count_compiles
from conftest import Blobs, TinyCNN
from flax import nnx
from test_nnx import TinyNet

import d2lite as d2l
from d2lite import nnx as neu


def fit(devices, steps_per_dispatch=1):
    trainer = d2l.Trainer(
        max_epochs=3, devices=devices, steps_per_dispatch=steps_per_dispatch, progress=False
    )
    compiles = []
    fit_epoch = trainer.fit_epoch

    def counted():
        with count_compiles() as count:
            fit_epoch()
        compiles.append(count.count)

    trainer.fit_epoch = counted
    trainer.fit(TinyCNN(dropout=0.2), Blobs(num_train=256, num_val=70, batch_size=32))
    return trainer, compiles


def fit_nnx(devices):
    """The next edition's face: an NNX model (BatchNorm, Dropout's Rngs) through the same step."""
    trainer = neu.Trainer(max_epochs=2, devices=devices, steps_per_dispatch=3, progress=False, plot=False)
    model = TinyNet()
    trainer.fit(model, Blobs(num_train=256, num_val=70, batch_size=32))
    return trainer, model


if __name__ == "__main__":
    nnx_one, _ = fit_nnx(jax.devices()[:1])
    nnx_four, nnx_model = fit_nnx(jax.devices())
    one, _ = fit(jax.devices()[:1])
    four, compiles = fit(jax.devices(), steps_per_dispatch=3)
    params = jax.tree.leaves(four.state.params)
    # A recorded run on four devices, stopped after 2 epochs and resumed for the third.
    run_dir = f"{sys.argv[1]}/recorded"
    for epochs, resume in ((2, None), (3, True)):
        resumed = d2l.Trainer(
            max_epochs=epochs,
            devices=jax.devices(),
            steps_per_dispatch=3,
            run_dir=run_dir,
            resume=resume,
            progress=False,
        )
        resumed.fit(TinyCNN(dropout=0.2), Blobs(num_train=256, num_val=70, batch_size=32))
    order = four.epoch_order(four.shuffle_key, 0)
    compiled = four.train_chunk.lower(four.state, four.resident.train, order, 0, num_steps=1).compile()
    print(
        json.dumps(
            {
                "devices": len(jax.devices()),
                "one": one.history,
                "four": four.history,
                "resumed": resumed.history,
                "max_param_difference": max(
                    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(one.state.params), params, strict=True)
                ),
                "state_devices": sorted({len(leaf.sharding.device_set) for leaf in params}),
                "compiles_per_epoch": compiles,
                "nnx_one": nnx_one.history,
                "nnx_four": nnx_four.history,
                "nnx_state_devices": sorted(
                    {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(nnx_four.state.params)}
                ),
                "nnx_model_matches_the_state": all(  # the reader's model holds what the four trained
                    np.allclose(np.asarray(a), np.asarray(b))
                    for a, b in zip(
                        jax.tree.leaves(nnx_four.state.params),
                        jax.tree.leaves(nnx.state(nnx_model, nnx.Param)),
                        strict=True,
                    )
                ),
                "all_reduces": compiled.as_text().count("all-reduce("),  # partitioned: the devices sum up
            }
        )
    )
    try:
        d2l.Trainer(max_epochs=1, devices=jax.devices(), progress=False).fit(TinyCNN(), Blobs(batch_size=30))
    except d2l.D2LiteError as error:
        print(f"error: {error}")
