# Set-up and the two everyday commands: `make run REPO=...` and `make test`.
VENV ?= .venv
PYTHON ?= python3
REPO ?= ../pokeemerald
QUERY ?= wall clock window
# A local CPU build of torch, when the machine has one, keeps pip from pulling CUDA wheels.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))
UV := $(VENV)/bin/uv

.PHONY: install run test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip uv
	$(if $(TORCH_WHEEL),VIRTUAL_ENV=$(VENV) $(UV) pip install -q "$(TORCH_WHEEL)",)
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/cra index "$(REPO)"
	$(VENV)/bin/cra search "$(QUERY)" --repo "$(REPO)"

test: install
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV)
