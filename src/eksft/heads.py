"""Reading a causal LM for the chunked statistics: its LM head (weight, bias, logit scale, soft-cap; PEFT layers
unwrapped) and the hidden states that feed it (the backbone called without the head).

``eksft.chunked`` projects these hidden states through this head in tiles; ``eksft.trainer`` reads both from the
policy and from the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LMHead:
    """The projection from the last hidden state to the logits: ``softcap(logit_scale * (h @ weight.T + bias))``."""

    weight: torch.Tensor  # [V, H]
    bias: torch.Tensor | None = None  # [V]
    logit_scale: float = 1.0
    softcap: float | None = None  # final_logit_softcapping: z -> softcap * tanh(z / softcap)
    tied: bool = False  # the weight is also the input embedding's (whose module gathers it under ZeRO-3)

    @property
    def vocab_size(self) -> int:
        # a ZeRO-3 parameter is empty outside its gather context; ds_shape is its real shape
        return int(getattr(self.weight, "ds_shape", self.weight.shape)[0])


def _unwrap_peft(model):
    """A peft ``PeftModel``'s transformers model, adapters still injected (``disable_adapter()`` still applies)."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but the chunked path does not need it
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _logit_scale(text_config) -> float:
    """The multiplier applied to the logits before soft-capping, read as TRL 1.16's ``add_fused_lm_head`` reads it."""
    # `logit_scale` is None on models that don't scale (e.g. MPT); read that as 1.0. Muse Glimmer calls it
    # `output_multiplier`, Falcon-H1 `lm_head_multiplier`; Granite and MiniCPM3 divide by `logits_scaling`,
    # HyperCLOVA X multiplies by it.
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    return 1.0 if scale is None else float(scale)


def _plain_linear(module: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``weight``/``bias`` are the head's effective parameters (peft layers unwrapped)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return module
    if isinstance(module, BaseTunerLayer):
        # A LoRA (or other adapter) on the head itself changes the logits by more than weight and bias
        if module.merged or module.disable_adapters or not module.active_adapters:
            return module.get_base_layer()
        raise ValueError(
            "the LM head carries an active peft adapter (e.g. LoRA with target_modules including lm_head): its "
            "logits are not h @ weight.T + bias, so the chunked statistics cannot be used; use the materialised "
            "path (use_chunked_stats=False) or keep the head out of the adapter's target modules"
        )
    # peft's ModulesToSaveWrapper forwards `.weight` to the active copy (the original one under disable_adapter())
    return module


def lm_head_of(model) -> LMHead:
    """The LM head of a transformers causal LM (or a peft model wrapping one).

    Weight and bias of ``get_output_embeddings()`` (the same tensor as the input embedding when tied; under
    ``disable_adapter()`` a ``modules_to_save`` head resolves to the original), the logit scale and
    ``final_logit_softcapping`` from the text config, read as TRL's ``add_fused_lm_head`` reads them.
    """
    model = _unwrap_peft(model)
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no output embedding (LM head) to project hidden states with")
    head = _plain_linear(head)
    text_config = model.config.get_text_config()
    embedding = model.get_input_embeddings()
    return LMHead(
        weight=head.weight,
        bias=getattr(head, "bias", None),
        logit_scale=_logit_scale(text_config),
        softcap=getattr(text_config, "final_logit_softcapping", None),
        tied=embedding is not None and getattr(embedding, "weight", None) is head.weight,
    )


# Batch keys for the loss, not for the backbone
_NOT_MODEL_INPUTS = ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep", "use_cache", "return_dict")


def backbone_outputs(model, **inputs):
    """The backbone's output: ``last_hidden_state`` ``[B, T, H]`` (after the final norm), and ``router_logits`` when
    ``output_router_logits=True`` is passed to a Mixture-of-Experts model; the LM head is never called.

    Works for a transformers causal LM and for a peft model (also inside ``with model.disable_adapter():``, which
    gives the reference's hidden states). Loss-only keys (``labels``, ``num_items_in_batch``, ...) are ignored.
    """
    model = _unwrap_peft(model)
    # transformers' `base_model` is the decoder stack (`model.model` for Qwen3, Llama, ...), final norm included
    backbone = model.base_model
    if backbone is model:
        raise ValueError(f"{type(model).__name__} has no separate backbone (base_model is the model itself)")
    for key in _NOT_MODEL_INPUTS:
        inputs.pop(key, None)
    return backbone(**inputs, use_cache=False)


def hidden_states(model, **inputs) -> torch.Tensor:
    """``[B, T, H]`` last hidden state of the backbone (``backbone_outputs``)."""
    return backbone_outputs(model, **inputs).last_hidden_state
