"""d2lite's second face: the next edition of the book (Flax NNX), `from d2lite import nnx as d2l`.

Its names, with that edition's signatures: stateful models called as `model(X)`, built with
`rngs=`; `loss(Y_hat, Y, averaged=True)`; `training_step(batch)` returning the loss (the Trainer
differentiates); a Trainer with `optim`, `train_model` and `val_model`. Everything else is the
core's, shared with `import d2lite as d2l` (the current edition, Flax Linen): the data modules,
the board, the plotting helpers, the devices, the tensor aliases, and the one Trainer, whose
jitted programs, callbacks (run directories, exact resume, signals), recipe and bfloat16 train
NNX models through `Functional` (module.py).
"""

# ruff: noqa: F401 (this module re-exports: its names are the face)
from flax import nnx as _nnx

from ..board import ProgressBoard
from ..book import (  # the book's helpers and tensor aliases, shared with the core
    SGD,
    abs,
    arange,
    argmax,
    astype,
    concat,
    corr2d,
    cos,
    cosh,
    cpu,
    exp,
    expand_dims,
    eye,
    float32,
    gpu,
    int32,
    int64,
    linspace,
    log,
    matmul,
    max_pool,
    meshgrid,
    num_gpus,
    numpy,
    ones,
    ones_like,
    plot,
    reduce_mean,
    reduce_sum,
    repeat,
    reshape,
    set_axes,
    set_figsize,
    show_images,
    sigmoid,
    sin,
    sinh,
    stack,
    swapaxes,
    tanh,
    tensor,
    to,
    transpose,
    try_all_gpus,
    try_gpu,
    use_svg_display,
    zeros,
    zeros_like,
)
from ..callbacks.progress import ProgressLine
from ..cli import chapter_args  # the chapters' command line
from ..data import DataModule, FashionMNIST, SyntheticRegressionData
from ..errors import D2LiteError
from ..hparams import HyperParameters, add_to_class
from ..recipe import Recipe
from ..runs.predictions import plot_predictions
from ..trainer import Callback, Snapshot, TrainingInterrupted
from .book import (
    LeNet,
    LinearRegression,
    LinearRegressionScratch,
    Residual,
    ResNeXtBlock,
    SoftmaxRegression,
    cross_entropy,
    get_key,
    get_seed,
    show_heatmaps,
)
from .module import Classifier, Functional, Module
from .trainer import Trainer

nn_Module = _nnx.Module
size = lambda x, *args, **kwargs: x.size  # noqa: E731 (the next edition's alias)


def __getattr__(name):
    if name == "plt":  # pyplot on demand, as the core's
        from matplotlib import pyplot

        return pyplot
    raise AttributeError(f"module 'd2lite.nnx' has no attribute {name!r}")


# The next edition's names, in the order of its d2l/jax.py (chapters 2-8).
BOOK = """get_key get_seed nn_Module use_svg_display set_figsize set_axes plot add_to_class HyperParameters
ProgressBoard Module DataModule Trainer SyntheticRegressionData LinearRegressionScratch SGD LinearRegression
FashionMNIST Classifier cross_entropy show_heatmaps SoftmaxRegression cpu gpu num_gpus try_gpu try_all_gpus
corr2d LeNet Residual ResNeXtBlock show_images plt ones_like ones zeros_like zeros arange meshgrid sin sinh
cos cosh tanh linspace exp log tensor expand_dims matmul int32 int64 float32 concat stack abs eye reshape
reduce_sum argmax astype reduce_mean swapaxes repeat to numpy transpose sigmoid size""".split()
__all__ = (
    BOOK
    + """Callback D2LiteError Functional ProgressLine Recipe Snapshot TrainingInterrupted chapter_args
plot_predictions max_pool""".split()
)
