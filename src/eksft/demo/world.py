"""A synthetic "math world" with verifiable answers, for tests, CI and the offline demo.

Each :class:`Problem` is a short arithmetic word problem (sums, products, differences, remainders, small linear
equations, bracketed expressions) with an integer answer and one worked solution per style in :data:`STYLES`:

* ``stepwise``  - terse, left to right, one operation per line;
* ``regrouped`` - the same answer reached by another route (regrouping, distributing, counting up, checking);
* ``verbose``   - full sentences that restate each intermediate quantity.

Several valid solution styles give a model diversity to keep (so pass@k can exceed pass@1). Every solution ends with
``The answer is \\boxed{N}.``. Which split a problem belongs to is a function of its question text alone, so train
and test never overlap, whatever seeds generated them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..grading import grade_batch, is_correct

STYLES = ("stepwise", "regrouped", "verbose")
SPLITS = ("train", "test")
TEST_FRACTION_PERCENT = 10  # about 1 question in 10 belongs to the test split

_NAMES = ("Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Gita", "Hugo", "Iris", "Jon", "Kai", "Lena", "Mia", "Noor")
_OBJECTS = ("apples", "pens", "stickers", "marbles", "books", "coins", "cards", "shells")


@dataclass(frozen=True)
class Problem:
    """One problem. ``expression`` is a Python arithmetic expression whose value is ``answer`` (for re-checking)."""

    kind: str
    question: str
    answer: int
    expression: str
    solutions: tuple[tuple[str, str], ...]  # (style, text), in the order of STYLES

    @property
    def gold(self) -> str:
        return str(self.answer)

    def solution(self, style: str) -> str:
        for name, text in self.solutions:
            if name == style:
                return text
        raise KeyError(f"unknown style {style!r}; expected one of {STYLES}")


def _final(n: int) -> str:
    return f"The answer is \\boxed{{{n}}}."


def _sum(rng: random.Random) -> Problem:
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 30)
    ab, s = a + b, a + b + c
    q = f"{name} has {a} {obj}. {name} gets {b} more and then {c} more. How many {obj} does {name} have now?"
    return Problem("sum", q, s, f"{a} + {b} + {c}", (
        ("stepwise", f"{a} + {b} = {ab}.\n{ab} + {c} = {s}.\n{_final(s)}"),
        ("regrouped", f"First add the two gifts: {b} + {c} = {b + c}.\nThen {a} + {b + c} = {s}.\n{_final(s)}"),
        ("verbose", f"{name} starts with {a} {obj}. After getting {b} more, {name} has {a} + {b} = {ab} {obj}. "
                    f"After getting {c} more, {name} has {ab} + {c} = {s} {obj}.\n{_final(s)}"),
    ))


def _product(rng: random.Random) -> Problem:
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    k, m, e = rng.randint(2, 6), rng.randint(2, 12), rng.randint(1, 20)
    km, ans = k * m, k * m + e
    q = f"{name} packs {k} boxes with {m} {obj} in each box and keeps {e} {obj} outside. How many {obj} are there in total?"
    counting = ", ".join(str(m * i) for i in range(1, k + 1))
    return Problem("product", q, ans, f"{k} * {m} + {e}", (
        ("stepwise", f"{k} * {m} = {km}.\n{km} + {e} = {ans}.\n{_final(ans)}"),
        ("regrouped", f"Count the boxes by {m}: {counting}.\nThen {km} + {e} = {ans}.\n{_final(ans)}"),
        ("verbose", f"Each box holds {m} {obj}, so {k} boxes hold {k} * {m} = {km} {obj}. "
                    f"Adding the {e} outside gives {km} + {e} = {ans} {obj}.\n{_final(ans)}"),
    ))


def _difference(rng: random.Random) -> Problem:
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    a = rng.randint(30, 99)
    b, c = rng.randint(2, a // 3), rng.randint(2, a // 3)
    ab, ans = a - b, a - b - c
    q = f"{name} had {a} {obj}, gave {b} to a friend and lost {c}. How many {obj} are left?"
    return Problem("difference", q, ans, f"{a} - {b} - {c}", (
        ("stepwise", f"{a} - {b} = {ab}.\n{ab} - {c} = {ans}.\n{_final(ans)}"),
        ("regrouped", f"Total taken away: {b} + {c} = {b + c}.\n{a} - {b + c} = {ans}.\n{_final(ans)}"),
        ("verbose", f"{name} starts with {a} {obj}. Giving away {b} leaves {a} - {b} = {ab} {obj}. "
                    f"Losing {c} leaves {ab} - {c} = {ans} {obj}.\n{_final(ans)}"),
    ))


def _equation(rng: random.Random) -> Problem:
    x, a, b = rng.randint(1, 15), rng.randint(2, 9), rng.randint(1, 30)
    ax, c = a * x, a * x + b
    q = f"Solve for x: {a}x + {b} = {c}."
    return Problem("equation", q, x, f"({c} - {b}) // {a}", (
        ("stepwise", f"{c} - {b} = {ax}, so {a}x = {ax}.\n{ax} / {a} = {x}, so x = {x}.\n{_final(x)}"),
        ("regrouped", f"Try x = {x}: {a} * {x} = {ax} and {ax} + {b} = {c}. It checks out.\n{_final(x)}"),
        ("verbose", f"We want the number x such that {a} times x plus {b} is {c}. Taking away {b} leaves "
                    f"{c} - {b} = {ax}, which must be {a} times x. Since {a} * {x} = {ax}, x is {x}.\n{_final(x)}"),
    ))


def _remainder(rng: random.Random) -> Problem:
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    n, k = rng.randint(10, 99), rng.randint(2, 9)
    qt, r = divmod(n, k)
    kq = k * qt
    q = f"{name} shares {n} {obj} equally among {k} friends, giving each as many as possible. How many {obj} are left over?"
    return Problem("remainder", q, r, f"{n} % {k}", (
        ("stepwise", f"{k} * {qt} = {kq}.\n{n} - {kq} = {r}.\n{_final(r)}"),
        ("regrouped", f"The largest multiple of {k} up to {n} is {k} * {qt} = {kq}.\nSo {r} are left, "
                      f"because {kq} + {r} = {n}.\n{_final(r)}"),
        ("verbose", f"Each friend gets {qt} {obj}, which uses {k} * {qt} = {kq} {obj}. "
                    f"That leaves {n} - {kq} = {r} {obj}.\n{_final(r)}"),
    ))


def _expression(rng: random.Random) -> Problem:
    a, b, c = rng.randint(1, 12), rng.randint(1, 12), rng.randint(2, 9)
    s, p = a + b, (a + b) * c
    d = rng.randint(1, p)
    ans = p - d
    q = f"Compute ({a} + {b}) * {c} - {d}."
    return Problem("expression", q, ans, f"({a} + {b}) * {c} - {d}", (
        ("stepwise", f"{a} + {b} = {s}.\n{s} * {c} = {p}.\n{p} - {d} = {ans}.\n{_final(ans)}"),
        ("regrouped", f"Distribute: {a} * {c} = {a * c} and {b} * {c} = {b * c}.\n{a * c} + {b * c} = {p}.\n"
                      f"{p} - {d} = {ans}.\n{_final(ans)}"),
        ("verbose", f"Inside the brackets, {a} + {b} = {s}. Multiplying by {c} gives {s} * {c} = {p}. "
                    f"Subtracting {d} gives {p} - {d} = {ans}.\n{_final(ans)}"),
    ))


GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "sum": _sum, "product": _product, "difference": _difference,
    "equation": _equation, "remainder": _remainder, "expression": _expression,
}


def generate_problem(rng: random.Random) -> Problem:
    """Draw one problem of a random kind."""
    return GENERATORS[rng.choice(sorted(GENERATORS))](rng)


def split_of(question: str) -> str:
    """The split a question belongs to: a pure function of its text, so splits never overlap."""
    bucket = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 100
    return "test" if bucket < TEST_FRACTION_PERCENT else "train"


class Task:
    """The math world as a task: seeded problem streams per split, plus one definition of "correct".

    ``problems(split, n)`` returns the first ``n`` distinct problems of that split for this seed, so a smaller ``n``
    gives a prefix of a larger one. Iterating a Task yields training problems forever.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def iter_problems(self, split: str = "train") -> Iterator[Problem]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        # the split name goes into the seed so the two streams do not share draws
        rng = random.Random(f"eksft-world/{self.seed}/{split}")
        seen: set[str] = set()
        while True:
            problem = generate_problem(rng)
            if problem.question not in seen and split_of(problem.question) == split:
                seen.add(problem.question)
                yield problem

    def problems(self, split: str = "train", n: int = 100) -> list[Problem]:
        it = self.iter_problems(split)
        return [next(it) for _ in range(n)]

    def __iter__(self) -> Iterator[Problem]:
        return self.iter_problems("train")

    # One definition of "correct" (eksft.grading: last \boxed{...}, math-verify equivalence); rewards reuse it.
    def evaluate(self, problem: Problem, completion: str) -> bool:
        return is_correct(completion, problem.gold)

    def evaluate_batch(self, problems: list[Problem], completions: list[str]) -> list[bool]:
        """``evaluate`` for many pairs at once, graded in parallel."""
        return grade_batch(completions, [p.gold for p in problems])

    def reward(self, problem: Problem, completion: str) -> float:
        return 1.0 if self.evaluate(problem, completion) else 0.0


def format_document(problem: Problem, style: str) -> str:
    """Plain pre-training text for one problem and one solution style (no chat template)."""
    return f"Question: {problem.question}\nAnswer: {problem.solution(style)}"


def pretraining_corpus(n_problems: int = 2000, seed: int = 0) -> list[str]:
    """A broad corpus of the world: every style of every one of ``n_problems`` training problems, shuffled."""
    docs = [format_document(p, style) for p in Task(seed).problems("train", n_problems) for style in STYLES]
    random.Random(seed).shuffle(docs)
    return docs


def chat_messages(problem: Problem, style: str | None = None) -> list[dict[str, str]]:
    """A user/assistant conversation; without ``style`` only the user turn (a prompt)."""
    messages = [{"role": "user", "content": problem.question}]
    if style is not None:
        messages.append({"role": "assistant", "content": problem.solution(style)})
    return messages


def sft_dataset(n: int = 64, seed: int = 0, style: str | None = "stepwise") -> list[dict]:
    """A small chat-format SFT set of training problems: ``{"messages": [...], "answer": "N"}``.

    By default every assistant answer uses one consistent style (``stepwise``), like a data set written by one
    annotator; ``style=None`` picks a random style per problem instead.
    """
    if style is not None and style not in STYLES:
        raise ValueError(f"style must be one of {STYLES} or None, got {style!r}")
    # a seed offset keeps the SFT problems apart from the first pre-training problems of the same seed
    rng = random.Random(seed)
    rows = []
    for problem in Task(seed + 1_000_003).problems("train", n):
        chosen = style if style is not None else rng.choice(STYLES)
        rows.append({"messages": chat_messages(problem, chosen), "answer": problem.gold})
    return rows


def prompt_dataset(n: int = 64, seed: int = 0, split: str = "test") -> list[dict]:
    """Prompt-only rows for evaluation or GRPO: ``{"prompt": [user turn], "answer": "N"}``."""
    return [{"prompt": chat_messages(p), "answer": p.gold} for p in Task(seed).problems(split, n)]
