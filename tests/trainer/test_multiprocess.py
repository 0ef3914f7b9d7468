"""Two processes on the CPU (torchrun, gloo): training completes and the logged metrics are gathered over ranks.

The check: with an objective that selects no tokens (``asft`` = DFT + KL on every token, with the reference) and
``normalization="token"``, two processes with one row each must log exactly what one process with both rows logs,
and end with the same weights. That holds only if gradients are reduced across ranks (through the chunked path's
forward redirection) and the metrics are gathered and token-weighted, and ``token_stats.jsonl`` is written once.
Both processes must also exit: before ``eksft.commands.sft.finish`` about one run in four hung at exit.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from eksft.cli import main

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")
TIMEOUT = 240  # seconds; the run takes about 20 s on 2 busy cores
COMPARED = ("loss", "grad_norm", "ce", "kl_term", "mean_entropy", "mean_kl", "num_tokens")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_log_what_one_process_with_their_batch_logs(tiny_model, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?" + " Explain." * i},
                {"role": "assistant", "content": f"{i} + {i} = {2 * i}." * (1 + i % 2)},
            ]
        }
        for i in range(4)
    ]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    args = [
        "sft",
        "--config",
        RECIPE,
        "--model_name_or_path",
        tiny_model,
        "--dataset_name",
        str(tmp_path / "data.json"),
    ]
    args += "--objective asft --normalization token --max_steps 3 --max_grad_norm 0".split()
    args += "--optim sgd --learning_rate 0.5 --lr_scheduler_type constant".split()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    port = str(free_port())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    command += ["-m", "eksft.cli", *args, "--per_device_train_batch_size", "1", "--output_dir", str(tmp_path / "two")]
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            launcher.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:  # stop the launcher and its workers (they run in sessions of their own)
            for process in [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]:
                process.kill()
            launcher.wait()
            pytest.fail(f"torchrun with 2 processes did not end within {TIMEOUT} s (about 20 s normally): a hang, "
                        f"killed; the end of its log:\n{log.read_text()[-3000:]}")  # fmt: skip
    assert launcher.returncode == 0, log.read_text()[-3000:]
    assert main([*args, "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "one")]) == 0

    def logged(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "token_stats.jsonl").read_text().splitlines()]

    two_log, one_log = logged("two"), logged("one")
    assert [entry["step"] for entry in two_log] == [1, 2, 3]  # one line per step: only rank 0 writes
    for two_entry, one_entry in zip(two_log, one_log, strict=True):
        for name in COMPARED:
            assert two_entry[name] == pytest.approx(one_entry[name], rel=1e-5, abs=1e-7), name
    two_weights, one_weights = (
        load_file(tmp_path / "two" / "model.safetensors"),
        load_file(tmp_path / "one" / "model.safetensors"),
    )
    for name, value in one_weights.items():
        torch.testing.assert_close(two_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
