"""The real-model tier: SmolLM2-135M-Instruct (Llama architecture, 49,152 tokens, tied head, ChatML template with a
default system prompt and no generation markers), installed by `make install` and never skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
MATH500_LEVEL1 = HERE / "data" / "math500_level1.jsonl"  # four level-1 rows copied from MATH-500

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "2+3 = 5, so the answer is \\boxed{5}."}],
    [
        {"role": "system", "content": "You are a careful tutor."},
        {"role": "user", "content": "What is 4*3?"},
        {"role": "assistant", "content": "4*3 = 12, so \\boxed{12}."},
        {"role": "user", "content": "And 12-5?"},
        {"role": "assistant", "content": "12-5 = \\boxed{7}."},
    ],
    [{"role": "user", "content": "Half of 18?"}, {"role": "assistant", "content": "18/2 = \\boxed{9}."}],
    [{"role": "user", "content": "Name a prime above 10."}, {"role": "assistant", "content": "11 is prime: \\boxed{11}."}],
]
RESPONSES = [turn["content"] for conversation in CONVERSATIONS for turn in conversation if turn["role"] == "assistant"]


def trl_template(name: str) -> str:
    """A chat template shipped with TRL (real model templates: llama3_1 is Meta's Llama 3.1 template)."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture
def messages_file(tmp_path) -> Path:
    path = tmp_path / "messages.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS), encoding="utf-8")
    return path


@pytest.fixture
def sharegpt_file(tmp_path) -> Path:
    tags = {"user": "human", "assistant": "gpt", "system": "system"}
    rows = [{"conversations": [{"from": tags[t["role"]], "value": t["content"]} for t in c]} for c in CONVERSATIONS]
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)
