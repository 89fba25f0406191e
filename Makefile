# Two commands do all the set-up on a fresh machine:
#   make example   # creates .venv, installs nnpflow, runs the workflow on the bundled example
#   make test      # creates .venv, installs nnpflow, runs every test (SLURM one included)
# A CUDA build of torch instead of the CPU one:  make example TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cu126'

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
CORES      ?= all
PYTEST_ARGS ?=

BIN := $(VENV)/bin

.PHONY: venv example test report clean-results

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[test,slurm,compression]'
	touch $@

example: venv
	$(BIN)/snakemake --cores $(CORES)

report: venv
	$(BIN)/snakemake --cores $(CORES) --report report.html

test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

clean-results:
	rm -rf results .snakemake
