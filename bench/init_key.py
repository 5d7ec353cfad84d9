"""Cold start of the Trainer's initial-variables program per chapter: `init_key` against a plain JAX key.

    python -m bench.init_key [name ...]        # every chapter model of bench/chapters.py

The Trainer draws the initial parameters in one jitted program (`initial_variables` in
d2lite/trainer.py) with `rngs = {"params": init_key(params_key), ...}`. This replicates that
program (the first batch preprocessed at the chapter's default resolution, then `model.init`)
and times it both ways, each in a fresh process with the compilation cache off: tracing,
XLA's compilation and the first run. The batch is small (8 images): the program's
compilation, not its run, is what the key changes.
"""

import os
import subprocess
import sys
import time

BATCH = 8
WAYS = ("init_key", "jax.random")


def models():
    from bench.chapters import chapter_models
    from chapters import googlenet

    chapters = {name: (model, size) for name, (model, size, _, _) in chapter_models().items()}
    chapters["googlenet"] = (googlenet.GoogleNet(lr=0.01, weight_init="he"), 96)  # the chapter's --init
    del chapters["softmax_regression"]  # no convolutions: not a CNN chapter
    # An NNX model draws its parameters when it is built (from its own Rngs), not in the
    # Trainer's set-up program: nothing of it is measured here.
    del chapters["resnet_nnx"]
    return chapters


def measure(name, way):
    """(trace s, compile s, first run s) of the initial-variables program, in this process."""
    import jax
    import numpy as np

    import d2lite as d2l
    from d2lite.devices.init_key import init_key

    model, size = models()[name]
    data = d2l.FashionMNIST(batch_size=BATCH, resize=(size, size))
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (BATCH, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, BATCH, dtype=np.uint8),
    )

    def initial_variables(key, arrays):  # as in Trainer.init_state
        params_key, dropout_key, init_dropout_key = jax.random.split(key, 3)
        params_rng = init_key(params_key) if way == "init_key" else params_key
        inputs = data.preprocess(tuple(a[:BATCH] for a in arrays))[:-1]
        return model.apply_init(inputs, key={"params": params_rng, "dropout": init_dropout_key}), dropout_key

    key = jax.random.PRNGKey(0)
    started = time.perf_counter()
    lowered = jax.jit(initial_variables).lower(key, arrays)
    traced = time.perf_counter()
    compiled = lowered.compile()
    built = time.perf_counter()
    jax.block_until_ready(compiled(key, arrays))
    ran = time.perf_counter()
    return traced - started, built - traced, ran - built


def main(names):
    sizes = {name: size for name, (_, size) in models().items()}
    names = names or list(sizes)
    env = dict(os.environ, D2LITE_COMPILE_CACHE="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    print(f"{'chapter':12} {'input':>7} " + " ".join(f"{way + ' s':>12}" for way in WAYS) + "  saved s")
    for name in names:
        totals = {}
        for way in WAYS:
            result = subprocess.run(
                [sys.executable, "-m", "bench.init_key", "--one", name, way],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            trace, compile_s, run = map(float, result.stdout.split())
            totals[way] = trace + compile_s + run
            print(
                f"  {name} {way}: trace {trace:.2f} s, compile {compile_s:.2f} s, run {run:.2f} s", flush=True
            )
        size = sizes[name]
        saved = totals["jax.random"] - totals["init_key"]
        print(
            f"{name:12} {size:4}x{size:<3}"
            + "".join(f" {totals[way]:12.2f}" for way in WAYS)
            + f" {saved:8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(*measure(*sys.argv[2:4]))
    else:
        main(sys.argv[1:])
