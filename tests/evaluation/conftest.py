"""Fixtures for the evaluation and GRPO tests: offline, one thread, a tiny random model, small benchmark files."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    # a tiny model gains nothing from more threads, and other test processes share the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised tiny Qwen3 model with its tokenizer (ChatML template)."""
    from eksft.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("eval-models") / "tiny"
    build_tiny_model(path, progress=False)
    return str(path)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def five_problems(tmp_path) -> str:
    """A 5-problem benchmark in the real files' shape (problem, answer, other fields)."""
    rows = [{"id": i, "problem": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2), "url": "x"} for i in range(5)]
    return write_jsonl(tmp_path / "five.jsonl", rows)
