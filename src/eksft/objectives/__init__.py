"""Training objectives: each one a weighting of the per-token (nll, entropy, KL) of ``eksft.stats``.

``OBJECTIVES`` is the one registry (name -> ``Objective``). The EKSFT formula is in ``eksft.py``; the
baselines in ``reweighted.py`` and ``rho1.py``; normalisation and gradient accumulation in ``base.py``.

Entry points:

* ``eksft_loss(logits, labels, ref_logits, ...)``: EKSFT from full logits.
* ``objective_loss(name, logits, labels, ref_logits, ...)``: any objective from full logits.
* ``compute_objective(name, stats, params)``: any objective from precomputed ``TokenStats`` (what the trainer
  calls, with statistics from full logits or from the chunked path).
"""

from __future__ import annotations

import torch

from ..stats import TokenStats, token_stats
from .base import Objective, ObjectiveOutput, ObjectiveParams
from .eksft import eksft, entropy_only, global_reg, kl_only, mask_only, random_mask
from .reweighted import asft, chord_phi, dft, eaft, iw_sft, nll
from .rho1 import rho1

OBJECTIVES: dict[str, Objective] = {
    "nll": Objective(nll, needs_reference=False, summary="plain SFT, mean NLL of response tokens"),
    "eksft": Objective(eksft, needs_reference=True, summary="EKSFT: mask top-rho entropy | KL tokens, regularise them"),
    "dft": Objective(dft, needs_reference=False, summary="Dynamic Fine-Tuning: NLL weighted by sg(p)"),
    "asft": Objective(asft, needs_reference=True, summary="Anchored SFT: DFT + lambda * KL(policy || reference)"),
    "iw_sft": Objective(iw_sft, needs_reference=True, summary="importance-weighted SFT, clamped sequence weights"),
    "chord_phi": Objective(chord_phi, needs_reference=False, summary="CHORD phi: NLL weighted by sg(p (1 - p))"),
    "eaft": Objective(eaft, needs_reference=False, top_k_entropy=True, summary="NLL weighted by top-k entropy"),
    "rho1": Objective(rho1, needs_reference=True, summary="Rho-1: NLL on the tokens with largest excess loss"),
    "entropy_only": Objective(entropy_only, needs_reference=False, summary="ablation: entropy set only"),
    "kl_only": Objective(kl_only, needs_reference=True, summary="ablation: KL set only"),
    "random_mask": Objective(random_mask, needs_reference=True, summary="ablation: as many random masked tokens"),
    "global_reg": Objective(global_reg, needs_reference=True, summary="ablation: no masking, regularise all tokens"),
    "mask_only": Objective(mask_only, needs_reference=True, summary="ablation: EKSFT masks, no regularisers"),
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def compute_objective(
    name: str,
    stats: TokenStats,
    params: ObjectiveParams | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> ObjectiveOutput:
    """Objective ``name`` on precomputed statistics (an empty batch gives a finite 0 attached to the graph)."""
    objective = get_objective(name)
    if objective.needs_reference and stats.kl is None:
        raise ValueError(f"objective {name!r} needs a reference model: pass ref_logits")
    return objective.fn(stats, params or ObjectiveParams(), num_items_in_batch)


def objective_loss(
    name: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    **params,
) -> ObjectiveOutput:
    """Objective ``name`` from full ``[B, T, V]`` logits and unshifted ``[B, T]`` labels (-100 = ignore).

    ``params`` are ``ObjectiveParams`` fields. Raises ``ValueError`` for an unknown name, bad
    hyper-parameters, wrong shapes, non-finite logits, or labels without a single position to train on.
    """
    objective = get_objective(name)
    unknown = sorted(set(params) - set(ObjectiveParams.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown objective parameter(s) {unknown}; known: {', '.join(ObjectiveParams.__dataclass_fields__)}")
    params = ObjectiveParams(**params)
    if objective.needs_reference and ref_logits is None:
        raise ValueError(f"objective {name!r} needs ref_logits (the reference model's logits), got None")
    stats = token_stats(
        logits,
        labels,
        ref_logits if objective.needs_reference else None,
        top_k_entropy=params.eaft_top_k if objective.top_k_entropy else None,
    )
    if not bool(stats.valid.any()):
        raise ValueError(
            "labels has no valid position: every target labels[:, 1:] is -100 (or the sequence length is 1); "
            "nothing to train on"
        )
    if num_items_in_batch is not None and int(num_items_in_batch) < stats.num_valid:
        raise ValueError(
            f"num_items_in_batch must count the valid targets of the whole accumulated batch, so at least the "
            f"{stats.num_valid} of this micro-batch; got {int(num_items_in_batch)}"
        )
    return objective.fn(stats, params, num_items_in_batch)


def eksft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor,
    *,
    rho: float = 0.2,
    lambda_entropy: float = 0.05,
    lambda_kl: float = 0.05,
    combine: str = "union",
    scope: str = "batch",
    normalize_entropy: bool = True,
    **params,
) -> ObjectiveOutput:
    """The EKSFT loss from full logits (formula in ``eksft/objectives/eksft.py``).

    Returns ``.loss`` (scalar with grad), ``.entropy_set``, ``.kl_set``, ``.imitated`` (bool ``[B, T-1]``,
    aligned with ``labels[:, 1:]``) and ``.metrics`` (ce, entropy_term, kl_term, mean_entropy, mean_kl,
    frac_masked, iou, ...). Other ``ObjectiveParams`` fields (``kl_floor``, ``normalization``, ...) and
    ``num_items_in_batch`` pass through.
    """
    return objective_loss(
        "eksft",
        logits,
        labels,
        ref_logits,
        rho=rho,
        lambda_entropy=lambda_entropy,
        lambda_kl=lambda_kl,
        combine=combine,
        scope=scope,
        normalize_entropy=normalize_entropy,
        **params,
    )


__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveOutput",
    "ObjectiveParams",
    "compute_objective",
    "eksft_loss",
    "get_objective",
    "objective_loss",
]
