"""DataModule, FashionMNIST and SyntheticRegressionData.

The Trainer's fast path asks a data module for whole arrays (`arrays(train)`), puts them on
the device once, and calls `preprocess(batch)` inside its jitted step. Fashion-MNIST stays
uint8 28x28 until then: scaling and resizing cost nothing on the host and 47 MB on the
device. Data modules written the book's way, with only `get_dataloader(train)`, still
work: their batches are gathered into arrays once.
"""

import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from .book import show_images
from .errors import D2LiteError
from .hparams import HyperParameters

FAST_DEV_RUN = "D2LITE_FAST_DEV_RUN"
SMOKE_BATCH_SIZE = 16  # FashionMNIST's largest batch in a smoke run


def fast_dev_run():
    """N when the environment asks for smoke runs (D2LITE_FAST_DEV_RUN=N, N >= 1), else None.

    The Trainer then fits one epoch of at most N batches each way and FashionMNIST serves
    batches of at most SMOKE_BATCH_SIZE images, so that a notebook written with the book's
    values runs in seconds as it stands."""
    text = os.environ.get(FAST_DEV_RUN, "").strip()
    if text in ("", "0"):
        return None
    if not text.isdigit():
        raise D2LiteError(f"{FAST_DEV_RUN} must be a number of batches, got {text!r}")
    return int(text)


class Loader:
    """Minibatches of NumPy arrays, reshuffled at every pass when `shuffle`; `len` counts them.

    What the book's loaders (tf.data through tfds.as_numpy) give, without TensorFlow: the
    last batch may be smaller, and `transform` is applied to each batch.
    """

    def __init__(self, tensors, batch_size, shuffle, transform=None):
        self.tensors = tuple(np.asarray(a) for a in tensors)
        self.batch_size, self.shuffle, self.transform = batch_size, shuffle, transform

    def __len__(self):
        return math.ceil(len(self.tensors[0]) / self.batch_size)

    def __iter__(self):
        count = len(self.tensors[0])
        order = np.random.permutation(count) if self.shuffle else np.arange(count)
        for start in range(0, count, self.batch_size):
            batch = tuple(a[order[start : start + self.batch_size]] for a in self.tensors)
            yield batch if self.transform is None else self.transform(batch)


class DataModule(HyperParameters):
    """The base class of data: `get_dataloader(train)` or, for the fast path, `arrays(train)`."""

    batch_size = 32
    num_classes = None  # set by classification data, so the Trainer can check model outputs

    def __init__(self, root="../data", num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        """Preprocessed NumPy batches of `arrays(train)`, shuffled when training."""
        if type(self).arrays is DataModule.arrays:  # each default would call the other
            raise NotImplementedError(f"{type(self).__name__} defines neither get_dataloader nor arrays")
        preprocess = jax.jit(self.preprocess)
        return Loader(
            self.arrays(train),
            self.batch_size,
            shuffle=train,
            transform=lambda batch: jax.device_get(preprocess(batch)),
        )

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """Minibatches of the rows `indices` of `tensors`, shuffled when training."""
        return Loader(tuple(np.asarray(a)[indices] for a in tensors), self.batch_size, shuffle=train)

    def arrays(self, train):
        """The whole split as a tuple of NumPy arrays (inputs..., targets)."""
        batches = list(self.get_dataloader(train))
        if not batches:
            split = "training" if train else "validation"
            raise D2LiteError(f"{type(self).__name__} yields no {split} batches: check its data")
        return tuple(np.concatenate([np.asarray(b[i]) for b in batches]) for i in range(len(batches[0])))

    def preprocess(self, batch):
        """Turn a batch of stored arrays into model inputs; runs inside the jitted step."""
        return batch


class SyntheticRegressionData(DataModule):
    """Linear regression data `y = Xw + b + noise`: standard normal X, Gaussian noise.

    Drawn from `key` (default: the fixed key 0, as in the book); the first `num_train` rows train.
    """

    def __init__(self, w, b, noise=0.01, num_train=1000, num_val=1000, batch_size=32, key=None):
        self.save_hyperparameters()
        n = num_train + num_val
        w = jnp.asarray(w, dtype=jnp.float32).reshape(-1, 1)
        features_key, noise_key = jax.random.split(jax.random.PRNGKey(0) if key is None else key)
        self.X = jax.random.normal(features_key, (n, w.shape[0]))
        self.y = self.X @ w + b + noise * jax.random.normal(noise_key, (n, 1))

    def get_dataloader(self, train):
        rows = slice(0, self.num_train) if train else slice(self.num_train, None)
        return self.get_tensorloader((self.X, self.y), train, rows)


class FashionMNIST(DataModule):
    """Fashion-MNIST: 60000 training and 10000 test images of 10 kinds of clothing.

    `data_dir` overrides the search path (`$D2LITE_DATA`, the user cache, Debian's
    `/usr/share/datasets/fashion-mnist`); `num_train`/`num_val` take the first examples only.
    `train` and `val` are the raw (uint8 images, labels) pairs, as in the book.

    Like the book, the test images validate. To tune a recipe without looking at them,
    `holdout=N` validates on the last N training images instead (training keeps the others),
    and `test_data()` holds the test images, to score the tuned model once at the end:
    `trainer.evaluate(data.test_data())`.
    """

    num_classes = 10
    LABELS = (
        "t-shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    )

    def __init__(
        self, batch_size=64, resize=(28, 28), data_dir=None, num_train=None, num_val=None, holdout=None
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise D2LiteError(f"batch_size must be a positive integer, got {batch_size!r}")
        resize = tuple(resize) if isinstance(resize, list | tuple) else (resize, resize)
        if len(resize) != 2 or not all(isinstance(s, int) and s > 0 for s in resize):
            raise D2LiteError(f"resize must be (height, width) in positive pixels, got {resize!r}")
        for name, count in (("num_train", num_train), ("num_val", num_val), ("holdout", holdout)):
            if count is not None and (not isinstance(count, int) or count <= 0):
                raise D2LiteError(f"{name} must be a positive integer or None, got {count!r}")
        self.save_hyperparameters()
        if fast_dev_run():
            self.batch_size = min(batch_size, SMOKE_BATCH_SIZE)
        self._splits = None

    def _load(self):
        if self._splits is None:
            from .download import fetch

            loaded = fetch.load(self.data_dir)
            self.source = loaded["source"]
            train, val = loaded["train"], loaded["test"]
            if self.holdout:
                kept = len(train[-1]) - self.holdout
                if kept <= 0:
                    raise D2LiteError(f"holdout={self.holdout} leaves no training images of {len(train[-1])}")
                train, val = tuple(a[:kept] for a in train), tuple(a[kept:] for a in train)
            self._splits = {
                True: tuple(a[: self.num_train] for a in train),
                False: tuple(a[: self.num_val] for a in val),
            }
        return self._splits

    def test_data(self, num_val=None):
        """The same data, validating on the 10,000 test images (the first `num_val` of them): to
        score a model tuned on a holdout."""
        return FashionMNIST(self.batch_size, self.resize, self.data_dir, num_val=num_val)

    @property
    def train(self):
        return self._load()[True]

    @train.setter
    def train(self, split):  # the next edition's recipes section assigns its own (images, labels)
        self._load()[True] = tuple(np.asarray(a) for a in split)

    @property
    def val(self):
        return self._load()[False]

    @val.setter
    def val(self, split):
        self._load()[False] = tuple(np.asarray(a) for a in split)

    def arrays(self, train):
        images, labels = self._load()[train]
        return images, labels.astype(np.int32)

    def preprocess(self, batch):
        """uint8 (B, 28, 28) -> float32 (B, H, W, 1) in [0, 1], resized bilinearly like the book."""
        images, labels = batch
        X = images.astype(jnp.float32)[..., None] / 255.0
        if X.shape[1:3] != self.resize:
            X = jax.image.resize(X, (X.shape[0], *self.resize, 1), method="bilinear")
        return X, labels

    def text_labels(self, indices):
        return [self.LABELS[int(i)] for i in np.asarray(indices).reshape(-1)]

    def visualize(self, batch, nrows=1, ncols=8, labels=()):
        """Show the first images of a batch titled with their labels; returns the axes."""
        X, y = batch
        if not labels:
            labels = self.text_labels(y)
        return show_images(np.asarray(X)[..., 0], nrows, ncols, titles=labels)


class Limited:
    """The first `limit` batches of a loader (all when `limit` is None), as often as iterated."""

    def __init__(self, loader, limit):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        return itertools.islice(self.loader, self.limit)

    def __len__(self):
        return len(self.loader) if self.limit is None else min(len(self.loader), self.limit)
