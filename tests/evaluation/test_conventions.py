"""The grading conventions: their prompts, and how "eksft" (boxed) and "lighteval" read the same completions.

These need no lighteval; ``test_lighteval_agreement.py`` checks the "lighteval" convention against lighteval itself.
"""

from __future__ import annotations

import time

import pytest

from eksft.errors import UserError
from eksft.evaluation.conventions import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    LIGHTEVAL_AIME_PROMPT,
    LIGHTEVAL_MATH500_PROMPT,
    get_convention,
)
from eksft.evaluation.runner import DEFAULT_PROMPT_TEMPLATE
from eksft.grading import MAX_ANSWER_CHARS, extract_answer, extract_answers, grade_and_extract, grade_batch, is_correct

HANGS = r"9^{9^{9^{9^{9}}}}"  # a power tower sympy hangs on, inside C code

# (completion, gold, correct under "eksft", correct under "lighteval")
CASES = [
    # where they agree: a box after the thinking, AIME leading zeros, wrong answers, nothing at all
    (r"So the total is $\boxed{27}$.", "27", True, True),
    (r"Therefore, the final answer is: $\boxed{204}$. I hope it is correct", "204", True, True),
    (r"\boxed{033}", "33", True, True),
    (r"\boxed{33}", "033", True, True),
    (r"<think>maybe \boxed{5}</think>The answer is $\boxed{7}$.", "7", True, True),
    (r"First $\boxed{4}$, then correcting the sign, $\boxed{-4}$.", "-4", True, True),
    (r"The product is $\boxed{0.5}$.", r"\frac{1}{2}", True, True),
    (r"So $x \in \boxed{(1, 2]}$.", "(1,2]", True, True),
    (r"The roots are $\boxed{3, 2}$.", "2, 3", True, True),
    (r"$\boxed{\text{Evelyn}}$", r"\text{Evelyn}", True, True),
    (r"So the value is $\boxed{32}$.", "64", False, False),
    ("", "3", False, False),
    ("I could not solve it.", "3", False, False),
    # unboxed answers: read by lighteval only
    ("The answer is 5.", "5", False, True),
    ("Reasoning done.\n\nAnswer: 62", "62", False, True),
    ("Multiplying gives one half.\n\nANSWER: $\\frac{1}{2}$", r"\frac{1}{2}", False, True),
    ("final answer: $\\frac{1}{2}$", r"\frac{1}{2}", False, True),
    ("The solutions are $x = 2$ and $x = 3$.", "2, 3", False, True),
    ("104", "104", False, True),
    ("we get 19 pairs for x=1, 9 for x=2, and 204 pairs in all", "204", False, True),  # the last number
    ("**Final Answer:** 468", "468", False, True),
    # thinking: eksft reads after the last </think>; lighteval deletes only complete <think>...</think> pairs
    ("Counting gives \\boxed{16}.\n</think>\n\nI could not finish the write-up.", "16", False, True),
    ("<think>\nLet me count: 5 + 7 = 12", "12", False, True),  # truncated: lighteval reads the last number
    # the box rule's own decisions, which lighteval does not make
    (r"\boxed{5.}", "5", True, False),  # eksft drops a trailing period
    (r"The discount is $\boxed{25\%}$.", "25", True, False),  # lighteval reads 25% as 0.25
    (r"\fbox{12}", "12", True, False),  # lighteval reads \boxed only
    # where lighteval picks something else than the last box
    (r"The final answer is $3$. Oops, it is $\boxed{4}$.", "4", True, False),  # 'final answer is' outranks a box
]


def test_registry() -> None:
    assert set(CONVENTIONS) == {"eksft", "lighteval"} and DEFAULT_CONVENTION == "eksft"
    assert get_convention("lighteval") is CONVENTIONS["lighteval"]
    with pytest.raises(UserError, match="unknown grading convention 'lm-eval'.*eksft, lighteval"):
        get_convention("lm-eval")
    for name, convention in CONVENTIONS.items():
        assert convention.name == name and convention.answer_rule and convention.gold_rule


def test_eksft_prompt_is_the_default_template_for_every_benchmark() -> None:
    eksft = get_convention("eksft")
    for benchmark in ("aime24", "math500", "amc23", None):
        assert eksft.prompt_template_for(benchmark) == DEFAULT_PROMPT_TEMPLATE
    assert eksft.format_prompt("What is 1+1?") == DEFAULT_PROMPT_TEMPLATE.replace("{problem}", "What is 1+1?")


def test_lighteval_prompts_per_task() -> None:
    lighteval = get_convention("lighteval")
    assert lighteval.prompt_template_for("aime24") == lighteval.prompt_template_for("aime25") == LIGHTEVAL_AIME_PROMPT
    assert lighteval.prompt_template_for("math500") == LIGHTEVAL_MATH500_PROMPT
    for other in ("amc23", "hmmt_feb25", "my_file", None):  # no lighteval task: the AIME prompt, which asks for a box
        assert lighteval.prompt_template_for(other) == LIGHTEVAL_AIME_PROMPT
    prompt = lighteval.format_prompt("Find $x$ if $2x = {4}$.", "aime24")
    assert prompt.startswith("\nSolve the following math problem efficiently and clearly.  The last line")
    assert "'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct'" in prompt
    assert prompt.endswith("answering.\n\nFind $x$ if $2x = {4}$.\n")
    assert lighteval.format_prompt("P", "math500").endswith(
        '"ANSWER: $ANSWER" (without quotes) where $ANSWER is the '
        "final answer. Think step by step before answering.\n\nP"
    )


@pytest.mark.parametrize(("completion", "gold", "eksft", "lighteval"), CASES)
def test_conventions_grade(completion: str, gold: str, eksft: bool, lighteval: bool) -> None:
    assert is_correct(completion, gold) is eksft
    assert is_correct(completion, gold, convention="eksft") is eksft
    assert is_correct(completion, gold, convention="lighteval") is lighteval


def test_batches_keep_order_under_both_conventions() -> None:
    completions, golds, eksft, lighteval = map(list, zip(*CASES, strict=True))
    assert grade_batch(completions, golds) == eksft
    assert grade_batch(completions, golds, convention="lighteval") == lighteval
    assert [ok for ok, _ in get_convention("lighteval").grade(completions, golds)] == lighteval


@pytest.mark.parametrize(
    ("completion", "eksft", "lighteval"),
    [
        (r"So the answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", r"\frac{1}{2}"),
        ("The answer is 5.", None, "5"),
        ("Answer: 62", None, "62"),
        (r"First \boxed{4}, then \boxed{7}", "7", "4,7"),  # a short comma-separated run of boxes is a list
        ("Counting gives \\boxed{16}.\n</think>\nNo idea.", None, "16"),
        (r"<think>\boxed{1}</think>", None, None),
        ("", None, None),
        ("no numbers here", None, None),
    ],
)
def test_extract_answer(completion: str, eksft: str | None, lighteval: str | None) -> None:
    assert extract_answer(completion) == extract_answer(completion, convention="eksft") == eksft
    assert extract_answer(completion, convention="lighteval") == lighteval
    assert get_convention("lighteval").extract_answer(completion) == lighteval


def test_grade_and_extract_returns_the_recorded_answer() -> None:
    completions = [r"so $\boxed{033}$", "The answer is 12.", r"$\boxed{5}$"]
    assert grade_and_extract(completions, ["33", "12", "6"]) == [(True, "033"), (False, None), (False, "5")]
    assert grade_and_extract(completions, ["33", "12", "6"], convention="lighteval") == [
        (True, "033"), (True, "12"), (False, "5"),
    ]  # fmt: skip
    assert extract_answers(completions) == ["033", None, "5"]
    assert extract_answers(completions, convention="lighteval") == ["033", "12", "5"]


def test_bad_input_grades_false_under_lighteval() -> None:
    completions = [None, 3, r"\boxed{1}", r"\boxed{1}", "\x00\x01\ufffd" * 50, r"\boxed{" + "1" * 5000 + "}"]
    golds = ["1", "1", None, "1" * (MAX_ANSWER_CHARS + 1), "1", "1"]
    graded = grade_batch(completions, golds, convention="lighteval")  # type: ignore[arg-type]
    assert graded == [False] * len(completions)
    assert extract_answers([None, 3], convention="lighteval") == [None, None]  # type: ignore[list-item]


def test_unknown_convention_is_an_error() -> None:
    calls = [
        lambda: grade_batch(["x"], ["1"], convention="boxed"),
        lambda: extract_answer("x", "boxed"),
        lambda: extract_answers(["x"], "boxed"),
        lambda: is_correct("x", "1", convention="Lighteval"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="unknown grading convention"):
            call()


def test_hanging_completion_is_false_within_the_timeout_under_lighteval() -> None:
    """lighteval parses the whole completion, so a hang can come from any of it: the worker is killed, the pool
    goes on (the killed job's answer is None)."""
    grade_batch([r"\boxed{1}"], ["1"], convention="lighteval")  # a started pool: time the check, not a start-up
    start = time.monotonic()
    graded = grade_and_extract([rf"So $\boxed{{{HANGS}}}$.", r"\boxed{2}"], ["3", "2"], timeout=1.5, max_workers=2,
                               convention="lighteval")  # fmt: skip
    assert graded == [(False, None), (True, "2")]
    assert time.monotonic() - start < 1.5 + 8  # the replacement worker starts in the background; a loaded machine
    assert grade_batch(["The answer is 4."] * 3, ["4"] * 3, convention="lighteval") == [True] * 3


def test_a_long_completion_is_graded_fast_under_lighteval() -> None:
    reasoning = "".join(f"Step {i}: $x_{{{i}}} = {i * 7 % 1000}$, so we keep {i} cases. " for i in range(2500))
    assert len(reasoning) > 100_000  # a 32k-token completion
    start = time.monotonic()
    assert grade_batch([reasoning + r" The answer is $\boxed{42}$.", reasoning], ["42", "42"],
                       convention="lighteval") == [True, False]  # fmt: skip
    assert time.monotonic() - start < 5
