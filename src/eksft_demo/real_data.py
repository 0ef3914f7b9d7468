"""The data of the real-model profile: the synthetic world's word problems, MATH-500 solutions, general conversations.

* **Task** (SFT examples and evaluation problems): the ``sum`` word problems of ``eksft.demo.world`` ("Ana has 12
  pens. Ana gets 7 more and then 25 more. How many pens does Ana have now?"), asked in chat form: the one kind a
  135M model solves now and then (measurements in docs/demo.md). SFT examples come from
  the world's *train* split, evaluation problems from its *test* split: ``world.split_of`` hashes the question
  text, so no question is in both. Measured base accuracies that led to this choice are in docs/demo.md.
* **Held-out math text** (``math500_level3.jsonl``, package data): the problem and worked solution of the first 48
  level-3 problems of MATH-500 (``HuggingFaceH4/MATH-500``, rows copied with their ``unique_id``). MATH-500 is a
  *test* set; it is used here only because it is the only math text with worked solutions available offline, and
  only to measure NLL / KL / entropy: no model is trained on it.
* **Held-out general text** (``general_conversations.jsonl``, package data): 52 short user/assistant conversations
  about cooking, geography, writing, everyday advice, nature and culture, written by hand for this demo, without
  numbers or mathematics: the text on which a higher NLL after SFT means forgetting.
"""

from __future__ import annotations

import json
from importlib import resources

from eksft.demo.world import Problem, Task

__all__ = ["GENERAL_FILE", "KINDS", "MATH_FILE", "general_conversations", "math_solutions", "world_problems"]

MATH_FILE, GENERAL_FILE = "math500_level3.jsonl", "general_conversations.jsonl"
KINDS = ("sum",)
SFT_SEED = 1_000_003  # the world's sft_dataset offset: a problem stream apart from the demo's other streams


def _read(name: str) -> list[dict]:
    text = resources.files("eksft_demo").joinpath("data", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def world_problems(split: str, n: int, seed: int = 0) -> list[Problem]:
    """The first ``n`` problems of ``KINDS`` in the world's ``split`` stream: ``train`` for SFT (stream
    ``SFT_SEED + seed``), ``test`` for evaluation (stream ``seed``, the tiny demo's test problems)."""
    stream = Task(SFT_SEED + seed if split == "train" else seed).iter_problems(split)
    problems = []
    while len(problems) < n:
        problem = next(stream)
        if problem.kind in KINDS:
            problems.append(problem)
    return problems


def math_solutions() -> list[dict]:
    """The MATH-500 level-3 rows (``problem``, ``solution``, ``answer``, ``unique_id``...), in MATH-500 order."""
    return _read(MATH_FILE)


def general_conversations() -> list[list[dict]]:
    """The hand-written non-math conversations, each ``[user turn, assistant turn]``."""
    return [row["messages"] for row in _read(GENERAL_FILE)]
