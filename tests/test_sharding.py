"""DeepSpeed ZeRO-3, simulated on the CPU: LM-head parameters that are empty outside a gather context.

Under ZeRO-3 every parameter is a placeholder of ``numel 0`` except inside its module's forward (and backward),
where DeepSpeed gathers it. The chunked statistics read the LM head directly, never through its module, so they
gather it themselves (``eksft.sharding.gathered`` -> TRL's ``maybe_gather_lm_head_ctx`` ->
``deepspeed.zero.GatheredParameters``). Autograd records the shape a parameter has when an autograd function is
applied; applied outside the gather, it records ``[0]`` and rejects the backward's full ``[V, H]`` gradient.

The simulation here is a stand-in ``deepspeed`` module with ``GatheredParameters`` and ``ZeroParamStatus``, and
``is_deepspeed_zero3_enabled()`` patched to True, so TRL's real gather helper runs; the models' embeddings gather
and release their weight around their forward as ZeRO-3's module hooks do. Loss and gradients must equal those of
the same models unpartitioned, for both backends, tied and untied heads, with and without a reference.
"""

from __future__ import annotations

import copy
import enum
import sys
import types
from contextlib import contextmanager

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from eksft.chunked import chunked_token_stats
from eksft.heads import hidden_states, lm_head_of
from eksft.objectives import ObjectiveParams, compute_objective


class ZeroParamStatus(enum.Enum):
    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


def _partition(param: torch.nn.Parameter) -> None:
    param.ds_full = param.data
    param.ds_shape = param.data.shape
    param.data = torch.empty(0, dtype=param.dtype)
    param.ds_status = ZeroParamStatus.NOT_AVAILABLE


def _gather(param: torch.nn.Parameter) -> bool:
    if param.ds_status != ZeroParamStatus.NOT_AVAILABLE:
        return False
    param.data = param.ds_full
    param.ds_status = ZeroParamStatus.AVAILABLE
    return True


@contextmanager
def GatheredParameters(params, modifier_rank=None, fwd_module=None, enabled=True):  # noqa: N802 (DeepSpeed's name)
    gathered = [p for p in params if p is not None and _gather(p)]
    try:
        yield
    finally:
        for p in gathered:
            _partition(p)


def fake_zero3(monkeypatch) -> None:
    """A ``deepspeed`` stand-in with what TRL's gather helper touches; ZeRO-3 reported as enabled."""
    deepspeed = types.ModuleType("deepspeed")
    deepspeed.zero = types.SimpleNamespace(GatheredParameters=GatheredParameters)
    partition_parameters = types.ModuleType("deepspeed.runtime.zero.partition_parameters")
    partition_parameters.ZeroParamStatus = ZeroParamStatus
    for name, module in {
        "deepspeed": deepspeed,
        "deepspeed.runtime": types.ModuleType("deepspeed.runtime"),
        "deepspeed.runtime.zero": types.ModuleType("deepspeed.runtime.zero"),
        "deepspeed.runtime.zero.partition_parameters": partition_parameters,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    import transformers.integrations.deepspeed as hf_deepspeed

    monkeypatch.setattr(hf_deepspeed, "is_deepspeed_zero3_enabled", lambda: True)


def shard_like_zero3(model: torch.nn.Module) -> None:
    """Partition the embedding and LM-head weights. As ZeRO-3's module hooks do, the embedding gathers its weight
    for its forward, releases it after, gathers it again when its backward starts and releases it once its gradient
    is accumulated. The LM head is never called as a module by the chunked path, so no hook of its own fires."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()

    def release(param):
        if param.ds_status == ZeroParamStatus.AVAILABLE:
            _partition(param)

    def gather_for_backward(module, _args, output):
        release(module.weight)
        if output.requires_grad:
            output.register_hook(lambda grad: _gather(module.weight) and None)

    _partition(embedding.weight)
    if head.weight is not embedding.weight:
        _partition(head.weight)
    if embedding.weight.requires_grad:
        embedding.weight.register_post_accumulate_grad_hook(release)  # registered first, as DeepSpeed's hook is
    embedding.register_forward_pre_hook(lambda m, _args: _gather(m.weight) and None)
    embedding.register_forward_hook(gather_for_backward)


def make_models(tied: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, tie_word_embeddings=tied,
    )  # fmt: skip
    policy = Qwen3ForCausalLM(config).float()
    reference = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():  # the policy has moved away from the reference: KL > 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference


def loss_and_grads(policy, reference, batch, backend: str, objective: str):
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ref_hidden = ref_head = None
    if reference is not None:
        with torch.no_grad():
            ref_hidden, ref_head = hidden_states(reference, **inputs), lm_head_of(reference)
    stats = chunked_token_stats(
        hidden_states(policy, **inputs), labels, lm_head_of(policy), ref_hidden, ref_head, backend=backend
    )
    loss = compute_objective(objective, stats, ObjectiveParams(rho=0.3), None).loss
    loss.backward()
    grads = {}
    for name, p in policy.named_parameters():
        grad = p.grad
        if grad is not None and hasattr(p, "ds_full"):  # a partitioned parameter: its gradient has the full shape
            assert grad.shape == p.ds_full.shape, name
        grads[name] = grad
    return loss.detach(), grads


@pytest.mark.parametrize("backend", ["torch", "trl"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("objective", ["eksft", "nll"])
def test_chunked_statistics_gather_zero3_heads_in_forward_and_backward(monkeypatch, backend, tied, objective):
    policy, reference = make_models(tied)
    if objective == "nll":
        reference = None
    batch = {
        "input_ids": torch.randint(0, 97, (2, 13)),
        "attention_mask": torch.ones(2, 13, dtype=torch.long),
    }
    batch["labels"] = batch["input_ids"].clone()
    batch["labels"][:, :4] = -100
    sharded_policy, sharded_reference = copy.deepcopy(policy), copy.deepcopy(reference)
    expected_loss, expected_grads = loss_and_grads(policy, reference, batch, backend, objective)

    fake_zero3(monkeypatch)
    shard_like_zero3(sharded_policy)
    if sharded_reference is not None:
        shard_like_zero3(sharded_reference)
    loss, grads = loss_and_grads(sharded_policy, sharded_reference, batch, backend, objective)

    head = sharded_policy.get_output_embeddings().weight
    assert head.numel() == 0 and head.ds_status == ZeroParamStatus.NOT_AVAILABLE  # released after the backward
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
