"""d2lite: the D2L book's training framework for JAX, with one fully jitted Trainer.

`import d2lite as d2l` gives the names the book's JAX code uses. Importing it also turns
on JAX's persistent compilation cache (compile_cache.py; D2LITE_COMPILE_CACHE=0: off).
"""
from .board import ProgressBoard, ProgressLine
from .compile_cache import enable_compile_cache
from .data import DataModule, FashionMNIST, show_images
from .errors import D2LiteError
from .hparams import HyperParameters
from .module import Classifier, Module
from .nnx_adapter import NNXClassifier
from .predictions import plot_predictions
from .trainer import Trainer, TrainingInterrupted, TrainState
from .utils import add_to_class, count_compiles, get_key

enable_compile_cache()  # importing compiles nothing; the cache must be set before anything does

__all__ = [
    "Classifier", "D2LiteError", "DataModule", "FashionMNIST", "HyperParameters", "Module", "NNXClassifier",
    "ProgressBoard", "ProgressLine", "TrainState", "Trainer", "TrainingInterrupted", "add_to_class",
    "count_compiles", "get_key", "plot_predictions", "show_images",
]  # fmt: skip
