"""The modern recipe's ablation: from the book's recipe, one ingredient added per row.

    python -m bench.ablation [chapter flags ...]     e.g. --width 16 --epochs 4 --num-train 10000

Each row is a fresh `python -m chapters.modern_recipe` process (so its time counts the
start, the imports and the compiling, as the record does) with the row's flags, then those
given here; the table gives its held-out validation accuracy, its test accuracy and its wall
time, as Markdown on stdout and as JSON under runs/bench/. One seed a row.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

# The chapter's settings for the book's recipe: a flag and its value (True and False: --flag, --no-flag).
BOOK = {"--optimizer": "sgd", "--lr": 0.1, "--batch-size": 128, "--crop-padding": 0, "--flip": False}
BOOK |= {"--erase": 0, "--schedule": "none", "--label-smoothing": 0, "--weight-decay": 0, "--ema": 0}
BOOK |= {"--tta-flip": False}

# Each row: (name, the settings it changes), cumulative.
ROWS = [
    ("the book's recipe (SGD lr 0.1, batch 128)", {}),
    ("+ Nesterov momentum, batch 512, lr 0.2", {"--optimizer": "nesterov", "--lr": 0.2, "--batch-size": 512}),
    ("+ warmup and cosine schedule", {"--schedule": "cosine", "--warmup-epochs": 1}),
    ("+ weight decay 5e-4 (kernels)", {"--weight-decay": 5e-4}),
    ("+ label smoothing 0.1", {"--label-smoothing": 0.1}),
    ("+ crops (2 px) and flips", {"--crop-padding": 2, "--flip": True}),
    ("+ random erasing 0.5", {"--erase": 0.5}),
    ("+ weight average (EMA 0.99)", {"--ema": 0.99}),
    ("+ flip TTA (the chapter's recipe)", {"--tta-flip": True}),
]


def command_line(settings):
    """The flags for `settings`; booleans as --flag or --no-flag."""
    flags = []
    for flag, value in settings.items():
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def run(flags):
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "chapters.modern_recipe", *flags], capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: python -m chapters.modern_recipe {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    val = float(re.search(r"validation accuracy: (\S+)", done.stdout).group(1))
    test = float(re.search(r"test accuracy: (\S+)", done.stdout).group(1))
    return {"val_acc": val, "test_acc": test, "wall_s": wall}


def main(extra):
    settings, rows = dict(BOOK), []
    print("| recipe | held-out val acc | test acc | wall s |\n| --- | --- | --- | --- |", flush=True)
    for name, changes in ROWS:
        settings |= changes
        flags = command_line(settings) + extra  # the flags given last win
        result = {"recipe": name, "flags": flags, **run(flags)}
        rows.append(result)
        print(
            f"| {name} | {result['val_acc']:.4f} | {result['test_acc']:.4f} | {result['wall_s']:.0f} |",
            flush=True,
        )
    out = Path("runs") / "bench" / f"ablation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"extra_flags": extra, "rows": rows}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
