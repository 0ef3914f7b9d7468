"""Drop-in conformance with TRL: ``EKSFTTrainer`` / ``EKSFTConfig(objective="nll")`` behave as ``SFTTrainer`` /
``SFTConfig`` and give the same losses.

Each test builds both trainers with the same values on the same data (tiny model, 8 rows, 2-3 steps, one thread)
and compares them step by step: dataset types, packing and padding-free batches, evaluation, LoRA, the forms of
``model`` and ``args``, the logged metrics, tags and model card. ``normalization="token"`` is set on our side: it
divides by the response tokens of the accumulated batch, as ``SFTTrainer`` does (the default ``"mean"`` gives the
same losses only without gradient accumulation; asserted below).

Intended differences from ``SFTTrainer`` / ``SFTConfig`` (asserted in the last tests, so that a change is noticed):

* the objective is ``objective``, which defaults to ``"eksft"`` (the paper's; ``"nll"`` is plain SFT) and accepts every
  name of ``eksft.objectives.OBJECTIVES``; a plain ``TrainingArguments`` given as ``args`` therefore trains EKSFT,
  and an ``SFTConfig`` trains its ``loss_type`` (``nll`` or ``dft``).
* ``logging_steps`` defaults to 1 (TRL: 10): the per-step token statistics are what EKSFT runs are analysed with.
* ``assistant_only_loss`` defaults to None (auto: True for conversational ``messages`` data, as in the paper; TRL:
  False, every token of a conversation is trained).
* ``bf16`` None resolves to "on where the GPU supports bf16" (TRL: on whenever fp16 is off, which fails on a CPU
  without ``use_cpu``); so ``EKSFTTrainer(model, args=None)`` trains on a CPU, ``SFTTrainer`` refuses. Its default
  output directory ends in ``-EKSFT`` (TRL: ``-SFT``).
* ``normalization`` defaults to ``"mean"`` (the paper's formulas): the logged loss is the mean of the micro-batch
  means, which differs from ``SFTTrainer``'s token-weighted loss under gradient accumulation.
* A NaN/inf loss or gradient skips the optimizer step (``eksft.trainer.safety``; ``max_nonfinite_steps`` ends the
  run after 5 in a row) and training log lines carry ``nonfinite_steps``; ``SFTTrainer`` applies the step (NaN
  weights).
* Extra log keys (``ce``, ``mean_entropy``, ``frac_masked``, ...) and one JSON line per logging step in
  ``output_dir/token_stats.jsonl``.
* ``compute_loss_func`` and ``label_smoothing_factor`` are refused (the objective is the loss; TRL deprecates both).
* The model card and the model's tags add ``"eksft"``, and the card says "trained with EKSFT".
"""

import dataclasses
import logging
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainingArguments
from transformers.utils import is_torch_bf16_gpu_available
from trl import SFTConfig, SFTTrainer

from eksft.objectives import OBJECTIVES
from eksft.trainer import EKSFTConfig, EKSFTTrainer

# Defaults of EKSFTConfig that differ from SFTConfig's, field by field: {name: (SFTConfig's, EKSFTConfig's)}
INTENDED_DEFAULT_DIFFERENCES = {
    # every step: the token statistics are what EKSFT runs are analysed with
    "logging_steps": (10, 1),
    # None = auto: the assistant turns of conversational `messages` data (the paper trains on responses only)
    "assistant_only_loss": (False, None),
}
# Values that differ only once __post_init__ resolved them (both field defaults are None), on a CPU config
INTENDED_RESOLVED_DIFFERENCES = {
    # SFTConfig turns bf16 on whenever fp16 is off; EKSFTConfig only where a GPU supports it (never with use_cpu)
    "bf16": (True, False),
}
# EKSFTConfig's own fields (the objective, the reference, the statistics, the safety net)
EKSFT_FIELDS = {
    "objective", "rho", "lambda_entropy", "lambda_kl", "combine", "scope", "normalize_entropy", "kl_floor", "entropy_largest",
    "kl_largest", "normalization", "asft_lambda", "iw_clip", "eaft_top_k", "rho1_ratio", "ref_model_mode",
    "ref_model_name_or_path", "use_chunked_stats", "token_stats_file", "max_nonfinite_steps",
}  # fmt: skip

SFT_METRICS = ("loss", "grad_norm", "learning_rate", "num_tokens", "mean_token_accuracy", "entropy")
LORA = dict(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


# ---- data and helpers -------------------------------------------------------------------------------------------


def make_dataset(kind: str, conversation, start: int = 0, rows: int = 8) -> Dataset:
    """``rows`` examples of one of SFTTrainer's dataset types, from the same short math exchanges."""
    examples = []
    for i in range(start, start + rows):
        user, assistant = conversation(i)
        if kind == "language_modeling":
            examples.append({"text": f"{user['content']} {assistant['content']}"})
        elif kind == "prompt_completion":
            examples.append({"prompt": user["content"], "completion": " " + assistant["content"]})
        elif kind == "conversational_prompt_completion":
            examples.append({"prompt": [user], "completion": [assistant]})
        elif kind == "messages":
            examples.append({"messages": [user, assistant]})
        else:
            raise ValueError(kind)
    return Dataset.from_list(examples)


def steps(trainer) -> list[float]:
    """Loss and gradient norm of every logged training step, flattened."""
    return [e[key] for e in trainer.state.log_history if "loss" in e for key in ("loss", "grad_norm")]


def logged(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "loss" in e]


def assert_same_steps(ours, theirs, count: int):
    assert len(logged(ours)) == len(logged(theirs)) == count
    assert all(math.isfinite(value) for value in steps(theirs))
    assert steps(ours) == pytest.approx(steps(theirs), rel=1e-5)


def build(cls, model, output_dir, train_dataset, *, eval_dataset=None, peft=False, **values):
    """``cls`` (EKSFTTrainer or SFTTrainer) with its config; EKSFTConfig gets objective="nll", normalization="token"."""
    if cls is EKSFTTrainer:
        args = EKSFTConfig(output_dir=str(output_dir), objective="nll", normalization="token", **values)
    else:
        args = SFTConfig(output_dir=str(output_dir), **values)
    peft_config = LoraConfig(**LORA) if peft else None
    return cls(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, peft_config=peft_config)


@pytest.fixture
def pair(tiny_model, tmp_path, fast_cpu):
    """``make(train_dataset, ...) -> (ours, theirs)``: EKSFTTrainer(objective="nll", normalization="token") and
    SFTTrainer, built with the same values (FAST_CPU, max_steps 3, then the keyword arguments), trained unless
    ``train=False``. ``model`` is a callable giving a fresh model (default: the tiny model's path), ``peft`` adds
    the same LoRA config to both."""

    def make(train_dataset, *, eval_dataset=None, model=None, peft=False, train=True, **values):
        values = {**fast_cpu, "max_steps": 3, **values}
        trainers = []
        for cls, name in ((EKSFTTrainer, "eksft"), (SFTTrainer, "sft")):
            trainer = build(cls, model() if model else tiny_model, tmp_path / name, train_dataset,
                            eval_dataset=eval_dataset, peft=peft, **values)  # fmt: skip
            if train:
                trainer.train()
            trainers.append(trainer)
        return tuple(trainers)

    return make


# ---- 1. dataset types -------------------------------------------------------------------------------------------

DATASET_CASES = {
    "language_modeling": ("language_modeling", {"assistant_only_loss": False}),
    "prompt_completion-completion_only": ("prompt_completion", {"completion_only_loss": True}),
    "prompt_completion-full": ("prompt_completion", {"completion_only_loss": False}),
    "conversational_prompt_completion-completion_only": (
        "conversational_prompt_completion", {"completion_only_loss": True}
    ),
    "conversational_prompt_completion-full": ("conversational_prompt_completion", {"completion_only_loss": False}),
    "messages-assistant_only": ("messages", {"assistant_only_loss": True}),
    "messages-full": ("messages", {"assistant_only_loss": False}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_dataset_types_train_the_same_tokens_with_the_same_losses(pair, conversation, case):
    kind, options = DATASET_CASES[case]
    options = {"assistant_only_loss": False, **options}  # set on both sides: the defaults differ (None / False)
    ours, theirs = pair(make_dataset(kind, conversation), **options)
    # the same rows, tokens and trained positions (labels), then the same losses and gradient norms
    for column in ("input_ids", "labels"):
        assert ours.train_dataset[column] == theirs.train_dataset[column], column
    assert_same_steps(ours, theirs, 3)


# ---- 2. packing and padding-free batches ------------------------------------------------------------------------

PACKING_CASES = {
    "bfd-language_modeling": ("language_modeling", {"packing": True}),  # bfd implies padding-free
    "bfd-messages": ("messages", {"packing": True}),
    "wrapped-messages": ("messages", {"packing": True, "packing_strategy": "wrapped"}),
    "padding_free-no_packing": (
        "messages",
        {"padding_free": True, "max_length": None, "per_device_train_batch_size": 2},
    ),
}


@pytest.mark.parametrize("case", list(PACKING_CASES))
def test_packing_and_padding_free_give_the_same_losses(pair, conversation, case):
    kind, options = PACKING_CASES[case]
    options = {"assistant_only_loss": kind == "messages", "per_device_train_batch_size": 1, **options}
    ours, theirs = pair(make_dataset(kind, conversation), **options)
    for column in ("input_ids", "labels"):  # the same packed rows
        assert ours.train_dataset[column] == theirs.train_dataset[column], column
    assert ours.padding_free == theirs.padding_free == (options.get("packing_strategy") != "wrapped")
    batch = next(iter(ours.get_train_dataloader()))
    assert ("position_ids" in batch) == ours.padding_free and ("attention_mask" in batch) != ours.padding_free
    assert_same_steps(ours, theirs, 3)


WARNED = {
    "padding_free-batch_size_1": {"padding_free": True, "max_length": None, "per_device_train_batch_size": 1},
    "padding_free-wrapped_packing": {"padding_free": True, "packing": True, "packing_strategy": "wrapped"},
}


@pytest.mark.parametrize("case", list(WARNED))
def test_padding_free_warnings_are_sft_trainers(tiny_model, conversation, tmp_path, fast_cpu, caplog, case):
    data = make_dataset("messages", conversation)
    warnings = {}
    for cls in (EKSFTTrainer, SFTTrainer):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            build(cls, tiny_model, tmp_path / cls.__name__, data, **{**fast_cpu, "assistant_only_loss": True,
                                                                     **WARNED[case]})  # fmt: skip
        warnings[cls] = [r.getMessage() for r in caplog.records if r.name == "trl.trainer.sft_trainer"]
    assert any("padding_free" in message or "padding-free" in message for message in warnings[SFTTrainer])
    assert warnings[EKSFTTrainer] == warnings[SFTTrainer]


@pytest.mark.parametrize(
    "kind, option, message",
    [
        # padding-free batches without packing while max_length is set (it would not be enforced)
        ("messages", "padding_free", "max_length"),
        ("language_modeling", "assistant_only_loss", "not conversational"),
    ],
)
def test_options_sft_trainer_refuses_are_refused_with_its_message(tiny_model, conversation, make_config, fast_cpu,
                                                                   tmp_path, kind, option, message):  # fmt: skip
    data = make_dataset(kind, conversation)
    with pytest.raises(ValueError) as theirs:
        SFTTrainer(tiny_model, args=SFTConfig(output_dir=str(tmp_path / "sft"), **{option: True}, **fast_cpu),
                   train_dataset=data)  # fmt: skip
    with pytest.raises(ValueError) as ours:
        EKSFTTrainer(tiny_model, args=make_config(objective="nll", **{option: True}), train_dataset=data)
    assert message in str(theirs.value) and str(ours.value) == str(theirs.value)


# ---- 3. evaluation ----------------------------------------------------------------------------------------------


def eval_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if any(k.startswith("eval_") and k.endswith("_loss") for k in e)]


@pytest.mark.parametrize("several", [False, True], ids=["one_eval_dataset", "dict_of_two"])
def test_evaluate_gives_the_same_eval_loss_accuracy_and_entropy(pair, conversation, several):
    def data(start):
        return make_dataset("messages", conversation, start=start, rows=4)

    eval_dataset = {"first": data(8), "second": data(12)} if several else data(8)
    ours, theirs = pair(make_dataset("messages", conversation), eval_dataset=eval_dataset, assistant_only_loss=True,
                        max_steps=2)  # fmt: skip
    ours_metrics, theirs_metrics = ours.evaluate(), theirs.evaluate()
    losses = ["eval_first_loss", "eval_second_loss"] if several else ["eval_loss"]
    assert ours_metrics[losses[0]] == pytest.approx(theirs_metrics[losses[0]], rel=1e-5)
    # one log line per eval dataset. SFTTrainer names its own metrics "eval_<name>" whatever the dataset's key, so
    # with a dict they are only told apart by their log line (the dict evaluate() returns keeps the last dataset's)
    ours_logs, theirs_logs = eval_logs(ours), eval_logs(theirs)
    assert len(ours_logs) == len(theirs_logs) == len(losses)
    for loss, mine, trl in zip(losses, ours_logs, theirs_logs, strict=True):
        assert mine[loss] == pytest.approx(trl[loss], rel=1e-5)
        for key in ("eval_mean_token_accuracy", "eval_entropy"):
            assert key in trl, f"SFTTrainer does not log {key}: {sorted(trl)}"
            assert key in mine, f"{key} missing from {sorted(mine)}"
            assert mine[key] == pytest.approx(trl[key], rel=1e-4), key


# ---- 4. PEFT ----------------------------------------------------------------------------------------------------


def test_lora_gives_the_same_losses_and_trains_only_the_adapter(pair, conversation):
    ours, theirs = pair(make_dataset("messages", conversation), peft=True, assistant_only_loss=True, train=False)
    before = {name: p.detach().clone() for name, p in ours.model.named_parameters()}
    trainable = {name for name, p in ours.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    ours.train()
    theirs.train()
    assert_same_steps(ours, theirs, 3)
    changed = {name for name, p in ours.model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == trainable


# ---- 5. the model and args arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["path", "instance"])
def test_model_as_path_or_instance(pair, tiny_model, conversation, form):
    model = (lambda: AutoModelForCausalLM.from_pretrained(tiny_model)) if form == "instance" else None
    ours, theirs = pair(make_dataset("messages", conversation), model=model, assistant_only_loss=True)
    assert_same_steps(ours, theirs, 3)


def test_args_none_trains_in_a_directory_named_after_the_model(tiny_model, conversation, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output directory is relative
    data = make_dataset("messages", conversation)
    trainer = EKSFTTrainer(tiny_model, train_dataset=data)
    name = tiny_model.rstrip("/").split("/")[-1]
    assert trainer.args.output_dir == f"{name}-EKSFT"  # SFTTrainer: f"{name}-SFT"
    assert trainer.args.objective == "eksft" and trainer.args.assistant_only_loss is True
    trainer.args.max_steps = 1  # the defaults train 3 epochs; one step shows that it trains
    trainer.train()
    assert len(logged(trainer)) == 1 and (tmp_path / f"{name}-EKSFT" / "token_stats.jsonl").is_file()
    if not is_torch_bf16_gpu_available():  # SFTConfig's bf16 default needs a GPU (or use_cpu)
        with pytest.raises(ValueError, match="bf16"):
            SFTTrainer(tiny_model, train_dataset=data)
    else:
        assert SFTTrainer(tiny_model, train_dataset=data).args.output_dir == f"{name}-SFT"


def test_training_arguments_are_converted_with_the_objective_defaults(tiny_model, conversation, tmp_path, fast_cpu):
    values = {k: v for k, v in fast_cpu.items() if k != "max_length"}  # not a TrainingArguments field
    args = TrainingArguments(output_dir=str(tmp_path / "out"), **values)
    data = make_dataset("messages", conversation)
    theirs = SFTTrainer(tiny_model, args=args, train_dataset=data)
    assert type(theirs.args) is SFTConfig
    ours = EKSFTTrainer(tiny_model, args=args, train_dataset=data)
    assert type(ours.args) is EKSFTConfig and ours.args is not args
    # TrainingArguments' values are kept; what it lacks takes EKSFTConfig's defaults (the objective: EKSFT)
    assert ours.args.max_steps == 2 and ours.args.learning_rate == 1e-2 and ours.args.use_cpu
    assert ours.args.objective == "eksft" and ours.args.assistant_only_loss is True
    assert ours.ref_model is not None
    ours.train()
    assert len(logged(ours)) == 2 and all(e["kl_term"] >= 0 and math.isfinite(e["loss"]) for e in logged(ours))


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_sft_config_is_converted_and_keeps_its_loss_type(tiny_model, conversation, tmp_path, fast_cpu, loss_type):
    def config(name):
        return SFTConfig(output_dir=str(tmp_path / name), loss_type=loss_type, assistant_only_loss=True,
                         **{**fast_cpu, "max_steps": 3})  # fmt: skip

    data = make_dataset("messages", conversation)
    ours = EKSFTTrainer(tiny_model, args=config("eksft"), train_dataset=data)
    assert type(ours.args) is EKSFTConfig and (ours.args.objective, ours.args.loss_type) == (loss_type, "nll")
    assert ours.args.normalization == "mean"  # equal to SFTTrainer's token normalisation without accumulation
    ours.train()
    theirs = SFTTrainer(tiny_model, args=config("sft"), train_dataset=data)
    theirs.train()
    assert_same_steps(ours, theirs, 3)


# ---- 6. training metrics ----------------------------------------------------------------------------------------


def test_training_logs_sft_trainer_metrics_with_the_same_values(pair, conversation):
    ours, theirs = pair(make_dataset("messages", conversation), assistant_only_loss=True)
    assert len(logged(ours)) == len(logged(theirs)) == 3
    for mine, trl in zip(logged(ours), logged(theirs), strict=True):
        assert set(SFT_METRICS) <= set(trl), set(SFT_METRICS) - set(trl)
        assert set(SFT_METRICS) <= set(mine), set(SFT_METRICS) - set(mine)
        assert mine["step"] == trl["step"]
        assert mine["learning_rate"] == trl["learning_rate"] and mine["num_tokens"] == trl["num_tokens"]
        for name, rel in (("loss", 1e-5), ("grad_norm", 1e-5), ("mean_token_accuracy", 1e-4), ("entropy", 1e-4)):
            assert mine[name] == pytest.approx(trl[name], rel=rel), name


# ---- 7. tags and model card -------------------------------------------------------------------------------------


def card(trainer) -> tuple[dict, str]:
    """The YAML header and the text of README.md in the trainer's output_dir."""
    text = (Path(trainer.args.output_dir) / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_model_card_and_tags_are_sft_trainers_plus_eksft(pair, conversation):
    ours, theirs = pair(make_dataset("messages", conversation), assistant_only_loss=True, max_steps=1,
                        save_strategy="steps", save_steps=1)  # fmt: skip
    for trainer in (ours, theirs):  # the checkpoint save writes the card too (SFTTrainer._save_checkpoint)
        assert (Path(trainer.args.output_dir) / "README.md").is_file()
        trainer.save_model()
        trainer.create_model_card()
    (ours_header, ours_body), (theirs_header, theirs_body) = card(ours), card(theirs)
    assert {"trl", "sft"} <= set(theirs_header["tags"])
    assert set(ours_header["tags"]) == set(theirs_header["tags"]) | {"eksft"}
    assert ours_header["library_name"] == theirs_header["library_name"] == "transformers"
    assert "This model was trained with SFT." in theirs_body
    # ours cites the paper (TRL's `_paper` convention), where SFTTrainer, which has none, says only its name
    assert "This model was trained with EKSFT, a method introduced in [Entropy-KL Selective Fine-Tuning" in ours_body
    assert "arXiv:2605.29303" in ours_body and "2605.29303" not in theirs_body
    for text in ("It has been trained using [TRL](https://github.com/huggingface/trl).", "- TRL: ", "Cite TRL as"):
        assert text in theirs_body and text in ours_body, text
    assert set(theirs.model.model_tags) == {"trl", "sft"} and set(ours.model.model_tags) == {"trl", "sft", "eksft"}


# ---- 8. intended differences ------------------------------------------------------------------------------------


def field_defaults(cls) -> dict:
    def default(f):
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING

    return {f.name: default(f) for f in dataclasses.fields(cls)}


def test_config_defaults_differ_only_where_intended():
    sft, eksft = field_defaults(SFTConfig), field_defaults(EKSFTConfig)
    assert set(eksft) - set(sft) == EKSFT_FIELDS and set(sft) <= set(eksft)
    differences = {name: (sft[name], eksft[name]) for name in sft if sft[name] != eksft[name]}
    assert differences == INTENDED_DEFAULT_DIFFERENCES
    # after __post_init__, on a CPU config (SFTConfig cannot be built on a CPU without use_cpu)
    theirs, ours = SFTConfig("sft", use_cpu=True), EKSFTConfig("eksft", use_cpu=True)
    resolved = {
        name: (getattr(theirs, name), getattr(ours, name))
        for name in sft
        if name != "output_dir" and getattr(theirs, name) != getattr(ours, name)
    }
    assert resolved == {**INTENDED_DEFAULT_DIFFERENCES, **INTENDED_RESOLVED_DIFFERENCES}


@pytest.mark.parametrize("kind", ["messages", "language_modeling", "prompt_completion"])
def test_default_assistant_only_loss_is_auto(tiny_model, conversation, tmp_path, fast_cpu, kind):
    """None trains what SFTConfig(assistant_only_loss=True) trains on `messages`, and what False trains otherwise."""
    data = make_dataset(kind, conversation)
    ours = EKSFTTrainer(tiny_model, args=EKSFTConfig(output_dir=str(tmp_path / "eksft"), **fast_cpu),
                        train_dataset=data)  # fmt: skip
    assert ours.args.assistant_only_loss is (kind == "messages")
    args = SFTConfig(output_dir=str(tmp_path / "sft"), assistant_only_loss=kind == "messages", **fast_cpu)
    theirs = SFTTrainer(tiny_model, args=args, train_dataset=data)
    assert ours.train_dataset["labels"] == theirs.train_dataset["labels"]


def test_default_objective_is_eksft_with_a_reference(tiny_model, conversation, make_config):
    trainer = EKSFTTrainer(tiny_model, args=make_config(), train_dataset=make_dataset("messages", conversation))
    assert trainer.args.objective == "eksft" and trainer.objective is OBJECTIVES["eksft"]
    assert trainer.ref_model is not None  # a frozen copy of the initial weights: SFTTrainer holds one model


def test_mean_normalization_differs_from_sft_trainer_under_gradient_accumulation(pair, tiny_model, conversation,
                                                                                   tmp_path, fast_cpu):  # fmt: skip
    values = {**fast_cpu, "max_steps": 2, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,
              "assistant_only_loss": True}  # fmt: skip
    data = make_dataset("messages", conversation)
    mean = EKSFTTrainer(tiny_model, args=EKSFTConfig(output_dir=str(tmp_path / "mean"), objective="nll", **values),
                        train_dataset=data)  # fmt: skip
    mean.train()
    ours, theirs = pair(data, **values)
    assert_same_steps(ours, theirs, 2)  # "token" is SFTTrainer's normalisation
    # "mean" averages the micro-batch means: the micro-batches have different numbers of response tokens
    assert logged(mean)[0]["loss"] != pytest.approx(logged(theirs)[0]["loss"], rel=1e-4)


def test_a_nan_step_is_skipped_where_sft_trainer_applies_it(pair, conversation):
    ours, theirs = pair(make_dataset("messages", conversation), assistant_only_loss=True, max_steps=2, train=False)
    for trainer in (ours, theirs):  # NaN hidden states out of the first decoder layer at step 2

        def hook(module, inputs, output, trainer=trainer):
            return output * math.nan if trainer.state.global_step + 1 == 2 else None

        trainer.model.model.layers[0].register_forward_hook(hook)
        trainer.train()
    assert all(torch.isfinite(p).all() for p in ours.model.parameters())
    assert not all(torch.isfinite(p).all() for p in theirs.model.parameters())
    assert [e["nonfinite_steps"] for e in logged(ours)] == [0, 1]
    assert all("nonfinite_steps" not in e for e in logged(theirs))


def test_extra_logs_and_refused_options(pair, tiny_model, conversation, make_config):
    ours, theirs = pair(make_dataset("messages", conversation), assistant_only_loss=True, max_steps=1)
    extra = set(logged(ours)[0]) - set(logged(theirs)[0])
    assert {"ce", "mean_entropy", "frac_masked", "iou", "nonfinite_steps"} <= extra
    assert (Path(ours.args.output_dir) / "token_stats.jsonl").is_file()
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        make_config(objective="nll", label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="compute_loss_func"):
        EKSFTTrainer(tiny_model, args=make_config(objective="nll"), train_dataset=ours.train_dataset,
                     compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss)  # fmt: skip


def test_deprecated_chunked_nll_alias_is_accepted_like_sft_config():
    with pytest.warns(FutureWarning, match="chunked_nll"):
        config = EKSFTConfig("unused", loss_type="chunked_nll", use_cpu=True)
    assert (config.objective, config.loss_type) == ("nll", "nll")


def test_loss_type_as_the_objective_selector_is_deprecated_but_works():
    """In eksft 0.1 the objective was ``loss_type``; SFTConfig's own values (nll, dft) mean what they mean there."""
    with pytest.warns(FutureWarning, match=r"use objective='rho1' \(--objective rho1\)"):
        config = EKSFTConfig("unused", loss_type="rho1", use_cpu=True)
    assert (config.objective, config.loss_type) == ("rho1", "nll")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert EKSFTConfig("unused", loss_type="dft", use_cpu=True).objective == "dft"
        assert EKSFTConfig("unused", loss_type="dft", objective="dft", use_cpu=True).objective == "dft"
    assert not [w for w in caught if "loss_type" in str(w.message)]  # SFTConfig's own value: no deprecation
    with pytest.raises(ValueError, match="objective='asft' and loss_type='dft' disagree"):
        EKSFTConfig("unused", loss_type="dft", objective="asft", use_cpu=True)
