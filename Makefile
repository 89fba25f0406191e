# Two commands do all the set-up on a fresh machine:
#   make example   # creates .venv, installs nnpflow, runs the workflow on the bundled example
#   make test      # creates .venv, installs nnpflow, runs every test (SLURM one included)
#   make test-quick  # the same without tests marked slow or slurm: a few minutes
# A CUDA build of torch instead of the CPU one (in a fresh .venv: rm -rf .venv first):
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cu126 TORCH_SPEC=torch
# (TORCH_SPEC is one pip requirement, e.g. 'torch==2.13.0'; TORCH_INDEX, when set, is
# the package index pip takes torch from.)

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
CORES       ?= all
PYTEST_ARGS ?=

BIN := $(VENV)/bin

.PHONY: venv example test test-quick report dry-run clean-results

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)' $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)')
	$(BIN)/python -m pip install --quiet -e '.[test,slurm,compression]'
	touch $@

example: venv
	$(BIN)/snakemake --cores $(CORES)

dry-run: venv
	$(BIN)/snakemake --dry-run

report: venv
	$(BIN)/snakemake --cores $(CORES) --report report.html

test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

clean-results:
	rm -rf results .snakemake
