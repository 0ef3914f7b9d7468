"""Rewards with eksft's definition of "correct", in the calling conventions of TRL, verl and OpenRLHF.

* TRL (``eksft grpo``): ``f(completions, **columns) -> list[float]``. TRL passes each dataset column as a keyword (here
  ``answer``) plus extras (``prompts``, ``trainer_state``...), which ``**kwargs`` absorbs. Completions are strings, or
  for conversational datasets lists of ``{"role", "content"}`` messages, of which the last is the model's.
* verl: ``compute_score`` is a custom reward function (``custom_reward_function.path`` = this file, ``.name`` =
  ``compute_score``) for the per-sample ``naive`` reward manager; ``compute_score_batch`` is the one for
  ``reward_model.reward_manager=batch``. See their docstrings for the exact calls they answer.
* OpenRLHF: ``openrlhf_reward_func`` is ``reward_func(queries, prompts, labels)`` for a reward file given by path
  (``examples/openrlhf_reward.py`` re-exports it under that name).

Correctness is ``eksft.grading``'s, the same as in evaluation: the last ``\\boxed{...}`` after any ``</think>``,
compared to the gold with math-verify in worker processes with a timeout. Golds go through the same normalisation as
``eksft grpo``'s data loading (``gold_text``: a whole-number float such as ``33.0`` is ``33``). Nothing here raises
on a bad completion or gold: it scores 0.0.

This file is also loaded by path (verl and OpenRLHF import a file with ``importlib``, outside the ``eksft``
package), so it uses absolute imports only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eksft.evaluation.benchmarks import gold_text
from eksft.grading import boxed_answers, grade_batch

__all__ = [
    "accuracy_reward",
    "completion_from_query",
    "completion_text",
    "compute_score",
    "compute_score_batch",
    "format_reward",
    "openrlhf_reward_func",
]


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


# --- verl ---------------------------------------------------------------------------------------------------------


def _golds(ground_truth: Any) -> list[str]:
    """The accepted answers of one row, normalised as ``eksft grpo`` normalises its gold answers.

    ``reward_model.ground_truth`` is one string (or number) in eksft's and OpenR1's data, but verl's own examples also
    store a list (``["72"]``), which reaches the reward as a list or a numpy array: any of its items counts as
    correct. None, and an empty list, accept nothing.
    """
    if ground_truth is None:
        return []
    if isinstance(ground_truth, (str, bytes)) or not isinstance(ground_truth, Iterable):
        return [gold_text(ground_truth)]
    return [gold_text(gold) for gold in ground_truth if gold is not None]


def _scores(solutions: Sequence[Any], ground_truths: Sequence[Any]) -> list[float]:
    """1.0/0.0 per solution: correct against any of its golds, all pairs graded in one parallel ``grade_batch``."""
    solutions, ground_truths = list(solutions), list(ground_truths)
    if len(solutions) != len(ground_truths):
        raise ValueError(f"{len(solutions)} solutions but {len(ground_truths)} ground truths")
    owners, texts, golds = [], [], []
    for i, (solution, ground_truth) in enumerate(zip(solutions, ground_truths, strict=True)):
        for gold in _golds(ground_truth):
            owners.append(i)
            texts.append(solution if isinstance(solution, str) else "")
            golds.append(gold)
    scores = [0.0] * len(solutions)
    for i, ok in zip(owners, grade_batch(texts, golds), strict=True):
        if ok:
            scores[i] = 1.0
    return scores


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> float:
    """verl's custom reward function: 1.0 when ``solution_str`` is correct for ``ground_truth``, else 0.0.

    verl's ``naive`` reward manager calls it once per response, by keyword (verl/workers/reward_manager/naive.py and,
    in the reward loop verl uses by default since ``reward_model.use_reward_loop=True``,
    verl/experimental/reward_loop/reward_manager/naive.py)::

        compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)

    ``solution_str`` is the decoded response only (no prompt, special tokens skipped), ``ground_truth`` the row's
    ``reward_model.ground_truth``, ``extra_info`` the row's ``extra_info`` plus ``num_turns`` and
    ``rollout_reward_scores``. ``**kwargs`` takes what verl may add: ``custom_reward_function.reward_kwargs``, and
    ``reward_router_address`` / ``reward_model_tokenizer`` when a reward model runs beside it. ``data_source`` and
    ``extra_info`` do not change the score: every data set is graded the same way, as ``eksft eval`` grades.

    It returns a plain float, which verl accepts as well as a dict with a ``"score"`` key; the reward loop logs a
    float as ``acc``. A float, because the naive, batch and dapo managers all read it as the reward, and a dict's
    extra keys become per-row logs that every row would have to carry.
    """
    return _scores([solution_str], [ground_truth])[0]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """``compute_score`` for a whole batch, graded in parallel: the function for verl's ``batch`` reward manager.

    verl's ``BatchRewardManager`` (verl/workers/reward_manager/batch.py, used with ``reward_model.reward_manager=batch``
    and ``reward_model.use_reward_loop=False``) calls the configured function once per batch, by keyword::

        compute_score(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=..., **reward_kwargs)

    ``data_sources`` and ``extra_infos`` are numpy object arrays there, ``solution_strs`` and ``ground_truths``
    lists; it returns one float per response, in order. Set ``custom_reward_function.name=compute_score_batch``.
    """
    return _scores(solution_strs, ground_truths)


# --- OpenRLHF -----------------------------------------------------------------------------------------------------


def completion_from_query(query: str, prompt: str) -> str:
    """The generated part of an OpenRLHF query (prompt + completion, decoded together).

    The query normally starts with the prompt: it is stripped. When decoding did not reproduce the prompt exactly
    (OpenRLHF decodes prompt and response tokens together and may have cut a long prompt from the left), the text
    after the prompt's first occurrence is used, and failing that the whole query; grading reads the last box after
    any ``</think>``, so the prompt matters only when the completion has no box and the prompt has one.
    """
    query, prompt = query if isinstance(query, str) else "", prompt if isinstance(prompt, str) else ""
    if not prompt:
        return query
    if query.startswith(prompt):
        return query[len(prompt) :]
    at = query.find(prompt)
    return query[at + len(prompt) :] if at >= 0 else query


def openrlhf_reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any
) -> dict[str, Any]:
    """OpenRLHF's ``reward_func(queries, prompts, labels)``: accuracy rewards as tensors, plus a format log.

    OpenRLHF (openrlhf/utils/agent.py, ``SingleTurnAgentExecutor``) loads ``reward_func`` from the ``.py`` file given
    as ``--reward.remote_url`` (``--remote_rm_url`` before its dotted options) and calls it from a thread with
    lists of one query, prompt and label each: the query is prompt + response decoded without skipping special
    tokens, the label the dataset's ``--data.label_key`` column. It reads ``"rewards"`` (the RL reward), ``"scores"``
    (dynamic filtering; falls back to rewards) and ``"extra_logs"`` (each value logged; a tensor's first item).

    Returns float32 tensors of shape ``[len(queries)]``: ``rewards`` and ``scores`` are 1.0/0.0 accuracy, and
    ``extra_logs["format"]`` is ``format_reward`` (exactly one boxed answer).
    """
    import torch

    completions = [completion_from_query(q, p) for q, p in zip(queries, prompts, strict=True)]
    rewards = torch.tensor(_scores(completions, list(labels)), dtype=torch.float32)
    formats = torch.tensor(format_reward(completions), dtype=torch.float32)
    return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": {"format": formats}}
