"""Bad input to ``eksft sft``, ``eksft grpo`` and the training / objective Python API."""

from __future__ import annotations

import json
from pathlib import Path

from eksft.errors import UserError

from .cases import ApiCase, CliCase, write

CHAT = {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]}
PROMPT = {"prompt": "What is 2 + 3?", "answer": "5"}
GOOD_LINE = json.dumps(CHAT)
# ChatML without generation markers whose generation prompt opens a <think> block that a finished turn does not have
THINK_PROMPT_ONLY = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)


def jsonl(work: Path, lines: list[str] | bytes, name: str = "data.jsonl") -> str:
    text = lines if isinstance(lines, bytes) else "\n".join(lines) + "\n"
    return str(write(work / name, text))


def sft(work: Path, model: Path, data: str | None = None, *extra: str) -> list[str]:
    """``eksft sft`` on the tiny model with fast CPU settings, writing under ``work/out``."""
    data = data if data is not None else jsonl(work, [GOOD_LINE] * 4)
    return ["sft", "--model_name_or_path", str(model), "--dataset_name", data, "--output_dir", str(work / "out"),
            "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--max_length", "64", *extra]  # fmt: skip


def grpo(work: Path, model: Path, data: str | None = None, *extra: str) -> list[str]:
    data = data if data is not None else jsonl(work, [json.dumps(PROMPT)] * 4, "prompts.jsonl")
    return ["grpo", "--model_name_or_path", str(model), "--dataset_name", data, "--output_dir", str(work / "out"),
            "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--max_steps", "1",
            "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
            *extra]  # fmt: skip


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def bin_only(model: Path) -> Path:
    """The model's weights as ``pytorch_model.bin`` (a pickle) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def other_vocab(work: Path) -> Path:
    from eksft.tiny_model import build_tiny_model

    build_tiny_model(work / "ref", vocab_size=320, progress=False)
    return work / "ref"


def remote_code(model: Path) -> Path:
    """A config that needs custom code from the model's directory (auto_map, unknown model type)."""
    write(model / "modeling_custom.py", "raise SystemExit('custom code ran')\n")
    edit_json(model / "config.json", model_type="custom-net", architectures=["CustomNet"],
              auto_map={"AutoConfig": "modeling_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomNet"})  # fmt: skip
    return model


CASES = [
    # ---- eksft sft: data ----------------------------------------------------------------------------------------
    CliCase("input/sft-data-missing", "--dataset_name names a file that does not exist",
            lambda w, m: sft(w, m, str(w / "nope.jsonl")), ("<tmp>/nope.jsonl", "not found"), subprocess=True),
    CliCase("input/sft-jsonl-bad-line", "line 3 of a JSONL file is not JSON",
            lambda w, m: sft(w, m, jsonl(w, [GOOD_LINE, GOOD_LINE, '{"messages": [', GOOD_LINE])),
            ("<tmp>/data.jsonl:3", "invalid JSON")),
    CliCase("input/sft-json-array-bad", "a .json array file is cut off in the middle",
            lambda w, m: sft(w, m, str(write(w / "data.json", "[" + GOOD_LINE + ",\n" + GOOD_LINE[:20]))),
            ("<tmp>/data.json:2", "invalid JSON")),
    CliCase("input/sft-empty-file", "the data file is empty",
            lambda w, m: sft(w, m, str(write(w / "data.jsonl", ""))), ("<tmp>/data.jsonl", "empty")),
    CliCase("input/sft-non-utf8", "the data file has bytes that are not UTF-8 (Latin-1 text)",
            lambda w, m: sft(w, m, jsonl(w, GOOD_LINE.encode() + b"\n" + '{"messages": "café"}'.encode("latin-1"))),
            ("<tmp>/data.jsonl", "UTF-8", "line 2")),
    CliCase("input/sft-huge-line", "a 5 MB line of garbage in the data",
            lambda w, m: sft(w, m, jsonl(w, [GOOD_LINE, "x" * 5_000_000])), ("<tmp>/data.jsonl:2", "invalid JSON")),
    CliCase("input/sft-row-not-object", "a JSONL line holds a list, not an object",
            lambda w, m: sft(w, m, jsonl(w, [GOOD_LINE, "[1, 2]"])), ("<tmp>/data.jsonl:2", "a JSON list, not an object")),
    CliCase("input/sft-missing-field", "a row has no 'messages' field (the layout of the first row)",
            lambda w, m: sft(w, m, jsonl(w, [GOOD_LINE, json.dumps({"text": "hello"})])),
            ("<tmp>/data.jsonl", "row 2", "'messages'")),
    CliCase("input/sft-wrong-type", "'messages' is a string instead of a list of turns",
            lambda w, m: sft(w, m, jsonl(w, [GOOD_LINE, json.dumps({"messages": "hi"})])),
            ("row 2", "messages", "string")),
    CliCase("input/sft-unknown-role", "a turn has role 'wizard'",
            lambda w, m: sft(w, m, jsonl(w, [GOOD_LINE, json.dumps({"messages": [{"role": "wizard", "content": "x"}]})])),
            ("row 2", "'wizard'")),
    CliCase("input/sft-wrong-layout", "--dataset_format alpaca on chat data",
            lambda w, m: sft(w, m, None, "--dataset_format", "alpaca"), ("row 1", "'instruction'")),
    CliCase("input/sft-unknown-file-type", "the data is a .csv file",
            lambda w, m: sft(w, m, str(write(w / "data.csv", "a,b\n1,2\n"))), ("'.csv'", "<tmp>/data.csv")),
    # ---- eksft sft: options -------------------------------------------------------------------------------------
    CliCase("input/sft-rho-out-of-range", "--rho 1.5 (a fraction of tokens)",
            lambda w, m: sft(w, m, None, "--rho", "1.5"), ("rho", "1.5")),
    CliCase("input/sft-negative-lambda", "--lambda_kl -0.1",
            lambda w, m: sft(w, m, None, "--lambda_kl", "-0.1"), ("lambda_kl", "-0.1")),
    CliCase("input/sft-unknown-objective", "--objective eksftt (a typo)",
            lambda w, m: sft(w, m, None, "--objective", "eksftt"), ("objective", "'eksftt'")),
    CliCase("input/sft-unknown-flag", "an option that does not exist (--rhoo)",
            lambda w, m: sft(w, m, None, "--rhoo", "0.3"), ("--rhoo",), subprocess=True),
    CliCase("input/sft-adapter-without-peft", "--ref_model_mode adapter_disabled without --use_peft",
            lambda w, m: sft(w, m, None, "--ref_model_mode", "adapter_disabled"), ("adapter_disabled", "use_peft")),
    CliCase("input/sft-config-missing", "--config names a file that does not exist",
            lambda w, m: sft(w, m, None, "--config", str(w / "recipe.yaml")), ("config file not found", "<tmp>/recipe.yaml")),
    CliCase("input/sft-config-bad-yaml", "the --config file is not valid YAML",
            lambda w, m: sft(w, m, None, "--config", str(write(w / "recipe.yaml", "rho: [0.2\nlambda_kl: 0.05\n"))),
            ("<tmp>/recipe.yaml",)),
    CliCase("input/sft-config-unknown-key", "the --config file has a key no option has (rhoo)",
            lambda w, m: sft(w, m, None, "--config", str(write(w / "recipe.yaml", "rhoo: 0.3\n"))), ("rhoo",)),
    CliCase("input/sft-config-wrong-type", "the --config file sets rho to a word",
            lambda w, m: sft(w, m, None, "--config", str(write(w / "recipe.yaml", "rho: lots\n"))), ("rho", "lots")),
    CliCase("input/sft-resume-nothing", "--resume_from_checkpoint last with no checkpoint in --output_dir",
            lambda w, m: sft(w, m, None, "--resume_from_checkpoint", "last"), ("no checkpoint", "<tmp>/out")),
    CliCase("input/sft-template-cannot-separate",
            "--chat_template_path gives a template without generation markers whose generation prompt opens a <think> "
            "block that finished turns lack (the prompt is not a prefix of the conversation)",
            lambda w, m: sft(w, m, None, "--chat_template_path", str(write(w / "think.jinja", THINK_PROMPT_ONLY))),
            ("<tmp>/data.jsonl: row 1", "cannot be told apart from the prompt", "--assistant_only_loss false",
             "--chat_template_path")),  # fmt: skip
    CliCase("input/sft-chat-template-missing", "--chat_template_path names a .jinja file that does not exist",
            lambda w, m: sft(w, m, None, "--chat_template_path", str(w / "missing.jinja")),
            ("--chat_template_path <tmp>/missing.jinja", "cannot read it")),
    CliCase("input/sft-output-not-writable", "--output_dir lies under a regular file (cannot be created)",
            lambda w, m: sft(w, m, None, "--output_dir", str(write(w / "taken", "a file")) + "/out"),
            ("<tmp>/taken/out",)),
    # ---- eksft sft: models --------------------------------------------------------------------------------------
    CliCase("input/sft-model-missing", "--model_name_or_path names a directory that does not exist",
            lambda w, m: sft(w, w / "no-model"), ("<tmp>/no-model", "no such directory")),
    CliCase("input/sft-model-no-tokenizer", "the model directory has no tokenizer files",
            lambda w, m: sft(w, [p.unlink() for p in m.glob("tokenizer*")] and m), ("<model>", "tokenizer")),
    CliCase("input/sft-model-bin-only", "the model's weights are only a pickle (pytorch_model.bin)",
            lambda w, m: sft(w, bin_only(m)), ("<model>", "safetensors")),
    CliCase("input/sft-model-remote-code", "the model needs custom code (auto_map) and --trust_remote_code is not set",
            lambda w, m: sft(w, remote_code(m)), ("<model>", "trust_remote_code")),
    CliCase("input/sft-reference-vocab", "--ref_model_name_or_path has a different vocabulary from the policy",
            lambda w, m: sft(w, m, None, "--ref_model_name_or_path", str(other_vocab(w))), ("320", "512", "<tmp>/ref")),
    # ---- eksft grpo ---------------------------------------------------------------------------------------------
    CliCase("input/grpo-missing-answer", "a prompt row has no 'answer' field",
            lambda w, m: grpo(w, m, jsonl(w, [json.dumps(PROMPT), json.dumps({"prompt": "1+1?"})])),
            ("<tmp>/data.jsonl", "answer")),
    CliCase("input/grpo-bad-jsonl", "a prompts file line is not JSON",
            lambda w, m: grpo(w, m, jsonl(w, [json.dumps(PROMPT), "{oops"])), ("<tmp>/data.jsonl:2",)),
    CliCase("input/grpo-unknown-reward", "--reward_funcs names a reward that does not exist",
            lambda w, m: grpo(w, m, None, "--reward_funcs", "accuracy", "speling"), ("'speling'",)),
    CliCase("input/grpo-batch-not-multiple", "the batch (3) is not a multiple of num_generations (2)",
            lambda w, m: grpo(w, m, None, "--per_device_train_batch_size", "3"), ("3", "num_generations")),
    CliCase("input/grpo-no-chat-template", "the model's tokenizer has no chat template",
            lambda w, m: grpo(w, [p.unlink() for p in m.glob("chat_template.jinja")] and m), ("chat template",)),
]


# ---- Python API ---------------------------------------------------------------------------------------------------


def _loss_shape_mismatch(work, model):
    import torch

    from eksft.objectives import eksft_loss

    return lambda: eksft_loss(torch.zeros(2, 5, 11), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, 11))


def _config_rho(work, model):
    from eksft.trainer import EKSFTConfig

    return lambda: EKSFTConfig(str(work / "out"), rho=2.0, use_cpu=True, report_to="none")


def _trainer_args_dict(work, model):
    from eksft.trainer import EKSFTTrainer

    # a TrainingArguments / SFTConfig is converted, as SFTTrainer converts one; a dict is not training arguments
    return lambda: EKSFTTrainer(str(model), args={"output_dir": str(work / "out"), "use_cpu": True})


def _load_data_unknown_role(work, model):
    from eksft.data import load_training_data
    from eksft.loading import load_tokenizer

    path = jsonl(work, [GOOD_LINE, json.dumps({"messages": [{"role": "robot", "content": "x"}]})])
    tokenizer = load_tokenizer(str(model))
    return lambda: load_training_data(path, tokenizer)


def _unknown_objective(work, model):
    import torch

    from eksft.objectives import objective_loss

    return lambda: objective_loss("eksftt", torch.zeros(1, 3, 7), torch.zeros(1, 3, dtype=torch.long))


CASES += [
    ApiCase("input/api-loss-shapes", "eksft_loss with labels of another length than the logits",
            _loss_shape_mismatch, ValueError, ("labels", "(2, 4)")),
    ApiCase("input/api-config-rho", "EKSFTConfig(rho=2.0)", _config_rho, ValueError, ("rho", "2.0")),
    ApiCase("input/api-trainer-args-dict", "EKSFTTrainer given a dict as args", _trainer_args_dict,
            TypeError, ("EKSFTConfig", "dict")),
    ApiCase("input/api-data-unknown-role", "load_training_data on a row with role 'robot'", _load_data_unknown_role,
            UserError, ("row 2", "'robot'")),
    ApiCase("input/api-unknown-objective", "objective_loss('eksftt', ...)", _unknown_objective, ValueError,
            ("'eksftt'",)),
]
