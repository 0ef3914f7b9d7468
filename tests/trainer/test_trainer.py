"""EKSFTTrainer on the tiny model: training steps, metrics, forwards per step, both statistics paths, accumulation."""

import json
import math

import pytest
import torch
from datasets import Dataset

from eksft.objectives import OBJECTIVES
from eksft.trainer import EKSFTTrainer

# Item 4 of the training issue: what every logging step must show (grad_norm comes from the Trainer)
EKSFT_METRICS = ("loss", "grad_norm", "ce", "entropy_term", "kl_term", "mean_entropy", "mean_kl", "frac_masked", "iou")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("objective", ["eksft", "nll", "dft", "rho1", "eaft"])
def test_training_logs_metrics_and_changes_every_parameter(tiny_model, messages_dataset, make_config, objective):
    trainer = EKSFTTrainer(tiny_model, args=make_config(objective=objective), train_dataset=messages_dataset)
    before = snapshot(trainer.model)
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    expected = EKSFT_METRICS if OBJECTIVES[objective].needs_reference else set(EKSFT_METRICS) - {"mean_kl"}
    for entry in logged:
        assert set(expected) <= set(entry), set(expected) - set(entry)
        assert all(math.isfinite(entry[name]) for name in expected)
    unchanged = [name for name, p in trainer.model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged
    # token_stats.jsonl: one line per logging step with the same values
    with open(f"{trainer.args.output_dir}/token_stats.jsonl") as f:
        assert [json.loads(line) for line in f] == logged


def test_nll_matches_trl_sft_trainer(tiny_model, messages_dataset, make_config, fast_cpu):
    from trl import SFTConfig, SFTTrainer

    common = {"max_steps": 3, "normalization": "token"}
    ours = EKSFTTrainer(tiny_model, args=make_config(objective="nll", **common), train_dataset=messages_dataset)
    ours.train()
    values = {**fast_cpu, "max_steps": 3, "assistant_only_loss": True}
    theirs_args = SFTConfig(output_dir=f"{ours.args.output_dir}-trl", **values)
    theirs = SFTTrainer(tiny_model, args=theirs_args, train_dataset=messages_dataset)
    theirs.train()

    def losses(trainer):
        return [e[key] for e in trainer.state.log_history if "loss" in e for key in ("loss", "grad_norm")]

    assert losses(ours) == pytest.approx(losses(theirs), rel=1e-5)


def backbone(model):
    """The decoder stack that every forward (policy or reference, full logits or chunked) goes through."""
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).model


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "materialised"])
@pytest.mark.parametrize("mode", ["copy", "adapter_disabled", "no_reference"])
def test_one_policy_forward_and_one_reference_forward_per_step(
    tiny_model, messages_dataset, make_config, chunked, mode
):
    from peft import LoraConfig

    objective = "nll" if mode == "no_reference" else "eksft"
    peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if mode == "adapter_disabled" else None
    args = make_config(objective=objective, use_chunked_stats=chunked, max_steps=3)
    trainer = EKSFTTrainer(tiny_model, args=args, train_dataset=messages_dataset, peft_config=peft_config)
    calls = {"policy": [], "reference": []}
    backbone(trainer.model).register_forward_hook(lambda *_: calls["policy"].append(torch.is_grad_enabled()))
    if trainer.ref_model is not None:
        backbone(trainer.ref_model).register_forward_hook(lambda *_: calls["reference"].append(torch.is_grad_enabled()))
    trainer.train()

    steps = 3
    if mode == "copy":
        assert calls == {"policy": [True] * steps, "reference": [False] * steps}
    elif mode == "adapter_disabled":  # the same backbone, once with grad (policy), once without (reference)
        assert sorted(calls["policy"]) == [False] * steps + [True] * steps and calls["reference"] == []
    else:
        assert calls == {"policy": [True] * steps, "reference": []}


@pytest.mark.parametrize("objective", ["eksft", "eaft", "rho1", "asft", "iw_sft"])
def test_chunked_and_materialised_statistics_give_the_same_loss_and_gradient(
    tiny_model, messages_dataset, make_config, objective
):
    trainer = EKSFTTrainer(
        tiny_model, args=make_config(objective=objective, max_steps=1), train_dataset=messages_dataset
    )
    trainer.train()  # one step, so that the policy differs from the reference (KL > 0)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()  # evaluation: the loss is not divided for gradient accumulation

    def loss_and_grads(chunked: bool):
        trainer.args.use_chunked_stats = chunked
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    chunked_loss, chunked_grads = loss_and_grads(True)
    full_loss, full_grads = loss_and_grads(False)
    assert chunked_loss == pytest.approx(full_loss, rel=1e-5, abs=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_gradient_accumulation_with_token_normalization_equals_one_large_batch(tiny_model, make_config, conversation):
    # two rows of different lengths; plain SGD so that the update is proportional to the gradient
    data = Dataset.from_list([{"messages": conversation(0)}, {"messages": conversation(5)}])
    common = dict(
        objective="nll",
        normalization="token",
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        seed=1,
    )
    results = []
    for batch_size, accumulation in [(2, 1), (1, 2)]:
        args = make_config(per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **common)
        trainer = EKSFTTrainer(tiny_model, args=args, train_dataset=data)
        trainer.train()
        results.append((snapshot(trainer.model), trainer.state.log_history[0]))
    (large, large_log), (accumulated, accumulated_log) = results
    for name, value in large.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert accumulated_log["loss"] == pytest.approx(large_log["loss"], rel=1e-5)


def trained_text(trainer, row: int) -> str:
    example = trainer.train_dataset[row]
    return trainer.processing_class.decode([t for t in example["labels"] if t != -100])


def test_only_assistant_turns_are_trained(tiny_model, make_config, conversation):
    turns = conversation(3) + [{"role": "user", "content": "And times 2?"}, {"role": "assistant", "content": "20"}]
    data = Dataset.from_list([{"messages": [{"role": "system", "content": "Be brief."}, *turns]}])
    trainer = EKSFTTrainer(tiny_model, args=make_config(max_steps=1), train_dataset=data)
    assert trainer.args.assistant_only_loss  # auto: conversational messages
    assert trained_text(trainer, 0) == turns[1]["content"] + "<|im_end|>" + "20<|im_end|>"


def test_only_the_completion_is_trained(tiny_model, make_config, conversation):
    prompt = conversation(1)  # an earlier assistant turn in the prompt is context, not a target
    completion = [{"role": "assistant", "content": "The end."}]
    data = Dataset.from_list([{"prompt": prompt + [{"role": "user", "content": "Done?"}], "completion": completion}])
    trainer = EKSFTTrainer(tiny_model, args=make_config(max_steps=1), train_dataset=data)
    # TRL's completion mask covers the whole rendered completion, the newline after <|im_end|> included
    assert trained_text(trainer, 0) == "The end.<|im_end|>\n"
