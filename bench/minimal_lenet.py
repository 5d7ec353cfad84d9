"""A minimal hand-written jitted LeNet loop, the yardstick for the Trainer's seconds per epoch.

    python bench/minimal_lenet.py [epochs]
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from chapters.lenet import LeNet
from d2lite import fetch

BATCH = 128


def main(epochs=2):
    (train_X, train_y), _ = fetch.load()["train"], None
    X = jax.device_put(train_X)
    y = jax.device_put(train_y.astype(np.int32))
    model = LeNet()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)
    num_batches = len(train_y) // BATCH

    @jax.jit
    def step(params, opt_state, idx):
        images = X[idx].astype(jnp.float32)[..., None] / 255.0

        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for epoch in range(epochs):
        perm = np.random.default_rng(epoch).permutation(len(train_y))[: num_batches * BATCH]
        batches = jax.device_put(perm.reshape(num_batches, BATCH))
        start = time.perf_counter()
        for i in range(num_batches):
            params, opt_state, loss = step(params, opt_state, batches[i])
        loss.block_until_ready()
        seconds = time.perf_counter() - start
        print(f"minimal loop epoch {epoch + 1}: {seconds:.2f} s, {num_batches * BATCH / seconds:.0f} ex/s, "
              f"loss {float(loss):.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
