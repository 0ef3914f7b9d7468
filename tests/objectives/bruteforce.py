"""Brute-force float64 reference for every objective in ``eksft.objectives.OBJECTIVES``.

Written from the specification (``docs/design.md`` section 1 and the module docstrings), not from the library code:
explicit Python loops over sequences and positions, one 1-D vocabulary vector at a time, plain torch float64 ops
(so that autograd gives the gradient with respect to the logits), selection with Python's ``sorted()`` and
``k = floor(rho * N)`` with Python floats (float64). Nothing here imports ``eksft``.

Conventions (Hugging Face): ``labels`` are unshifted, ``-100`` is ignored, ``logits[:, t]`` predicts
``labels[:, t + 1]``; every mask is ``[B, T - 1]``, aligned with ``labels[:, 1:]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

IGNORE = -100

# The defaults of the specification (ObjectiveParams), repeated here so the oracle stays independent.
DEFAULTS = {
    "rho": 0.2,
    "lambda_entropy": 0.05,
    "lambda_kl": 0.05,
    "combine": "union",
    "scope": "batch",
    "normalize_entropy": True,
    "kl_floor": 1e-6,
    "entropy_largest": True,
    "kl_largest": True,
    "normalization": "mean",
    "asft_lambda": 0.05,
    "iw_clip": 16.0,
    "eaft_top_k": 20,
    "rho1_ratio": 0.6,
}

# objectives whose loss needs the reference distribution q
NEEDS_REFERENCE = {"eksft", "asft", "iw_sft", "rho1", "kl_only", "random_mask", "global_reg", "mask_only"}


@dataclass
class Position:
    """Statistics of one valid position, each a 0-dim float64 tensor (with grad where the spec says so)."""

    nll: torch.Tensor  # -log p(y), grad
    entropy: torch.Tensor  # H(p), grad
    kl: torch.Tensor | None  # KL(p || q), grad to p only
    logp: torch.Tensor  # log p(y), grad
    ref_logp: torch.Tensor | None  # log q(y), constant
    top_k_entropy: torch.Tensor  # entropy of p renormalised over its top-k logits, constant


@dataclass
class Reference:
    loss: torch.Tensor
    entropy_set: torch.Tensor  # [B, T-1] bool
    kl_set: torch.Tensor
    imitated: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    masked_per_scope: list[int] = field(default_factory=list)  # |M| per scope (EKSFT's union/intersection)


def log_softmax_1d(x: torch.Tensor) -> torch.Tensor:
    return x - torch.logsumexp(x, dim=0)


def entropy_1d(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum()


def position_stats(x: torch.Tensor, y: int, r: torch.Tensor | None, top_k: int) -> Position:
    """Stats of the distribution ``softmax(x)`` (1-D logits, grad) for target ``y``; ``r`` the reference logits."""
    log_p = log_softmax_1d(x)
    p = log_p.exp()
    kl = ref_logp = None
    if r is not None:
        log_q = log_softmax_1d(r.detach())
        kl = (p * (log_p - log_q)).sum()
        ref_logp = log_q[y]
    # top-k entropy: the k largest logits (k capped at |V|), renormalised; a constant (detached)
    top = sorted(x.detach().tolist(), reverse=True)[: min(top_k, x.shape[0])]
    log_top = log_softmax_1d(torch.tensor(top, dtype=torch.float64))
    return Position(
        nll=-log_p[y],
        entropy=entropy_1d(log_p),
        kl=kl,
        logp=log_p[y],
        ref_logp=ref_logp,
        top_k_entropy=entropy_1d(log_top),
    )


def choose(positions: list, score: dict, k: int, largest: bool) -> list:
    """The k positions with the largest (smallest) score; ties to the earlier position (list order)."""
    order = {pos: i for i, pos in enumerate(positions)}
    ranked = sorted(positions, key=lambda pos: ((-score[pos] if largest else score[pos]), order[pos]))
    return ranked[:k]


def count(rho: float, n: int) -> int:
    # floor(rho * N) with rho a Python float: the product is rounded to float64, then floored
    return math.floor(rho * n)


def _as_mask(positions, shape) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for b, t in positions:
        mask[b, t] = True
    return mask


def _zero() -> torch.Tensor:
    return torch.zeros((), dtype=torch.float64)


def _sum(values: list[torch.Tensor]) -> torch.Tensor:
    total = _zero()
    for v in values:
        total = total + v
    return total


def reference(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    num_items_in_batch=None,
    **params,
) -> Reference:
    """The objective ``name`` by brute force. ``logits`` should be a float64 leaf with ``requires_grad``.

    For ``random_mask`` the masks are random: this returns EKSFT's masked count per scope
    (``masked_per_scope``) and no loss; use :func:`loss_on` with the library's ``imitated`` for the loss.
    """
    p = dict(DEFAULTS)
    unknown = set(params) - set(p)
    if unknown:
        raise TypeError(f"unknown parameters {unknown}")
    p.update(params)
    B, T, V = logits.shape
    P = T - 1
    shape = (B, P)
    use_ref = name in NEEDS_REFERENCE
    if use_ref and ref_logits is None:
        raise ValueError("the reference needs ref_logits")

    # ---- per-position statistics, one 1-D vocabulary vector at a time
    valid_positions = []  # flattened order: b major, t minor
    stats: dict[tuple[int, int], Position] = {}
    for b in range(B):
        for t in range(P):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            valid_positions.append((b, t))
            stats[(b, t)] = position_stats(logits[b, t], y, ref_logits[b, t] if use_ref else None, int(p["eaft_top_k"]))
    n_valid = len(valid_positions)
    if p["scope"] == "batch":
        scopes = [list(valid_positions)]
    else:
        scopes = [[pos for pos in valid_positions if pos[0] == b] for b in range(B)]

    if num_items_in_batch is not None:
        num_items = int(num_items_in_batch)
    else:
        num_items = n_valid

    def reduce(values: list[torch.Tensor]) -> torch.Tensor:
        denominator = len(values) if p["normalization"] == "mean" else num_items
        if not values:
            return _zero()  # an empty set contributes exactly 0
        return _sum(values) / denominator

    def scaled_entropy(pos) -> torch.Tensor:
        h = stats[pos].entropy
        return h / math.log(V) if p["normalize_entropy"] else h

    # ---- EKSFT's selection (detached scores), per scope
    def eksft_sets(use_entropy=True, use_kl=True):
        entropy_set, kl_set, masked, masked_per_scope = [], [], set(), []
        for scope in scopes:
            k = count(p["rho"], len(scope))
            e = []
            if use_entropy:
                score = {pos: stats[pos].entropy.item() for pos in scope}
                e = choose(scope, score, k, p["entropy_largest"])
            kk = []
            if use_kl:
                score = {pos: stats[pos].kl.item() for pos in scope}
                eligible = [pos for pos in scope if score[pos] > p["kl_floor"]]
                kk = choose(eligible, score, k, p["kl_largest"])
            if use_entropy and use_kl:
                m = set(e) | set(kk) if p["combine"] == "union" else set(e) & set(kk)
            else:
                m = set(e) | set(kk)  # one criterion off: the combination is the other set alone
            entropy_set += e
            kl_set += kk
            masked |= m
            masked_per_scope.append(len(m))
        return entropy_set, kl_set, masked, masked_per_scope

    ce = entropy_term = kl_term = _zero()
    entropy_set: list = []
    kl_set: list = []
    imitated: list = list(valid_positions)
    masked_per_scope: list[int] = []
    lam_h, lam_k = p["lambda_entropy"], p["lambda_kl"]

    if name == "nll":
        ce = reduce([stats[pos].nll for pos in valid_positions])
    elif name in ("eksft", "entropy_only", "kl_only", "mask_only", "random_mask"):
        use_entropy = name != "kl_only"
        use_kl = name != "entropy_only"
        entropy_set, kl_set, masked, masked_per_scope = eksft_sets(use_entropy, use_kl)
        imitated = [pos for pos in valid_positions if pos not in masked]
        ce = reduce([stats[pos].nll for pos in imitated])
        if name in ("eksft", "entropy_only"):
            entropy_term = -lam_h * reduce([scaled_entropy(pos) for pos in entropy_set])
        if name in ("eksft", "kl_only"):
            kl_term = lam_k * reduce([stats[pos].kl for pos in kl_set])
        if name == "random_mask":
            entropy_set, kl_set = [], []
            imitated = None  # random: checked structurally
    elif name == "global_reg":
        ce = reduce([stats[pos].nll for pos in valid_positions])
        entropy_term = -lam_h * reduce([scaled_entropy(pos) for pos in valid_positions])
        kl_term = lam_k * reduce([stats[pos].kl for pos in valid_positions])
    elif name in ("dft", "asft"):
        ce = reduce([stats[pos].logp.detach().exp() * stats[pos].nll for pos in valid_positions])
        if name == "asft":
            kl_term = p["asft_lambda"] * reduce([stats[pos].kl for pos in valid_positions])
    elif name == "chord_phi":
        values = []
        for pos in valid_positions:
            prob = stats[pos].logp.detach().exp()
            values.append(prob * (1 - prob) * stats[pos].nll)
        ce = reduce(values)
    elif name == "eaft":
        log_k = math.log(min(p["eaft_top_k"], V))  # the top-k of a vocabulary smaller than k is all of it
        ce = reduce([(stats[pos].top_k_entropy / log_k) * stats[pos].nll for pos in valid_positions])
    elif name == "iw_sft":
        weight = {}
        for b in range(B):
            row = [pos for pos in valid_positions if pos[0] == b]
            if not row:
                continue
            log_ratio = _sum([stats[pos].logp.detach() - stats[pos].ref_logp for pos in row]) / len(row)
            weight[b] = torch.clamp(log_ratio.exp(), 0.0, p["iw_clip"])
        ce = reduce([weight[pos[0]] * stats[pos].nll for pos in valid_positions])
    elif name == "rho1":
        imitated = []
        for scope in scopes:
            k = count(p["rho1_ratio"], len(scope))
            excess = {pos: (stats[pos].ref_logp - stats[pos].logp.detach()).item() for pos in scope}
            imitated += choose(scope, excess, k, True)
        ce = reduce([stats[pos].nll for pos in imitated])
    else:
        raise KeyError(f"no brute force for objective {name!r}")

    out = Reference(
        loss=ce + entropy_term + kl_term,
        entropy_set=_as_mask(entropy_set, shape),
        kl_set=_as_mask(kl_set, shape),
        imitated=_as_mask(imitated or [], shape),
        masked_per_scope=masked_per_scope,
    )
    e_set, k_set = set(entropy_set), set(kl_set)
    union = e_set | k_set
    n = max(n_valid, 1)
    out.metrics = {
        "ce": ce.item(),
        "entropy_term": entropy_term.item(),
        "kl_term": kl_term.item(),
        "mean_entropy": _sum([stats[pos].entropy.detach() for pos in valid_positions]).item() / n,
        "frac_entropy_set": len(e_set) / n,
        "frac_kl_set": len(k_set) / n,
        "iou": len(e_set & k_set) / len(union) if union else 0.0,
    }
    if imitated is not None:
        out.metrics["frac_masked"] = (n_valid - len(set(imitated))) / n
    if use_ref:
        out.metrics["mean_kl"] = _sum([stats[pos].kl.detach() for pos in valid_positions]).item() / n
    return out


def loss_on(
    imitated: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    normalization: str = "mean",
    num_items_in_batch=None,
) -> torch.Tensor:
    """NLL over the given imitated positions, normalised as ``normalization`` says (for ``random_mask``)."""
    B, T, V = logits.shape
    values, n_valid = [], 0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            n_valid += 1
            if bool(imitated[b, t]):
                values.append(-log_softmax_1d(logits[b, t])[y])
    if not values:
        return _zero()
    if normalization == "mean":
        return _sum(values) / len(values)
    return _sum(values) / (int(num_items_in_batch) if num_items_in_batch is not None else n_valid)


def scope_rows(mask: torch.Tensor, scope: str) -> list[int]:
    """Number of True entries per selection scope (one for ``batch``, one per sequence for ``sequence``)."""
    if scope == "batch":
        return [int(mask.sum())]
    return [int(row.sum()) for row in mask]
