"""GRPO: prompt loading (layouts, nested answers, the SFT remainder), rewards, and a few steps that move the weights."""

import json
import random
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eksft import cli
from eksft.errors import UserError
from eksft.grpo import REWARDS, GRPODataArguments, load_prompts, reward_functions


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


TINY_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "grpo_tiny_cpu.yaml"


def test_string_prompts_become_chats_with_template_and_system(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "1 + 1?", "answer": 2.0}, {"problem": "x?", "answer": "\\frac12"}])
    dataset, report = load_prompts(GRPODataArguments(
        dataset_name=path, prompt_field="problem", prompt_template="{problem} Box it.", system_prompt="Be brief."))  # fmt: skip
    assert dataset[0] == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1? Box it."}],
                          "answer": "2"}  # fmt: skip
    assert dataset[1]["answer"] == "\\frac12"
    assert "2 of 2 rows" in report


def test_openr1_layout_with_nested_answer(tmp_path):
    # the shape of Elliott/Openr1-Math-46k-8192: prompt = [system, user], target = [assistant], answer nested
    row = {"prompt": [{"role": "system", "content": "Think first."}, {"role": "user", "content": "2 + 3?"}],
           "target": [{"role": "assistant", "content": "5"}], "reward_model": {"ground_truth": "5", "style": "rule"}}  # fmt: skip
    dataset, _ = load_prompts(GRPODataArguments(dataset_name=write_jsonl(tmp_path / "o.jsonl", [row]),
                                                answer_field="reward_model.ground_truth"))  # fmt: skip
    assert dataset[0] == {"prompt": row["prompt"], "answer": "5"}


def test_hub_prompts_are_read_by_id_split_and_config(monkeypatch):
    calls = []

    class Split:
        def to_list(self):
            return [{"prompt": [{"role": "user", "content": f"q{i}"}], "reward_model": {"ground_truth": str(i)}}
                    for i in range(10)]  # fmt: skip

    class Builder:  # datasets.load_dataset_builder's result
        hash = "0" * 40

        def __init__(self, name, config=None, revision=None):
            calls.append((name, config, revision))

        def download_and_prepare(self):
            pass

        def as_dataset(self, split):
            calls.append(split)
            return Split()

    monkeypatch.setattr("datasets.load_dataset_builder", Builder)
    dataset, report = load_prompts(GRPODataArguments(
        dataset_name="Elliott/Openr1-Math-46k-8192", answer_field="reward_model.ground_truth", dataset_shuffle_seed=42,
        skip_rows=3))  # fmt: skip
    assert calls == [("Elliott/Openr1-Math-46k-8192", None, None), "train"]
    assert len(dataset) == 7 and "7 of 10 rows (skipped 3, shuffle seed 42)" in report


def test_remainder_is_exactly_the_rows_sft_did_not_take(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(50)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    # eksft.data.load_training_data takes the first max_rows of this shuffle for SFT
    numbers = list(range(50))
    random.Random(42).shuffle(numbers)
    sft_rows = {str(n) for n in numbers[:20]}
    dataset, _ = load_prompts(GRPODataArguments(dataset_name=path, dataset_shuffle_seed=42, skip_rows=20))
    rest = set(dataset["answer"])
    assert len(dataset) == 30 and rest.isdisjoint(sft_rows) and rest | sft_rows == {str(i) for i in range(50)}
    limited, _ = load_prompts(GRPODataArguments(dataset_name=path, dataset_shuffle_seed=42, skip_rows=20, max_rows=5))
    assert limited["answer"] == dataset["answer"][:5]


@pytest.mark.parametrize(
    "rows, args, match",
    [
        ([{"prompt": "a"}], {}, "row 1 has no 'answer'"),
        ([{"prompt": "a", "answer": "1"}], {"answer_field": "reward_model.ground_truth"}, "no 'reward_model.ground_truth'"),
        ([{"prompt": 3, "answer": "1"}], {}, "must be a string or a list"),
        ([{"prompt": "a", "answer": "1"}], {"skip_rows": 1}, "no rows left"),
        ([{"prompt": "a", "answer": "1"}], {"prompt_template": "no placeholder"}, "must contain {problem}"),
    ],
)
def test_bad_prompt_data(tmp_path, rows, args, match):
    with pytest.raises(UserError, match=match):
        load_prompts(GRPODataArguments(dataset_name=write_jsonl(tmp_path / "d.jsonl", rows), **args))


def test_reward_names():
    assert reward_functions(["accuracy", "format"]) == [REWARDS["accuracy"], REWARDS["format"]]
    assert reward_functions(["eksft.rewards.format_reward"]) == [REWARDS["format"]]
    with pytest.raises(UserError, match="unknown reward function 'acuracy'"):
        reward_functions(["acuracy"])


def test_paper_recipe_parses_with_the_remainder_of_the_sft_recipe():
    import yaml

    from eksft.commands.grpo import parse

    recipe = TINY_RECIPE.parent / "grpo_qwen3_4b.yaml"
    # bf16 needs a GPU; everything else is checked as written
    data_args, config, _ = parse(["--config", str(recipe), "--model_name_or_path", "runs/sft", "--bf16", "false"])
    sft = yaml.safe_load((TINY_RECIPE.parent / "eksft_qwen3_4b.yaml").read_text())
    assert data_args.dataset_name == sft["dataset_name"]
    assert (data_args.dataset_shuffle_seed, data_args.skip_rows) == (sft["dataset_shuffle_seed"], sft["max_rows"])
    assert data_args.answer_field == "reward_model.ground_truth"
    assert (config.loss_type, config.num_generations, config.max_completion_length) == ("dapo", 8, 8192)
    assert config.use_vllm and config.beta == 0.0


def test_cli_help_and_bad_configs(tmp_path, tiny_model_dir, capsys):
    assert cli.main(["grpo", "--help"]) == 0
    assert "--num_generations" in capsys.readouterr().out
    assert cli.main(["grpo", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1 + 1?", "answer": "2"}])
    base = ["grpo", "--config", str(TINY_RECIPE), "--model_name_or_path", tiny_model_dir, "--dataset_name", data,
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    # 6 completions per step cannot hold whole groups of 4
    assert cli.main([*base, "--per_device_train_batch_size", "6"]) == 2
    assert "must be divisible by num_generations" in capsys.readouterr().err
    assert cli.main([*base, "--reward_funcs", "acuracy", "--reward_weights", "1.0"]) == 2
    assert "unknown reward function" in capsys.readouterr().err
    assert cli.main([*base, "--model_name_or_path", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_grpo_steps_through_the_cli_change_the_weights(tmp_path, tiny_model_dir, monkeypatch):
    # A random model never writes a boxed answer, so accuracy is 0 for every completion and the advantages vanish.
    # A reward that differs between completions (distinct characters) gives GRPO something to learn from.
    (tmp_path / "toy_rewards.py").write_text(textwrap.dedent("""
        def variety(completions, **kwargs):
            return [len(set(c[-1]["content"])) / 10 for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)])
    out = tmp_path / "grpo"
    args = ["grpo", "--config", str(TINY_RECIPE), "--model_name_or_path", tiny_model_dir, "--dataset_name", data,
            "--output_dir", str(out), "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size",
            "4", "--max_completion_length", "12", "--reward_funcs", "accuracy", "toy_rewards.variety",
            "--reward_weights", "1.0", "1.0", "--disable_tqdm", "true"]  # fmt: skip
    assert cli.main(args) == 0
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), f"unchanged: {sorted(set(before) - set(changed))}"
    assert (out / "tokenizer.json").is_file()  # the output is a model directory eksft eval accepts
