"""LM-head parameters sharded by FSDP2 or DeepSpeed ZeRO-3, read directly by the chunked statistics.

The chunked path never calls the LM head's module, so neither FSDP2 nor ZeRO-3 gathers the head for it. Three
helpers do what their module hooks would have done:

* ``full_parameter``: an FSDP2 ``DTensor`` gathered whole, its gradient reduce-scattered and averaged over the ranks;
* ``gathered``: a context in which ZeRO-3 parameters hold their full data (TRL's ``maybe_gather_lm_head_ctx``);
* ``GatherHeadForBackward``: keeps an untied ZeRO-3 head gathered from the start of its backward until its gradient
  has been accumulated.

``tests/test_sharding.py`` and ``tests/trainer/test_sharded_training.py`` check them.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def full_parameter(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """An FSDP2-sharded parameter (DTensor) gathered into a plain tensor whose gradient is reduced over the ranks.

    ``full_tensor()`` is not enough: its backward treats the gradient as replicated (the same on every rank) and
    keeps each rank's own slice of its own gradient, so the shards of a head that FSDP2 has not unsharded (accelerate
    puts an untied head in a group of its own, which the chunked path never calls) would be updated from one rank's
    batch each. Here the gradient is declared partial (one term per rank), so the backward reduce-scatters it, and it
    is divided by the number of ranks, as FSDP2 divides the gradients of the parameters it reduces itself.
    """
    if tensor is None or type(tensor).__name__ != "DTensor":
        return tensor
    from torch.distributed.tensor import Partial, Replicate

    mesh = tensor.device_mesh
    whole = tensor.redistribute(mesh, [Replicate()] * mesh.ndim).to_local(grad_placements=[Partial()] * mesh.ndim)
    return _ScaleGradient.apply(whole, 1.0 / mesh.size()) if whole.requires_grad else whole


def gathered(*params: torch.Tensor | None):
    """DeepSpeed ZeRO-3 parameters gathered for the duration of a direct access (a null context otherwise)."""
    if not any(p is not None and hasattr(p, "ds_status") for p in params):
        return nullcontext()
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    return maybe_gather_lm_head_ctx(*params)


def hold_until_accumulated(params: list[torch.Tensor]) -> None:
    """Gather ZeRO-3 parameters now and release them once autograd has accumulated the gradient of each.

    Autograd accumulates a gradient into ``param.grad`` after the function that produced it has returned, by then
    outside that function's own gather; into a ZeRO-3 placeholder of ``numel 0`` the full ``[V, H]`` gradient does
    not fit. DeepSpeed avoids this for a module by gathering its parameters for the module's whole backward; the
    head is read directly, so this does the same for it. The release runs after DeepSpeed's own post-accumulate
    hook (registered first, when the engine was built), which has by then reduced the gradient to its partition.
    """
    context = gathered(*params)
    if isinstance(context, nullcontext):  # not ZeRO-3, or already gathered
        return
    context.__enter__()
    pending = {id(p) for p in params}
    handles = []

    def release(param: torch.Tensor) -> None:
        pending.discard(id(param))
        if not pending:
            for handle in handles:
                handle.remove()
            context.__exit__(None, None, None)

    handles.extend(p.register_post_accumulate_grad_hook(release) for p in params)


class GatherHeadForBackward(torch.autograd.Function):
    """Identity on the policy's statistics whose backward, which runs just before theirs, gathers the ZeRO-3 LM head
    until its gradient is accumulated (``hold_until_accumulated``). Not needed for a tied head: the input
    embedding's module gathers the same weight for its own backward, and the gradient is accumulated then."""

    @staticmethod
    def forward(ctx, params, *stats):
        ctx.params = params
        return tuple(None if s is None else s.view_as(s) for s in stats)

    @staticmethod
    def backward(ctx, *grads):
        if any(g is not None for g in grads):
            hold_until_accumulated([p for p in ctx.params if p is not None and p.requires_grad])
        return (None, *grads)
