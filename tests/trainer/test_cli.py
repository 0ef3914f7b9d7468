"""``eksft sft`` end to end, offline, with the tiny CPU recipe: training, LoRA, resuming, and every bad input."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eksft.cli import main
from eksft.objectives import OBJECTIVES
from eksft.trainer import EKSFTTrainer

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")
# Item 4 of the training issue, plus grad_norm from the Trainer
METRICS = {"loss", "grad_norm", "ce", "entropy_term", "kl_term", "mean_entropy", "mean_kl", "frac_masked", "iou"}


def sharegpt_rows(n: int) -> list[dict]:
    return [
        {
            "conversations": [
                {"role": "user", "value": f"What is {i} + {i}?"},
                {"role": "assistant", "value": f"{i} + {i} = {2 * i}."},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture
def data_file(tmp_path) -> str:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(sharegpt_rows(8)))
    return str(path)


def sft(*args: str) -> int:
    return main(["sft", "--config", RECIPE, *args])


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def token_stats(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "token_stats.jsonl").read_text().splitlines()]


# Rows of every layout the command reads, i = 0, 1, ...
LAYOUT_ROWS = {
    "messages": lambda i: {
        "messages": [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}]
    },
    "sharegpt": lambda i: {
        "conversations": [{"from": "human", "value": f"{i} + 1?"}, {"from": "gpt", "value": f"{i + 1}"}]
    },
    "prompt_completion": lambda i: {"prompt": f"{i} + 1?", "completion": f"{i + 1}"},
    "alpaca": lambda i: {"instruction": "Add one.", "input": f"{i}", "output": f"{i + 1}"},
    "openr1": lambda i: {
        "prompt": [{"role": "system", "content": "Reason."}, {"role": "user", "content": f"{i} + 1?"}],
        "target": [{"role": "assistant", "content": f"{i + 1}"}],
    },
}


def acceptance_run(model: str, data: str, out: Path, *extra: str) -> list[dict]:
    """The issue's acceptance command, with the defaults (no recipe): 3 steps, then the logged statistics."""
    command = ["sft", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out)]
    assert main([*command, "--max_steps", "3", *extra]) == 0
    lines = token_stats(out)
    assert [line["step"] for line in lines] == [1, 2, 3]
    return lines


@pytest.mark.parametrize("layout", LAYOUT_ROWS)
def test_acceptance_command_for_every_layout(tiny_model, tmp_path, layout):
    data = write_jsonl(tmp_path / "data.jsonl", [LAYOUT_ROWS[layout](i) for i in range(6)])
    assert all(METRICS <= set(line) for line in acceptance_run(tiny_model, data, tmp_path / "out"))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_acceptance_command_for_every_objective(tiny_model, tmp_path, objective):
    data = write_jsonl(tmp_path / "data.jsonl", [LAYOUT_ROWS["sharegpt"](i) for i in range(6)])
    lines = acceptance_run(tiny_model, data, tmp_path / "out", "--objective", objective)
    expected = METRICS if OBJECTIVES[objective].needs_reference else METRICS - {"mean_kl"}
    assert all(expected <= set(line) and all(math.isfinite(line[k]) for k in expected) for line in lines)


def test_recipe_trains_end_to_end_and_writes_token_stats(tiny_model, data_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = sft(
        "--model_name_or_path", tiny_model, "--dataset_name", data_file, "--max_steps", "3", "--output_dir", str(out)
    )
    assert code == 0
    assert "data: " in capsys.readouterr().out and (out / "model.safetensors").is_file()
    lines = token_stats(out)
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(METRICS <= set(line) for line in lines)


def test_lora_with_gradient_checkpointing(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [LAYOUT_ROWS["openr1"](i) for i in range(6)])
    out = tmp_path / "out"
    lora = "--use_peft --lora_r 4 --lora_target_modules q_proj v_proj --learning_rate 1e-2".split()
    lines = acceptance_run(tiny_model, data, out, *lora, "--gradient_checkpointing", "true")
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert lines[-1]["mean_kl"] > 0  # the reference (adapters disabled) differs from the trained policy


def test_resume_after_an_interruption_ends_with_the_same_weights(tiny_model, data_file, tmp_path, monkeypatch):
    args = [
        "--model_name_or_path",
        tiny_model,
        "--dataset_name",
        data_file,
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
    ]
    assert sft(*args, "--output_dir", str(tmp_path / "straight")) == 0

    save_checkpoint = EKSFTTrainer._save_checkpoint

    def save_then_crash(self, model, trial):
        save_checkpoint(self, model, trial)
        raise KeyboardInterrupt  # as if the run were stopped right after writing checkpoint-2

    monkeypatch.setattr(EKSFTTrainer, "_save_checkpoint", save_then_crash)
    assert sft(*args, "--output_dir", str(tmp_path / "resumed")) == 130
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (
        tmp_path / "resumed" / "model.safetensors"
    ).exists()
    monkeypatch.setattr(EKSFTTrainer, "_save_checkpoint", save_checkpoint)
    assert sft(*args, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true") == 0

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rho", "1.5"], "invalid configuration: rho must be in [0, 1), got 1.5"),
        (["--lambda_kl", "-1"], "invalid configuration: lambda_kl must be >= 0, got -1.0"),
        (["--objective", "sft"], "invalid configuration: objective must be one of nll, eksft, dft"),
        (["--dataset_format", "csv"], "unknown dataset layout 'csv'"),
        (["--ref_model_mode", "adapter_disabled"], "ref_model_mode='adapter_disabled' needs a PEFT model"),
        (["--resume_from_checkpoint", "true"], "--resume_from_checkpoint true: no checkpoint in"),
        (["--unknown_flag", "1"], "unknown option --unknown_flag on the command line"),
    ],
)
def test_bad_options_exit_2_with_one_message_and_write_nothing(tiny_model, data_file, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code = sft("--model_name_or_path", tiny_model, "--dataset_name", data_file, "--output_dir", str(out), *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert f"eksft sft: error: {message}" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "dataset file not found"),
        ('{"messages": [}\n', "data.jsonl:1: not a JSON object (invalid JSON"),
        (
            json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}) + "\n",
            "row 1: unknown role 'bot' in conversations[1]",
        ),
        (
            json.dumps({"instruction": "hi", "output": "yo"}) + "\n" + json.dumps({"instruction": "hi"}) + "\n",
            "row 2: missing field 'output'",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]})
            + "\n",
            "no rows left to train on after filtering",
        ),
    ],
)
def test_bad_data_exits_2_naming_the_file_row_and_field(tiny_model, tmp_path, capsys, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    code = sft("--model_name_or_path", tiny_model, "--dataset_name", str(path), "--output_dir", str(out))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_model_and_config(data_file, tmp_path, capsys):
    assert main(["sft", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert sft("--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", data_file) == 2
    assert "no-model: no such directory" in capsys.readouterr().err
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    assert sft("--model_name_or_path", str(no_tokenizer), "--dataset_name", data_file) == 2
    assert "cannot load its tokenizer: none of tokenizer.json" in capsys.readouterr().err
