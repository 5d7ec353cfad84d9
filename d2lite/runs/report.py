"""The results report: `python -m d2lite.runs.report` (`make report`) reads every run directory.

It writes `runs/REPORT.md`, a table per chapter (parameters, epochs, best and final
validation accuracy, training speed, device) and `runs/report.png`, the validation
accuracy curves of each chapter's best run in one figure.
"""

import argparse
import datetime
import statistics
import sys
from pathlib import Path

from ..callbacks.progress import _hms
from ..errors import D2LiteError
from . import directory as runs


def collect(root):
    """One dict per run directory under `root` (any folder holding a config.json)."""
    root = Path(root)
    found = []
    for config_path in sorted(root.rglob(runs.CONFIG)):
        run_dir = config_path.parent
        config = runs.read_config(run_dir)
        history = runs.read_metrics(run_dir)
        default = run_dir.parent.name if run_dir.parent != root else run_dir.name
        accuracies = [(r["epoch"], r["val_acc"]) for r in history if r.get("val_acc") is not None]
        found.append(
            {
                "chapter": config.get("chapter") or default,
                "run": run_dir.relative_to(root).as_posix(),
                "config": config,
                "history": history,
                "accuracies": accuracies,
                "best": max(accuracies, key=lambda a: a[1]) if accuracies else None,
            }
        )
    return found


def _device(config):
    env = config.get("environment")
    if not env:
        return "?"
    kind = env.get("device_kind") or "?"
    if env.get("backend") == "cpu":
        host = env.get("host", {})
        cores = f", {host['cpu_count']} cores" if host.get("cpu_count") else ""
        return f"cpu ({host.get('cpu') or 'unknown'}{cores})"
    count = len(env.get("devices", [])) or 1
    return f"{env.get('backend', '?')} ({f'{count} x ' if count > 1 else ''}{kind})"


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _subset(config):
    """', 4 batches' or ', 1,280 examples' for a run trained on part of the data (--quick, smoke runs)."""
    batches = config.get("trainer", {}).get("limit_train_batches")
    examples = config.get("data", {}).get("num_train")
    if batches:
        return f", {batches} batch{'' if batches == 1 else 'es'}"
    return f", {examples:,} examples" if isinstance(examples, int) else ""


def _row(run):
    config, history = run["config"], run["history"]
    planned = config.get("trainer", {}).get("max_epochs", "?")
    resumed = len(config.get("resumed", []))
    params = config.get("parameters")
    speeds = [r["examples_per_s"] for r in history if r.get("examples_per_s")]
    best = f"{run['best'][1]:.3f} (epoch {run['best'][0]})" if run["best"] else "-"
    final = f"{run['accuracies'][-1][1]:.3f}" if run["accuracies"] else "-"
    return [
        f"`{run['run']}`",
        config.get("model", {}).get("class", "?").rsplit(".", 1)[-1],
        f"{params:,}" if isinstance(params, int) else "?",
        f"{len(history)}/{planned}" + _subset(config) + (f", resumed {resumed}x" if resumed else ""),
        best,
        final,
        # The median, so that the epochs that also compiled (the first of each session) do
        # not drag the number down.
        f"{statistics.median(speeds):,.0f}" if speeds else "-",
        _hms(history[-1]["wall_time"]) if history and history[-1].get("wall_time") else "-",
        _first_epoch_extra(history, resumed),
        _device(config),
    ]


def _first_epoch_extra(history, resumed):
    """Seconds the first epoch's training took over a steady epoch's (the median of the
    others): mostly compilation, less with a warm compilation cache."""
    seconds = [r.get("seconds") for r in history]
    if resumed or len(seconds) < 2 or None in seconds:
        return "-"
    return f"{seconds[0] - statistics.median(seconds[1:]):.1f}"


COLUMNS = [
    "run",
    "model",
    "parameters",
    "epochs",
    "best val acc",
    "final val acc",
    "examples/s",
    "training time",
    "first epoch extra s",
    "device",
]


def write_report(root="runs", out=None):
    """Write the report (and its figure next to it); return the Markdown text."""
    root = Path(root)
    out = Path(out) if out is not None else root / "REPORT.md"
    found = collect(root)
    if not found:
        raise D2LiteError(
            f"no runs in {root}/ (no config.json below it): train a chapter first, e.g. make lenet"
        )
    chapters = {}
    for run in found:
        chapters.setdefault(run["chapter"], []).append(run)
    figure = out.with_name("report.png")
    plotted = plot_accuracy(chapters, figure)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Training runs",
        "",
        f"{_count(len(found), 'run')} of {_count(len(chapters), 'chapter')} in `{root}/`, collected by "
        f"`make report` (`python -m d2lite.runs.report`) on {stamp}. Accuracies are on the validation "
        "(test) split; epochs are done/planned, with the batches or examples an epoch when a run trained "
        "on part of the data (--quick, smoke runs); examples/s is the median over epochs of training "
        "examples per second; "
        "training time counts only time spent training, over all sessions of a resumed run; "
        "first epoch extra s is how much longer the first epoch trained than a steady one "
        "(the median of the others), mostly compilation.",
        "",
    ]
    if plotted:
        lines += [f"![Validation accuracy of each chapter's best run]({figure.name})", ""]
    for chapter in sorted(chapters):
        lines += [f"## {chapter}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_row(run)) + " |" for run in chapters[chapter]]
        lines.append("")
    text = "\n".join(lines)
    runs.write_atomic(out, text)
    return text


def plot_accuracy(chapters, path):
    """Validation accuracy per epoch of each chapter's best run; False if no run has any."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    plotted = False
    for chapter in sorted(chapters):
        candidates = [run for run in chapters[chapter] if run["best"]]
        if not candidates:
            continue
        best = max(candidates, key=lambda run: run["best"][1])
        epochs, accuracies = zip(*best["accuracies"], strict=True)
        ax.plot(epochs, accuracies, marker="o", markersize=3, label=f"{chapter} ({best['run']})")
        plotted = True
    if not plotted:
        return False
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m d2lite.runs.report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="the folder holding the run directories")
    parser.add_argument("--out", default=None, help="the report's path (default: RUNS/REPORT.md)")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.runs, args.out)
    except D2LiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"wrote {Path(args.out) if args.out else Path(args.runs) / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
