"""GRPO after SFT: prompts with gold answers, verifiable math rewards, and ``trl.GRPOTrainer`` doing the rest.

The rewards are ``eksft.rewards`` (the same definition of "correct" as ``eksft eval``); TRL passes the dataset's
``answer`` column to them. Prompts come from any local file or hub dataset whose rows hold a prompt (a string, or a
list of chat turns as in the OpenR1/LUFFY layout) and a gold answer (a column, or a dotted path into a nested one,
e.g. ``reward_model.ground_truth`` in ``Elliott/Openr1-Math-46k-8192``).

"The remainder" of a data set used for SFT: ``eksft sft`` with ``dataset_shuffle_seed=S`` and ``max_rows=N`` trains
on the first N rows of a seeded shuffle (``eksft.data.load_training_data``). The same shuffle with ``skip_rows=N``
here gives exactly the rows SFT did not see.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import UserError
from .evaluation.benchmarks import gold_text, is_local, read_hub_rows
from .evaluation.conventions import DEFAULT_PROMPT_TEMPLATE
from .rewards import accuracy_reward, format_reward

__all__ = ["REWARDS", "GRPODataArguments", "build_trainer", "load_prompts", "reward_functions"]

# name in a recipe -> reward function with TRL's signature
REWARDS: dict[str, Callable] = {"accuracy": accuracy_reward, "format": format_reward}


@dataclass
class GRPODataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Prompts: a local .json / .jsonl / .parquet file, or a hub dataset id."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset: configuration (subset) name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Hub dataset: split to read."})
    prompt_field: str = field(
        default="prompt", metadata={"help": "Field with the prompt: a string, or a list of {role, content} turns."}
    )
    answer_field: str = field(
        default="answer",
        metadata={"help": "Field with the gold answer; a dotted path reads a nested field (reward_model.ground_truth)."},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "For string prompts: the user message, with {problem} replaced by the prompt (default: "
                  "eksft eval's, '{problem}\\nPlease reason step by step, and put your final answer within "
                  "\\boxed{}.', so that training and evaluation ask the same way; '{problem}' sends it as is)."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System turn added to prompts that have none."})
    dataset_shuffle_seed: int | None = field(
        default=None, metadata={"help": "Shuffle the rows with this seed (the SFT recipe's, to take its remainder)."}
    )
    skip_rows: int = field(
        default=0, metadata={"help": "Skip the first rows (of the shuffle): the SFT recipe's max_rows, for its remainder."}
    )
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many rows after the skipped ones."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": f"Rewards, summed with GRPOConfig.reward_weights: {', '.join(REWARDS)}, or module.function."},
    )


def reward_functions(names: list[str]) -> list[Callable]:
    """The reward functions named in a recipe: our registry, or an importable ``module.function``."""
    functions = []
    for name in names:
        if name in REWARDS:
            functions.append(REWARDS[name])
            continue
        module_name, _, attribute = name.rpartition(".")
        try:
            functions.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError, ValueError):
            raise UserError(
                f"unknown reward function {name!r}; use one of {', '.join(REWARDS)} or an importable module.function"
            ) from None
    if not functions:
        raise UserError(f"reward_funcs is empty; use one or more of {', '.join(REWARDS)}")
    return functions


def _lookup(row: dict, path: str):
    value = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _prompt_turns(value, args: GRPODataArguments, where: str) -> list[dict]:
    if isinstance(value, str):
        text = (args.prompt_template or DEFAULT_PROMPT_TEMPLATE).replace("{problem}", value)
        turns = [{"role": "user", "content": text}]
    elif isinstance(value, list) and value and all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str) for t in value
    ):
        turns = [{"role": t["role"], "content": t["content"]} for t in value]
    else:
        raise UserError(f"{where}: field {args.prompt_field!r} must be a string or a list of {{role, content}} turns")
    if args.system_prompt and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": args.system_prompt})
    return turns


def load_prompts(args: GRPODataArguments):
    """A ``datasets.Dataset`` with a conversational ``prompt`` and a string ``answer`` per row, and a one-line report."""
    import datasets

    from .data import read_rows

    if not args.dataset_name:
        raise UserError("--dataset_name is required (a .json / .jsonl / .parquet file or a hub dataset id)")
    if args.skip_rows < 0 or (args.max_rows is not None and args.max_rows < 1):
        raise UserError(f"skip_rows must be >= 0 and max_rows >= 1; got {args.skip_rows} and {args.max_rows}")
    if args.prompt_template is not None and "{problem}" not in args.prompt_template:
        raise UserError(f"prompt_template must contain {{problem}}; got {args.prompt_template!r}")
    if is_local(args.dataset_name):
        rows = read_rows(args.dataset_name)
    else:
        rows = read_hub_rows(args.dataset_name, args.dataset_train_split, args.dataset_config)
    numbers = list(range(len(rows)))
    if args.dataset_shuffle_seed is not None:  # the same shuffle as eksft.data.load_training_data
        random.Random(args.dataset_shuffle_seed).shuffle(numbers)
    numbers = numbers[args.skip_rows :][: args.max_rows]
    if not numbers:
        raise UserError(f"{args.dataset_name}: no rows left after skipping {args.skip_rows} of {len(rows)}")
    examples = []
    for number in numbers:
        row, where = rows[number], f"{args.dataset_name}: row {number + 1}"  # counted from 1, as in eksft sft
        prompt, answer = _lookup(row, args.prompt_field), _lookup(row, args.answer_field)
        for name, value in ((args.prompt_field, prompt), (args.answer_field, answer)):
            if value is None or value == "" or value == []:
                raise UserError(f"{where} has no {name!r} (fields: {', '.join(row)}); set prompt_field / answer_field")
        examples.append({"prompt": _prompt_turns(prompt, args, where), "answer": gold_text(answer)})
    report = (f"prompts: {args.dataset_name}: {len(examples)} of {len(rows)} rows "
              f"(skipped {min(args.skip_rows, len(rows))}, shuffle seed {args.dataset_shuffle_seed})")  # fmt: skip
    return datasets.Dataset.from_list(examples), report


def build_trainer(model, config, train_dataset, reward_funcs: list[str] | None = None, **kwargs):
    """A GRPO trainer with our rewards; ``model`` is a path (loaded by TRL) or a model object.

    The trainer is ``eksft.trainer.grpo_trainer.SafeGRPOTrainer``: TRL's, plus the safety net of ``eksft sft`` (NaN/inf
    steps skipped, SIGINT/SIGTERM save a checkpoint, atomic checkpoints, safetensors only); ``config`` is a
    ``trl.GRPOConfig``, or ``SafeGRPOConfig`` for ``max_nonfinite_steps`` and ``log_file``.
    """
    from .trainer.grpo_trainer import SafeGRPOTrainer

    return SafeGRPOTrainer(
        model=model, reward_funcs=reward_functions(reward_funcs or ["accuracy"]), args=config,
        train_dataset=train_dataset, **kwargs,
    )  # fmt: skip
