"""Security: no code from user data runs, weights are read through safetensors, grading has time and memory limits."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

from eksft.errors import UserError

SRC = Path(__file__).resolve().parents[2] / "src" / "eksft"

# calls that execute or unpickle what they are given
FORBIDDEN = {"eval", "exec", "compile", "pickle.load", "pickle.loads", "marshal.load", "marshal.loads",
             "yaml.load", "yaml.unsafe_load", "torch.load", "dill.load", "joblib.load"}  # fmt: skip


def _called_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # `f().eval()` is a method, not eval
    return ".".join(reversed(parts))


def test_no_call_in_the_package_executes_or_unpickles_data(reliability):
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and _called_name(node) in FORBIDDEN:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {_called_name(node)}")
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if isinstance(node.value, ast.Constant) and node.value.value is True:
                    found.append(f"{path.relative_to(SRC)}:{node.value.lineno}: trust_remote_code=True")
    assert not found, found
    reliability.record(
        "security/no-unsafe-calls", "source of eksft",
        "the package's code scanned (AST) for calls that run or unpickle data",
        f"no call to {', '.join(sorted(FORBIDDEN))} and no literal trust_remote_code=True in src/eksft",
    )  # fmt: skip


def test_custom_code_in_a_model_directory_never_runs(tmp_path, tiny_model_dir, reliability):
    import shutil

    from transformers import AutoModelForCausalLM

    from eksft.loading import load_tokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "code-ran"
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    auto_map = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Net"}

    # a model type transformers knows (qwen3), with an auto_map as some fine-tunes carry: loaded natively
    (model / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}), encoding="utf-8")
    load_tokenizer(str(model), "--model_name_or_path")
    AutoModelForCausalLM.from_pretrained(str(model), trust_remote_code=False, use_safetensors=True)
    # a model type only its own code defines: refused
    (model / "config.json").write_text(json.dumps({**config, "model_type": "custom-net", "auto_map": auto_map}))
    with pytest.raises(UserError, match=r"custom\.py.*'custom-net'.*--trust_remote_code true"):
        load_tokenizer(str(model), "--model_name_or_path")
    assert not marker.exists()
    reliability.record(
        "security/custom-code-refused", "eksft sft, grpo, eval (eksft.loading.load_tokenizer)",
        "a model directory whose config.json maps to its own custom.py (auto_map), which would write a file if run: "
        "with model_type qwen3, then with a model_type transformers does not know",
        "qwen3: loaded with transformers' own class; unknown type: refused with a message naming custom.py, the type "
        "and --trust_remote_code; the file was never written (the code did not run)",
    )  # fmt: skip


def test_grading_of_hostile_model_output_is_bounded(reliability):
    from eksft import grading

    assert grading.grade_batch([r"\boxed{1}"] * 2, ["1"] * 2, timeout=2.0, max_workers=2) == [True, True]  # warm
    before = {worker.proc.pid for worker in grading._pool.workers}
    hostile = [r"\boxed{9^{9^{9^{9^{9}}}}}", r"\boxed{10^{10^{10}}}"]
    start = time.monotonic()
    graded = grading.grade_batch([*hostile, r"\boxed{4}"], ["1", "1", "4"], timeout=2.0, max_workers=2)
    elapsed = time.monotonic() - start
    after = {worker.proc.pid for worker in grading._pool.workers}
    assert graded == [False, False, True]
    assert not before & after, "the workers stuck on the hostile answers were not replaced"
    assert elapsed < 30, elapsed  # 2 s timeouts, then a fresh worker's start-up (importing sympy) for the last item
    limits = set()
    for worker in grading._pool.workers:
        line = next(x for x in Path(f"/proc/{worker.proc.pid}/limits").read_text().splitlines() if "address space" in x)
        limits.add(int(line.split()[3]))
    # MEMORY_LIMIT_BYTES above what a fresh worker maps (the interpreter, and the top of pytest's main script)
    assert all(grading.MEMORY_LIMIT_BYTES < limit < grading.MEMORY_LIMIT_BYTES + 4 * 2**30 for limit in limits)
    reliability.record(
        "security/grading-limits", "grading (eksft eval, GRPO rewards)",
        "model answers math-verify cannot finish with: a power tower 9^{9^{9^{9^{9}}}} and 10^{10^{10}}, in one batch "
        "with a correct answer, on 2 warm workers with a 2 s per-item timeout",
        "both graded False and the correct one True in under 30 s; both workers were replaced by new processes; "
        f"every grading worker runs with an address-space limit of {grading.MEMORY_LIMIT_BYTES // 2**30} GiB above what "
        "it maps when it starts",
    )  # fmt: skip
