r"""Plain SFT and the baselines that reweight each token's NLL instead of masking it.

With nll_t = -log p_t(y_{t+1}), p_t(y) = exp(-nll_t) the target's probability, sg() a stop-gradient and every
mean taken over the valid (response) tokens of the micro-batch (``normalization="mean"``; ``"token"`` divides
the sums by ``num_items_in_batch`` instead, see ``base.py``):

* ``nll`` (plain SFT):        mean_t nll_t
* ``dft`` (Dynamic Fine-Tuning, Wu et al. 2025):  mean_t sg(p_t(y)) * nll_t
* ``asft`` (Anchored SFT, Zhu et al. 2025):  DFT + asft_lambda * mean_t KL(p_t || q_t). The anchor is the reverse
  (mode-seeking) KL from the policy to the frozen reference, the same direction as EKSFT's KL term.
* ``chord_phi`` (CHORD's phi weighting, Zhang et al. 2025):  mean_t sg(p_t(y) (1 - p_t(y))) * nll_t
* ``eaft`` (Entropy-Adaptive Fine-Tuning):  mean_t sg(H^top-k_t / log k) * nll_t, where H^top-k is the entropy of
  the policy renormalised over its k = min(eaft_top_k, |V|) most likely tokens (eaft_top_k = 20): confident tokens
  (low entropy) that conflict with the data are down-weighted; a uniform top-k gets weight 1.
* ``iw_sft`` (importance-weighted SFT, Qin & Springenberg 2025): every token of sequence b gets the sequence weight
  w_b = sg(clamp(exp(mean_{t in b}(log p_t(y) - log q_t(y))), 0, iw_clip)), the likelihood ratio of policy to
  reference averaged per token (geometric mean) for stability:  mean_t w_{b(t)} * nll_t
"""

from __future__ import annotations

import math

import torch

from ..stats import TokenStats
from .base import ObjectiveOutput, ObjectiveParams, make_output, reduce


def _weighted_nll(stats: TokenStats, params, num_items_in_batch, weight: torch.Tensor | None, kl_term=None):
    nll = stats.nll if weight is None else weight.detach() * stats.nll
    ce = reduce(nll, stats.valid, stats, params, num_items_in_batch)
    return make_output(stats, ce=ce, imitated=stats.valid, kl_term=kl_term)


def nll(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Plain SFT: mean negative log-likelihood of the response tokens."""
    return _weighted_nll(stats, params, num_items_in_batch, None)


def dft(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Each token's NLL weighted by its (detached) probability."""
    return _weighted_nll(stats, params, num_items_in_batch, stats.logp.exp())


def asft(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """DFT plus asft_lambda * mean KL(policy || reference) on every valid token."""
    kl_term = params.asft_lambda * reduce(stats.kl, stats.valid, stats, params, num_items_in_batch)
    return _weighted_nll(stats, params, num_items_in_batch, stats.logp.exp(), kl_term=kl_term)


def chord_phi(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Each token's NLL weighted by sg(p (1 - p))."""
    p = stats.logp.exp()
    return _weighted_nll(stats, params, num_items_in_batch, p * (1 - p))


def eaft(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Each token's NLL weighted by its normalised top-k entropy."""
    if stats.top_k_entropy is None:
        raise ValueError("eaft needs TokenStats.top_k_entropy: compute the statistics with top_k_entropy=eaft_top_k")
    k = min(params.eaft_top_k, stats.vocab_size)
    return _weighted_nll(stats, params, num_items_in_batch, stats.top_k_entropy / math.log(k))


def iw_sft(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """Each sequence's NLL weighted by its clamped per-token likelihood ratio to the reference."""
    valid = stats.valid
    log_ratio = torch.where(valid, stats.logp.detach() - stats.ref_logp, 0).sum(-1)  # [B]
    mean_log_ratio = log_ratio / valid.sum(-1).clamp(min=1)  # [B]
    weight = mean_log_ratio.exp().clamp(0, params.iw_clip)  # [B]
    return _weighted_nll(stats, params, num_items_in_batch, weight.unsqueeze(-1).expand_as(stats.logp))
