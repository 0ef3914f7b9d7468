"""eksft's reward as verl's custom reward function and as OpenRLHF's reward file, called as those frameworks call it.

Neither framework is installed here (both need GPUs and pull vLLM, Ray, ...): the calls below are written from their
source, read at verl commit b178a3cd (2026-01-29) and OpenRLHF commit 3c3be623:

* verl/trainer/ppo/reward.py:60-96, ``get_custom_reward_fn``: loads ``custom_reward_function.name`` from
  ``custom_reward_function.path`` with verl/utils/import_utils.py:87-127 ``load_module`` (``spec_from_file_location``
  under the name ``custom_module_<hash of the absolute path>``, then ``exec_module``) and wraps it so that
  ``custom_reward_function.reward_kwargs`` are merged into every call's keywords.
* verl/experimental/reward_loop/reward_manager/naive.py:66-97 (the default, ``reward_model.use_reward_loop=True``)
  and verl/workers/reward_manager/naive.py:85-100 (legacy): ``compute_score(data_source=, solution_str=,
  ground_truth=, extra_info=)``, one response at a time; a dict result is read as ``result["score"]``, anything else
  is the score.
* verl/workers/reward_manager/batch.py:62-76: ``compute_score(data_sources=, solution_strs=, ground_truths=,
  extra_infos=, **reward_kwargs)``, one call per batch, ``data_sources`` / ``extra_infos`` numpy object arrays.
* OpenRLHF openrlhf/utils/agent.py:193-200 loads ``reward_func`` from the file with
  ``spec_from_file_location("reward_func", path)``; :281-297 and :303-320 call ``reward_func([query], [prompt],
  [label])`` (lists of one, in a thread) and read ``rewards``, ``scores`` (falling back to rewards) and
  ``extra_logs``; openrlhf/trainer/ppo_utils/samples_generator.py:286-296 wraps them with ``torch.tensor([value])``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eksft.grading import is_correct
from eksft.rewards import accuracy_reward

ROOT = Path(__file__).resolve().parents[1]
REWARDS_FILE = ROOT / "src" / "eksft" / "rewards.py"
OPENRLHF_FILE = ROOT / "examples" / "openrlhf_reward.py"
CONVERTER_FILE = ROOT / "examples" / "openr1_to_verl.py"

# (response as verl decodes it, ground_truth, expected score)
CASES = [
    (r"The sum is 33, so the answer is $\boxed{33}$.", "33", 1.0),
    (r"... so $\boxed{033}$", "33", 1.0),  # AIME answers are written 000-999
    (r"Therefore \boxed{\dfrac{1}{2}}", "0.5", 1.0),
    (r"The answer is \boxed{34}.", "33", 0.0),  # wrong
    ("The answer is 33.", "33", 0.0),  # right number, not boxed: no answer
    (r"<think>so it is \boxed{33}</think>I am not sure.", "33", 0.0),  # boxed only inside the thinking
    (r"<think>maybe \boxed{34}? no: 33</think>The answer is \boxed{33}.", "33", 1.0),  # after </think>
    (r"<think>so \boxed{33}", "33", 1.0),  # no </think> at all: the whole text is read (eksft.grading's rule)
    ("", "33", 0.0),
]


def _load_file(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verl_custom_reward_fn(path: Path | str, name: str, reward_kwargs: dict | None = None):
    """What verl's ``get_custom_reward_fn`` returns for ``custom_reward_function.{path,name,reward_kwargs}``."""
    if str(path).startswith("pkg://"):  # load_module's package form: an ordinary import
        module = importlib.import_module(str(path)[len("pkg://") :].replace("/", "."))
    else:
        module = _load_file(Path(path), f"custom_module_{hash(os.path.abspath(path))}")
    raw_fn = getattr(module, name)

    def call(*args, **kwargs):
        return raw_fn(*args, **{**kwargs, **(reward_kwargs or {})})

    return call


def verl_extra_info() -> dict:
    """A row's ``extra_info`` after verl's naive manager has added its own keys."""
    return {"index": 0, "split": "test", "num_turns": None, "rollout_reward_scores": {}}


def test_compute_score_as_verls_naive_manager_calls_it():
    compute_score = verl_custom_reward_fn(REWARDS_FILE, "compute_score")
    for solution_str, ground_truth, expected in CASES:
        score = compute_score(
            data_source="aime24", solution_str=solution_str, ground_truth=ground_truth, extra_info=verl_extra_info()
        )
        assert type(score) is float and score == expected, (solution_str, ground_truth, score)
        assert score == (1.0 if is_correct(solution_str, ground_truth) else 0.0)  # eksft eval's definition


def test_compute_score_takes_what_verl_may_add_and_any_data_source():
    # reward_kwargs from the config, and the reward loop's keywords when a reward model runs beside the rule
    compute_score = verl_custom_reward_fn(REWARDS_FILE, "compute_score", {"some_reward_kwarg": 1})
    kwargs = {"reward_router_address": None, "reward_model_tokenizer": None}
    for data_source in ("aime24", "openr1_math", "Elliott/Openr1-Math-46k-8192"):
        assert compute_score(data_source=data_source, solution_str=r"\boxed{7}", ground_truth="7",
                             extra_info=verl_extra_info(), **kwargs) == 1.0  # fmt: skip
    # positional, as verl's prime manager passes them; extra_info may be absent
    assert compute_score("aime24", r"\boxed{7}", "7") == 1.0


@pytest.mark.parametrize(
    "ground_truth, expected",
    [
        (33.0, 1.0),  # a float column: whole numbers lose their ".0", as in eksft grpo's data loading
        (np.int64(33), 1.0),
        (["33"], 1.0),  # verl's own examples store a list
        (np.array(["34", "33"], dtype=object), 1.0),  # a parquet list column, as verl hands it over: any gold
        (["34"], 0.0),
        ([], 0.0),
        (None, 0.0),
    ],
)
def test_compute_score_ground_truth_forms(ground_truth, expected):
    compute_score = verl_custom_reward_fn(REWARDS_FILE, "compute_score")
    score = compute_score(data_source="aime24", solution_str=r"so \boxed{33}.", ground_truth=ground_truth,
                          extra_info={})  # fmt: skip
    assert score == expected


def test_compute_score_batch_as_verls_batch_manager_calls_it():
    compute_score_batch = verl_custom_reward_fn(REWARDS_FILE, "compute_score_batch")
    solutions = [c[0] for c in CASES]
    golds = [c[1] for c in CASES]
    scores = compute_score_batch(
        data_sources=np.array(["aime24"] * len(CASES), dtype=object),
        solution_strs=solutions,
        ground_truths=golds,
        extra_infos=np.array([{"rollout_reward_scores": {}} for _ in CASES], dtype=object),
    )
    assert scores == [c[2] for c in CASES]
    assert all(type(s) is float for s in scores)
    assert scores == accuracy_reward(solutions, answer=golds)  # the same reward as eksft grpo's
    assert compute_score_batch(data_sources=[], solution_strs=[], ground_truths=[], extra_infos=[]) == []
    with pytest.raises(ValueError, match="2 solutions but 1 ground truths"):
        compute_score_batch(data_sources=["a", "a"], solution_strs=["x", "y"], ground_truths=["1"], extra_infos=None)


CHAT_PROMPT = (
    "<|im_start|>user\nWhat is 16 + 17? For example, 2 + 2 gives \\boxed{4}.\n"
    "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
)


def _openrlhf_reward_func():
    return _load_file(OPENRLHF_FILE, "reward_func").reward_func


def test_openrlhf_reward_func_as_openrlhf_calls_it():
    reward_func = _openrlhf_reward_func()
    responses = [
        ("<think>16 + 17 = 33</think>The answer is \\boxed{33}.<|im_end|>", 1.0, 1.0),
        ("The answer is \\boxed{34}.<|im_end|>", 0.0, 1.0),
        ("The answer is 33.<|im_end|>", 0.0, 0.0),  # the prompt's \boxed{4} is not the completion's answer
        ("\\boxed{33} or \\boxed{33}<|im_end|>", 1.0, 0.0),
    ]
    for response, reward, form in responses:
        # OpenRLHF: one query (prompt + response, special tokens kept), its prompt and label per call
        result = reward_func([CHAT_PROMPT + response], [CHAT_PROMPT], ["33"])
        assert set(result) == {"rewards", "scores", "extra_logs"}
        for key in ("rewards", "scores"):
            assert result[key].dtype == torch.float32 and result[key].shape == (1,)
        assert result["rewards"].tolist() == [reward] and result["scores"].tolist() == [reward]
        assert result["extra_logs"]["format"].tolist() == [form]
        # what samples_generator.py then does with them
        assert torch.tensor([result["rewards"]]).flatten().tolist() == [reward]
        assert torch.tensor([result["extra_logs"]["format"].flatten()[0].item()]).tolist() == [form]


def test_openrlhf_reward_func_batch_and_prompt_mismatch():
    reward_func = _openrlhf_reward_func()
    queries = [
        CHAT_PROMPT + "\\boxed{33}",
        "...truncated prompt " + CHAT_PROMPT + "\\boxed{33}",  # prompt not at the start: text after it
        "decoded differently: \\boxed{33}",  # prompt absent: the whole query
        CHAT_PROMPT + "no answer",
    ]
    result = reward_func(queries, [CHAT_PROMPT] * 4, ["33", "33", "33", "33"])
    assert result["rewards"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert reward_func([CHAT_PROMPT + "\\boxed{33}"], [CHAT_PROMPT], [None])["rewards"].tolist() == [0.0]  # no label


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_openr1_to_verl_writes_verls_layout(tmp_path, capsys):
    import datasets

    source = tmp_path / "aime_mini.jsonl"
    _write_jsonl(source, [
        {"problem": "What is 16 + 17?", "answer": "33", "solution": "16 + 17 = 33."},
        {"problem": "What is 1/2 as a decimal?", "answer": "0.5"},
        {"problem": "What is 2 * 3?", "answer": 6.0},
    ])  # fmt: skip
    converter = _load_file(CONVERTER_FILE, "openr1_to_verl")
    output = tmp_path / "out" / "train.parquet"
    assert converter.main([str(source), str(output), "--data-source", "aime24"]) == 0
    assert "wrote 3 rows" in capsys.readouterr().out
    rows = datasets.load_dataset("parquet", data_files=str(output), split="train").to_list()
    assert [row["reward_model"] for row in rows] == [{"style": "rule", "ground_truth": g} for g in ("33", "0.5", "6")]
    assert [row["answer"] for row in rows] == ["33", "0.5", "6"]
    assert {row["data_source"] for row in rows} == {"aime24"} and {row["ability"] for row in rows} == {"math"}
    assert [row["extra_info"] for row in rows] == [{"index": i, "split": "train"} for i in range(3)]
    first = rows[0]["prompt"]
    assert [turn["role"] for turn in first] == ["user"]
    assert first[0]["content"].startswith("What is 16 + 17?") and "\\boxed{}" in first[0]["content"]
    # a row as verl's reward manager hands it to compute_score
    compute_score = verl_custom_reward_fn(REWARDS_FILE, "compute_score")
    answers = [r"\boxed{33}", r"\boxed{\frac12}", r"\boxed{7}"]
    scores = [compute_score(data_source=row["data_source"], solution_str=answer,
                            ground_truth=row["reward_model"]["ground_truth"], extra_info=row["extra_info"])
              for row, answer in zip(rows, answers, strict=True)]  # fmt: skip
    assert scores == [1.0, 1.0, 0.0]


def test_openr1_to_verl_takes_the_remainder_after_sft_and_chat_prompts(tmp_path, capsys):
    import datasets

    source = tmp_path / "openr1.jsonl"
    turns = [[{"role": "system", "content": "Think first."}, {"role": "user", "content": f"Problem {i}"}]
             for i in range(3)]  # fmt: skip
    _write_jsonl(source, [{"prompt": t, "reward_model": {"ground_truth": str(i)}} for i, t in enumerate(turns)])
    converter = _load_file(CONVERTER_FILE, "openr1_to_verl")
    output = tmp_path / "rest.parquet"
    args = [str(source), str(output), "--prompt-field", "prompt", "--answer-field", "reward_model.ground_truth",
            "--shuffle-seed", "42", "--skip-rows", "1"]  # fmt: skip
    assert converter.main(args) == 0
    rows = datasets.load_dataset("parquet", data_files=str(output), split="train").to_list()
    numbers = list(range(3))
    random.Random(42).shuffle(numbers)  # eksft sft's shuffle; SFT with max_rows 1 trained on numbers[0]
    assert [row["prompt"] for row in rows] == [turns[n] for n in numbers[1:]]
    assert [row["reward_model"]["ground_truth"] for row in rows] == [str(n) for n in numbers[1:]]
    assert {row["data_source"] for row in rows} == {"openr1"}  # the file's stem by default
    assert converter.main([str(source), str(tmp_path / "x.parquet")]) == 2  # no "problem" field: a clear error
    assert "no 'problem'" in capsys.readouterr().err


def test_verl_config_points_at_compute_score_and_matches_the_trl_recipe():
    verl = yaml.safe_load((ROOT / "configs" / "verl_grpo_qwen3_4b.yaml").read_text())
    trl = yaml.safe_load((ROOT / "configs" / "grpo_qwen3_4b.yaml").read_text())
    reward = verl["custom_reward_function"]
    compute_score = verl_custom_reward_fn(reward["path"], reward["name"])
    assert compute_score(data_source="aime24", solution_str=r"\boxed{2}", ground_truth="2", extra_info={}) == 1.0
    actor, rollout = verl["actor_rollout_ref"]["actor"], verl["actor_rollout_ref"]["rollout"]
    assert verl["algorithm"]["adv_estimator"] == "grpo" and verl["algorithm"]["norm_adv_by_std_in_grpo"]
    assert trl["scale_rewards"] == "group" and trl["beta"] == 0.0 and not actor["use_kl_loss"]
    assert not verl["algorithm"]["use_kl_in_reward"] and actor["loss_agg_mode"] == "token-mean"
    assert (rollout["n"], rollout["temperature"], rollout["top_p"]) == (
        trl["num_generations"], trl["temperature"], trl["top_p"])  # fmt: skip
    assert verl["data"]["max_response_length"] == trl["max_completion_length"]
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (trl["epsilon"], trl["epsilon_high"])
    optim = actor["optim"]
    assert (optim["lr"], optim["weight_decay"], optim["clip_grad"], optim["lr_scheduler_type"]) == (
        trl["learning_rate"], trl["weight_decay"], trl["max_grad_norm"], trl["lr_scheduler_type"])  # fmt: skip
    completions_per_step = trl["per_device_train_batch_size"] * 8 * trl["gradient_accumulation_steps"]
    assert verl["data"]["train_batch_size"] * rollout["n"] == completions_per_step
    assert actor["ppo_mini_batch_size"] == verl["data"]["train_batch_size"]  # one optimizer step per batch
    assert verl["trainer"]["total_epochs"] == trl["num_train_epochs"] and verl["data"]["seed"] == trl["seed"]
    assert (verl["trainer"]["save_freq"], verl["trainer"]["max_actor_ckpt_to_keep"]) == (
        trl["save_steps"], trl["save_total_limit"])  # fmt: skip
