"""Every chapter as a notebook, run top to bottom in a real Jupyter kernel as a smoke run."""

import dataclasses
import importlib
import math
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import d2lite as d2l

ROOT = Path(__file__).resolve().parent.parent
TOOL = runpy.run_path(str(ROOT / "tools" / "notebooks.py"))
SMOKE_BATCHES = 2


def outputs_of(cell):
    return cell.get("outputs", [])


def text_of(cell):
    return "".join(o.get("text", "") for o in outputs_of(cell) if o["output_type"] == "stream")


@pytest.mark.parametrize("name", TOOL["CHAPTERS"])
def test_chapter_notebook_runs_in_a_kernel(name, tmp_path, monkeypatch):
    monkeypatch.setenv("D2LITE_FAST_DEV_RUN", str(SMOKE_BATCHES))  # the kernel inherits it
    notebook = TOOL["chapter_notebook"](name)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in code for o in outputs_of(cell) if o["output_type"] == "error"]
    fit = next(cell for cell in code if "trainer.fit(" in cell.source)
    # The board's one image, updated in place, stays in the cell next to the progress lines.
    images = [o for o in outputs_of(fit) if "image/png" in o.get("data", {})]
    assert len(images) == 1 and images[0]["data"]["image/png"]
    assert f"a smoke run of 1 epoch, {SMOKE_BATCHES} training" in text_of(fit)
    # The epoch's progress line, with a finite training loss.
    (loss,) = re.findall(r"epoch 1/1  train_loss (\S+)", text_of(fit))
    assert math.isfinite(float(loss))
    results = code[-1]
    if name == "linear_regression":
        assert "error in estimating w" in text_of(results)
    else:  # the final accuracy and the predictions grid
        assert "validation accuracy: " in text_of(results)
        assert any("image/png" in o.get("data", {}) for o in outputs_of(results))
    assert not (tmp_path / "runs").exists()  # as in the book, results stay in memory: no run directory


def test_the_notebook_starts_with_its_title_then_installs_d2lite_where_missing():
    cells = TOOL["chapter_notebook"]("lenet").cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# LeNet (D2L 7.6)")
    assert cells[1].cell_type == "code" and "%pip install" in cells[1].source
    assert "import d2lite" in cells[1].source.split("%pip")[0]  # only when the import fails
    assert [c.source for c in cells].count(cells[1].source) == 1


def test_the_install_cell_installs_from_the_declared_repository_or_says_how(tmp_path):
    declared = tmp_path / "pyproject.toml"
    declared.write_text(
        '[project]\nname = "d2lite"\n[project.urls]\nRepository = "https://example.org/d2lite"\n'
    )
    url = TOOL["repository"](declared)
    assert url == "https://example.org/d2lite"
    assert TOOL["install_cell"](url).source.endswith('%pip install -q "git+https://example.org/d2lite"')
    (tmp_path / "none.toml").write_text('[project]\nname = "d2lite"\n')
    assert TOOL["repository"](tmp_path / "none.toml") is None
    says_how = TOOL["install_cell"](None).source
    assert "raise ImportError(" in says_how and "git+<the repository URL>" in says_how
    assert not re.search(r"%pip install (-q )?\"?d2lite\b", says_how)  # never a bare index name
    compile(says_how.replace("%pip", "pip"), "cell", "exec")  # valid Python apart from the magic


def test_no_notebook_shows_the_scripts_plumbing():
    for name in TOOL["CHAPTERS"]:
        code = [c.source for c in TOOL["chapter_notebook"](name).cells if c.cell_type == "code"]
        plumbing = [s for s in code if re.search(r"__name__|chapter_args|\bargs\.|def main|add_argument", s)]
        assert not plumbing, f"{name}: {plumbing}"
        assert any("trainer.fit(model, data)" in s for s in code), name


class Fitted(Exception):
    """Raised by the patched `Trainer.fit`: what a fit was handed is all these tests need."""


def handed_to_fit(monkeypatch, run):
    """The (model, data, trainer) that `run()` hands to `Trainer.fit`, which does not train."""
    seen = {}

    def fit(trainer, model, data, key=None):
        seen.update(model=model, data=data, trainer=trainer)
        raise Fitted

    monkeypatch.setattr(d2l.Trainer, "fit", fit)
    with pytest.raises(Fitted):
        run()
    return seen["model"], seen["data"], seen["trainer"]


def settings(model, data, trainer):
    """What decides a fit: the model's class and fields, the data's and the Trainer's settings
    (not where the run is recorded, nor `num_gpus`, which picks no devices)."""
    if dataclasses.is_dataclass(model):
        fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    else:  # an NNX model (the next edition's face) keeps its arguments in hparams
        fields = dict(model.hparams)
    fields = {k: v for k, v in fields.items() if k not in ("parent", "name", "board")}
    # A class the notebook defines is another object than the chapter module's: compare names.
    fields = {k: v.__qualname__ if isinstance(v, type) else v for k, v in fields.items()}
    data_settings = {k: v for k, v in data.hparams.items() if k not in ("data_dir", "num_train", "num_val")}
    data_settings = {
        k: np.asarray(v).tolist() if hasattr(v, "shape") else v for k, v in data_settings.items()
    }
    recorded = ("num_gpus", "run_dir", "resume", "keep_checkpoints", "run_info")
    trainer_settings = {k: v for k, v in trainer.hparams.items() if k not in recorded}
    trainer_settings["recipe"] = trainer_settings["recipe"] or d2l.Recipe()  # None: none of it
    return type(model).__name__, fields, type(data).__name__, data_settings, trainer_settings


@pytest.mark.parametrize("name", TOOL["CHAPTERS"])
def test_the_notebooks_values_are_the_scripts_defaults(name, tmp_path, monkeypatch):
    monkeypatch.delenv("D2LITE_FAST_DEV_RUN", raising=False)
    monkeypatch.chdir(tmp_path)  # the script records its run in runs/ here
    monkeypatch.setattr(d2l.Classifier, "layer_summary", lambda self, X_shape, key=None: [])
    cells = [c.source for c in TOOL["chapter_notebook"](name).cells[2:] if c.cell_type == "code"]
    namespace = {"__name__": "notebook"}

    def run_notebook():
        for cell in cells:
            exec(compile(cell, f"{name}.ipynb", "exec"), namespace)

    def run_script():
        hook = sys.excepthook
        try:
            importlib.import_module(f"chapters.{name}").main([])
        finally:
            sys.excepthook = hook

    notebook = settings(*handed_to_fit(monkeypatch, run_notebook))
    script = settings(*handed_to_fit(monkeypatch, run_script))
    assert notebook == script


EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
for path in sys.argv[1:]:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    nbformat.write(notebook, path)
"""


def test_notebooks_run_outside_the_checkout_from_an_installed_d2lite(tmp_path):
    """As Colab runs them: d2lite installed with pip into a fresh environment, the notebooks
    copied into an empty folder and run there by a kernel of that environment."""
    venv, folder = tmp_path / "venv", tmp_path / "notebooks"
    folder.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # From a copy: pip builds in the source folder, and the checkout's own egg-info is no wheel.
    outputs = {".venv", ".git", "build", "d2lite.egg-info", "runs", "notebooks", "data"}  # not the source

    def ignore(folder, names):
        return [n for n in names if n == "__pycache__" or (Path(folder) == ROOT and n in outputs)]

    source = shutil.copytree(ROOT, tmp_path / "source", ignore=ignore)
    subprocess.run([*pip, str(source), "nbclient", "ipykernel"], check=True, cwd=tmp_path)
    top_level = "from importlib.metadata import files; print(sorted({f.parts[0] for f in files('d2lite')}))"
    installed = subprocess.run(
        [python, "-c", top_level], capture_output=True, text=True, check=True, cwd=folder
    )
    assert [n for n in eval(installed.stdout) if not n.endswith(".dist-info")] == ["d2lite"]

    TOOL["main"](["lenet", "resnet", "--out", str(tmp_path / "made")])
    for name in ("lenet", "resnet"):
        shutil.copy(tmp_path / "made" / f"{name}.ipynb", folder)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["D2LITE_FAST_DEV_RUN"] = str(SMOKE_BATCHES)
    paths = [str(folder / f"{name}.ipynb") for name in ("lenet", "resnet")]
    subprocess.run([python, "-c", EXECUTE, *paths], check=True, cwd=folder, env=env)

    for path in paths:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert not [o for c in code for o in outputs_of(c) if o["output_type"] == "error"], path
        assert "%pip" in code[0].source and not outputs_of(code[0])  # installed already: no pip
        fit = next(c for c in code if "trainer.fit(" in c.source)
        assert [o for o in outputs_of(fit) if "image/png" in o.get("data", {})]  # the board
        assert any("image/png" in o.get("data", {}) for o in outputs_of(code[-1]))  # the predictions
    assert sorted(p.name for p in folder.iterdir()) == ["lenet.ipynb", "resnet.ipynb"]  # no run directory
