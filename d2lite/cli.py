"""The command line every chapter shares: flags, a smoke mode, one-line errors."""
import argparse
import sys

from .data import FashionMNIST
from .errors import D2LiteError
from .trainer import Trainer

QUICK_BATCHES = 10  # training batches per epoch in --quick mode (2 validation batches)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def chapter_parser(name, description, *, epochs, batch_size, lr, resize):
    parser = argparse.ArgumentParser(
        prog=f"python -m chapters.{name}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help=f"training epochs (default: {epochs}, or 2 with --quick)")
    parser.set_defaults(default_epochs=epochs)
    parser.add_argument("--batch-size", type=_positive_int, default=batch_size)
    parser.add_argument("--lr", type=_positive_float, default=lr,
                        help="learning rate" + ("" if lr else " (default: the optimizer's)"))
    parser.add_argument("--resize", type=_positive_int, default=resize,
                        help="image height and width in pixels (Fashion-MNIST is 28)")  # fmt: skip
    parser.add_argument("--data-dir", default=None,
                        help="folder with the four Fashion-MNIST .gz files "
                             "(default: $D2LITE_DATA, user cache, Debian package, download)")  # fmt: skip
    parser.add_argument("--out-dir", default=f"runs/{name}",
                        help="where the live plot (progress.png/.svg) is written")  # fmt: skip
    parser.add_argument("--steps-per-dispatch", type=_positive_int, default=1,
                        help="training steps per jitted call (helps small models)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_BATCHES} batches per epoch, 2 epochs unless "
                             "--epochs is given, 2 validation batches")  # fmt: skip
    return parser


def train_chapter(args, model):
    """Fit `model` on Fashion-MNIST as the parsed flags say; return the Trainer."""
    subset = {}
    epochs = args.epochs or (2 if args.quick else args.default_epochs)
    if args.quick:
        subset = {"num_train": QUICK_BATCHES * args.batch_size, "num_val": 2 * args.batch_size}
    data = FashionMNIST(batch_size=args.batch_size, resize=(args.resize, args.resize),
                        data_dir=args.data_dir, **subset)  # fmt: skip
    trainer = Trainer(max_epochs=epochs, seed=args.seed, out_dir=args.out_dir,
                      steps_per_dispatch=args.steps_per_dispatch)  # fmt: skip
    trainer.fit(model, data)
    print(f"data: {data.source}")
    return trainer


def run_main(run, argv):
    """Call `run(argv)`; turn D2LiteError and Ctrl-C into one line and an exit status."""
    try:
        run(argv)
    except D2LiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the live plot so far is in the output folder", file=sys.stderr)
        return 130
    return 0
