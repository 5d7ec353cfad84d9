"""Every chapter as a notebook, run top to bottom in a real Jupyter kernel as a smoke run."""

import math
import re
import runpy
from pathlib import Path

import pytest
from nbclient import NotebookClient

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
    assert (tmp_path / "runs" / name).is_dir()  # a recorded run, next to the notebook


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
