"""Per-token statistics every objective is built from, computed from full logits (the readable oracle).

For each position ``t`` whose target ``labels[:, t + 1]`` is not ``-100``::

    p_t = softmax(policy_logits[:, t])        q_t = softmax(reference_logits[:, t])  (q is detached)
    logp_t     = log p_t(labels[t + 1])        ref_logp_t = log q_t(labels[t + 1])
    entropy_t  = -sum_v p_t(v) log p_t(v)
    kl_t       =  sum_v p_t(v) (log p_t(v) - log q_t(v))      KL(policy || reference)
    is_top1_t  =  argmax_v policy_logits[:, t, v] == labels[t + 1]                (TRL's mean_token_accuracy)

All tensors are ``[B, T - 1]``, aligned with the shifted targets ``labels[:, 1:]``, and exactly 0 (False) where
``valid`` is False. ``logp``, ``entropy`` and ``kl`` carry gradients to the policy; ``ref_logp``,
``top_k_entropy`` and ``is_top1`` (bool) are constants. Ties in the argmax go to the first (smallest) index, as
``torch.argmax`` breaks them, so a target tied with an earlier token is not top-1. The chunked path (from hidden
states, no full logits) must produce the same ``TokenStats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class TokenStats:
    logp: torch.Tensor  # [B, T-1] log-prob of the target under the policy (grad)
    entropy: torch.Tensor  # [B, T-1] entropy of the policy (grad)
    valid: torch.Tensor  # [B, T-1] bool, the target is not IGNORE_INDEX
    vocab_size: int
    kl: torch.Tensor | None = None  # [B, T-1] KL(policy || reference) (grad); None without a reference
    ref_logp: torch.Tensor | None = None  # [B, T-1] log-prob of the target under the reference (no grad)
    top_k_entropy: torch.Tensor | None = None  # [B, T-1] entropy of the renormalised top-k policy (no grad)
    is_top1: torch.Tensor | None = None  # [B, T-1] bool, the target is the argmax of the policy's logits (no grad)

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def nll(self) -> torch.Tensor:
        return -self.logp


def shift_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and validity aligned with the logits that predict them.

    Hugging Face labels are unshifted: ``logits[:, t]`` predicts ``labels[:, t + 1]``. The shift happens here and
    nowhere else, so that the position whose entropy or KL selects a token is the position whose NLL is removed
    (the published trainer masks ``labels[t]`` using the statistics of ``logits[t]``, one token too early).
    """
    targets = labels[:, 1:]  # [B, T-1]
    valid = targets != IGNORE_INDEX  # [B, T-1]
    return targets.masked_fill(~valid, 0), valid


def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    top_k_entropy: int | None = None,
    check_finite: bool = True,
) -> TokenStats:
    """Token statistics from full ``[B, T, V]`` logits; only valid positions are normalised.

    Computed in at least float32 whatever the input dtype (bf16 log-softmax loses the entropy of flat
    distributions). ``top_k_entropy=k`` also returns the entropy of the policy restricted to its k most likely
    tokens (used by ``eaft``). ``is_top1`` (whether the target is the argmax of the logits, first index on ties) is
    always computed.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be [batch, seq] = {tuple(logits.shape[:2])}, got shape {tuple(labels.shape)}")
    if ref_logits is not None and ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits must have the shape of logits {tuple(logits.shape)}, got {tuple(ref_logits.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must hold integer token ids (int64), got dtype {labels.dtype}")

    targets, valid = shift_labels(labels)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    vocab_size = logits.shape[-1]
    if check_finite:
        # only the positions that are trained on: padding rows of some models are legitimately NaN
        for name, tensor in (("logits", logits), ("ref_logits", ref_logits)):
            if tensor is not None and not bool(torch.isfinite(tensor[:, :-1][valid]).all()):
                raise ValueError(
                    f"{name} contains NaN or inf at a trained position; check the model's forward pass and the "
                    "learning rate"
                )

    def dense(rows: torch.Tensor) -> torch.Tensor:
        # scatter per-valid-position values back to [B, T-1], exact zeros elsewhere
        return torch.zeros(valid.shape, dtype=rows.dtype, device=rows.device).masked_scatter(valid, rows)

    log_p = torch.log_softmax(logits[:, :-1][valid].to(dtype), dim=-1)  # [N, V]
    target = targets[valid].unsqueeze(-1)  # [N, 1]
    p = log_p.exp()
    stats = TokenStats(
        logp=dense(log_p.gather(-1, target).squeeze(-1)),
        entropy=dense(-(p * log_p).sum(-1)),
        valid=valid,
        vocab_size=vocab_size,
        # on the logits as given: upcasting is exact and monotone, so the argmax (ties included) is the same
        is_top1=dense(logits[:, :-1][valid].detach().argmax(-1) == targets[valid]),
    )
    if ref_logits is not None:
        log_q = torch.log_softmax(ref_logits[:, :-1][valid].detach().to(dtype), dim=-1)  # [N, V]
        stats.kl = dense((p * (log_p - log_q)).sum(-1))
        stats.ref_logp = dense(log_q.gather(-1, target).squeeze(-1))
    if top_k_entropy is not None:
        k = min(int(top_k_entropy), vocab_size)
        log_top = torch.log_softmax(logits[:, :-1][valid].detach().to(dtype).topk(k, dim=-1).values, dim=-1)
        stats.top_k_entropy = dense(-(log_top.exp() * log_top).sum(-1))
    return stats


def max_entropy(vocab_size: int) -> float:
    """log|V|, the entropy of the uniform distribution, used to put the entropy term on a [0, 1] scale."""
    return math.log(vocab_size)
