"""The synthetic math world: answers recomputed independently, solution styles, splits, determinism, data sets."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from eksft.demo import world
from eksft.demo.world import STYLES, Task, pretraining_corpus, prompt_dataset, sft_dataset, split_of
from eksft.grading import extract_answer

SEEDS = range(12)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod}


def _safe_eval(expression: str) -> int:
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unexpected node {ast.dump(node)}")

    return ev(ast.parse(expression, mode="eval"))


def _recompute_from_question(kind: str, question: str) -> int:
    """The answer worked out again from the numbers in the question text alone."""
    n = [int(x) for x in re.findall(r"\d+", question)]
    if kind == "sum":
        return n[0] + n[1] + n[2]
    if kind == "product":
        return n[0] * n[1] + n[2]
    if kind == "difference":
        return n[0] - n[1] - n[2]
    if kind == "remainder":
        return n[0] % n[1]
    if kind == "expression":
        return (n[0] + n[1]) * n[2] - n[3]
    if kind == "equation":  # "Solve for x: ax + b = c."
        a, b, c = n
        assert (c - b) % a == 0
        return (c - b) // a
    raise AssertionError(f"unknown kind {kind}")


def _all_problems(n: int = 80):
    for seed in SEEDS:
        for split in ("train", "test"):
            yield from Task(seed).problems(split, n)


def test_answers_recomputed_and_every_step_checks_out():
    kinds = set()
    for problem in _all_problems():
        kinds.add(problem.kind)
        assert isinstance(problem.answer, int)
        assert _recompute_from_question(problem.kind, problem.question) == problem.answer, problem
        assert _safe_eval(problem.expression) == problem.answer, problem
        for _, text in problem.solutions:
            # every "a op b = c" written in a solution is true arithmetic
            for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", text):
                a, b, c = int(a), int(b), int(c)
                op_fn = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op]
                assert op_fn(a, b) == c, (text, a, op, b, c)
    assert kinds == set(world.GENERATORS)


def test_every_style_boxes_the_answer():
    for problem in _all_problems(40):
        assert [style for style, _ in problem.solutions] == list(STYLES)
        texts = [text for _, text in problem.solutions]
        assert len(set(texts)) == len(STYLES), "styles must differ"
        for text in texts:
            assert extract_answer(text) == str(problem.answer)
            assert text.rstrip().endswith(f"\\boxed{{{problem.answer}}}.")


def test_evaluate_and_reward_share_one_definition_of_correct():
    task = Task(0)
    problems = task.problems("test", 12)
    right = [problem.solution(STYLES[i % len(STYLES)]) for i, problem in enumerate(problems)]
    wrong = [text.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{p.answer + 1}}}") for p, text in zip(problems, right, strict=True)]
    assert task.evaluate_batch(problems, right) == [True] * len(problems)
    assert task.evaluate_batch(problems, wrong) == [False] * len(problems)
    for problem, good, bad in list(zip(problems, right, wrong, strict=True))[:4]:
        assert task.evaluate(problem, good) and task.reward(problem, good) == 1.0
        assert not task.evaluate(problem, bad) and task.reward(problem, bad) == 0.0
        assert task.reward(problem, f"The answer is {problem.answer}.") == 0.0  # the answer must be boxed


def test_splits_never_overlap():
    train = {p.question for seed in range(4) for p in Task(seed).problems("train", 300)}
    test = {p.question for seed in range(4) for p in Task(seed).problems("test", 300)}
    assert train and test and not train & test
    assert all(split_of(q) == "train" for q in train)
    assert all(split_of(q) == "test" for q in test)
    assert len(Task(0).problems("test", 300)) == len({p.question for p in Task(0).problems("test", 300)})
    with pytest.raises(ValueError):
        Task(0).problems("validation", 1)


def test_determinism_by_seed():
    assert Task(3).problems("train", 50) == Task(3).problems("train", 50)
    assert Task(3).problems("train", 50) != Task(4).problems("train", 50)
    assert Task(3).problems("test", 20)[:10] == Task(3).problems("test", 10)  # a smaller n is a prefix
    first = next(iter(Task(5)))
    assert first == Task(5).problems("train", 1)[0]
    assert pretraining_corpus(50, seed=1) == pretraining_corpus(50, seed=1)
    assert sft_dataset(8, seed=2, style=None) == sft_dataset(8, seed=2, style=None)


def test_pretraining_corpus_is_plain_train_text_in_all_styles():
    corpus = pretraining_corpus(40, seed=0)
    assert len(corpus) == 40 * len(STYLES)
    questions = {doc.split("\n", 1)[0].removeprefix("Question: ") for doc in corpus}
    assert len(questions) == 40
    assert all(split_of(q) == "train" for q in questions)
    for problem in Task(0).problems("train", 40):
        for style in STYLES:
            assert world.format_document(problem, style) in corpus
    assert not any("<|im_start|>" in doc or "<|endoftext|>" in doc for doc in corpus)


def test_sft_and_prompt_datasets():
    rows = sft_dataset(16, seed=0)
    assert len(rows) == 16
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert split_of(user["content"]) == "train"
        assert extract_answer(assistant["content"]) == row["answer"]
        assert assistant["content"].endswith(f"The answer is \\boxed{{{row['answer']}}}.")
    # one consistent style by default: the stepwise style has no full sentences before the last line
    assert all("Inside the brackets" not in row["messages"][1]["content"] for row in rows)
    mixed = sft_dataset(30, seed=0, style=None)
    assert [r["messages"][0] for r in mixed] == [r["messages"][0] for r in sft_dataset(30, seed=0)]
    assert mixed != sft_dataset(30, seed=0)
    with pytest.raises(ValueError):
        sft_dataset(2, style="poetic")

    prompts = prompt_dataset(10, seed=0)
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in prompts)
    assert all(split_of(r["prompt"][0]["content"]) == "test" for r in prompts)
