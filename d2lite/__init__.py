"""d2lite: the D2L book's training framework for JAX, with one fully jitted Trainer.

`import d2lite as d2l` gives every name of the book's `d2l/jax.py` that its chapters 2-8
use, in the book's order (`BOOK`), then d2lite's own. `d2l.plt` is pyplot, imported on
first use. Importing d2lite also turns on JAX's persistent compilation cache
(devices/compile_cache.py; D2LITE_COMPILE_CACHE=0: off), and gives the Trainer the function
that turns its shorthands into callbacks and step transforms (callbacks/__init__.py): the
core files (hparams, module, data, trainer, board, book) import nothing from the sub-packages.
The book's next edition (Flax NNX) has its own face: `from d2lite import nnx as d2l` (nnx/).
"""

from .board import ProgressBoard
from .book import *  # noqa: F403 (the book's models, optimizer, devices and tensor aliases)
from .callbacks import defaults
from .callbacks.progress import ProgressLine
from .cli import chapter_args, init_flag
from .data import DataModule, FashionMNIST, SyntheticRegressionData
from .devices.compile_cache import enable_compile_cache
from .errors import D2LiteError
from .hparams import HyperParameters, add_to_class
from .module import Classifier, Module
from .recipe import Recipe
from .runs.predictions import plot_predictions
from .trainer import Callback, Snapshot, StepTransform, Trainer, TrainingInterrupted, TrainState

Trainer.defaults = staticmethod(defaults)
enable_compile_cache()  # importing compiles nothing; the cache must be set before anything does


def __getattr__(name):
    if name == "plt":  # pyplot on demand: the Trainer and scripts never need it
        from matplotlib import pyplot

        return pyplot
    raise AttributeError(f"module 'd2lite' has no attribute {name!r}")


BOOK = """get_seed get_key nn_Module use_svg_display set_figsize set_axes plot add_to_class HyperParameters
ProgressBoard Module DataModule Trainer SyntheticRegressionData LinearRegressionScratch SGD LinearRegression
FashionMNIST show_images Classifier SoftmaxRegression cpu gpu num_gpus try_gpu try_all_gpus corr2d LeNet
Residual ResNeXtBlock plt to numpy transpose sigmoid ones_like ones zeros_like zeros arange meshgrid sin sinh
cos cosh tanh linspace exp log tensor expand_dims matmul int32 int64 float32 concat stack abs eye reshape
reduce_sum argmax astype reduce_mean swapaxes repeat""".split()
__all__ = (
    BOOK
    + """Callback D2LiteError ProgressLine Snapshot StepTransform TrainState TrainingInterrupted chapter_args
plot_predictions max_pool init_flag Recipe""".split()
)
