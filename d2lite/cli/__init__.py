"""The options every chapter shares: flags in a script, defaults in a notebook, runs that resume."""

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path

from ..board import in_notebook
from ..data import fast_dev_run
from ..devices.precision import PRECISIONS
from ..errors import D2LiteError, first_line
from ..models import KERNEL_INITS
from ..recipe import SCHEDULES, Recipe
from ..runs import directory as runs

QUICK_BATCHES = 10  # training batches per epoch in --quick mode (2 validation batches)
RUNS = "runs"  # where the chapters' runs go: runs/<chapter>/<date>-<time>/


def positive(number):
    """An argparse type for a positive `number` (int or float)."""

    def parse(text):
        try:
            value = number(text)
        except ValueError:
            value = 0
        if not value > 0:  # NaN too
            kind = "integer" if number is int else "number"
            raise argparse.ArgumentTypeError(f"expected a positive {kind}, got {text!r}")
        return value

    return parse


positive_int, positive_float = positive(int), positive(float)


def steps_per_dispatch(text):
    return text if text == "auto" else positive_int(text)


class ChapterParser(argparse.ArgumentParser):
    """A chapter's flags. With --resume, the flags not given take the resumed run's values."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if parsed.resume is None:
            return parsed, extras
        if parsed.resume != "latest":
            resume = parsed.resume
            run_dir = runs.resume_target(resume)[0]
        elif parsed.out_dir is not None:
            resume = run_dir = Path(parsed.out_dir)
        else:
            parent = Path(RUNS) / parsed.chapter
            resume = run_dir = runs.latest_run(parent)
            if run_dir is None:
                raise D2LiteError(
                    f"no run of {parsed.chapter} to resume in {parent}: start one with "
                    f"python -m chapters.{parsed.chapter}"
                )
        saved = runs.read_config(run_dir).get("args", {})
        flags = {action.dest for action in self._actions} - {"resume", "out_dir", "help"}
        self.set_defaults(**{k: v for k, v in saved.items() if k in flags})
        parsed, extras = super().parse_known_args(args)  # again, with the run's values as defaults
        parsed.resume, parsed.out_dir = str(resume), str(run_dir)
        return parsed, extras


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default once: not for flags whose help already gives it, nor for None or off."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def chapter_parser(name, description, *, epochs, batch_size, lr, resize):
    parser = ChapterParser(
        prog=f"python -m chapters.{name}", description=description, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help=f"training epochs (default: {epochs}, or 2 with --quick)",
    )
    parser.set_defaults(default_epochs=epochs, chapter=name)
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="examples per step")
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=lr,
        help="learning rate" + ("" if lr else " (default: the optimizer's)"),
    )
    if resize is not None:  # a chapter on images
        parser.add_argument(
            "--resize",
            type=positive_int,
            default=resize,
            help="image height and width in pixels (Fashion-MNIST is 28)",
        )
        parser.add_argument(
            "--num-train",
            type=positive_int,
            metavar="N",
            help="train on the first N training images (default: all 60000)",
        )
        parser.add_argument(
            "--num-val",
            type=positive_int,
            metavar="N",
            help="validate on the first N test images (default: all 10000)",
        )
        parser.add_argument(
            "--data-dir",
            help="folder with the four Fashion-MNIST .gz files "
            "(default: $D2LITE_DATA, user cache, Debian package, download)",
        )
        recipe_flags(parser)
        parser.add_argument(
            "--predictions",
            action="store_true",
            help="after training, save predictions.png in the run directory: validation "
            "images with their true and predicted labels, mistakes first",
        )
    parser.add_argument(
        "--out-dir",
        "--run-dir",
        dest="out_dir",
        metavar="DIR",
        help="the run directory: config.json, metrics.csv, the live plot "
        f"(progress.png/.svg), checkpoints/ (default: {RUNS}/{name}/<date>-<time>)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="DIR",
        help=f"continue a run from its last checkpoint: the newest run in {RUNS}/{name} "
        "(or --out-dir), or the run directory or checkpoint DIR; flags not given "
        "keep the run's values",
    )
    parser.add_argument(
        "--keep-checkpoints", type=positive_int, default=3, help="how many of the newest checkpoints to keep"
    )
    parser.add_argument(
        "--steps-per-dispatch",
        type=steps_per_dispatch,
        default="auto",
        help="training steps per jitted call (helps small models); auto: 1 on a CPU, and on GPUs up to 32 "
        "for a light step (under 10 GFLOP, as LeNet's), 1 for a heavier one",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute dtype of the forward and backward passes; parameters, optimizer "
        "state and loss stay float32",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="several hosts: join them with jax.distributed.initialize() first (Slurm, "
        "Open MPI and TPU pods are detected; else set JAX_COORDINATOR_ADDRESS "
        "(host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID); each batch is split "
        "over all devices",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the order and dropout")
    parser.add_argument(
        "--stop-on-divergence",
        action="store_true",
        help="stop when the training loss jumps far above its lowest level or the validation accuracy "
        "collapses (without it, a warning); the last checkpoint precedes it",
    )
    overrides = "--epochs, --num-train or --num-val say" if resize else "--epochs says"
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_BATCHES} batches per epoch, 2 epochs, 2 validation batches, "
        f"unless {overrides} otherwise",
    )
    return parser


def recipe_flags(parser):
    """The ingredients of a modern recipe beyond the book's (d2lite/recipe), all off by default."""
    group = parser.add_argument_group("beyond the book (d2lite.Recipe; all off by default)")
    add = group.add_argument
    add("--crop-padding", type=int, metavar="PIXELS", help="random crops of the padded images")
    add(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="mirror half of the training images left to right",
    )
    add("--erase", type=float, metavar="P", help="blank a random rectangle with probability P")
    add("--schedule", choices=(*SCHEDULES, "none"), help="learning-rate schedule over the run's steps")
    add("--warmup-epochs", type=float, metavar="E", help="the schedule's linear rise")
    add("--label-smoothing", type=float, metavar="S", help="spread S of each target")
    add("--weight-decay", type=float, metavar="W", help="L2 on the kernels only")
    add("--ema", type=float, metavar="DECAY", help="validate an average of the weights (0: off)")
    add("--tta-flip", action=argparse.BooleanOptionalAction, help="validate on each image and its mirror")


def recipe_of(args):
    """The Recipe the flags of `recipe_flags` ask for."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)}
    off = {"schedule": "none", "ema": 0}  # how a flag turns off an ingredient a chapter turned on
    given = {k: v for k, v in given.items() if v is not None and v != off.get(k, ())}
    if "schedule" not in given:
        given.pop("warmup_epochs", None)  # the warmup is the schedule's
    return Recipe(**given)


def chapter_args(name, title, *, epochs, batch_size, lr, resize, options=None, smoke_resize=None, argv=None):
    """The settings of chapter `name`'s script, as an argparse Namespace.

    They come from the command line (`argv`, default `sys.argv`), whose `--help` lists them,
    and d2lite's errors then end the script with one line instead of a traceback; in a
    notebook kernel, the defaults given here. `options(parser)` adds the chapter's own flags.
    Besides the flags, the Namespace holds what the script passes on: `data_options` for
    `FashionMNIST` (data folder, subsets) and `trainer_options` for `Trainer` (seed, run
    directory, resume, precision, ...). A chapter without images (`resize=None`) has no image
    flags and no `data_options`. Under `D2LITE_FAST_DEV_RUN` (a smoke run: see `Trainer` and
    `FashionMNIST`) the images shrink to `smoke_resize` pixels, the smallest input the model
    takes, so that every chapter's script runs in seconds on a CPU.
    """
    parser = chapter_parser(name, title, epochs=epochs, batch_size=batch_size, lr=lr, resize=resize)
    if options is not None:
        options(parser)
    notebook = in_notebook()
    if not notebook:  # before parsing: --resume reads the run it names, and may fail
        sys.excepthook = functools.partial(one_line_errors, name)
    args = parser.parse_args([] if notebook and argv is None else argv)
    if args.distributed:
        start_distributed()
    args.epochs = args.epochs or (2 if args.quick else args.default_epochs)
    images = resize is not None
    if fast_dev_run() and images:
        args.resize = smoke_resize or args.resize
    limits = {}
    if args.quick and images:
        args.num_train = args.num_train or QUICK_BATCHES * args.batch_size
        args.num_val = args.num_val or 2 * args.batch_size
    elif args.quick:
        limits = {"limit_train_batches": QUICK_BATCHES, "limit_val_batches": 2}
    if images:
        args.predictions = args.predictions or notebook
    run_dir = args.out_dir or runs.new_run_dir(Path(RUNS) / name)
    not_flags = ("resume", "out_dir", "default_epochs", "chapter")
    flags = {k: v for k, v in vars(args).items() if k not in not_flags}
    if images:
        args.data_options = {"data_dir": args.data_dir, "num_train": args.num_train, "num_val": args.num_val}
    args.trainer_options = {
        "seed": args.seed,
        "run_dir": None if args.resume else run_dir,
        "resume": args.resume,
        "keep_checkpoints": args.keep_checkpoints,
        "run_info": {"chapter": name, "args": flags},
        "steps_per_dispatch": args.steps_per_dispatch,
        "precision": args.precision,
        "stop_on_divergence": args.stop_on_divergence,
        "recipe": recipe_of(args) if images else None,
        **limits,
    }
    return args


def one_line_errors(chapter, kind, error, traceback):
    """A chapter script's `sys.excepthook`: d2lite's errors as one line, Ctrl-C with the command
    that resumes the run."""
    if isinstance(error, D2LiteError):
        print(f"error: {error}", file=sys.stderr)
    elif isinstance(error, KeyboardInterrupt):  # Python still exits with status 130
        print(f"\n{str(error) or 'interrupted'}", file=sys.stderr)
        run_dir = getattr(error, "run_dir", None)
        if run_dir is not None:
            print(f"resume with: python -m chapters.{chapter} --resume {run_dir}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, traceback)


def start_distributed():
    """Join the other processes of a multi-host run (before JAX computes anything)."""
    import jax

    counts = {}  # JAX reads JAX_COORDINATOR_ADDRESS itself, but not these two
    for name, variable in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if os.environ.get(variable):
            try:
                counts[name] = int(os.environ[variable])
            except ValueError:
                raise D2LiteError(f"{variable} must be an integer, got {os.environ[variable]!r}") from None
    try:
        jax.distributed.initialize(**counts)
    except (RuntimeError, ValueError) as error:
        first = first_line(error)
        raise D2LiteError(
            f"--distributed: could not join the other processes ({first}); on one "
            "machine leave it out: all its devices are used anyway"
        ) from error
    print(
        f"distributed: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.device_count()} devices in all",
        flush=True,
    )


def init_flag(parser, default="lecun"):
    """The --init flag of the chapters whose networks take any of `d2lite.models.KERNEL_INITS`."""
    parser.add_argument(
        "--init",
        choices=sorted(KERNEL_INITS),
        default=default,
        help="kernel initialisation: lecun (Flax's default, as the book's JAX code), xavier (the "
        "book's init_cnn in its PyTorch and MXNet code) or he (for ReLU networks; not the book's)",
    )
