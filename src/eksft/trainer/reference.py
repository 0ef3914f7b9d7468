"""The reference model q of the KL term: a frozen copy of the initial weights, or the PEFT model with adapters off.

* ``copy``: a deep copy of the policy taken when the trainer is built (so: the initial weights, also after resuming
  from a checkpoint), in eval mode with ``requires_grad=False``. A PEFT policy's copy has its adapters merged, so the
  reference is the initial policy. It is loaded from disk (safetensors files only) instead when
  ``ref_model_name_or_path`` is set, and under DeepSpeed ZeRO-3, whose parameters are partitioned placeholders that
  cannot be copied. It is then prepared like TRL's DPO trainer prepares its reference: a DeepSpeed inference engine,
  an FSDP wrap, or plain device placement.
* ``adapter_disabled``: the policy itself under ``disable_adapter()``: the base weights, no second copy in memory.
  The forward runs in eval mode (no dropout, no gradient checkpointing), like the copy.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from accelerate.utils import is_peft_model
from torch import nn
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import create_model_from_path, get_config_model_id

from ..loading import check_safetensors_weights

REF_MODEL_MODES = ("auto", "copy", "adapter_disabled")


def resolve_ref_model_mode(mode: str, is_peft: bool) -> str:
    """``auto`` -> ``adapter_disabled`` for a PEFT policy, ``copy`` otherwise; checks that the mode fits the policy."""
    if mode not in REF_MODEL_MODES:
        raise ValueError(f"ref_model_mode must be one of {', '.join(REF_MODEL_MODES)}; got {mode!r}")
    if mode == "auto":
        return "adapter_disabled" if is_peft else "copy"
    if mode == "adapter_disabled" and not is_peft:
        raise ValueError(
            "ref_model_mode='adapter_disabled' needs a PEFT model (pass a peft_config, or --use_peft on the command "
            "line); use ref_model_mode='copy' for full fine-tuning"
        )
    return mode


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def copy_of_policy(policy: nn.Module) -> nn.Module:
    """A frozen deep copy of the policy's current weights (a PEFT policy comes back merged, as a plain model)."""
    reference = copy.deepcopy(policy)
    if is_peft_model(reference):
        reference = reference.merge_and_unload()
    # TRL's SFTTrainer patches `forward` on the instance (its fused LM head); the copied patch still closes over the
    # *policy's* original forward, so the copy would silently run the policy. Dropping it restores the class forward.
    reference.__dict__.pop("forward", None)
    return freeze(reference)


def check_reference_path(name_or_path: str, policy, args) -> None:
    """Before the policy is loaded and ``output_dir`` created: the reference at ``name_or_path`` has safetensors
    weights (``eksft.trainer.weights``) and the policy's vocabulary, compared on the configs (``policy``: a path or a
    model)."""
    from transformers import AutoConfig

    if (args.model_init_kwargs or {}).get("use_safetensors", True):
        check_safetensors_weights(name_or_path, "ref_model_name_or_path")

    def vocab_size(source) -> int:
        config = source.config if not isinstance(source, str) else AutoConfig.from_pretrained(
            source, trust_remote_code=args.trust_remote_code
        )  # fmt: skip
        return config.get_text_config().vocab_size

    try:
        reference_vocab = vocab_size(name_or_path)
    except OSError as err:
        raise ValueError(f"cannot read the reference model (ref_model_name_or_path) {name_or_path!r}: {err}") from None
    policy_vocab = vocab_size(policy)
    if policy_vocab != reference_vocab:
        raise ValueError(
            f"the reference model {name_or_path!r} has a vocabulary of {reference_vocab} tokens but the policy has "
            f"{policy_vocab}; the KL needs the same vocabulary (same tokenizer) in both"
        )


def load_reference(name_or_path: str, policy: nn.Module, args) -> nn.Module:
    """The reference loaded from ``name_or_path`` like the policy was (dtype, attention; checked by
    ``check_reference_path`` when it is ``ref_model_name_or_path``, and the policy's own path under ZeRO-3)."""
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("dtype", policy.dtype)
    kwargs.setdefault("attn_implementation", policy.config._attn_implementation)
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    kwargs.setdefault("use_safetensors", True)  # eksft.trainer.weights: no pickle
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None  # distributed training places the model itself ("auto" fails)
    return freeze(create_model_from_path(name_or_path, **kwargs))


def build_reference(policy: nn.Module, args, accelerator, *, is_deepspeed: bool, is_fsdp: bool) -> nn.Module:
    """The copy-mode reference, placed and sharded for the run (see the module docstring)."""
    zero3 = is_deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3
    if args.ref_model_name_or_path or zero3:
        base = policy.get_base_model() if is_peft_model(policy) else policy
        path = args.ref_model_name_or_path or get_config_model_id(base.config)
        if not path:
            raise ValueError(
                "under DeepSpeed ZeRO-3 the reference is loaded from disk: pass ref_model_name_or_path, or a policy "
                "loaded from a path"
            )
        reference = load_reference(path, base, args)
    else:
        reference = copy_of_policy(policy)
    return prepare_reference(reference, accelerator, is_deepspeed=is_deepspeed, is_fsdp=is_fsdp)


def prepare_reference(reference: nn.Module, accelerator, *, is_deepspeed: bool, is_fsdp: bool) -> nn.Module:
    """Shard or place a frozen reference as TRL's DPO trainer does (ZeRO-3 shards it like the policy)."""
    if is_deepspeed:
        return prepare_deepspeed(reference, accelerator)
    if is_fsdp:
        return prepare_fsdp(reference, accelerator)
    return accelerator.prepare_model(reference, evaluation_mode=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def reference_model(policy: nn.Module, reference: nn.Module | None, unwrap=lambda m: m):
    """Yields the module whose forward is the reference's, under ``torch.no_grad()``.

    ``reference=None`` means adapter_disabled: the policy (``unwrap`` gives the PeftModel inside a wrapper) with its
    adapters disabled and in eval mode for the duration.
    """
    with torch.no_grad():
        if reference is not None:
            yield reference
            return
        peft_model = unwrap(policy)
        with peft_model.disable_adapter(), eval_mode(policy):
            yield policy
