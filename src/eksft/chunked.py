r"""Token statistics from hidden states and the LM head, without ever holding ``[tokens x vocab]`` logits.

The chunked twin of ``eksft.stats.token_stats`` (the materialised oracle): same ``TokenStats``, same shift (via
``eksft.stats.shift_labels``), same zeros at invalid positions, gradients to the policy's hidden states, LM-head
weight and bias. Only the valid positions are projected, in tiles of ``token_tile`` tokens x ``vocab_tile``
vocabulary entries; each tile is normalised on its own and merged into running values (log-sum-exp, entropy, KL
and the running argmax), and the backward recomputes each tile instead of storing it. The derivation (the merge
rule, the per-logit gradients, why a reference equal to the policy gives a KL of exactly 0) is in
docs/design.md, section 5; the model side (the head, the hidden states) is ``eksft.heads``.

Why not TRL's kernels everywhere. TRL 1.16's ``ChunkedLogProbFunction`` and ``ChunkedDivergenceFunction`` compute
the same quantities with tested backwards, but force float32 internally (``tile.float()``, float32 running
statistics and gradient accumulators, float32 projection buffers), so float64 inputs come back with float32
error (~1e-6 measured) and the 1e-9 float64 equality with the oracle cannot hold; they also need three calls
(log-prob, entropy and is_top1, reference log-prob, KL) that project the policy twice and the reference twice in the
forward, where the implementation here projects each once (and once more each in the backward). ``backend="torch"``
is the implementation here: plain torch ops, exact in the input precision (float64 stays float64; bf16 projections
are accumulated in float32). ``backend="trl"`` composes TRL's kernels, which run fused Triton kernels on CUDA; it is
tested against the oracle in float32 (TRL's torch fallback on CPU) and in bf16 on a GPU. ``"auto"`` (the default)
uses ``CUDA_BACKEND`` on a CUDA device with Triton and float32 / bf16 / fp16 hidden states, and ``"torch"``
everywhere else. ``benchmarks/step_cost.py`` measures both on a GPU (variants ``eksft_chunked`` and
``eksft_chunked_torch``); ``benchmarks/RESULTS.md`` says which is faster.

Sharded heads (``eksft.sharding``). An FSDP2 head (``DTensor``) is gathered whole with its gradient reduce-scattered
over the ranks; a DeepSpeed ZeRO-3 head is gathered around each autograd function's ``apply`` (autograd records the
full ``[V, H]`` shape, not the empty placeholder), inside the backward, and, for an untied head, from the start of
the backward until the gradient has been accumulated into the parameter (a tied head is gathered then by the input
embedding's module). Under ZeRO-3 and DDP the call must run inside the wrapped model's forward (TRL's
``_ForwardRedirection``) so that the gradient reduction hooks fire.
"""

from __future__ import annotations

import math

import torch
from packaging.version import Version

from .heads import LMHead
from .sharding import GatherHeadForBackward, full_parameter, gathered
from .stats import TokenStats, shift_labels

# Default tile sizes of backend="torch" (``chunked_token_stats(token_tile=, vocab_tile=)``). One float32 tile of
# TOKEN_TILE x VOCAB_TILE is 64 MiB; about four are alive at once.
TOKEN_TILE = 2048
VOCAB_TILE = 8192
# The backend "auto" picks on a CUDA device with Triton (see the module docstring).
CUDA_BACKEND = "trl"
# Vocabulary width of TRL's log-prob tiles for backend="trl" (its fused LM head's default; its token tile and the
# divergence kernel's tiles are TRL's own module constants)
TRL_VOCAB_CHUNK = 32768
BACKENDS = ("auto", "torch", "trl")


# --------------------------------------------------------------------------------------------------------------------
# The chunked statistics


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype


def _logits(h, weight, bias, start, end, scale, softcap, acc_dtype):
    """``softcap(scale * (h @ weight[start:end].T + bias[start:end]))`` as a fresh ``[n, end - start]`` tile; the
    product in ``h``'s dtype (as the model's own head computes it), the rest in ``acc_dtype``."""
    w = weight[start:end].to(h.dtype).t()
    z = torch.mm(h, w) if bias is None else torch.addmm(bias[start:end].to(h.dtype), h, w)  # [n, v]
    z = z.to(acc_dtype)
    if scale != 1.0:
        z.mul_(scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


# `torch.addmm(..., out_dtype=torch.float32)` from bf16/fp16 inputs: CUDA, torch >= 2.8
_MM_OUT_DTYPE = Version(torch.__version__) >= Version("2.8.0")


def _addmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b``, accumulated in ``out``'s dtype; low-precision ``b`` (bf16/fp16) sets the product's precision."""
    if b.dtype == out.dtype:
        out.addmm_(a.to(out.dtype), b)
    elif out.is_cuda and _MM_OUT_DTYPE:
        # the product in bf16 on the tensor cores, its output in float32 without rounding to bf16 first
        torch.addmm(out, a.to(b.dtype), b, out_dtype=out.dtype, out=out)
    else:
        out.addmm_(a.to(out.dtype), b.to(out.dtype))


class _ChunkedStats(torch.autograd.Function):
    """Per-token (logp, entropy, kl, ref_logp, is_top1) of ``N`` valid positions, tiled; gradients to the policy only
    (``ref_logp`` and the bool ``is_top1`` are non-differentiable outputs).

    Each tile is overwritten in place once it is no longer needed, so that at most four tiles are alive at once.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, transforms):
        # hidden [N, H], weight [V, H], bias [V] | None, targets [N]; ref_* likewise or None
        ctx.set_materialize_grads(False)
        scale, softcap, ref_scale, ref_softcap, (token_tile, vocab_tile) = transforms
        has_ref = ref_hidden is not None
        compute_dtype = _compute_dtype(hidden)
        acc_dtype = torch.promote_types(compute_dtype, torch.float32)
        n_tokens, device = hidden.shape[0], hidden.device

        def full(value):
            return torch.full((n_tokens,), value, device=device, dtype=acc_dtype)

        # running values over the vocabulary tiles seen so far, per token
        lse, entropy, gap, target_logit = full(-math.inf), full(0.0), full(0.0), full(0.0)
        ref_lse, ref_target_logit = full(-math.inf), full(0.0)
        # running argmax of the policy's logits (is_top1); the first index wins ties, as in torch.argmax
        top_logit, top_index = full(-math.inf), torch.zeros(n_tokens, device=device, dtype=torch.long)
        with torch.autocast(device.type, enabled=False), gathered(weight, bias, ref_weight, ref_bias):
            vocab_size = weight.shape[0]
            for t0 in range(0, n_tokens, token_tile):
                rows = slice(t0, t0 + token_tile)
                h = hidden[rows].to(compute_dtype)
                rh = ref_hidden[rows].to(compute_dtype) if has_ref else None
                for v0 in range(0, vocab_size, vocab_tile):
                    v1 = min(v0 + vocab_tile, vocab_size)
                    in_tile, local = _local_targets(targets[rows], v0, v1)
                    z = _logits(h, weight, bias, v0, v1, scale, softcap, acc_dtype)  # [n, v]
                    target_logit[rows] = torch.where(in_tile, z.gather(1, local).squeeze(1), target_logit[rows])
                    tile_top, tile_index = z.max(dim=-1)  # [n]: the first maximum of this tile
                    # strictly larger only: a tie with an earlier tile keeps the earlier (smaller) index
                    better = tile_top > top_logit[rows]
                    top_logit[rows] = torch.where(better, tile_top, top_logit[rows])
                    top_index[rows] = torch.where(better, tile_index + v0, top_index[rows])
                    if has_ref:
                        zt = _logits(rh, ref_weight, ref_bias, v0, v1, ref_scale, ref_softcap, acc_dtype)
                        ref_target_logit[rows] = torch.where(
                            in_tile, zt.gather(1, local).squeeze(1), ref_target_logit[rows]
                        )
                        ref_lse[rows] = torch.logaddexp(ref_lse[rows], torch.logsumexp(zt, dim=-1))
                        logit_gap = zt.neg_().add_(z)  # z - zt, in place (exactly 0 where the models agree)
                    # this slice of the vocabulary on its own: normaliser, entropy, policy-weighted logit gap
                    tile_lse = torch.logsumexp(z, dim=-1)  # [n]
                    log_p = z.sub_(tile_lse[:, None])  # in place: z is not needed any more
                    p = log_p.exp()
                    tile_entropy = -(p * log_p).sum(-1)
                    # merged into the running values (the entropy of a mixture of disjoint supports)
                    new_lse = torch.logaddexp(lse[rows], tile_lse)
                    w_old, w_new = (lse[rows] - new_lse).exp(), (tile_lse - new_lse).exp()
                    entropy[rows] = (
                        w_old * entropy[rows]
                        + w_new * tile_entropy
                        - torch.xlogy(w_old, w_old)
                        - torch.xlogy(w_new, w_new)
                    )
                    if has_ref:
                        gap[rows] = w_old * gap[rows] + w_new * (p * logit_gap).sum(-1)
                        del zt, logit_gap
                    lse[rows] = new_lse
                    del z, log_p, p  # before the next tile is projected

        logp = target_logit - lse
        kl = gap - lse + ref_lse if has_ref else None
        ref_logp = ref_target_logit - ref_lse if has_ref else None
        is_top1 = top_index == targets
        ctx.save_for_backward(
            hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, lse, entropy, kl, ref_lse
        )
        ctx.transforms = transforms
        # the backward runs outside the caller's autocast region: it must recompute the tiles in the same precision
        ctx.compute_dtype = compute_dtype
        ctx.mark_non_differentiable(*(x for x in (ref_logp, is_top1) if x is not None))
        return logp, entropy, kl, ref_logp, is_top1

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, grad_kl, _grad_ref_logp, _grad_is_top1):
        hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, lse, entropy, kl, ref_lse = ctx.saved_tensors
        scale, softcap, ref_scale, ref_softcap, (token_tile, vocab_tile) = ctx.transforms
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        if ref_hidden is None:
            grad_kl = None
        if grad_logp is None and grad_entropy is None and grad_kl is None:
            return (None,) * 8
        compute_dtype = ctx.compute_dtype
        acc_dtype = lse.dtype
        n_tokens = hidden.shape[0]
        zero = torch.zeros_like(lse)
        g_logp, g_entropy, g_kl = (zero if g is None else g.to(acc_dtype) for g in (grad_logp, grad_entropy, grad_kl))
        # d(g_logp * logp + g_entropy * H + g_kl * KL) / dz_v, with
        #   dlogp/dz_v = 1[v = y] - p_v,   dH/dz_v = -p_v (log p_v + H),   dKL/dz_v = p_v (log p_v - log q_v - KL),
        # is  1[v = y] g_logp - p_v (a log p_v + g_kl log q_v + c)  with, per token:
        a = g_entropy - g_kl
        c = g_logp + g_entropy * entropy + (g_kl * kl if grad_kl is not None else 0.0)
        with torch.autocast(hidden.device.type, enabled=False), gathered(weight, bias, ref_weight, ref_bias):
            vocab_size = weight.shape[0]
            grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=acc_dtype) if needs_hidden else None
            grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=acc_dtype) if needs_weight else None
            grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=acc_dtype) if needs_bias else None
            for t0 in range(0, n_tokens, token_tile):
                rows = slice(t0, t0 + token_tile)
                h = hidden[rows].to(compute_dtype)
                rh = ref_hidden[rows].to(compute_dtype) if grad_kl is not None else None
                for v0 in range(0, vocab_size, vocab_tile):
                    v1 = min(v0 + vocab_tile, vocab_size)
                    z = _logits(h, weight, bias, v0, v1, scale, softcap, acc_dtype)  # [n, v]
                    # through z = softcap * tanh(y / softcap): dz/dy = 1 - (z / softcap)^2
                    dz_dy = z.div(softcap).square_().neg_().add_(1) if softcap is not None else None
                    log_p = z.sub_(lse[rows, None])
                    p = log_p.exp()
                    grad_z = log_p.mul_(a[rows, None]).add_(c[rows, None])  # in place: log_p is not needed any more
                    if grad_kl is not None:
                        zt = _logits(rh, ref_weight, ref_bias, v0, v1, ref_scale, ref_softcap, acc_dtype)
                        log_q = zt.sub_(ref_lse[rows, None])
                        grad_z.add_(log_q.mul_(g_kl[rows, None]))
                        del zt, log_q
                    grad_z.mul_(p).neg_()
                    del p
                    in_tile, local = _local_targets(targets[rows], v0, v1)
                    grad_z.scatter_add_(1, local, torch.where(in_tile, g_logp[rows], 0.0)[:, None])
                    if dz_dy is not None:
                        grad_z.mul_(dz_dy)
                    if scale != 1.0:
                        grad_z.mul_(scale)
                    if grad_hidden is not None:
                        _addmm_(grad_hidden[rows], grad_z, weight[v0:v1].to(compute_dtype))
                    if grad_weight is not None:
                        _addmm_(grad_weight[v0:v1], grad_z.t(), h)
                    if grad_bias is not None:
                        grad_bias[v0:v1] += grad_z.sum(0)
                    del z, log_p, grad_z, dz_dy

        def cast(grad, like):
            return None if grad is None else grad.to(like.dtype)

        return cast(grad_hidden, hidden), cast(grad_weight, weight), cast(grad_bias, bias), None, None, None, None, None


def _local_targets(targets: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which targets fall in the vocabulary tile ``[v0, v1)`` ([n] bool) and their column in it ([n, 1], clamped)."""
    local = targets - v0
    in_tile = (local >= 0) & (local < v1 - v0)
    return in_tile, local.clamp(0, v1 - v0 - 1).unsqueeze(1)


def _stats_torch(h, targets, head, ref_h, ref_head, tiles: tuple[int, int]):
    weight, bias = full_parameter(head.weight), full_parameter(head.bias)
    ref = (None, None, None)
    if ref_h is not None:
        ref = (ref_h, full_parameter(ref_head.weight), full_parameter(ref_head.bias))
    transforms = (head.logit_scale, head.softcap, ref_head.logit_scale if ref_h is not None else 1.0,
                  ref_head.softcap if ref_h is not None else None, tiles)  # fmt: skip
    # applied inside the gather: autograd records the full [V, H] shape of a ZeRO-3 head, not its empty placeholder
    with gathered(weight, bias, *ref[1:]):
        return _ChunkedStats.apply(h, weight, bias, targets, *ref, transforms)


def _stats_trl(h, targets, head, ref_h, ref_head, tiles: tuple[int, int]):
    """The same statistics from TRL's kernels: log-prob + entropy (with gradients) and is_top1 (same pass, no
    gradient; TRL also gives ties to the first index), the reference's log-prob (no gradient), and KL(policy ||
    reference) (``ChunkedDivergenceFunction`` with ``beta=1.0``: the reverse KL, ``sum p_s (log p_s - log p_t)`` with
    the gradient to the student)."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    weight, bias = full_parameter(head.weight), full_parameter(head.bias)
    with gathered(weight, bias):  # the log-prob kernel gathers in its backward only; see _stats_torch
        logp, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
            h, weight, bias, targets, 1.0, TRL_VOCAB_CHUNK, head.softcap, head.logit_scale, ("entropy", "is_top1")
        )
    if ref_h is None:
        return logp, entropy, None, None, is_top1
    ref_weight, ref_bias = full_parameter(ref_head.weight), full_parameter(ref_head.bias)
    with torch.no_grad(), gathered(ref_weight, ref_bias):
        ref_logp = ChunkedLogProbFunction.apply(
            ref_h, ref_weight, ref_bias, targets, 1.0, TRL_VOCAB_CHUNK, ref_head.softcap, ref_head.logit_scale, ()
        )[0]
    with gathered(weight, bias, ref_weight, ref_bias):  # the kernel gathers inside; autograd needs the full shapes
        kl, _ = ChunkedDivergenceFunction.apply(
            h, weight, bias, ref_h, ref_weight, ref_bias, 1.0, 1.0,
            head.logit_scale, head.softcap, ref_head.logit_scale, ref_head.softcap,
        )  # fmt: skip
    return logp, entropy, kl, ref_logp, is_top1


@torch.no_grad()
def _top_k_entropy(h: torch.Tensor, head: LMHead, k: int, tiles: tuple[int, int]) -> torch.Tensor:
    """[N] entropy of the policy renormalised over its ``k`` largest logits, tiled (a running top-k per token)."""
    token_tile, vocab_tile = tiles
    weight, bias = full_parameter(head.weight), full_parameter(head.bias)
    compute_dtype = _compute_dtype(h)
    acc_dtype = torch.promote_types(compute_dtype, torch.float32)
    out = torch.empty(h.shape[0], device=h.device, dtype=acc_dtype)
    with torch.autocast(h.device.type, enabled=False), gathered(weight, bias):
        vocab_size = weight.shape[0]
        k = min(k, vocab_size)
        for t0 in range(0, h.shape[0], token_tile):
            rows = slice(t0, t0 + token_tile)
            hc = h[rows].to(compute_dtype)
            top = torch.empty(hc.shape[0], 0, device=h.device, dtype=acc_dtype)  # [n, <=k]
            for v0 in range(0, vocab_size, vocab_tile):
                z = _logits(hc, weight, bias, v0, min(v0 + vocab_tile, vocab_size), head.logit_scale, head.softcap,
                            acc_dtype)  # fmt: skip
                both = torch.cat([top, z], dim=1)
                top = both.topk(min(k, both.shape[1]), dim=1).values
            log_top = torch.log_softmax(top, dim=-1)
            out[rows] = -(log_top.exp() * log_top).sum(-1)
    return out


def _pick_backend(backend: str, hidden: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    from transformers.utils import is_triton_available

    fast = hidden.device.type == "cuda" and is_triton_available() and _compute_dtype(hidden) != torch.float64
    return CUDA_BACKEND if fast else "torch"


def chunked_token_stats(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: LMHead,
    ref_hidden: torch.Tensor | None = None,
    ref_head: LMHead | None = None,
    *,
    top_k_entropy: int | None = None,
    backend: str = "auto",
    check_finite: bool = True,
    token_tile: int = TOKEN_TILE,
    vocab_tile: int = VOCAB_TILE,
) -> TokenStats:
    """``token_stats`` from ``[B, T, H]`` hidden states (unshifted, as the backbone returns them) and LM heads.

    ``labels`` are the unshifted ``[B, T]`` labels (-100 = ignore). ``ref_hidden``/``ref_head`` give the reference's
    statistics (``kl``, ``ref_logp``); ``ref_head`` defaults to ``head`` (a peft model with a frozen head, reference
    = adapters disabled); the reference gets no gradient. ``top_k_entropy=k`` adds the (detached) entropy of the
    policy renormalised over its k most likely tokens. ``is_top1`` (bool, whether the target is the argmax of the
    policy's logits) is always computed, in the same pass. ``backend``: "torch", "trl" or "auto" (module docstring).
    ``token_tile`` x ``vocab_tile``: the tiles of the torch backend and of the top-k entropy (TRL's kernels tile
    with their own sizes); smaller tiles hold less memory at once, larger ones make fewer, bigger matrix products.
    """
    if token_tile < 1 or vocab_tile < 1:
        raise ValueError(f"token_tile and vocab_tile must be >= 1, got {token_tile} and {vocab_tile}")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [batch, seq, hidden], got shape {tuple(hidden.shape)}")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels must be [batch, seq] = {tuple(hidden.shape[:2])}, got shape {tuple(labels.shape)}")
    if ref_hidden is not None and ref_hidden.shape[:2] != hidden.shape[:2]:
        raise ValueError(
            f"ref_hidden must be [batch, seq, *] = {tuple(hidden.shape[:2])}, got {tuple(ref_hidden.shape)}"
        )
    ref_head = head if ref_head is None else ref_head
    if ref_hidden is not None and ref_head.vocab_size != head.vocab_size:
        raise ValueError(
            f"the reference's vocabulary ({ref_head.vocab_size}) differs from the policy's ({head.vocab_size})"
        )

    # with the model split across devices (device_map) the backbone can end on another device than the head
    device = head.weight.device
    hidden, labels = hidden.to(device), labels.to(device)
    ref_hidden = ref_hidden.to(device) if ref_hidden is not None else None
    targets, valid = shift_labels(labels)  # [B, T-1]
    h = hidden[:, :-1][valid]  # [N, H], only the positions that predict a target are projected
    y = targets[valid]  # [N]
    ref_h = ref_hidden[:, :-1][valid].detach() if ref_hidden is not None else None
    compute = _stats_trl if _pick_backend(backend, hidden) == "trl" else _stats_torch
    tiles = (int(token_tile), int(vocab_tile))
    logp, entropy, kl, ref_logp, is_top1 = compute(h, y, head, ref_h, ref_head, tiles)
    if hasattr(head.weight, "ds_status") and not head.tied and torch.is_grad_enabled():
        logp, entropy, kl = GatherHeadForBackward.apply((head.weight, head.bias), logp, entropy, kl)
    if check_finite:
        for name, value in (("logp", logp), ("entropy", entropy), ("kl", kl)):
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ValueError(f"chunked {name} contains NaN or inf; check the hidden states and the LM head")

    def dense(rows: torch.Tensor) -> torch.Tensor:
        # [N] -> [B, T-1] with exact zeros elsewhere; masked_scatter keeps an all-invalid batch attached to the graph
        return rows.new_zeros(valid.shape).masked_scatter(valid, rows)

    stats = TokenStats(
        logp=dense(logp), entropy=dense(entropy), valid=valid, vocab_size=head.vocab_size, is_top1=dense(is_top1)
    )
    if ref_h is not None:
        stats.kl = dense(kl)
        stats.ref_logp = dense(ref_logp.detach())
    if top_k_entropy is not None:
        stats.top_k_entropy = dense(_top_k_entropy(h.detach(), head, int(top_k_entropy), tiles))
    return stats


__all__ = ["BACKENDS", "chunked_token_stats"]
