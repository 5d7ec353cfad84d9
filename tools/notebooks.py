"""`make notebooks`: write notebooks/<chapter>.ipynb from each chapter's percent-format source.

jupytext reads the `# %%` cells; the notebook gets one more cell at the top, which installs
d2lite where it is missing (on Colab, say), from this checkout's repository when it has a
remote, else from the package index. Usage: python tools/notebooks.py [CHAPTER ...] [--out DIR]
"""

import argparse
import subprocess
from pathlib import Path

import jupytext
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("*.py") if p.stem != "__init__")
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def install_source():
    """What `%pip install` takes for d2lite: git+<remote URL> of this checkout, or the name."""
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "d2lite"
    return f"git+{url}" if url.startswith(("https://", "http://", "git@", "ssh://")) else "d2lite"


def chapter_notebook(name):
    """The notebook of chapter `name`: its cells, with an install cell after the title."""
    notebook = jupytext.read(ROOT / "chapters" / f"{name}.py", fmt="py:percent")
    install = new_code_cell(
        "# Where d2lite is missing (Colab, a fresh kernel), install it first.\n"
        "try:\n"
        "    import d2lite  # noqa: F401\n"
        "except ImportError:\n"
        f'    %pip install -q "{install_source()}"'
    )
    notebook.cells.insert(1, install)  # after the title
    notebook.metadata["kernelspec"] = KERNEL
    notebook.metadata.pop("jupytext", None)  # a plain notebook, not paired with the script
    return notebook


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the chapters' notebooks.")
    parser.add_argument(
        "chapters", nargs="*", metavar="CHAPTER", help=f"one of {', '.join(CHAPTERS)} (default: all)"
    )
    parser.add_argument("--out", default=str(ROOT / "notebooks"), help="folder for the .ipynb files")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.chapters) - set(CHAPTERS))
    if unknown:
        parser.error(f"no chapter {', '.join(unknown)}: choose from {', '.join(CHAPTERS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.chapters or CHAPTERS:
        path = out / f"{name}.ipynb"
        jupytext.write(chapter_notebook(name), path, fmt="ipynb")
        print(path)


if __name__ == "__main__":
    main()
