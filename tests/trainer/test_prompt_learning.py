"""Prompt-learning PEFT (prompt tuning, P-tuning, prefix tuning) trains its virtual tokens.

The virtual tokens exist only in the PEFT model's own forward, which the chunked path bypasses (it calls the
backbone directly); for these adapters the statistics come from the PEFT model's full logits, the virtual positions
dropped. With ``objective="nll"`` the losses equal ``SFTTrainer``'s; with EKSFT the prompt parameters change.
"""

import pytest
import torch
from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

from eksft.trainer import EKSFTTrainer

ADAPTERS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "p_tuning": lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
}


def losses(trainer) -> list[float]:
    return [e[key] for e in trainer.state.log_history if "loss" in e for key in ("loss", "grad_norm")]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_prompt_learning_nll_matches_sft_trainer(tiny_model, messages_dataset, make_config, fast_cpu, adapter):
    from trl import SFTConfig, SFTTrainer

    values = {**fast_cpu, "max_steps": 2, "learning_rate": 1e-1}
    ours = EKSFTTrainer(tiny_model, args=make_config(objective="nll", normalization="token", **values),
                        train_dataset=messages_dataset, peft_config=ADAPTERS[adapter]())  # fmt: skip
    assert ours.prompt_learning
    ours.train()
    theirs = SFTTrainer(tiny_model, args=SFTConfig(output_dir=f"{ours.args.output_dir}-trl", assistant_only_loss=True,
                                                   **values),
                        train_dataset=messages_dataset, peft_config=ADAPTERS[adapter]())  # fmt: skip
    theirs.train()
    assert losses(ours) == pytest.approx(losses(theirs), rel=1e-5)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_eksft_trains_the_virtual_tokens(tiny_model, messages_dataset, make_config, adapter):
    trainer = EKSFTTrainer(tiny_model, args=make_config(objective="eksft", max_steps=2, learning_rate=1e-1),
                           train_dataset=messages_dataset, peft_config=ADAPTERS[adapter]())  # fmt: skip
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("prompt_encoder" in n for n in trainable)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(after[n].detach(), value) for n, value in trainable.items())
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["mean_kl"] > 0 for e in logged[1:])  # the reference (adapter disabled) has no virtual tokens
