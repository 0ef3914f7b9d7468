"""Which tokens EKSFT stops imitating: the top-rho positions by entropy and by KL.

Within a scope (``batch``: all valid positions of the micro-batch, as the published trainer does;
``sequence``: each sequence on its own)::

    N = number of valid positions in the scope;  k = floor(rho * N)
    E = the k valid positions with the largest entropy                (entropy set)
    K = the k valid positions with the largest KL, among KL > kl_floor (KL set)
    M = E | K (combine="union") or E & K (combine="intersection");  C = valid & ~M  (imitated)

Scores are detached: the selection is a constant of the loss. Ties are broken by position (the earlier token
wins), so the result does not depend on the sort kernel. The KL floor matters at the first step, where the
policy equals the reference and every KL is 0: without it top-k would pick arbitrary tokens.
``largest=False`` picks the k smallest instead (the published trainer's switch, for ablations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCOPES = ("batch", "sequence")
COMBINES = ("union", "intersection")


@dataclass
class Selection:
    entropy_set: torch.Tensor  # [B, T-1] bool
    kl_set: torch.Tensor  # [B, T-1] bool
    masked: torch.Tensor  # [B, T-1] bool, E | K or E & K
    imitated: torch.Tensor  # [B, T-1] bool, valid & ~masked


def scope_rows(x: torch.Tensor, scope: str) -> torch.Tensor:
    """View ``[B, T-1]`` as ``[S, L]``: one row per selection scope."""
    if scope == "batch":
        return x.reshape(1, -1)
    if scope == "sequence":
        return x
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def top_count(
    scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor, *, largest: bool = True
) -> torch.Tensor:
    """The ``count[s]`` eligible positions of each row ``s`` with the largest (or smallest) score.

    ``scores``, ``eligible``: ``[S, L]``; ``count``: ``[S]`` integers. Fewer are chosen when a row has fewer
    eligible positions. Ties go to the lower index (stable sort).
    """
    key = scores.detach().double() if largest else -scores.detach().double()
    key = key.masked_fill(~eligible, -torch.inf)  # ineligible positions sort last
    order = key.sort(dim=-1, descending=True, stable=True).indices  # [S, L]
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < count.unsqueeze(-1)) & eligible


def fraction_count(valid_rows: torch.Tensor, rho: float) -> torch.Tensor:
    """k = floor(rho * N) per scope row, N = number of valid positions in the row."""
    return torch.floor(rho * valid_rows.sum(-1).double()).long()


def select_tokens(
    entropy: torch.Tensor,
    kl: torch.Tensor | None,
    valid: torch.Tensor,
    *,
    rho: float,
    scope: str = "batch",
    combine: str = "union",
    kl_floor: float = 1e-6,
    entropy_largest: bool = True,
    kl_largest: bool = True,
    use_entropy: bool = True,
    use_kl: bool = True,
) -> Selection:
    """Entropy set, KL set, their combination and the imitated rest, all ``[B, T-1]`` bool.

    ``use_entropy`` / ``use_kl`` switch one criterion off (its set is then empty and the combination is the
    other set alone), which is what the ``entropy_only`` and ``kl_only`` ablations need.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    valid_rows = scope_rows(valid, scope)
    k = fraction_count(valid_rows, rho)
    none = torch.zeros_like(valid)
    entropy_set = none
    kl_set = none
    if use_entropy:
        entropy_set = top_count(scope_rows(entropy, scope), valid_rows, k, largest=entropy_largest).view_as(valid)
    if use_kl:
        if kl is None:
            raise ValueError("KL-based selection needs reference logits (ref_logits is None)")
        kl_rows = scope_rows(kl, scope).detach()
        eligible = valid_rows & (kl_rows > kl_floor)
        kl_set = top_count(kl_rows, eligible, k, largest=kl_largest).view_as(valid)
    if use_entropy and use_kl:
        masked = entropy_set | kl_set if combine == "union" else entropy_set & kl_set
    else:
        masked = entropy_set | kl_set
    return Selection(entropy_set=entropy_set, kl_set=kl_set, masked=masked, imitated=valid & ~masked)


def random_tokens(valid: torch.Tensor, count_like: torch.Tensor, scope: str) -> torch.Tensor:
    """A uniformly random set of valid positions with as many per scope as ``count_like`` has (torch's RNG)."""
    valid_rows = scope_rows(valid, scope)
    count = scope_rows(count_like, scope).sum(-1)
    noise = torch.rand(valid_rows.shape, device=valid.device, dtype=torch.float64)
    return top_count(noise, valid_rows, count).view_as(valid)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a & b| / |a | b|, 0 when both are empty."""
    union = (a | b).sum()
    return (a & b).sum() / union.clamp(min=1)
