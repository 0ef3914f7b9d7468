"""FSDP2 and DeepSpeed ZeRO-3, for real, on two CPU processes (gloo), launched as users launch them.

``accelerate launch --config_file configs/accelerate/{fsdp,deepspeed_zero3}.yaml`` (two processes, no mixed
precision) runs ``sharded_worker.py``: ``EKSFTTrainer`` with the objective ``asft`` (DFT + KL to a reference that is
sharded like the policy) on a tiny model with a tied or an untied LM head. Checked:

* the heads really are sharded during the step: a ``DTensor`` with ``Shard(0)`` placement under FSDP2, a ZeRO-3
  placeholder of numel 0 under DeepSpeed, for the policy and the reference;
* every logged loss and gradient norm, and the weights after three steps, equal those of one process with the
  whole batch (plain SGD with momentum: the weights are linear in the gradients);
* a run resumed from the checkpoint of step 1 ends with the same weights as the run that was not interrupted.

accelerate itself sets up FSDP and DeepSpeed only on GPU-like devices; the worker lifts exactly that check (see its
``allow_fsdp_on_cpu`` / ``allow_deepspeed_on_cpu``), and everything else is accelerate's, torch's and DeepSpeed's.
Before the fixes in ``eksft.chunked`` the untied head failed under ZeRO-3 at the first backward, and under FSDP2
each rank updated its shard of the head from its own batch only (the loss matched, the head's update did not).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("sharded_worker.py")
# metric: absolute tolerance. The KL of a policy one step away from its reference is ~1e-5, a difference of
# logsumexps of ~6 whose float32 rounding depends on the batch's padding (one row vs two): compared to 1e-6.
COMPARED = {"loss": 1e-8, "grad_norm": 1e-8, "ce": 1e-8, "num_tokens": 0, "kl_term": 1e-6, "mean_kl": 1e-6}
BACKENDS = {"fsdp2": "fsdp.yaml", "zero3": "deepspeed_zero3.yaml"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from eksft.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("sharded")
    build_tiny_model(root / "tied", progress=False)
    build_tiny_model(root / "untied", tie_word_embeddings=False, progress=False)
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + {i}?" + " Explain." * i},
                      {"role": "assistant", "content": f"{i} + {i} = {2 * i}." * (1 + i % 2)}]}
        for i in range(6)
    ]  # fmt: skip
    (root / "data.json").write_text(json.dumps(rows))
    for name, source in BACKENDS.items():  # the user's accelerate configs, on two CPU processes
        config = yaml.safe_load((ROOT / "configs" / "accelerate" / source).read_text())
        config.update(num_processes=2, mixed_precision="no", use_cpu=name == "fsdp2")
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(workdir: Path, out: str, model: str, *args: str, backend: str | None = None) -> Path:
    """The worker under ``accelerate launch`` with the backend's config (or as one plain process); its output dir."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [sys.executable]
    if backend is not None:
        command += ["-m", "accelerate.commands.launch", "--config_file", str(workdir / f"{backend}.yaml")]
        command += ["--main_process_port", str(free_port())]
    command += [str(WORKER), str(workdir / model), str(workdir / "data.json"), str(workdir / out), *args]
    log = workdir / f"{out}.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:  # the launcher and its workers
            for p in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                p.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-4000:]
    return workdir / out


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "token_stats.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name, value in second.items():
        torch.testing.assert_close(first[name], value, rtol=1e-5, atol=1e-7, msg=name)
    for name in first.keys() - second.keys():  # FSDP writes a tied head under both names
        assert name == "lm_head.weight", name
        torch.testing.assert_close(first[name], first["model.embed_tokens.weight"])


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("model", ["untied", "tied"])
def test_sharded_training_equals_one_process_and_resumes(workdir, backend, model):
    resumable = model == "untied"  # resuming is the same code for both heads: once per backend is enough
    sharded = run(workdir, f"{backend}-{model}", model, "--max_steps", "3", "--batch", "1",
                  *(["--save_steps", "1"] if resumable else []), backend=backend)  # fmt: skip
    single = workdir / f"one-{model}"
    if not single.exists():
        run(workdir, single.name, model, "--max_steps", "3", "--batch", "2")

    facts = json.loads((sharded / "sharding.json").read_text())
    assert facts["world_size"] == 2 and facts["policy_tied"] == (model == "tied")
    for head in ("policy_head", "reference_head"):
        if backend == "fsdp2":
            assert facts["is_fsdp2"] and facts[head]["kind"] == "DTensor" and facts[head]["placements"] == ["S(0)"]
            assert facts[head]["local_shape"][0] * 2 == facts[head]["shape"][0]
        else:
            assert facts["is_deepspeed"] and facts[head]["kind"] == "zero3" and facts[head]["numel"] == 0

    sharded_log, single_log = logged(sharded), logged(single)
    assert [entry["step"] for entry in sharded_log] == [1, 2, 3]
    for two, one in zip(sharded_log, single_log, strict=True):
        for name, tolerance in COMPARED.items():
            assert two[name] == pytest.approx(one[name], rel=1e-5, abs=tolerance), (two["step"], name)
    assert_same_weights(sharded, single)

    if resumable:
        resumed = run(workdir, f"{backend}-{model}-resumed", model, "--max_steps", "3", "--batch", "1",
                      "--resume", str(sharded / "checkpoint-1"), backend=backend)  # fmt: skip
        assert [entry["step"] for entry in logged(resumed)] == [2, 3]
        assert_same_weights(resumed, sharded)
