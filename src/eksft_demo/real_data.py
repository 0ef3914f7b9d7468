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
from typing import TYPE_CHECKING

from eksft.demo.world import Problem, Task
from eksft.errors import UserError

from .real_texts import token_ids

if TYPE_CHECKING:
    from .real import RealProfile

__all__ = ["GENERAL_FILE", "KINDS", "MATH_FILE", "eval_problems", "example_turns", "general_conversations",
           "held_out_conversations", "math_solutions", "prompt_turns", "sft_rows", "world_problems"]

MATH_FILE, GENERAL_FILE = "math500_level3.jsonl", "general_conversations.jsonl"
KINDS = ("sum",)
SFT_STYLE = "stepwise"  # the solution style of the SFT data and of the one-shot example
EXAMPLE_SEED = 7  # the one-shot example's problem stream (train split), apart from the SFT stream (seed 0)
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


def example_turns() -> list[dict]:
    """The one-shot example: a training-split ``sum`` problem of its own stream and its ``stepwise`` solution."""
    example = world_problems("train", 1, EXAMPLE_SEED)[0]
    return [{"role": "user", "content": example.question},
            {"role": "assistant", "content": example.solution(SFT_STYLE)}]  # fmt: skip


def prompt_turns(problem: str) -> list[dict]:
    """The prompt every model gets (see the module docstring): the one-shot example, then the problem as the user
    turn; no system turn of ours, so the template adds its own."""
    return [*example_turns(), {"role": "user", "content": problem}]


def sft_rows(profile: RealProfile, tokenizer) -> list[dict]:
    """Conversational prompt-completion rows: ``sft_examples`` training-split problems with their ``stepwise``
    solution. Each must fit ``sft_max_length`` tokens: a truncated solution would lose its boxed answer."""
    rows = []
    for problem in world_problems("train", profile.sft_examples, profile.seed):
        prompt = prompt_turns(problem.question)
        completion = [{"role": "assistant", "content": problem.solution(SFT_STYLE)}]
        length = len(token_ids(tokenizer, prompt + completion))
        if length > profile.sft_max_length:
            raise UserError(f"an SFT example has {length} tokens, more than sft_max_length={profile.sft_max_length}")
        rows.append({"prompt": prompt, "completion": completion, "answer": problem.gold})
    return rows


def eval_problems(profile: RealProfile) -> list[dict]:
    """The held-out problems (test split), as ``{"problem", "answer"}``; the same for every model."""
    return [{"problem": p.question, "answer": p.gold} for p in world_problems("test", profile.eval_problems)]


def held_out_conversations(profile: RealProfile) -> dict[str, list[list[dict]]]:
    """The two kinds of held-out text: level-3 MATH-500 problems with their solutions, and general conversations."""
    math = [[{"role": "user", "content": row["problem"]}, {"role": "assistant", "content": row["solution"]}]
            for row in math_solutions()[: profile.math_texts]]  # fmt: skip
    return {"math": math, "general": general_conversations()[: profile.general_texts]}
