"""`make notebooks`: write notebooks/<chapter>.ipynb from each chapter's percent-format source.

jupytext reads the `# %%` cells. A cell marked `active="py"` (the chapter's script: its
flags, its `main`) is left out, and a cell marked `active="ipynb"` (commented out in the .py
file: the training cells with the chapter's values written out) comes in as code, so the
notebook reads like the book and shows no command-line plumbing. The notebook gets one more
cell at the top, which installs
d2lite where it is missing (on Colab, say) from the repository that pyproject.toml declares
(`[project.urls] Repository`), and without one says how to install it: never from a bare
package name on the public index, which this project does not own.
Usage: python tools/notebooks.py [CHAPTER ...] [--out DIR]
"""

import argparse
import tomllib
from pathlib import Path

import jupytext
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("*.py") if p.stem != "__init__")
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def repository(pyproject=ROOT / "pyproject.toml"):
    """The repository URL pyproject.toml declares (`[project.urls]`, Repository or Source), or None."""
    urls = tomllib.loads(Path(pyproject).read_text()).get("project", {}).get("urls", {})
    return next((url for key, url in urls.items() if key.lower() in ("repository", "source")), None)


def install_cell(url):
    """The cell that installs d2lite where it is missing: from `url`, else it says how."""
    if url:
        install = f'    %pip install -q "git+{url}"'
    else:
        install = (
            '    raise ImportError("d2lite is not installed here: install it from its repository, '
            "%pip install 'git+<the repository URL>', or from a copy, %pip install -e <its folder>\")"
        )
    return new_code_cell(
        "# Where d2lite is missing (Colab, a fresh kernel), install it first.\n"
        "try:\n"
        "    import d2lite  # noqa: F401\n"
        "except ImportError:\n" + install
    )


def chapter_notebook(name):
    """The notebook of chapter `name`: its cells, with an install cell after the title."""
    notebook = jupytext.read(ROOT / "chapters" / f"{name}.py", fmt="py:percent")
    notebook.cells = [cell for cell in notebook.cells if "ipynb" in cell.metadata.pop("active", "ipynb")]
    notebook.cells.insert(1, install_cell(repository()))  # after the title
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
