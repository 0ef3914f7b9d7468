"""The reference model: a frozen copy of the initial weights, or the PEFT model with its adapters disabled."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from eksft.trainer import EKSFTTrainer
from eksft.trainer.reference import reference_model

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_adapter_disabled_reference_gives_exactly_the_base_models_logits(tiny_model):
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    input_ids = torch.randint(0, base.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    expected = logits(base, input_ids)
    policy = get_peft_model(copy.deepcopy(base), LoraConfig(**LORA, init_lora_weights=False))  # LoRA B != 0
    policy.train()
    assert not torch.allclose(logits(policy, input_ids), expected)  # the adapters do change the policy

    with reference_model(policy, None) as reference:
        assert torch.equal(logits(reference, input_ids), expected)
    assert policy.training and not torch.allclose(logits(policy, input_ids), expected)  # adapters back on


def modules_held(trainer) -> list[str]:
    return [name for name, value in vars(trainer).items() if isinstance(value, nn.Module)]


def test_lora_run_with_adapter_disabled_reference_holds_one_copy_of_the_weights(
    tiny_model, messages_dataset, make_config
):
    trainer = EKSFTTrainer(
        tiny_model, args=make_config(max_steps=3), train_dataset=messages_dataset, peft_config=LoraConfig(**LORA)
    )
    assert trainer.ref_model_mode == "adapter_disabled"  # auto, because of the PEFT config
    assert trainer.ref_model is None
    assert all(getattr(trainer, name) is trainer.model for name in modules_held(trainer))
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()

    assert all(torch.equal(p, base_before[n]) for n, p in trainer.model.named_parameters() if "lora_" not in n)
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert last["mean_kl"] > 0  # the trained adapters moved the policy away from the base model


def test_copy_reference_is_a_frozen_copy_of_the_initial_weights(tiny_model, messages_dataset, make_config):
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    trainer = EKSFTTrainer(tiny_model, args=make_config(max_steps=3), train_dataset=messages_dataset)
    assert trainer.ref_model_mode == "copy"
    reference = trainer.ref_model
    assert reference is not trainer.model and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    trainer.train()

    input_ids = torch.arange(3, 40).unsqueeze(0)
    # the reference still computes the initial model, not the trained policy (SFTTrainer patches the policy's
    # forward; a copied patch would run the policy)
    assert torch.equal(logits(reference, input_ids), logits(initial, input_ids))
    assert not torch.allclose(logits(trainer.model, input_ids), logits(initial, input_ids))


def test_copy_reference_of_a_peft_policy_is_the_initial_policy_merged(tiny_model, messages_dataset, make_config):
    args = make_config(ref_model_mode="copy")
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(**LORA, init_lora_weights=False)
    )
    input_ids = torch.arange(3, 40).unsqueeze(0)
    expected = logits(policy.eval(), input_ids)
    trainer = EKSFTTrainer(policy, args=args, train_dataset=messages_dataset)
    assert not hasattr(trainer.ref_model, "peft_config")
    torch.testing.assert_close(logits(trainer.ref_model, input_ids), expected)


def test_reference_loaded_from_a_path(tiny_model, messages_dataset, make_config):
    trainer = EKSFTTrainer(
        tiny_model, args=make_config(ref_model_name_or_path=tiny_model), train_dataset=messages_dataset
    )
    input_ids = torch.arange(3, 40).unsqueeze(0)
    assert torch.equal(
        logits(trainer.ref_model, input_ids), logits(AutoModelForCausalLM.from_pretrained(tiny_model), input_ids)
    )


def test_reference_with_another_vocabulary_is_rejected(tiny_model, messages_dataset, make_config, tmp_path):
    other = AutoModelForCausalLM.from_pretrained(tiny_model)
    other.resize_token_embeddings(other.config.vocab_size + 8)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"vocabulary of 520 tokens but the policy has 512"):
        EKSFTTrainer(
            tiny_model, args=make_config(ref_model_name_or_path=str(tmp_path / "other")), train_dataset=messages_dataset
        )


def test_adapter_disabled_needs_a_peft_model(tiny_model, messages_dataset, make_config):
    with pytest.raises(ValueError, match="adapter_disabled.*needs a PEFT model"):
        EKSFTTrainer(tiny_model, args=make_config(ref_model_mode="adapter_disabled"), train_dataset=messages_dataset)


def test_objectives_without_reference_build_none(tiny_model, messages_dataset, make_config):
    trainer = EKSFTTrainer(tiny_model, args=make_config(objective="dft"), train_dataset=messages_dataset)
    assert trainer.ref_model is None and modules_held(trainer) == ["model", "model_wrapped"]
