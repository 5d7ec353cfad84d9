"""Shared test fixtures: a tiny synthetic classification task and a tiny CNN."""

import os
import runpy
import signal
import sys
import warnings

# Tests compile from scratch, so compile counts and timings do not depend on earlier runs
# (test_compile_cache.py turns the cache on in its own processes).
os.environ["D2LITE_COMPILE_CACHE"] = "0"

import numpy as np
import pytest
from flax import linen as nn

import d2lite as d2l


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
    """Run `python -m chapters.NAME ARGV` in this process; return the chapter's globals
    (`args`, `model`, `data`, `trainer`, ...). Errors propagate as exceptions: the one-line
    messages of a real script come from the excepthook it installs, restored here."""
    argv_before, hook_before = sys.argv, sys.excepthook
    sys.argv = [f"chapters/{name}.py", *argv]
    try:
        with warnings.catch_warnings():  # runpy warns that the chapter was imported before
            warnings.filterwarnings("ignore", "'chapters\\.", RuntimeWarning)
            return runpy.run_module(f"chapters.{name}", run_name="__main__")
    finally:
        sys.argv, sys.excepthook = argv_before, hook_before
