"""GRPO reward functions with TRL's signature: ``f(completions, **columns) -> list[float]``.

TRL passes each dataset column as a keyword (here ``answer``) plus extras (``prompts``, ``trainer_state``...), which
``**kwargs`` absorbs. Completions are strings, or for conversational datasets lists of ``{"role", "content"}``
messages, of which the last is the model's. Correctness is ``eksft.grading``'s, the same as in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eksft.grading import boxed_answers, grade_batch

__all__ = ["accuracy_reward", "completion_text", "format_reward"]


def completion_text(completion: Any) -> str:
    """The generated text of a plain or conversational completion ("" when there is none)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        completion = completion[-1]
    if isinstance(completion, dict):
        content = completion.get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):  # multimodal parts: [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def accuracy_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 when the last boxed answer (after any ``</think>``) is equivalent to the gold ``answer``, else 0.0."""
    texts = [completion_text(c) for c in completions]
    return [1.0 if ok else 0.0 for ok in grade_batch(texts, list(answer))]


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when exactly one non-empty boxed answer appears after any ``</think>``, else 0.0."""
    return [1.0 if len(boxed_answers(completion_text(c))) == 1 else 0.0 for c in completions]
