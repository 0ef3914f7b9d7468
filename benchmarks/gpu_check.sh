#!/usr/bin/env bash
# The GPU check of the chunked statistics, in one command (under 8 minutes on one H100/H200):
#   1. the GPU-marked tests (bf16 and float32 equality of chunked vs materialised on CUDA, both backends),
#   2. python benchmarks/step_cost.py --preset gpu (random-init Qwen3-0.6B at 16k tokens, Qwen3-4B at 8k, bf16).
# Everything it prints is also written under $OUT when set, else ./gpu_out: pytest_gpu.log, step_cost_gpu.jsonl,
# step_cost_gpu.log, env.txt. Copy the tables from step_cost_gpu.log into benchmarks/RESULTS.md.
#
# Usage, from anywhere:  bash benchmarks/gpu_check.sh
# The machine needs torch (CUDA), transformers, accelerate, peft and safetensors. Packages it lacks (trl, datasets,
# math-verify, ...) travel as wheels in .whl/ at the repository root and are installed from there, without the
# network, into a private folder on PYTHONPATH. PYTHON selects the interpreter (default: python3).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT_DIR="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT_DIR" || exit 2
PY="${PYTHON:-python3}"
started=$(date +%s)

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device: '$PY' cannot import torch or torch.cuda.is_available() is False." >&2
    echo "gpu_check.sh: run it on a machine with a CUDA GPU (see benchmarks/RESULTS.md)." >&2
    exit 2
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing the carried wheels from .whl/"
    SITE="${TMPDIR:-/tmp}/eksft_gpu_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { echo "gpu_check.sh: installing .whl/*.whl failed" >&2; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# The package itself: an editable install, or the source folder on the path where pip cannot build it
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT_DIR/pip_install.log" 2>&1; then
    echo "gpu_check.sh: 'pip install -e . --no-deps' failed (see pip_install.log); using PYTHONPATH=src"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import trl, eksft.chunked" 2>>"$OUT_DIR/pip_install.log"; then
    echo "gpu_check.sh: cannot import trl and eksft.chunked; carry trl's wheel in .whl/ (see pip_install.log)" >&2
    exit 2
fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, transformers, trl, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
} | tee "$OUT_DIR/env.txt"

status=0
echo "== pytest -m gpu"
# (a test module whose imports fail here is reported, and the GPU tests of the others still run)
PYTHONUNBUFFERED=1 timeout 150 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider --continue-on-collection-errors \
    2>&1 | tee "$OUT_DIR/pytest_gpu.log"
test "${PIPESTATUS[0]}" -eq 0 || status=1

echo "== benchmarks/step_cost.py --preset gpu"
# Rows are written as they finish: a run cut by the timeout still leaves the variants it measured
PYTHONUNBUFFERED=1 timeout 360 "$PY" benchmarks/step_cost.py --preset gpu --out "$OUT_DIR/step_cost_gpu.jsonl" 2>&1 \
    | tee "$OUT_DIR/step_cost_gpu.log"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    status=1
    echo "== the tables of the rows measured so far"
    "$PY" benchmarks/step_cost.py --summarize "$OUT_DIR/step_cost_gpu.jsonl" 2>&1 | tee -a "$OUT_DIR/step_cost_gpu.log"
fi

echo "== done in $(( $(date +%s) - started )) s, status $status; output in $OUT_DIR"
exit "$status"
