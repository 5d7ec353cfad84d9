"""DataModule and FashionMNIST.

The Trainer's fast path asks a data module for whole arrays (`arrays(train)`), puts them on
the device once, and calls `preprocess(batch)` inside its jitted step. Fashion-MNIST stays
uint8 28x28 until then: scaling and resizing cost nothing on the host and 47 MB on the
device. Data modules written the book's way, with only `get_dataloader(train)`, still
work: their batches are gathered into arrays once.
"""
import jax
import jax.numpy as jnp
import numpy as np

from .errors import D2LiteError
from .hparams import HyperParameters


class DataModule(HyperParameters):
    """The base class of data: `get_dataloader(train)` or, for the fast path, `arrays(train)`."""

    batch_size = 32
    num_classes = None  # set by classification data, so the Trainer can check model outputs

    def __init__(self, root="../data", num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """Host minibatches of `tensors` (shuffled when training), like the book's helper."""
        tensors = tuple(np.asarray(a)[indices] for a in tensors)
        order = np.arange(len(tensors[0]))
        if train:
            np.random.default_rng().shuffle(order)
        for start in range(0, len(order), self.batch_size):
            picked = order[start : start + self.batch_size]
            yield tuple(a[picked] for a in tensors)

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


class FashionMNIST(DataModule):
    """Fashion-MNIST: 60000 training and 10000 test images of 10 kinds of clothing.

    `data_dir` overrides the search path (`$D2LITE_DATA`, the user cache, Debian's
    `/usr/share/datasets/fashion-mnist`); `num_train`/`num_val` take the first examples only.
    """

    num_classes = 10
    LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat",
              "sandal", "shirt", "sneaker", "bag", "ankle boot")  # fmt: skip

    def __init__(self, batch_size=64, resize=(28, 28), data_dir=None, num_train=None, num_val=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise D2LiteError(f"batch_size must be a positive integer, got {batch_size!r}")
        resize = tuple(resize) if isinstance(resize, list | tuple) else (resize, resize)
        if len(resize) != 2 or not all(isinstance(s, int) and s > 0 for s in resize):
            raise D2LiteError(f"resize must be (height, width) in positive pixels, got {resize!r}")
        for name, count in (("num_train", num_train), ("num_val", num_val)):
            if count is not None and (not isinstance(count, int) or count <= 0):
                raise D2LiteError(f"{name} must be a positive integer or None, got {count!r}")
        self.save_hyperparameters()
        self._splits = None

    def _load(self):
        if self._splits is None:
            from . import fetch

            loaded = fetch.load(self.data_dir)
            self.source = loaded["source"]
            self._splits = {
                True: tuple(a[: self.num_train] for a in loaded["train"]),
                False: tuple(a[: self.num_val] for a in loaded["test"]),
            }
        return self._splits

    @property
    def train(self):
        return self._load()[True]

    @property
    def val(self):
        return self._load()[False]

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

    def get_dataloader(self, train):
        """Preprocessed host batches, for looking at the data (the Trainer uses `arrays`)."""
        preprocess = jax.jit(self.preprocess)
        for batch in self.get_tensorloader(self.arrays(train), train):
            yield preprocess(batch)

    def text_labels(self, indices):
        return [self.LABELS[int(i)] for i in np.asarray(indices).reshape(-1)]

    def visualize(self, batch, nrows=1, ncols=8, labels=(), path=None):
        """Show the first images of a batch with their labels; save them to `path` if given."""
        X, y = batch
        if not labels:
            labels = self.text_labels(y)
        return show_images(np.asarray(X)[..., 0], nrows, ncols, titles=labels, path=path)


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5, path=None):
    """A grid of grayscale images with optional titles, as a matplotlib Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(num_cols * scale, num_rows * scale))
    axes = fig.subplots(num_rows, num_cols, squeeze=False).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < len(imgs):
            ax.imshow(imgs[i], cmap="gray")
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=8)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig
