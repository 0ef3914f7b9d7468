"""The demo's data, drawn from the synthetic math world: pre-training documents, SFT rows, GRPO prompts, held-out problems."""

from __future__ import annotations

import random

from eksft.demo.world import STYLES, Problem, Task, chat_messages, format_document

from .profiles import SFT_STYLE, BaseModelConfig, Profile

_CHAT_CORPUS_SEED, _GRPO_SEED = 7_919, 2_000_003  # problem streams of their own


def _chat_document(problem: Problem, style: str, boxed: bool) -> str:
    from eksft.demo.tokenizer import IM_END, IM_START

    solution = problem.solution(style)
    if not boxed:  # the same last sentence without the box: "The answer is 42."
        solution = solution.replace(f"\\boxed{{{problem.answer}}}", str(problem.answer))
    return f"{IM_START}user\n{problem.question}{IM_END}\n{IM_START}assistant\n{solution}{IM_END}\n"


def pretraining_documents(config: BaseModelConfig) -> list[str]:
    """The base model's corpus: every style of ``plain_problems`` problems as plain text, plus ``chat_problems``
    chat conversations in random styles, a ``boxed_chat_fraction`` of them with a boxed answer; shuffled."""
    rng = random.Random(f"eksft-demo-corpus/{config.seed}")
    docs = [format_document(p, style) for p in Task(config.seed).problems("train", config.plain_problems)
            for style in STYLES]  # fmt: skip
    for problem in Task(config.seed + _CHAT_CORPUS_SEED).problems("train", config.chat_problems):
        style = rng.choice(STYLES)
        docs.append(_chat_document(problem, style, boxed=rng.random() < config.boxed_chat_fraction))
    rng.shuffle(docs)
    return docs


def sft_rows(profile: Profile, seed: int) -> list[dict]:
    """The SFT conversations of one seed: few, one style, all boxed (``eksft.demo.world.sft_dataset``)."""
    from eksft.demo.world import sft_dataset

    return [{"messages": row["messages"]} for row in sft_dataset(profile.sft_examples, seed=seed, style=SFT_STYLE)]


def grpo_rows(profile: Profile, seed: int) -> list[dict]:
    """GRPO prompts of one seed: training-split problems that neither pre-training nor SFT drew."""
    problems = Task(_GRPO_SEED + seed).problems("train", profile.grpo_prompts)
    return [{"prompt": chat_messages(p), "answer": p.gold} for p in problems]


def held_out_problems(profile: Profile) -> list[Problem]:
    """The held-out problems every model is evaluated on (the test split, the same for every seed)."""
    return Task(0).problems("test", profile.eval_problems)


def shift_conversations(profile: Profile) -> list[list[dict]]:
    """Held-out conversations (test split, after the evaluation's problems), every solution style in turn."""
    problems = Task(0).problems("test", profile.eval_problems + profile.shift_texts)[profile.eval_problems :]
    return [chat_messages(p, STYLES[i % len(STYLES)]) for i, p in enumerate(problems)]
