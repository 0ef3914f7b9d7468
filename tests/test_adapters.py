"""LoRA from training to evaluation, as a user runs it: ``eksft sft --use_peft`` writes an adapter folder; ``eksft
eval`` takes it (base + adapter, merged in memory); ``eksft merge`` writes the merged model, which evaluates to the
same samples; ``grpo`` goes on training the adapter; ``analyze`` stops with the merge command (``eval --backend
vllm`` serves the adapter with vLLM's LoRA: tests/evaluation/test_vllm_batching.py); the model card cites the paper
and names the dataset."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eksft.adapters import is_adapter_dir
from eksft.cli import main

GRPO_RECIPE = str(Path(__file__).resolve().parents[1] / "configs" / "grpo_tiny_cpu.yaml")
PROBLEMS = [{"problem": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)} for i in range(3)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter trained by ``eksft sft`` with the default objective (EKSFT, reference = adapters disabled)."""
    root = tmp_path_factory.mktemp("lora")
    rows = [{"messages": [{"role": "user", "content": p["problem"]},
                          {"role": "assistant", "content": f"\\boxed{{{p['answer']}}}"}]} for p in PROBLEMS]  # fmt: skip
    data = write_jsonl(root / "train.jsonl", rows)
    out = root / "lora"
    assert main(["sft", "--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--output_dir", str(out),
                 "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate",
                 "5e-2", "--max_steps", "3", "--use_cpu", "true", "--report_to", "none"]) == 0  # fmt: skip
    return out


def evaluate(model: Path, out: Path, *extra: str) -> int:
    bench = write_jsonl(out.parent / f"{out.name}-problems.jsonl", PROBLEMS)
    return main(["eval", "--model", str(model), "--benchmark", bench, "--num_samples", "2", "--max_new_tokens", "6",
                 "--output_dir", str(out), "--no_progress", *extra])  # fmt: skip


def samples(out: Path) -> list[dict]:
    (benchmark,) = [d for d in out.iterdir() if d.is_dir()]
    return [json.loads(line) for line in (benchmark / "samples.jsonl").read_text().splitlines()]


def test_the_adapter_folder_and_its_model_card(adapter):
    assert is_adapter_dir(adapter) and (adapter / "adapter_model.safetensors").is_file()
    card = (adapter / "README.md").read_text()
    assert "2605.29303" in card and "liu2026eksft" in card  # the paper, cited
    assert "train.jsonl" in card  # the dataset, named


def test_eval_on_the_adapter_equals_eval_on_its_merge(adapter, tmp_path, capsys):
    assert evaluate(adapter, tmp_path / "on-adapter") == 0
    merged = tmp_path / "merged"
    assert main(["merge", str(adapter), str(merged)]) == 0
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert (merged / "tokenizer.json").is_file() and "2605.29303" in (merged / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no staging left behind
    assert evaluate(merged, tmp_path / "on-merge") == 0
    on_adapter, on_merge = samples(tmp_path / "on-adapter"), samples(tmp_path / "on-merge")
    assert len(on_adapter) == 6 and [s["text"] for s in on_adapter] == [s["text"] for s in on_merge]

    capsys.readouterr()
    assert main(["merge", str(adapter), str(merged)]) == 2  # not over a model without --overwrite
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["merge", str(merged), str(tmp_path / "again")]) == 2
    assert "a full model already (it has config.json): nothing to merge" in capsys.readouterr().err


def test_grpo_goes_on_training_the_adapter(adapter, tmp_path, capsys):
    """``eksft grpo`` on an adapter folder trains that adapter (the reference, with beta > 0, is the base: the adapter
    disabled) and writes an adapter folder, which ``eksft eval`` takes in turn."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["problem"], "answer": p["answer"]} for p in PROBLEMS])
    out = tmp_path / "grpo"
    command = ["grpo", "--config", GRPO_RECIPE, "--model_name_or_path", str(adapter), "--dataset_name", prompts,
               "--max_steps", "2", "--beta", "0.1"]  # fmt: skip
    assert main([*command, "--output_dir", str(out)]) == 0
    assert is_adapter_dir(out)
    before, after = load_file(adapter / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert evaluate(out, tmp_path / "eval-grpo") == 0
    capsys.readouterr()
    assert main([*command, "--output_dir", str(tmp_path / "again"), "--use_peft"]) == 2
    assert "GRPO goes on training that adapter, so drop --use_peft" in capsys.readouterr().err


def test_commands_that_need_a_full_model_name_the_merge_command(adapter, tmp_path, capsys):
    merge = f"eksft merge {adapter} {adapter}-merged"
    assert main(["analyze", "--base", str(adapter), "--model", str(adapter), "--output_dir",
                 str(tmp_path / "analysis")]) == 2  # fmt: skip
    assert merge in capsys.readouterr().err
    assert not (tmp_path / "analysis").exists()


def test_merge_finds_a_moved_base_with_base_model(adapter, tiny_model_dir, tmp_path, capsys):
    moved = tmp_path / "adapter"
    moved.mkdir()
    for item in adapter.iterdir():
        if item.is_file():
            (moved / item.name).write_bytes(item.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert main(["merge", str(moved), str(tmp_path / "m1")]) == 2
    assert "give its location with --base_model DIR" in capsys.readouterr().err
    assert main(["merge", str(moved), str(tmp_path / "m2"), "--base_model", tiny_model_dir]) == 0
