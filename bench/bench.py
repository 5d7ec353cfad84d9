"""d2lite's Trainer against a pure jitted step, the book's JAX loop and PyTorch, side by side.

    python -m bench.bench                 # LeNet 28x28 and ResNet-18 96x96, batch 128
    python -m bench.bench --models lenet --steps 40

Each (model, method) runs in its own process, so each peak memory is its own. Methods:
- pure:    one jitted step (forward, backward, optax update, BatchNorm stats) on a batch
           already on the device, with XLA's own convolutions: no framework (on a CPU
           d2lite's convolution and pool stand-ins make d2lite faster than this, cpu_kernels.py).
- d2lite:  `Trainer.fit` for a fixed number of steps (the epoch after the compiling one).
- bf16:    the same with `Trainer(precision="bfloat16")`: bfloat16 compute, float32 state.
- nnx:     the same Trainer through the next edition's face (`from d2lite import nnx as d2l`),
           with the same networks written in Flax NNX as that edition writes them (LeNet with
           Adam, as the Linen row; the NNX chapter's ResNet-18).
- book:    the loop of the book's JAX Trainer: jit around the loss and gradients only, the
           optimizer update and BatchNorm bookkeeping outside jit, batches resized on the
           host, and a host sync per step for plotting.
- torch:   a PyTorch eager loop with the same architecture, with whichever torch is
           installed (`make bench` installs one where it can), on the device JAX uses: a
           GPU when torch sees one, else the CPU. On a GPU also `torch-bf16` (bfloat16
           autocast, channels_last) and `torch-compile` (the model through torch.compile).
Times are medians over steps after warm-up; ratios compare methods measured in this run.
The table is also written as JSON (`--json PATH`, default runs/bench/<date>-<time>.json).
The persistent compilation cache is off here, so compile times are real compilations.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCH = 128
MODELS = {"lenet": 28, "resnet18": 96}
JAX_METHODS = ("pure", "d2lite", "bf16", "nnx", "book")


# ------------------------------------------------------------------------------ models
def flax_model(name):
    if name == "lenet":
        from chapters.lenet import LeNet

        return LeNet(lr=0.003, optimizer="adam")  # as the PyTorch peer trains it
    from chapters.resnet import ResNet18

    return ResNet18(lr=0.01)


def nnx_model(name):
    """The same network in Flax NNX, through the next edition's face."""
    if name == "lenet":
        import optax

        from d2lite import nnx as d2l

        class AdamLeNet(d2l.LeNet):
            def configure_optimizers(self):
                return optax.adam(self.lr)

        return AdamLeNet(lr=0.003)
    from chapters.resnet_nnx import ResNet18

    return ResNet18(lr=0.01)


def host_batches(size, steps, seed=0):
    """`steps` random batches of real Fashion-MNIST images (uint8) and labels."""
    import numpy as np

    from d2lite.download import fetch

    images, labels = fetch.load()["train"]
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(labels))[: steps * BATCH].reshape(steps, BATCH)
    return [(images[p], labels[p].astype(np.int32)) for p in picks]


# ----------------------------------------------------------------------------- methods
def run_pure(name, size, steps):
    import jax
    import jax.numpy as jnp
    import optax

    import d2lite as d2l
    from tests.compiles import count_compiles

    model = flax_model(name)
    data = d2l.FashionMNIST(resize=(size, size))
    X, y = host_batches(size, 1)[0]
    X, y = jax.device_put(X), jax.device_put(y)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = model.configure_optimizers()
    opt_state = tx.init(params)

    def step(params, batch_stats, opt_state, X, y):
        images, labels = data.preprocess((X, y))

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = tx.update(grads, opt_state, params)
        new_stats = updates.get("batch_stats", batch_stats)
        return optax.apply_updates(params, changes), new_stats, opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    with count_compiles() as compiles:
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, X, y)
        loss.block_until_ready()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, X, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return {
        "step_s": statistics.median(times),
        "compile_s": compiles.seconds,
        "compiles": compiles.count,
        "steady_compiles": 0,
    }


def run_d2lite(name, size, steps, steps_per_dispatch, precision="float32", face="linen"):
    if face == "nnx":
        from d2lite import nnx as d2l
    else:
        import d2lite as d2l
    from tests.compiles import count_compiles

    data = d2l.FashionMNIST(batch_size=BATCH, resize=(size, size), num_train=BATCH * steps, num_val=BATCH)
    compiles_per_epoch = []

    class Counting(d2l.Trainer):
        def fit_epoch(self):
            with count_compiles() as compiles:
                super().fit_epoch()
            compiles_per_epoch.append(compiles)

    trainer = Counting(
        max_epochs=2, progress=False, plot=False, steps_per_dispatch=steps_per_dispatch, precision=precision
    )
    trainer.fit(nnx_model(name) if face == "nnx" else flax_model(name), data)
    first, second = compiles_per_epoch
    return {
        "step_s": trainer.history[-1]["seconds"] / trainer.num_train_batches,
        "compile_s": first.seconds,
        "compiles": first.count,
        "steady_compiles": second.count,
    }


def run_book(name, size, steps):
    """The book's JAX Trainer loop, condensed: only the loss and its gradients are jitted."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from tests.compiles import count_compiles

    model = flax_model(name)
    batches = host_batches(size, steps + 2)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = model.configure_optimizers()
    opt_state = tx.init(params)
    key = jax.random.PRNGKey(1)

    @jax.jit
    def loss_and_grads(params, batch_stats, X, y, key):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                X,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def host_resize(images):  # the book's pipeline resizes on the host, before the device
        X = images.astype(np.float32)[..., None] / 255.0
        if size != 28:
            with jax.default_device(jax.devices("cpu")[0]):
                X = np.asarray(jax.image.resize(X, (len(X), size, size, 1), "bilinear"))
        return X

    times, plotted = [], []
    with count_compiles() as compiles:
        for i, (images, labels) in enumerate(batches):
            start = time.perf_counter()
            X = host_resize(images)
            key, dropout_key = jax.random.split(key)
            (loss, updates), grads = loss_and_grads(params, batch_stats, X, labels, dropout_key)
            changes, opt_state = tx.update(grads, opt_state, params)  # eager, op by op
            params = optax.apply_updates(params, changes)
            batch_stats = updates.get("batch_stats", batch_stats)
            plotted.append(float(loss))  # the book plots from inside training_step
            if i >= 2:  # the first steps compile
                times.append(time.perf_counter() - start)
            if i == 1:
                warm = (compiles.count, compiles.seconds)
    return {
        "step_s": statistics.median(times),
        "compile_s": warm[1],
        "compiles": warm[0],
        "steady_compiles": compiles.count - warm[0],
    }


TORCH_VARIANTS = {"torch": "eager", "torch-bf16": "bf16", "torch-compile": "compile"}


def torch_methods():
    """The PyTorch rows: eager on a CPU; on a GPU also bf16 autocast and torch.compile."""
    try:
        import torch
    except ImportError:
        return []
    return list(TORCH_VARIANTS) if torch.cuda.is_available() else ["torch"]


def run_torch(name, size, steps, variant="eager"):
    """A PyTorch loop on the device d2lite's JAX uses: a GPU if torch sees one, else the CPU.

    `eager` at PyTorch's defaults (float32; TF32 convolutions on a GPU); `bf16` under
    bfloat16 autocast with channels_last tensors; `compile` the eager loop's model through
    `torch.compile`. The images travel to the device once, as uint8, as d2lite's do.
    """
    import numpy as np
    import torch
    from torch import nn

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torch_model(name, nn).to(device)
    layout = torch.channels_last if variant == "bf16" else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=0.003)
        if name == "lenet"
        else torch.optim.SGD(model.parameters(), lr=0.01)
    )
    forward = torch.compile(model) if variant == "compile" else model
    loss_fn = nn.CrossEntropyLoss()
    batches = [
        (torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device))
        for images, labels in host_batches(size, steps + 2)
    ]
    times = []
    for images, labels in batches:
        start = time.perf_counter()
        X = images[:, None].float() / 255.0
        if size != 28:
            X = nn.functional.interpolate(X, size=(size, size), mode="bilinear")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16"):
            loss = loss_fn(forward(X.contiguous(memory_format=layout)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the host reads every loss, as the book's loop plots it
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[2:])
    return {
        "step_s": step_s,
        # What the first two steps took beyond two steady ones: torch.compile's compilation,
        # cuDNN's first calls.
        "compile_s": max(0.0, sum(times[:2]) - 2 * step_s),
        "compiles": dynamo_graphs(),
        "steady_compiles": 0,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def dynamo_graphs():
    """How many graphs torch.compile compiled in this process (0 for eager loops)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def torch_model(name, nn):
    if name == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.Sigmoid(),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.Sigmoid(),
            nn.AvgPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            nn.Sigmoid(),
            nn.Linear(84, 10),
        )

    class Residual(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv3 = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            y = nn.functional.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return nn.functional.relu(y + (self.conv3(x) if self.conv3 is not None else x))

    layers = [nn.Conv2d(1, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        layers += [Residual(cin, cout, 1 if i == 0 else 2), Residual(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ driver
def child(args):
    """Run one (model, method) and print its figures as JSON."""
    size = MODELS[args.models[0]]
    method = args.method
    if method == "pure":
        result = run_pure(args.models[0], size, args.steps)
    elif method in ("d2lite", "bf16", "nnx"):
        precision = "bfloat16" if method == "bf16" else "float32"
        face = "nnx" if method == "nnx" else "linen"
        result = run_d2lite(args.models[0], size, args.steps, args.steps_per_dispatch, precision, face)
    elif method == "book":
        result = run_book(args.models[0], size, args.steps)
    else:
        result = run_torch(args.models[0], size, args.steps, TORCH_VARIANTS[method])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(model, method, steps, steps_per_dispatch):
    command = [
        sys.executable,
        "-m",
        "bench.bench",
        "--child",
        method,
        "--models",
        model,
        "--steps",
        str(steps),
        "--steps-per-dispatch",
        str(steps_per_dispatch),
    ]
    uncached = dict(os.environ, D2LITE_COMPILE_CACHE="0")
    done = subprocess.run(command, capture_output=True, text=True, env=uncached)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": tail}


def machine():
    import jax
    import jaxlib

    device = jax.devices()[0]
    return (
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"device {device.platform}:{device.device_kind}; jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}; python {platform.python_version()}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["lenet", "resnet18"])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per method (default: 60 for LeNet, 10 for ResNet-18)",
    )
    parser.add_argument(
        "--steps-per-dispatch",
        type=int,
        default=None,
        help="d2lite steps per jitted call (default: 20 LeNet, 1 ResNet-18)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the results there (default: runs/bench/<date>-<time>.json)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*JAX_METHODS, *TORCH_VARIANTS],
        help="the rows to measure (default: the JAX ones and the PyTorch ones for this device)",
    )
    parser.add_argument("--child", dest="method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.method:
        return child(args)

    print(machine())
    report = {"machine": machine(), "batch_size": BATCH, "results": {}}
    methods = args.methods or [*JAX_METHODS, *torch_methods()]
    if not args.methods and "torch" not in methods:
        print("(PyTorch is not installed here: `pip install torch` adds the torch rows)")
    header = (
        f"{'model':9} {'method':13} {'step ms':>9} {'ex/s':>8} {'d2lite/x':>9} "
        f"{'compile s':>9} {'compiles':>8} {'after ep1':>9} {'peak MB':>8}"
    )
    print(header)
    for model in args.models:
        steps = args.steps or (60 if model == "lenet" else 10)
        per_dispatch = args.steps_per_dispatch or (20 if model == "lenet" else 1)
        results = {m: measure(model, m, steps, per_dispatch) for m in methods}
        report["results"][model] = {"image_size": MODELS[model], "steps": steps, **results}
        ours = results.get("d2lite", {}).get("step_s")
        for method, r in results.items():
            if "error" in r:
                print(f"{model:9} {method:13} failed: {r['error']}")
                continue
            ratio = ours / r["step_s"] if ours else float("nan")
            print(
                f"{model:9} {method:13} {1000 * r['step_s']:9.1f} {BATCH / r['step_s']:8.0f} "
                f"{1 / ratio:9.2f} {r['compile_s']:9.1f} {r['compiles']:8d} "
                f"{r['steady_compiles']:9d} {r['peak_rss_mb']:8.0f}"
            )
        if ours and "step_s" in results.get("nnx", {}):
            print(f"{model:9} NNX face / Linen examples/s: {ours / results['nnx']['step_s']:.3f}")
        if ours and "step_s" in results.get("pure", {}):
            overhead = ours / results["pure"]["step_s"]
            print(f"{model:9} framework overhead (d2lite fit step / pure step): {overhead:.3f}")
    print("d2lite/x: d2lite's examples/s divided by that method's (above 1: d2lite is faster)")
    path = Path(args.json or f"runs/bench/{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
