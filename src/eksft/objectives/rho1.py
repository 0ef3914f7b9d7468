r"""Rho-1's selective language modelling (Lin et al., 2024): train only on the tokens with the largest excess loss.

    excess_t = nll_t - nll^ref_t = log q_t(y) - log p_t(y)     (detached)
    S = the floor(rho1_ratio * N) valid positions with the largest excess, per scope
    L = mean_{t in S} nll_t

Here the reference is whatever reference model the trainer holds (by default the initial weights; Rho-1 uses a
model trained on high-quality data, pass it with ``ref_model_name_or_path``). At the first step with the initial
weights as reference every excess is 0 and the tie-break (earliest positions first) decides.
"""

from __future__ import annotations

from ..selection import fraction_count, scope_rows, top_count
from ..stats import TokenStats
from .base import ObjectiveOutput, ObjectiveParams, make_output, reduce


def rho1(stats: TokenStats, params: ObjectiveParams, num_items_in_batch=None) -> ObjectiveOutput:
    """NLL on the top rho1_ratio fraction of tokens by excess loss over the reference."""
    valid_rows = scope_rows(stats.valid, params.scope)
    excess = scope_rows(stats.ref_logp - stats.logp.detach(), params.scope)
    kept = top_count(excess, valid_rows, fraction_count(valid_rows, params.rho1_ratio)).view_as(stats.valid)
    ce = reduce(stats.nll, kept, stats, params, num_items_in_batch)
    return make_output(stats, ce=ce, imitated=kept)
