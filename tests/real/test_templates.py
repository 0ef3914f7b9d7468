"""Only the responses are trained, whatever the chat template: SmolLM2's own, Meta's Llama 3.1, a Qwen3-style one
with <think>, and those TRL can patch (Llama 3, Qwen3); a template that cannot work gets eksft's message."""

from __future__ import annotations

import copy

import pytest

from eksft.cli import main as cli
from eksft.data import load_training_data
from eksft.errors import UserError
from eksft.templates import can_mask_assistant, check_prefix, split_conversation

from .conftest import CONVERSATIONS, RESPONSES, TEMPLATES, trl_template


def with_template(tokenizer, template: str):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template
    return tokenizer


TEMPLATE_CASES = {  # name -> (template text or None for the model's own, TRL can mask the assistant turns)
    "smollm2": (None, False),
    "llama3_1": (trl_template("llama3_1"), False),
    "qwen3_style": ((TEMPLATES / "qwen3_style.jinja").read_text(encoding="utf-8"), False),
    "llama3_trl_patched": (trl_template("llama3"), True),
    "qwen3_trl_patched": (trl_template("qwen3"), True),
}


@pytest.mark.parametrize("name", TEMPLATE_CASES)
def test_which_templates_trl_can_mask(smollm2_tokenizer, name):
    template, maskable = TEMPLATE_CASES[name]
    tokenizer = with_template(smollm2_tokenizer, template) if template else smollm2_tokenizer
    assert can_mask_assistant(tokenizer) is maskable


def test_split_conversation_gives_one_row_per_assistant_turn():
    rows = split_conversation(CONVERSATIONS[1])
    assert [r["completion"][0]["content"] for r in rows] == ["4*3 = 12, so \\boxed{12}.", "12-5 = \\boxed{7}."]
    assert rows[0]["prompt"] == CONVERSATIONS[1][:2]
    assert rows[1]["prompt"] == CONVERSATIONS[1][:4]  # the earlier answer stays as context


@pytest.mark.parametrize("name", ["smollm2", "llama3_1", "qwen3_style"])
def test_unmaskable_templates_become_prompt_completion_rows(smollm2_tokenizer, messages_file, name):
    template, _ = TEMPLATE_CASES[name]
    tokenizer = with_template(smollm2_tokenizer, template) if template else smollm2_tokenizer
    dataset, report = load_training_data(str(messages_file), tokenizer)
    assert dataset.column_names == ["prompt", "completion"]
    assert [row["completion"][0]["content"] for row in dataset] == RESPONSES
    assert report.split_conversations
    assert "4 conversations became 5 prompt-completion rows, one per assistant turn" in str(report)


def test_maskable_template_keeps_conversations(smollm2_tokenizer, messages_file):
    tokenizer = with_template(smollm2_tokenizer, trl_template("llama3"))
    dataset, report = load_training_data(str(messages_file), tokenizer)
    assert dataset.column_names == ["messages"] and not report.split_conversations and not report.notes


def test_assistant_only_loss_false_trains_every_token(smollm2_tokenizer, messages_file):
    dataset, report = load_training_data(str(messages_file), smollm2_tokenizer, assistant_only_loss=False)
    assert dataset.column_names == ["messages"] and not report.split_conversations


def test_default_system_prompt_is_in_prompt_and_conversation(smollm2_tokenizer):
    """SmolLM2 inserts its default system prompt when a conversation has none, in the prompt and in the whole
    conversation alike: the prefix property holds and the completion is only the answer."""
    row = split_conversation(CONVERSATIONS[0])[0]
    check_prefix(smollm2_tokenizer, row, "row 1")
    prompt = smollm2_tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_template_that_cannot_separate_the_response_is_refused(smollm2_tokenizer, messages_file):
    tokenizer = with_template(smollm2_tokenizer, (TEMPLATES / "think_prompt_only.jinja").read_text(encoding="utf-8"))
    with pytest.raises(UserError) as err:
        load_training_data(str(messages_file), tokenizer)
    message = str(err.value)
    assert f"{messages_file}: row 1:" in message
    assert "--assistant_only_loss false" in message and "--chat_template_path" in message
    assert "'<think>\\n' alone" in message  # where the prompt alone goes its own way


def test_sft_cli_refuses_that_template_before_any_work(smollm2_dir, messages_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["sft", "--config", "configs/tiny_cpu.yaml", "--model_name_or_path", smollm2_dir,
                "--dataset_name", str(messages_file), "--output_dir", str(out),
                "--chat_template_path", str(TEMPLATES / "think_prompt_only.jinja")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("eksft sft: error:") == 1 and "Traceback" not in err
    assert "cannot be told apart from the prompt" in err and "--assistant_only_loss false" in err
    assert not out.exists()
