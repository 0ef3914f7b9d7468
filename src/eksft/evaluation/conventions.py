"""Grading conventions: the prompt a benchmark is asked with, and how the answer and the gold are read.

Two conventions, chosen by name:

``"eksft"`` (the default)
    The prompt is ``DEFAULT_PROMPT_TEMPLATE`` for every benchmark, and the answer is
    the content of the last ``\\boxed{...}`` after any ``</think>`` (``eksft.grading``). It is the default because it
    is also the GRPO reward, so evaluation measures what RL optimised, and because the SFT data teach boxed
    answers: an unboxed answer is a formatting failure we want to see.

``"lighteval"``
    What lighteval 0.13.0 does on its ``aime24``, ``aime25`` and ``math_500`` tasks, so eksft's numbers can be
    compared with numbers published from lighteval. Its prompts (``lighteval/tasks/tasks/aime.py``
    ``MATH_PROMPT_TEMPLATE``, ``lighteval/tasks/tasks/math_500.py`` ``MATH_QUERY_TEMPLATE``) differ per task, and its
    answer is whatever math-verify extracts from the whole completion (a box, ``Answer: 5``, ``final answer is``,
    the last number...); the rule and its sources are in ``eksft.grading``. lighteval 0.13.0 has no amc23 or
    hmmt task: those, and local benchmark files, get the AIME prompt, the one that asks for a box.

The agreement of the ``"lighteval"`` convention with lighteval itself is measured by
``tests/evaluation/test_lighteval_agreement.py`` (``docs/evaluation.md, "Grading conventions"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import UserError
from ..grading import extract_answer, grade_and_extract

__all__ = [
    "CONVENTIONS", "DEFAULT_CONVENTION", "DEFAULT_PROMPT_TEMPLATE", "LIGHTEVAL_AIME_PROMPT", "LIGHTEVAL_MATH500_PROMPT", "LIGHTEVAL_VERSION",
    "Convention", "get_convention",
]  # fmt: skip

# eksft's own prompt: the one the GRPO prompts default to as well (eksft.grpo)
DEFAULT_PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."

LIGHTEVAL_VERSION = "0.13.0"  # the version whose tasks and metric the "lighteval" convention follows

# lighteval's query, with the problem where lighteval puts it. The AIME one starts and ends with a newline
# (lighteval dedents a triple-quoted string and never strips it); the MATH-500 one is stripped.
LIGHTEVAL_AIME_PROMPT = (
    "\nSolve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{problem}\n"
)
LIGHTEVAL_MATH500_PROMPT = (
    "Solve the following problem. The final line of your response MUST be of the following format:\n"
    '"ANSWER: $ANSWER" (without quotes) where $ANSWER is the final answer. Think step by step before answering.'
    "\n\n{problem}"
)


@dataclass(frozen=True)
class Convention:
    """A way to ask and grade: ``prompt_template`` (with ``{problem}``) unless ``task_prompt_templates`` names the
    benchmark, and the grading rule of ``eksft.grading`` with the same ``name``. ``answer_rule`` and ``gold_rule``
    say in words how the answer and the gold are read (for docs and reports)."""

    name: str
    prompt_template: str
    answer_rule: str
    gold_rule: str
    task_prompt_templates: Mapping[str, str] = field(default_factory=dict)

    def prompt_template_for(self, benchmark: str | None = None) -> str:
        """The template a benchmark (a registry name such as ``aime24``) is asked with."""
        return self.task_prompt_templates.get(benchmark, self.prompt_template)

    def format_prompt(self, problem: str, benchmark: str | None = None) -> str:
        """The user message: the template with the problem in place (``replace``: templates hold other braces)."""
        return self.prompt_template_for(benchmark).replace("{problem}", problem)

    def extract_answer(self, completion: str, timeout: float = 5.0) -> str | None:
        """The answer this convention reads from ``completion``, as text to record; None when it reads none."""
        return extract_answer(completion, convention=self.name, timeout=timeout)

    def grade(
        self, completions: list[str], golds: list[str], timeout: float = 5.0, max_workers: int | None = None
    ) -> list[tuple[bool, str | None]]:
        """``(correct, extracted answer)`` per completion, in order, from ``eksft.grading``'s killable workers."""
        return grade_and_extract(completions, golds, timeout=timeout, max_workers=max_workers, convention=self.name)


CONVENTIONS: Mapping[str, Convention] = MappingProxyType(
    {
        "eksft": Convention(
            name="eksft",
            prompt_template=DEFAULT_PROMPT_TEMPLATE,
            answer_rule="the content of the last \\boxed{...} after any </think>; no box, no answer",
            gold_rule="the gold text as LaTeX ($...$), trailing period dropped; math-verify, the gold first",
        ),
        "lighteval": Convention(
            name="lighteval",
            prompt_template=LIGHTEVAL_AIME_PROMPT,
            answer_rule=(
                f"lighteval {LIGHTEVAL_VERSION} pass_at_k_math: complete <think>...</think> pairs removed, then "
                "math-verify LaTeX (box priority 55) and expression extraction over the whole completion"
            ),
            gold_rule="\\boxed{gold} through the same extraction (the text itself if nothing is read); precision 6",
            task_prompt_templates=MappingProxyType(
                {"aime24": LIGHTEVAL_AIME_PROMPT, "aime25": LIGHTEVAL_AIME_PROMPT, "math500": LIGHTEVAL_MATH500_PROMPT}
            ),
        ),
    }
)
DEFAULT_CONVENTION = "eksft"


def get_convention(name: str) -> Convention:
    """The convention called ``name``; a ``UserError`` listing the known ones otherwise (the name comes from a user)."""
    try:
        return CONVENTIONS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown grading convention {name!r}; choose one of: {', '.join(CONVENTIONS)}") from None
