"""Mixture-of-Experts models train with the router load-balancing loss, exactly as ``SFTTrainer`` adds it.

Tiny Qwen3-MoE and GPT-OSS models are built from their configs (random weights, the tiny model's tokenizer). With
``objective="nll"`` every logged loss and gradient norm equals ``SFTTrainer``'s, on the chunked and the materialised
path, which holds only if the auxiliary loss is added with the same coefficient and scaling; ``aux_loss`` is logged;
EKSFT itself trains them and moves the routers.
"""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, GptOssConfig, Qwen3MoeConfig

from eksft.trainer import EKSFTTrainer

COMMON = dict(vocab_size=512, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, num_experts_per_tok=2, max_position_embeddings=256)  # fmt: skip
CONFIGS = {
    "qwen3_moe": lambda: Qwen3MoeConfig(**COMMON, num_experts=4, moe_intermediate_size=16),
    "gpt_oss": lambda: GptOssConfig(**COMMON, num_local_experts=4, sliding_window=32,
                                    layer_types=["sliding_attention", "full_attention"]),  # fmt: skip
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def moe_model(request, tiny_model_dir, tmp_path_factory) -> str:
    """A tiny MoE model directory of the given family, with the tiny model's tokenizer and chat template."""
    path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    config = CONFIGS[request.param]()
    config.pad_token_id = config.eos_token_id = config.bos_token_id = None
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source := __import__("pathlib").Path(tiny_model_dir) / name).exists():
            shutil.copy(source, path / name)
    return str(path)


def losses(trainer) -> list[float]:
    return [e[key] for e in trainer.state.log_history if "loss" in e for key in ("loss", "grad_norm")]


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "materialised"])
def test_nll_with_the_router_loss_matches_sft_trainer(moe_model, messages_dataset, make_config, fast_cpu, chunked):
    from trl import SFTConfig, SFTTrainer

    values = {**fast_cpu, "max_steps": 3, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 1}
    ours = EKSFTTrainer(
        moe_model,
        args=make_config(objective="nll", normalization="token", use_chunked_stats=chunked, **values),
        train_dataset=messages_dataset,
    )
    assert ours.aux_loss_enabled and ours.router_aux_loss_coef == pytest.approx(0.001)
    ours.train()
    theirs = SFTTrainer(
        moe_model,
        args=SFTConfig(output_dir=f"{ours.args.output_dir}-trl", assistant_only_loss=True, **values),
        train_dataset=messages_dataset,
    )
    theirs.train()
    assert losses(ours) == pytest.approx(losses(theirs), rel=1e-5)
    ours_aux = [e["aux_loss"] for e in ours.state.log_history if "aux_loss" in e]
    theirs_aux = [e["aux_loss"] for e in theirs.state.log_history if "aux_loss" in e]
    assert len(ours_aux) == 3 and ours_aux == pytest.approx(theirs_aux, rel=1e-5)


def test_eksft_trains_a_moe_model_and_its_routers(moe_model, messages_dataset, make_config):
    trainer = EKSFTTrainer(moe_model, args=make_config(objective="eksft", max_steps=2), train_dataset=messages_dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "router" in n or "gate." in n}
    assert before, "no router parameters found"
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(after[n].detach(), value) for n, value in before.items())
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["aux_loss"] > 0 for e in logged)


def test_router_aux_loss_coef_zero_turns_it_off(moe_model, messages_dataset, make_config):
    trainer = EKSFTTrainer(
        moe_model, args=make_config(objective="eksft", max_steps=1, router_aux_loss_coef=0.0),
        train_dataset=messages_dataset,
    )  # fmt: skip
    assert not trainer.aux_loss_enabled
    trainer.train()
    assert all("aux_loss" not in e for e in trainer.state.log_history)
