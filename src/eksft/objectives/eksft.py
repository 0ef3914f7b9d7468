r"""EKSFT, Entropy-KL Selective Fine-Tuning, and the paper's ablations.

With the token statistics of ``eksft.stats`` (nll_t = -log p_t(y_{t+1}), H_t the policy's entropy,
KL_t = KL(p_t || q_t) to the frozen reference) and the sets of ``eksft.selection`` (E: top-rho entropy,
K: top-rho KL above a floor, M = E | K, C = valid \ M)::

    L = mean_{t in C} nll_t  -  lambda_H * mean_{t in E} H_t / log|V|  +  lambda_KL * mean_{t in K} KL_t

Tokens where the model is uncertain (E) or already drifting from where it started (K) are not imitated; the
entropy bonus keeps the uncertain ones uncertain and the KL penalty pulls the drifting ones back, so the model
stays close to its pre-trained distribution. Gradients flow through nll, H and KL of the policy; the
reference and the selection are constants. ``normalize_entropy=False`` drops the ``/ log|V|``;
``normalization="token"`` replaces every mean by a sum over ``num_items_in_batch`` (see ``base.py``): the
entropy and KL terms then weigh ``|E| / N`` and ``|K| / N`` (at most ``rho``) of their weight under the means,
so the same lambdas regularise about ``rho`` times as strongly (docs/objectives.md).

Ablations (same statistics, other weightings):

* ``entropy_only``: M = E, entropy bonus on E, no KL term (needs no reference).
* ``kl_only``: M = K, KL penalty on K, no entropy term.
* ``mask_only``: EKSFT's M, no regularisers: ``mean_{t in C} nll_t``.
* ``random_mask``: as many masked tokens per scope as EKSFT's M would have on this batch, chosen uniformly at
  random (torch's RNG), no regularisers: the control for ``mask_only``, isolating *which* tokens are masked.
* ``global_reg``: no masking, both regularisers on every valid token:
  ``mean_valid nll - lambda_H * mean_valid H / log|V| + lambda_KL * mean_valid KL``.
"""

from __future__ import annotations

import torch

from ..selection import Selection, random_tokens, select_tokens
from ..stats import TokenStats
from .base import ObjectiveOutput, ObjectiveParams, make_output, reduce, scaled_entropy


def _select(stats: TokenStats, params: ObjectiveParams, *, use_entropy=True, use_kl=True) -> Selection:
    return select_tokens(
        stats.entropy,
        stats.kl,
        stats.valid,
        rho=params.rho,
        scope=params.scope,
        combine=params.combine,
        kl_floor=params.kl_floor,
        entropy_largest=params.entropy_largest,
        kl_largest=params.kl_largest,
        use_entropy=use_entropy,
        use_kl=use_kl,
    )


def _selective(
    stats: TokenStats,
    params: ObjectiveParams,
    num_items_in_batch,
    *,
    imitated: torch.Tensor,
    entropy_on: torch.Tensor | None,
    kl_on: torch.Tensor | None,
    entropy_set: torch.Tensor | None = None,
    kl_set: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """NLL on ``imitated``, entropy bonus on ``entropy_on``, KL penalty on ``kl_on`` (None: no such term)."""
    ce = reduce(stats.nll, imitated, stats, params, num_items_in_batch)
    entropy_term = kl_term = None
    if entropy_on is not None:
        entropy_mean = reduce(scaled_entropy(stats, params), entropy_on, stats, params, num_items_in_batch)
        entropy_term = -params.lambda_entropy * entropy_mean
    if kl_on is not None:
        kl_term = params.lambda_kl * reduce(stats.kl, kl_on, stats, params, num_items_in_batch)
    return make_output(
        stats,
        ce=ce,
        imitated=imitated,
        entropy_term=entropy_term,
        kl_term=kl_term,
        entropy_set=entropy_set,
        kl_set=kl_set,
    )


def eksft(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """EKSFT: mask E | K, entropy bonus on E, KL penalty on K."""
    sel = _select(stats, params)
    return _selective(
        stats, params, num_items_in_batch,
        imitated=sel.imitated, entropy_on=sel.entropy_set, kl_on=sel.kl_set,
        entropy_set=sel.entropy_set, kl_set=sel.kl_set,
    )  # fmt: skip


def entropy_only(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Mask E only, entropy bonus on E."""
    sel = _select(stats, params, use_kl=False)
    return _selective(
        stats, params, num_items_in_batch,
        imitated=sel.imitated, entropy_on=sel.entropy_set, kl_on=None, entropy_set=sel.entropy_set,
    )  # fmt: skip


def kl_only(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Mask K only, KL penalty on K."""
    sel = _select(stats, params, use_entropy=False)
    return _selective(
        stats, params, num_items_in_batch,
        imitated=sel.imitated, entropy_on=None, kl_on=sel.kl_set, kl_set=sel.kl_set,
    )  # fmt: skip


def mask_only(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """EKSFT's masks without its regularisers."""
    sel = _select(stats, params)
    return _selective(
        stats, params, num_items_in_batch,
        imitated=sel.imitated, entropy_on=None, kl_on=None, entropy_set=sel.entropy_set, kl_set=sel.kl_set,
    )  # fmt: skip


def random_mask(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """As many randomly chosen masked tokens per scope as EKSFT would mask, no regularisers."""
    masked = random_tokens(stats.valid, _select(stats, params).masked, params.scope)
    return _selective(stats, params, num_items_in_batch, imitated=stats.valid & ~masked, entropy_on=None, kl_on=None)


def global_reg(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """No masking; entropy bonus and KL penalty on every valid token."""
    valid = stats.valid
    return _selective(stats, params, num_items_in_batch, imitated=valid, entropy_on=valid, kl_on=valid)
