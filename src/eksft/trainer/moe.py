"""The Mixture-of-Experts router load-balancing loss, added to any objective as ``SFTTrainer`` adds it.

TRL 1.16's ``SFTTrainer`` turns the auxiliary loss on for a model whose config declares ``output_router_logits``, with
the config's ``router_aux_loss_coef`` (``SFTConfig.router_aux_loss_coef`` overrides it; 0.0 turns it off), and adds
``coef * aux_loss`` to the loss of each micro-batch (divided by the accumulation steps when the loss is normalised by
``num_items_in_batch``). ``EKSFTTrainer`` inherits that set-up (``self.aux_loss_enabled``,
``self.router_aux_loss_coef``) and adds the same term to the objective. On the materialised path the model's own
forward returns ``aux_loss``; on the chunked path the backbone returns its router logits and the loss is computed here
with the same function the model and TRL use (Mixtral's, which every MoE family in transformers reuses).
"""

from __future__ import annotations

import sys

import torch


def router_aux_loss(model, router_logits, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The load-balancing loss of ``router_logits`` (one tensor per MoE layer), as ``model``'s own forward computes it:
    its modeling module's ``load_balancing_loss_func`` (Mixtral's where it has none), its expert counts."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    loss_fn = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", load_balancing_loss_func)
    config = model.config.get_text_config()
    num_experts = getattr(model, "num_experts", None) or config.num_experts
    top_k = getattr(model, "num_experts_per_tok", None) or config.num_experts_per_tok
    return loss_fn(router_logits, num_experts, top_k, attention_mask)
