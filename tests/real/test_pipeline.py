"""The pipeline as a user runs it on a real pretrained chat model (SmolLM2-135M-Instruct): `eksft sft` with default
flags trains exactly the assistant tokens (pinned through the labels the loss sees, not the log), with SmolLM2's
own template, Meta's Llama 3.1 template and Qwen3's (which TRL patches); then `eksft grpo`, `eksft eval` and
`eksft analyze` on its output."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch

from eksft.cli import main as cli
from eksft.trainer import EKSFTConfig, EKSFTTrainer

from .conftest import CONVERSATIONS, MATH500_LEVEL1, RESPONSES, trl_template

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")
GRPO_RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "grpo_tiny_cpu.yaml")
# what each template renders after an assistant turn's content, inside the trained span
END_OF_TURN = {"smollm2": "<|im_end|>\n", "llama3_1": "<|eot_id|>", "qwen3": "<|im_end|>\n"}


def trained_spans(tokenizer, batches) -> list[str]:
    """Every maximal run of trained positions (label != -100) of the recorded batches, decoded."""
    spans = []
    for labels in batches:
        for row in labels.tolist():
            run = []
            for token in [*row, -100]:
                if token != -100:
                    run.append(token)
                elif run:
                    spans.append(tokenizer.decode(run))
                    run = []
    return spans


@contextlib.contextmanager
def recording_labels():
    """The labels of every micro-batch that reaches `EKSFTTrainer.compute_loss`, in a list."""
    batches = []
    original = EKSFTTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        batches.append(inputs["labels"].detach().cpu())
        return original(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EKSFTTrainer, "compute_loss", compute_loss)
        yield batches


@pytest.fixture
def recorded_labels():
    with recording_labels() as batches:
        yield batches


def model_with_template(smollm2_dir: str, path: Path, template: str) -> str:
    """A copy of SmolLM2 (weights linked) whose chat template was replaced, as a user's other model would be."""
    path.mkdir()
    for item in Path(smollm2_dir).iterdir():
        if item.name != "chat_template.jinja":
            os.symlink(item, path / item.name)
    (path / "chat_template.jinja").write_text(template, encoding="utf-8")
    return str(path)


def sft(model: str, data: Path, out: Path, *flags: str) -> int:
    return cli(["sft", "--config", RECIPE, "--model_name_or_path", model, "--dataset_name", str(data),
                "--output_dir", str(out), "--learning_rate", "1e-5", "--disable_tqdm", "true", *flags])  # fmt: skip


def assert_only_responses_trained(tokenizer, batches, end_of_turn: str, boundary: str = "", before="") -> None:
    """Each trained span is one response and its end-of-turn text. ``boundary``: characters at the end of the
    generation prompt that the tokenizer merges with the response's first token in the whole conversation; TRL
    then starts the completion where the two tokenisations diverge (and warns), so they are trained too. ``before``:
    what the template writes inside the assistant turn before the answer (TRL's Qwen3 training template: an empty
    <think> block on every answer, which keeps the template prefix-preserving)."""
    expected = [before + response + end_of_turn for response in RESPONSES]
    spans = trained_spans(tokenizer, batches)
    assert sorted(span.removeprefix(boundary) for span in spans) == sorted(expected), spans


@pytest.fixture(scope="module")
def sft_run(smollm2_dir, tmp_path_factory):
    """`eksft sft` with the CPU recipe's defaults on messages data: 2 steps of 3 rows (one epoch of the 5 rows)."""
    tmp = tmp_path_factory.mktemp("sft")
    data = tmp / "messages.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS), encoding="utf-8")
    with recording_labels() as batches:
        code = sft(smollm2_dir, data, tmp / "out", "--max_steps", "2", "--per_device_train_batch_size", "3")
    return code, tmp / "out", batches


def test_sft_on_smollm2_trains_exactly_the_assistant_tokens(sft_run, smollm2_tokenizer):
    code, out, batches = sft_run
    assert code == 0
    assert len(batches) == 2
    assert_only_responses_trained(smollm2_tokenizer, batches, END_OF_TURN["smollm2"])
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    steps = [json.loads(line) for line in (out / "token_stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]


@pytest.mark.parametrize("template, data_fixture, maskable", [("llama3_1", "sharegpt_file", False),
                                                             ("qwen3", "messages_file", True)])  # fmt: skip
def test_sft_with_another_template_trains_exactly_the_assistant_tokens(
    smollm2_dir, smollm2_tokenizer, tmp_path, recorded_labels, request, template, data_fixture, maskable, capsys
):
    """Meta's Llama 3.1 template (no markers, TRL has no patch: conversations are split) on ShareGPT data, and
    Qwen3's template (with <think>; TRL patches it: assistant masks) on messages data. With SmolLM2's tokenizer
    (not Llama's) the Llama header's closing "\n\n" merges with the response's first token, so TRL trains it too."""
    model = model_with_template(smollm2_dir, tmp_path / "model", trl_template(template))
    data = request.getfixturevalue(data_fixture)
    assert sft(model, data, tmp_path / "out", "--max_steps", "1", "--per_device_train_batch_size", "5") == 0
    out = capsys.readouterr().out
    assert ("conversations became 5 prompt-completion rows" in out) is not maskable
    if template == "qwen3":
        think = "<think>\n\n</think>\n\n"
        assert_only_responses_trained(smollm2_tokenizer, recorded_labels, END_OF_TURN[template], before=think)
    else:
        assert_only_responses_trained(smollm2_tokenizer, recorded_labels, END_OF_TURN[template], boundary="\n\n")


def test_python_api_splits_conversations_for_smollm2(smollm2_dir, smollm2_tokenizer, tmp_path):
    """`EKSFTTrainer(path, args, train_dataset=messages)`, no tokenizer given: the same conversion as the CLI."""
    import datasets

    config = EKSFTConfig(str(tmp_path / "out"), max_steps=1, use_cpu=True, report_to="none", save_strategy="no")
    trainer = EKSFTTrainer(smollm2_dir, args=config,
                           train_dataset=datasets.Dataset.from_list([{"messages": c} for c in CONVERSATIONS]))  # fmt: skip
    assert config.assistant_only_loss is False and len(trainer.train_dataset) == 5
    labels = [torch.tensor([row]) for row in trainer.train_dataset["labels"]]
    assert_only_responses_trained(smollm2_tokenizer, labels, END_OF_TURN["smollm2"])


def test_grpo_one_step_from_the_sft_model(sft_run, tmp_path, capsys):
    _, sft_out, _ = sft_run
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in MATH500_LEVEL1.read_text().splitlines()]
    prompts.write_text("".join(json.dumps({"prompt": r["problem"], "answer": r["answer"]}) + "\n" for r in rows))
    out = tmp_path / "grpo"
    code = cli(["grpo", "--config", GRPO_RECIPE, "--model_name_or_path", str(sft_out), "--dataset_name", str(prompts),
                "--output_dir", str(out), "--max_steps", "1", "--num_generations", "2",
                "--per_device_train_batch_size", "2", "--max_completion_length", "12", "--learning_rate", "1e-6",
                "--disable_tqdm", "true"])  # fmt: skip
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    stdout = capsys.readouterr().out
    assert "'rewards/accuracy_reward/mean'" in stdout and f"saved the model to {out}" in stdout


def test_eval_on_math500_problems(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli(["eval", "--model", smollm2_dir, "--benchmark", str(MATH500_LEVEL1), "--num-samples", "1",
                "--temperature", "0", "--max-new-tokens", "24", "--batch-size", "4", "--output-dir", str(out),
                "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    bench = next(p for p in out.iterdir() if p.is_dir())
    samples = [json.loads(line) for line in (bench / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["text"].strip() for s in samples)  # the real model writes something
    assert [s["gold"] for s in samples] == ["-50", "9901", "1", "4"]
    results = json.loads((bench / "results.json").read_text())
    assert 0 <= results["metrics"]["pass@1"] <= 100


def test_analyze_the_fine_tuned_model_against_the_base(sft_run, smollm2_dir, tmp_path, capsys):
    _, sft_out, _ = sft_run
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    out = tmp_path / "analysis"
    code = cli(["analyze", "--base", smollm2_dir, "--model", f"sft={sft_out}", "--run-dir", f"sft={sft_out}",
                "--texts", str(texts), "--output-dir", str(out), "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "analysis.json").read_text())
    model = result["models"][0]
    assert 0 < model["drift"]["total"] < 1e-2  # two steps at lr 1e-5 moved the weights, a little
    groups = model["drift"]["groups"]  # the 30 decoder layers of the real model, its (tied) embeddings, final norm
    assert list(groups) == ["embeddings", *(f"layer {i}" for i in range(30)), "final norm"]
    assert model["shift"]["mean_kl"] > 0
    assert result["runs"][0]["num_steps"] == 2
