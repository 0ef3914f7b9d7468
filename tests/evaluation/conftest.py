"""Fixtures for the evaluation and GRPO tests (the tiny model is ``tiny_model_dir`` of tests/conftest.py)."""

import json

import pytest


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def five_problems(tmp_path) -> str:
    """A 5-problem benchmark in the real files' shape (problem, answer, other fields)."""
    rows = [{"id": i, "problem": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2), "url": "x"} for i in range(5)]
    return write_jsonl(tmp_path / "five.jsonl", rows)
