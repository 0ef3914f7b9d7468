"""What every objective shares: its hyper-parameters, its output and how sums become a loss.

Normalisation (``normalization``), and what it means for gradient accumulation:

* ``"mean"`` (default, the paper's formulas): every term is a mean over its own token set of the micro-batch,
  e.g. ``mean_{t in C} nll_t``. The Trainer averages micro-batch losses, so accumulating N micro-batches weights
  each micro-batch equally, not each token (exactly like a per-micro-batch mean in plain SFT).
* ``"token"``: every term is a *sum* over its token set divided by ``num_items_in_batch``, the number of valid
  target tokens in the whole accumulated batch (TRL passes it to ``compute_loss``). Losses then add up across
  micro-batches: accumulating N micro-batches gives exactly the gradient of one batch of the same tokens, as
  long as the selection itself does not depend on the batching (``scope="sequence"``, or objectives without
  selection). Without ``num_items_in_batch`` the micro-batch's own valid count is used.

An empty token set contributes an exact 0 that stays attached to the graph (never 0/0 = NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..selection import COMBINES, SCOPES, iou
from ..stats import TokenStats, max_entropy

NORMALIZATIONS = ("mean", "token")


def _param(default, help: str):
    """A hyper-parameter: its default and its help, declared once (``EKSFTConfig`` takes both from here)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ObjectiveParams:
    """Every objective's hyper-parameters: defaults, help and validation in one place. ``EKSFTConfig`` has a field of
    each (so YAML recipes and command-line flags reach them) built from these."""

    # EKSFT and its ablations
    rho: float = _param(0.2, "EKSFT: fraction of valid tokens in each of the entropy and KL sets, k = floor(rho * N).")
    lambda_entropy: float = _param(0.05, "EKSFT: weight of the entropy bonus on the entropy set.")
    lambda_kl: float = _param(0.05, "EKSFT: weight of the KL(policy || reference) penalty on the KL set.")
    combine: str = _param("union", "EKSFT: masked tokens are the 'union' (the paper) or the 'intersection' of the two "
                          "sets.")  # fmt: skip
    scope: str = _param("batch", "EKSFT: select tokens over the whole micro-batch ('batch') or within each "
                        "'sequence'.")  # fmt: skip
    normalize_entropy: bool = _param(True, "EKSFT: divide the entropy term by log|V|.")
    kl_floor: float = _param(1e-6, "EKSFT: positions whose KL is not above this floor are never in the KL set.")
    entropy_largest: bool = _param(True, "EKSFT ablation: the entropy set takes the largest entropies (False: the "
                                   "smallest).")  # fmt: skip
    kl_largest: bool = _param(True, "EKSFT ablation: the KL set takes the largest KLs (False: the smallest above the "
                              "floor).")  # fmt: skip
    normalization: str = _param(
        "mean",
        "'mean': every term is a mean over its token set of the micro-batch (the paper's formulas). 'token': sums "
        "divided by the number of response tokens of the whole accumulated batch, so gradient accumulation equals one "
        "large batch. Under 'token' the entropy and KL terms, summed over at most a fraction rho of the tokens, weigh "
        "about rho times what they weigh under 'mean' (0.2x at rho=0.2): divide lambda_entropy and lambda_kl by rho "
        "to keep the paper's balance.",
    )
    # baselines
    asft_lambda: float = _param(0.05, "asft: weight of KL(policy || reference) added to DFT.")
    iw_clip: float = _param(16.0, "iw_sft: sequence weights are clamped to [0, iw_clip].")
    eaft_top_k: int = _param(20, "eaft: the entropy is taken over the policy's top-k tokens, normalised by log k.")
    rho1_ratio: float = _param(0.6, "rho1: fraction of tokens kept, by largest excess loss over the reference.")

    def __post_init__(self):
        def check(ok: bool, name: str, requirement: str):
            if not ok:
                raise ValueError(f"{name} must be {requirement}, got {getattr(self, name)!r}")

        check(0.0 <= self.rho < 1.0, "rho", "in [0, 1)")
        check(self.lambda_entropy >= 0, "lambda_entropy", ">= 0")
        check(self.lambda_kl >= 0, "lambda_kl", ">= 0")
        check(self.combine in COMBINES, "combine", f"one of {COMBINES}")
        check(self.scope in SCOPES, "scope", f"one of {SCOPES}")
        check(self.kl_floor >= 0, "kl_floor", ">= 0")
        check(self.normalization in NORMALIZATIONS, "normalization", f"one of {NORMALIZATIONS}")
        check(self.asft_lambda >= 0, "asft_lambda", ">= 0")
        check(self.iw_clip > 0, "iw_clip", "> 0")
        check(isinstance(self.eaft_top_k, int) and self.eaft_top_k >= 2, "eaft_top_k", "an integer >= 2")
        check(0.0 < self.rho1_ratio <= 1.0, "rho1_ratio", "in (0, 1]")


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, with grad
    entropy_set: torch.Tensor  # [B, T-1] bool
    kl_set: torch.Tensor  # [B, T-1] bool
    imitated: torch.Tensor  # [B, T-1] bool, positions whose NLL is in the loss
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    fn: Callable[[TokenStats, ObjectiveParams, torch.Tensor | int | None], ObjectiveOutput]
    needs_reference: bool  # needs ref logits (KL / ref_logp); without it the reference forward is skipped
    summary: str
    top_k_entropy: bool = False  # needs TokenStats.top_k_entropy (k = params.eaft_top_k)


def reduce(
    values: torch.Tensor,
    on: torch.Tensor,
    stats: TokenStats,
    params: ObjectiveParams,
    num_items_in_batch: torch.Tensor | int | None,
) -> torch.Tensor:
    """Sum of ``values`` over the positions ``on``, divided as ``params.normalization`` says."""
    total = torch.where(on, values, torch.zeros_like(values)).sum()
    if params.normalization == "token":
        denominator = num_items_in_batch if num_items_in_batch is not None else stats.valid.sum()
    else:
        denominator = on.sum()
    # clamped so that an empty set gives a finite 0 rather than 0/0
    if isinstance(denominator, torch.Tensor):
        return total / denominator.to(total.device).clamp(min=1)
    return total / max(int(denominator), 1)


def scaled_entropy(stats: TokenStats, params: ObjectiveParams) -> torch.Tensor:
    return stats.entropy / max_entropy(stats.vocab_size) if params.normalize_entropy else stats.entropy


def make_output(
    stats: TokenStats,
    *,
    ce: torch.Tensor,
    imitated: torch.Tensor,
    entropy_term: torch.Tensor | None = None,
    kl_term: torch.Tensor | None = None,
    entropy_set: torch.Tensor | None = None,
    kl_set: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """Assemble loss = ce + entropy_term + kl_term, and the metrics every objective logs."""
    none = torch.zeros_like(stats.valid)
    entropy_set = none if entropy_set is None else entropy_set
    kl_set = none if kl_set is None else kl_set
    zero = ce.new_zeros(())
    entropy_term = zero if entropy_term is None else entropy_term
    kl_term = zero if kl_term is None else kl_term
    loss = ce + entropy_term + kl_term

    valid = stats.valid
    n = valid.sum().clamp(min=1)
    values = {
        "ce": ce,
        "entropy_term": entropy_term,
        "kl_term": kl_term,
        "mean_entropy": torch.where(valid, stats.entropy, 0).sum() / n,
        "frac_masked": (valid & ~imitated).sum() / n,
        "frac_entropy_set": entropy_set.sum() / n,
        "frac_kl_set": kl_set.sum() / n,
        "iou": iou(entropy_set, kl_set),
    }
    if stats.kl is not None:
        values["mean_kl"] = torch.where(valid, stats.kl, 0).sum() / n
    # one device-to-host copy for all metrics
    floats = torch.stack([v.detach().double().reshape(()) for v in values.values()]).tolist()
    return ObjectiveOutput(
        loss=loss,
        entropy_set=entropy_set,
        kl_set=kl_set,
        imitated=imitated,
        metrics=dict(zip(values, floats, strict=True)),
    )
