"""Shared test fixtures: a tiny synthetic classification task and a tiny CNN."""

import contextlib
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path


def _compile_cache_of_this_run():
    """One persistent compilation cache per test run, shared by the pytest workers, their
    child processes and the notebook kernels: many tests build the same programs (a TinyCNN
    on Blobs, a chapter run twice to compare), and loading a program is faster than compiling
    it again. It starts empty, so no test depends on an earlier run; `count_compiles` counts
    a load as a compilation. Caches of runs over a day old are removed."""
    root = Path(tempfile.gettempdir()) / "d2lite-test-jax-cache"
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"  # the same in every worker
    for old in root.glob("*"):
        with contextlib.suppress(OSError):
            if old.name != run and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    return root / run


os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_compile_cache_of_this_run())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs too

import numpy as np  # noqa: E402 (after the cache is chosen: JAX reads it on import)
import pytest  # noqa: E402
from flax import linen as nn  # noqa: E402

import d2lite as d2l  # noqa: E402


class Blobs(d2l.DataModule):
    """3 classes: noise images with one of three horizontal bands brightened."""

    num_classes = 3

    def __init__(self, num_train=256, num_val=70, batch_size=32, seed=0):
        self.save_hyperparameters()
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, size=num_train + num_val).astype(np.int32)
        X = rng.normal(size=(num_train + num_val, 8, 8)).astype(np.float32)
        rows = np.arange(8)[None, :] // 3 == y[:, None]  # bands of rows 0-2, 3-5, 6-7
        X += 0.7 * rows[:, :, None]
        self.X, self.y = X, y

    def arrays(self, train):
        rows = slice(0, self.num_train) if train else slice(self.num_train, None)
        return self.X[rows], self.y[rows]

    def preprocess(self, batch):
        X, y = batch
        return X[..., None], y


class TinyCNN(d2l.Classifier):
    lr: float = 0.1
    num_classes: int = 3
    training: bool = True
    use_bn: bool = True
    dropout: float = 0.0

    def setup(self):
        layers = [nn.Conv(4, (3, 3))]
        if self.use_bn:
            layers.append(nn.BatchNorm(use_running_average=not self.training))
        layers += [nn.relu, lambda x: x.reshape((x.shape[0], -1))]
        if self.dropout:
            layers.append(nn.Dropout(self.dropout, deterministic=not self.training))
        layers.append(nn.Dense(self.num_classes))
        self.net = nn.Sequential(layers)


@pytest.fixture
def blobs():
    return Blobs()


@pytest.fixture
def quiet_trainer(tmp_path):
    """A Trainer factory with no terminal output."""

    def make(**kwargs):
        kwargs.setdefault("max_epochs", 2)
        return d2l.Trainer(progress=False, **kwargs)

    return make


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Some tests press Ctrl-C themselves: make SIGINT raise KeyboardInterrupt even when the
    test run started with it ignored (as a background job of a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def run_chapter(name, *argv):
    """Run `python -m chapters.NAME ARGV` in this process: the chapter's `main(ARGV)`; return the
    chapter's names with main's variables (`args`, `model`, `data`, `trainer`, ...). Errors
    propagate as exceptions: the one-line messages of a real script come from the excepthook
    it installs, restored here."""
    hook_before = sys.excepthook
    chapter = importlib.import_module(f"chapters.{name}")
    try:
        return {**vars(chapter), **chapter.main(list(argv))}
    finally:
        sys.excepthook = hook_before
