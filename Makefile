# Every target sets up what it needs: `make resnet` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: install data test lint format bench report clean all notebooks lab

install: $(INSTALLED)

# Rebuilt only when the dependencies change; an existing .venv is reused.
$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Fashion-MNIST: a local copy, else the official download, else (Debian/Ubuntu, as root)
# the package dataset-fashion-mnist. Prints where the data came from.
data: install
	@$(PY) -m d2lite.download.fetch 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "no local copy and no download: installing Debian's dataset-fashion-mnist"; \
	    { apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && \
	      apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null && $(PY) -m d2lite.download.fetch; \
	  else $(PY) -m d2lite.download.fetch; fi; }

# One pytest worker per CPU core: most of the suite's time is XLA compiling, one program at a time.
test: install data
	$(PY) -m pytest -q -n auto --dist worksteal

# Speed side by side: d2lite vs a pure jitted step, the book's loop and PyTorch. A torch already in
# .venv is used; otherwise the bench extra installs one, and without a network the bench runs
# without the PyTorch rows.
bench: install data
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q -e '.[dev,bench]' || \
	  echo "could not install torch: benchmarking without PyTorch"
	$(PY) -m bench.bench $(ARGS)

# Style is ruff's: `ruff format` writes it (make format), lint checks it.
lint: install
	$(PY) -m ruff check d2lite chapters tests tools bench
	$(PY) -m ruff format --check d2lite chapters tests tools bench

format: install
	$(PY) -m ruff format d2lite chapters tests tools bench

# notebooks/<chapter>.ipynb from each chapter's source (jupytext percent format): make notebooks
notebooks: install
	$(PY) tools/notebooks.py $(ARGS)

# JupyterLab in the project's environment, on the notebooks (installed on first use).
LAB_INSTALLED := $(VENV)/.lab-installed
$(LAB_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install -q -e '.[dev,lab]'
	@touch $@

lab: $(LAB_INSTALLED) data
	$(PY) tools/notebooks.py
	$(VENV)/bin/jupyter lab notebooks $(ARGS)

# The main job: ResNet-18 on Fashion-MNIST 96x96 (D2L 8.6), 10 epochs, batch 128.
resnet: install data
	$(PY) -m chapters.resnet $(ARGS)

# One target per chapter, in the book's order: `make vgg ARGS="--epochs 2"`.
CHAPTERS := linear_regression softmax_regression lenet alexnet vgg nin googlenet batchnorm \
            resnet resnext densenet regnet resnet_nnx modern_recipe
.PHONY: $(CHAPTERS) modern
$(filter-out resnet,$(CHAPTERS)): install data
	$(PY) -m chapters.$@ $(ARGS)

# Beyond the book: a modern recipe, tuned on held-out training images, tested once.
modern: modern_recipe

# Every chapter with its defaults: hours on a CPU, minutes on a GPU.
all: $(CHAPTERS)

# runs/REPORT.md and runs/report.png from every run directory under runs/ (ARGS="--runs DIR": another).
report: install
	$(PY) -m d2lite.runs.report $(ARGS)

# Leaves runs/ alone: it holds your checkpoints.
clean:
	rm -rf $(VENV) .pytest_cache
