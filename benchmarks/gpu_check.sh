#!/usr/bin/env bash
# The GPU check, in one command, under 8 minutes on one H100/H200 (GPU_CHECK_BUDGET seconds in all, default 470):
#   a. the GPU-marked tests (chunked vs materialised on CUDA, both backends, bf16 and float32; at most 120 s),
#   b. one EKSFTTrainer run (2 steps) under FSDP2 and one under DeepSpeed ZeRO-3, each alone on the one GPU, launched
#      with the user's configs/accelerate/{fsdp,deepspeed_zero3}.yaml (num_processes 1, bf16 mixed precision) on a
#      tiny model with an untied LM head (`eksft tiny-model --no-tie-word-embeddings`): a world of one still goes
#      through the FSDP2 all-gathers and the ZeRO-3 parameter gathers (the two run side by side; at most 90 s each),
#   c. python benchmarks/step_cost.py --preset gpu (random-init Qwen3-0.6B at 4k and 16k tokens, Qwen3-4B at 8k,
#      bf16), with the time that is left; its rows are written as they finish, so a cut run keeps those measured.
# Everything it prints is also written under $OUT when set, else ./gpu_out (7 files): env.txt (the machine's own
# packages first, then the versions in use), pip_install.log, pytest_gpu.log, sharded_gpu.log (both launches' output),
# sharded_gpu.json (per backend: exit status, seconds, checks, the worker's sharding.json, the logged losses),
# step_cost_gpu.jsonl, step_cost_gpu.log (with the Markdown tables). Exit status 0 when every part passed, 1 when one
# failed or ran out of time, 2 when the check could not start (no CUDA, the wheels or the package not importable).
#
# Usage, from anywhere:  bash benchmarks/gpu_check.sh   (`make gpu-wheels` first, on a machine with PyPI)
# The machine needs torch (CUDA), numpy, pandas, pyarrow, xxhash and the other packages that the lent GPU machines
# have. What it lacks or may have in other versions (trl, datasets, deepspeed, transformers, ... : the list is
# benchmarks/gpu_wheels.txt) travels as wheels in .whl/ at the repository root; they are installed without the network
# into a private folder put first on PYTHONPATH. That folder's path must contain "site-packages": dill (datasets'
# fingerprints) pickles a module from anywhere else by value, and Dataset.from_list then fails on pyarrow's classes.
# The install is skipped where that folder already holds every wheel (installed by the device call itself).
# PYTHON selects the interpreter (default python3). GPU_CHECK_PARTS selects parts (default "a b c");
# GPU_CHECK_CPU=1 lets the script run without CUDA (part b then runs on the CPU, without mixed precision), to try its
# plumbing on a CPU machine: GPU_CHECK_CPU=1 GPU_CHECK_PARTS="a b" bash benchmarks/gpu_check.sh
set -uo pipefail

started=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT_DIR="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT_DIR" || exit 2
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-470}"
PARTS=" ${GPU_CHECK_PARTS:-a b c} "
SITE="${EKSFT_GPU_SITE:-${TMPDIR:-/tmp}/eksft_gpu/site-packages}"
elapsed() { echo $(($(date +%s) - started)); }
left() { echo $((BUDGET - $(elapsed))); }
wants() { [[ "$PARTS" == *" $1 "* ]]; }
case "$SITE" in *site-packages*) ;; *) echo "gpu_check.sh: warning: EKSFT_GPU_SITE=$SITE: no 'site-packages' in it (dill)" ;; esac

# What the machine has, before anything of ours is on the path
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    echo "-- the machine's own packages ($PY -m pip list, PYTHONPATH unset)"
    env -u PYTHONPATH "$PY" -m pip list 2>/dev/null | grep -i -E \
        "^(torch|transformers|accelerate|peft|tokenizers|huggingface[-_]hub|triton|safetensors|pyarrow|pandas|numpy|fsspec|setuptools|pytest|datasets|trl|deepspeed|pydantic) "
} 2>&1 | tee "$OUT_DIR/env.txt"

cpu_mode=0
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
        cpu_mode=1
        echo "gpu_check.sh: no CUDA device: GPU_CHECK_CPU=1, going on with the CPU"
    else
        echo "gpu_check.sh: no CUDA device: '$PY' cannot import torch or torch.cuda.is_available() is False." >&2
        echo "gpu_check.sh: run it on a machine with a CUDA GPU (see benchmarks/RESULTS.md)." >&2
        exit 2
    fi
fi

: >"$OUT_DIR/pip_install.log"
if compgen -G ".whl/*.whl" >/dev/null; then
    missing=0
    for wheel in .whl/*.whl; do  # NAME-VERSION-...whl installs NAME-VERSION.dist-info
        IFS=- read -r name version _ <<<"$(basename "$wheel")"
        [ -d "$SITE/$name-$version.dist-info" ] || missing=$((missing + 1))
    done
    if [ "$missing" -eq 0 ]; then
        echo "== the carried wheels are already installed in $SITE"
    else
        echo "== installing the carried wheels from .whl/ into $SITE"
        timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
            >>"$OUT_DIR/pip_install.log" 2>&1 \
            || { cat "$OUT_DIR/pip_install.log"; echo "gpu_check.sh: installing .whl/*.whl failed" >&2; exit 2; }
    fi
    case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
else
    echo "gpu_check.sh: no wheels in .whl/ (make gpu-wheels): using the machine's packages only"
fi
# The package itself: an editable install, or the source folder on the path where pip cannot build it
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT_DIR/pip_install.log" 2>&1; then
    echo "gpu_check.sh: 'pip install -e . --no-deps' failed (see pip_install.log); using PYTHONPATH=src"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import trl, datasets, eksft.trainer, eksft.chunked" 2>>"$OUT_DIR/pip_install.log"; then
    tail -20 "$OUT_DIR/pip_install.log"
    echo "gpu_check.sh: cannot import trl, datasets and eksft.trainer: see pip_install.log, make gpu-wheels" >&2
    exit 2
fi
{
    echo "-- in use (PYTHONPATH=${PYTHONPATH:-})"
    "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ["transformers", "trl", "accelerate", "peft", "datasets", "deepspeed", "huggingface_hub", "tokenizers",
             "safetensors", "pyarrow", "pandas", "numpy", "triton", "eksft"]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}  {module.__file__}")
    except Exception as error:  # noqa: BLE001 - a line, not a stop
        print(f"{name} NOT IMPORTABLE: {type(error).__name__}: {error}")
EOF
} 2>&1 | grep -v "real_accelerator.py" | tee -a "$OUT_DIR/env.txt"

status=0

if wants a; then
    echo "== a. pytest -m gpu ($(elapsed) s in)"
    # (a test module whose imports fail here is reported, and the GPU tests of the others still run)
    PYTHONUNBUFFERED=1 timeout -k 10 120 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider --continue-on-collection-errors 2>&1 \
        | tee "$OUT_DIR/pytest_gpu.log"
    test "${PIPESTATUS[0]}" -eq 0 || status=1
fi

if wants b; then
    echo "== b. EKSFTTrainer under FSDP2 and DeepSpeed ZeRO-3, world size 1, untied head ($(elapsed) s in)"
    WORK="${TMPDIR:-/tmp}/eksft_gpu_sharded"
    rm -rf "$WORK" && mkdir -p "$WORK"
    if [ "$cpu_mode" = 1 ]; then mixed=no; flags=""; else mixed=bf16; flags="--bf16 --gpu"; fi
    HF_HUB_OFFLINE=1 timeout 60 "$PY" -m eksft.cli tiny-model "$WORK/model" --no-tie-word-embeddings --no-progress \
        >"$WORK/tiny-model.log" 2>&1 || { cat "$WORK/tiny-model.log"; status=1; }
    # a few rows of data, and the user's accelerate configs for one process
    ports=$("$PY" - "$WORK" "$mixed" <<'EOF'
import json, socket, sys
from pathlib import Path
import yaml
work, mixed = Path(sys.argv[1]), sys.argv[2]
rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?" + " Explain." * i},
                      {"role": "assistant", "content": f"{i} + {i} = {2 * i}." * (1 + i % 2)}]} for i in range(4)]
(work / "data.json").write_text(json.dumps(rows))
for name, source in {"fsdp2": "fsdp.yaml", "zero3": "deepspeed_zero3.yaml"}.items():
    config = yaml.safe_load((Path("configs/accelerate") / source).read_text())
    config.update(num_processes=1, mixed_precision=mixed, use_cpu=False)
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config))
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
    ) || status=1
    read -r -a port <<<"${ports:-29501 29502}"
    i=0
    for backend in fsdp2 zero3; do
        # torchrun starts each worker in a session of its own: -k leaves it the time to stop them on SIGTERM
        (
            begun=$(date +%s)
            # shellcheck disable=SC2086  # $flags: zero or more words
            PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 timeout -k 40 90 \
                "$PY" -m accelerate.commands.launch --config_file "$WORK/$backend.yaml" --num_processes 1 \
                --main_process_port "${port[$i]}" tests/trainer/sharded_worker.py "$WORK/model" "$WORK/data.json" \
                "$WORK/$backend" --max_steps 2 $flags >"$WORK/$backend.log" 2>&1
            echo "$backend=$?:$(($(date +%s) - begun))" >"$WORK/$backend.rc"
        ) &
        i=$((i + 1))
    done
    wait
    # a worker that outlived its launcher (own session, see above) is stopped here, not left on the GPU
    for stray in $(pgrep -f -- "$WORK/model" 2>/dev/null); do kill -9 "$stray" 2>/dev/null; done
    for backend in fsdp2 zero3; do
        echo "======== $backend ($(cat "$WORK/$backend.rc" 2>/dev/null): exit status:seconds)"
        cat "$WORK/$backend.log"
    done >"$OUT_DIR/sharded_gpu.log" 2>&1
    "$PY" - "$WORK" "$OUT_DIR/sharded_gpu.json" "$cpu_mode" "$mixed" \
        "$(cat "$WORK/fsdp2.rc" 2>/dev/null || echo fsdp2=1:0)" "$(cat "$WORK/zero3.rc" 2>/dev/null || echo zero3=1:0)" <<'EOF'
import json, math, sys
from pathlib import Path
work, out, cpu_mode, mixed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
summary, ok = {}, True
for item in sys.argv[5:]:
    backend, result = item.split("=")
    code, seconds = (int(x) for x in result.split(":"))
    run = work / backend
    facts = json.loads((run / "sharding.json").read_text()) if (run / "sharding.json").exists() else None
    log = [json.loads(line) for line in (run / "token_stats.jsonl").read_text().splitlines()] \
        if (run / "token_stats.jsonl").exists() else []
    losses = [{k: e.get(k) for k in ("step", "loss", "grad_norm", "ce", "kl_term", "mean_kl", "num_tokens")} for e in log]
    kind = "DTensor" if backend == "fsdp2" else "zero3"
    f = facts or {}
    checks = {
        "exit 0": code == 0,
        "sharding.json written": facts is not None,
        "world size 1": f.get("world_size") == 1,
        "backend on": bool(f.get("is_fsdp2") if backend == "fsdp2" else f.get("is_deepspeed")),
        "untied head": f.get("policy_tied") is False,
        f"policy and reference heads are {kind}": all(f.get(h, {}).get("kind") == kind
                                                      for h in ("policy_head", "reference_head")),
        f"on {'cpu' if cpu_mode else 'cuda'}": str(f.get("device", "")).startswith("cpu" if cpu_mode else "cuda"),
        f"mixed precision {mixed}": f.get("mixed_precision") == mixed,
        "2 steps logged, finite losses": [e["step"] for e in log] == [1, 2]
                                         and all(math.isfinite(e["loss"]) for e in log),
    }
    ok &= all(checks.values())
    summary[backend] = {"exit": code, "seconds": seconds, "ok": all(checks.values()), "checks": checks,
                        "sharding": facts, "losses": losses}
    print(f"{backend}: {'PASS' if all(checks.values()) else 'FAIL'} in {seconds} s; losses",
          [round(e["loss"], 6) for e in log], "; failed:", [k for k, v in checks.items() if not v] or "none")
first = [summary[b]["losses"][0]["loss"] for b in ("fsdp2", "zero3") if summary.get(b, {}).get("losses")]
if len(first) == 2:  # same model, data and seed: the step-1 losses differ only by the two bf16 schemes
    summary["step1_loss_relative_difference"] = abs(first[0] - first[1]) / max(abs(first[1]), 1e-12)
    print("step-1 loss, fsdp2 vs zero3: relative difference", f"{summary['step1_loss_relative_difference']:.2e}")
out.write_text(json.dumps(summary, indent=1))
sys.exit(0 if ok else 1)
EOF
    test $? -eq 0 || { status=1; echo "(see sharded_gpu.log)"; }
fi

if wants c; then
    budget_c=$(($(left) - 20))
    echo "== c. benchmarks/step_cost.py --preset gpu, ${budget_c} s ($(elapsed) s in)"
    if [ "$budget_c" -lt 30 ]; then
        echo "gpu_check.sh: no time left for step_cost.py" | tee "$OUT_DIR/step_cost_gpu.log"
        status=1
    else
        # Rows are written as they finish: a run cut by the timeout still leaves the variants it measured
        PYTHONUNBUFFERED=1 timeout -k 10 "$budget_c" "$PY" benchmarks/step_cost.py --preset gpu \
            --out "$OUT_DIR/step_cost_gpu.jsonl" 2>&1 | tee "$OUT_DIR/step_cost_gpu.log"
        if [ "${PIPESTATUS[0]}" -ne 0 ]; then
            status=1
            echo "== the tables of the rows measured so far"
            "$PY" benchmarks/step_cost.py --summarize "$OUT_DIR/step_cost_gpu.jsonl" 2>&1 \
                | tee -a "$OUT_DIR/step_cost_gpu.log"
        fi
    fi
fi

echo "== done in $(elapsed) s, status $status; output in $OUT_DIR"
exit "$status"
