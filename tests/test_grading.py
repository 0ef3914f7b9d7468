"""Answer extraction and math-verify grading on real benchmark answer formats, with timeouts and bad input."""

from __future__ import annotations

import time

import pytest

from eksft.grading import MAX_ANSWER_CHARS, boxed_answers, extract_answer, grade_batch, is_correct

# A power tower sympy tries to evaluate: the check hangs inside C code, where no signal can stop it.
HANGS = r"9^{9^{9^{9^{9}}}}"

# (completion, gold, expected). Golds are written as the benchmarks write them (AIME integers, MATH-500 LaTeX,
# AMC decimals); completions as models write them.
CASES = [
    # numbers, AIME / AMC formats
    (r"So the total is $\boxed{27}$.", "27", True),
    (r"The answer is \boxed{27.0}", "27", True),
    (r"\boxed{033}", "33", True),  # AIME: leading zeros of the 000-999 format match
    (r"\boxed{33}", "033", True),
    (r"\boxed{70}", "7", False),
    (r"\boxed{2}", "2.0", True),  # AMC golds stored as floats
    (r"\boxed{-4}", "-4", True),
    (r"\boxed{4}", "-4", False),
    ("\\boxed{\u22124}", "-4", True),  # unicode minus
    (r"\boxed{5{,}000}", "5000", True),
    (r"\boxed{5.}", "5", True),  # trailing period inside the box
    (r"\boxed{\$10.50}", "10.50", True),
    (r"\boxed{10\text{ cm}}", "10", True),
    # fractions, radicals
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\dfrac12}", r"\frac{1}{2}", True),
    (r"\boxed{1/2}", r"\frac{1}{2}", True),
    (r"\boxed{\frac12}", r"\frac{1}{3}", False),
    (r"\boxed{\frac{14}{3}}", r"\frac{14}{3}", True),
    (r"\boxed{4\frac{2}{3}}", r"\frac{14}{3}", True),
    (r"\boxed{4.67}", r"\frac{14}{3}", False),
    (r"\boxed{\tfrac{7}{2}}", "3.5", True),
    (r"\boxed{\frac{\sqrt{570}}{12}}", r"\sqrt{\frac{95}{24}}", True),  # rationalised: sqrt(95/24) = sqrt(570)/12
    (r"\boxed{\frac{\sqrt{570}}{24}}", r"\sqrt{\frac{95}{24}}", False),  # half of it
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", True),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False),
    (r"\boxed{1.41}", r"\sqrt{2}", False),
    (r"so $\boxed{-\frac{\sqrt{3}}{2}}$", r"\frac{-\sqrt{3}}{2}", True),
    (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"-\frac{\sqrt{3}}{2}", False),
    # lists, tuples, intervals, sets
    (r"\boxed{3, 2}", "2, 3", True),  # unordered list of values
    (r"\boxed{2, 4}", "2, 3", False),
    (r"\boxed{2}", "2, 3", False),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", True),  # MATH-500 polar point
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{\left( \frac{\pi}{2}, 3 \right)}", r"\left( 3, \frac{\pi}{2} \right)", False),  # order matters
    (r"\boxed{(1, 2]}", r"(1,2]", True),
    (r"\boxed{[1, 2)}", r"(1,2]", False),
    (r"\boxed{\left[ 1, 2 \right)}", r"[1,2)", True),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3)", True),
    (r"\boxed{(1,2) \cup (3,4)}", r"(1,2)\cup(3,4)", True),
    (r"\boxed{(1,2) \cup (3,5)}", r"(1,2)\cup(3,4)", False),
    (r"\boxed{\{1,2,3\}}", "1, 2, 3", True),
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", True),
    (r"\boxed{\{1, 2, 3\}}", r"\{1, 2\}", False),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
    # equations, expressions
    (r"\boxed{x=3}", "3", True),
    (r"\boxed{x = 2, x = 3}", "2, 3", True),
    (r"\boxed{p-q}", "p - q", True),  # MATH-500 symbolic answer
    (r"\boxed{q-p}", "p - q", False),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{y = 2x + 2}", "y=2x+1", False),
    # degrees
    (r"\boxed{30^\circ}", "30", True),
    (r"\boxed{30}", r"30^\circ", True),
    (r"\boxed{30^{\circ}}", r"45^\circ", False),
    # text answers, multiple choice
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),  # MATH-500 name answer
    (r"\boxed{\text{Evelyn}.}", r"\text{Evelyn}", True),  # trailing period, math-verify alone says False
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn.}", True),  # the period in the gold: math-verify alone says False
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}.", True),  # the same, after a fraction
    (r"\boxed{\text{Bob}}", r"\text{Evelyn}", False),
    (r"\boxed{\text{(A)}}", "A", True),
    (r"\boxed{A}", r"\text{(A)}", True),
    (r"\boxed{(C)}", "C", True),
    (r"\boxed{\textbf{(B)}}", "B", True),
    (r"\boxed{\mathrm{(D)}}", "D", True),
    (r"\boxed{B}", "A", False),
    # </think>, several boxes, nested braces, brace-less forms
    (r"<think>Maybe \boxed{5}? No.</think>The answer is $\boxed{7}$.", "7", True),
    (r"<think>Maybe \boxed{5}? No.</think>The answer is $\boxed{7}$.", "5", False),
    (r"<think>It is \boxed{5}.</think>So the answer is five.", "5", False),  # boxed only while thinking
    (r"Thinking, 3 or 5 ... </think> Final: \boxed{5}", "5", True),  # the template opened <think> in the prompt
    (r"First \boxed{4}; correcting the sign error, \boxed{-4}.", "-4", True),  # the last box counts
    (r"First \boxed{4}; correcting the sign error, \boxed{-4}.", "4", False),
    (r"so $\boxed{\frac{\sqrt{\frac{1}{4}}}{2}}$", r"\frac14", True),
    (r"hence $\boxed 5$.", "5", True),
    (r"\fbox{12}", "12", True),
    (r"\boxed{\{1,2\}}", r"\{1, 2\}", True),  # escaped braces inside the box
    # intervals against a relation: the gold is the reference (verify is not symmetric, see eksft.grading)
    (r"\boxed{(1, 2]}", r"1 < x \le 2", True),
    (r"\boxed{1 < x \le 2}", r"(1, 2]", False),  # an interval-looking gold may be an ordered pair
    # garbage, empty, no box
    ("", "3", False),
    ("The answer is 3.", "3", False),  # no box: not graded as an answer
    (r"\boxed{}", "0", False),
    (r"\boxed{3", "3", False),  # truncated generation
    (r"}}{{ \boxed{}}}{{ \frac{", "3", False),
    (r"\boxed{hello world}", "3", False),
    (r"\boxed{3}", "", False),  # empty gold
    ("\x00\x01\ufffd" * 50, "1", False),
]


@pytest.fixture(scope="module", autouse=True)
def _warm_workers():
    """Start the worker pool once, so that timings below measure grading and not process start-up."""
    assert grade_batch([r"\boxed{1}", r"\boxed{2}"], ["1", "2"]) == [True, True]


def test_case_table_is_large_and_balanced() -> None:
    assert len(CASES) >= 40
    assert sum(expected for *_, expected in CASES) >= 20 and sum(not expected for *_, expected in CASES) >= 20


@pytest.mark.parametrize(("completion", "gold", "expected"), CASES)
def test_is_correct(completion: str, gold: str, expected: bool) -> None:
    assert is_correct(completion, gold) is expected


def test_grade_batch_matches_the_table_in_order() -> None:
    completions, golds, expected = map(list, zip(*CASES, strict=True))
    assert grade_batch(completions, golds) == expected


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{a} and then \boxed{b}", "b"),
        (r"\boxed{\boxed{4}}", r"\boxed{4}"),
        (r"\boxed {5}", "5"),
        (r"$\boxed 5$", "5"),
        (r"\boxed 5.", "5"),
        (r"$\boxed -3$", "-3"),
        (r"\fbox{7}", "7"),
        (r"\boxed{\left\{1,2\right\}}", r"\left\{1,2\right\}"),
        # a piecewise function: \left\{ ... \right. holds an escaped brace that is never closed
        (
            r"so $f(x) = \boxed{\left\{ \begin{array}{ll} x & x > 0 \\ 0 & x \le 0 \end{array} \right.}$.",
            r"\left\{ \begin{array}{ll} x & x > 0 \\ 0 & x \le 0 \end{array} \right.",
        ),
        (r"\boxed{\}} or \boxed{\{}", r"\{"),  # one escaped brace alone in a box
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"\boxed{2} then \boxed{3", "2"),
        (r"<think>\boxed{1}</think> so \boxed{2}", "2"),
        (r"<think>\boxed{1}</think> no box here", None),
        (r"<think>a</think><think>\boxed{1}</think>", None),
        (r"\boxed{}", None),
        (r"\boxedfoo{3}", None),
        ("", None),
        ("plain 3", None),
    ],
)
def test_extract_answer(completion: str, answer: str | None) -> None:
    assert extract_answer(completion) == answer


def test_extract_answer_is_fast_on_enormous_text() -> None:
    text = ("{\\frac{" * 50_000) + r"\boxed{" * 10_000 + "x" * 1_000_000
    start = time.monotonic()
    assert extract_answer(text) is None
    assert extract_answer(text + r" \boxed{42}") == "42"
    assert boxed_answers(r"\boxed{1} \boxed{} \boxed{2}") == ["1", "2"]
    assert time.monotonic() - start < 5


def test_hanging_check_returns_false_within_the_timeout() -> None:
    start = time.monotonic()
    assert is_correct(rf"\boxed{{{HANGS}}}", "3", timeout=1.5) is False
    # 1.5 s of grading plus slack for a loaded machine; the killed worker's replacement starts in the background
    assert time.monotonic() - start < 1.5 + 3


@pytest.mark.parametrize(
    "answer",
    [
        r"\frac{1}{" * 3000 + "1" + "}" * 3000,  # deeply nested
        r"\sqrt{" * 60 + "2" + "}" * 60,  # nested, under the length cap: sympy works on it or times out
        "(" * 400 + "1" + ")" * 400,
        "1" * 200_000,  # enormous
        r"10^{10^{10}}",  # needs ~4 GB to evaluate: memory limit or timeout
    ],
)
def test_pathological_answers_are_false_within_the_timeout(answer: str) -> None:
    start = time.monotonic()
    assert is_correct(rf"\boxed{{{answer}}}", "3", timeout=2.0) is False
    assert time.monotonic() - start < 2.0 + 3


def test_length_cap() -> None:
    assert is_correct(r"\boxed{" + "1" * MAX_ANSWER_CHARS + "}", "1" * MAX_ANSWER_CHARS) is True
    assert is_correct(r"\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", "1" * (MAX_ANSWER_CHARS + 1)) is False


def test_grade_batch_survives_a_hanging_worker_and_keeps_order() -> None:
    # both workers hang at once while jobs are still queued: they are killed, replaced, and the queue goes on
    completions = [
        r"\boxed{1}",
        rf"\boxed{{{HANGS}}}",
        rf"\boxed{{{HANGS}}}",
        r"\boxed{3}",
        r"\boxed{5}",
        "x",
        r"\boxed{2}",
    ]
    golds = ["1", "3", "3", "3", "4", "x", "2"]
    start = time.monotonic()
    assert grade_batch(completions, golds, timeout=1.5, max_workers=2) == [True, False, False, True, False, False, True]
    assert time.monotonic() - start < 1.5 + 8  # one round of hangs, replacement start-up, slack for a loaded machine
    assert grade_batch([r"\boxed{\frac12}"] * 4, ["0.5"] * 4) == [True] * 4  # the pool is healthy afterwards


def test_grade_batch_arguments() -> None:
    assert grade_batch([], []) == []
    assert grade_batch([None, 3, r"\boxed{1}"], ["1", "1", None]) == [False, False, False]  # type: ignore[list-item]
    with pytest.raises(ValueError, match="length"):
        grade_batch([r"\boxed{1}"], ["1", "2"])


def test_grading_works_under_a_script_that_maps_gigabytes_at_its_top(tmp_path):
    """``spawn`` re-runs the top of the parent's main script in each worker before the worker sets its memory limit;
    a training script that imports CUDA torch there maps gigabytes. The limit is counted on top of that, so grading
    still works (with a fixed 2 GiB limit the workers died at start and every answer was lost)."""
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(
        "import mmap\n"
        "RESERVED = mmap.mmap(-1, 3 * 2**30)  # 3 GiB of address space, never touched (as a CUDA import maps)\n"
        "from eksft.grading import grade_batch\n"
        "if __name__ == '__main__':\n"
        "    print(grade_batch([r'\\boxed{4}', r'\\boxed{5}'], ['4', '4'], max_workers=1))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[True, False]"
