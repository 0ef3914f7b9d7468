"""Bad inputs give a ``ValueError`` that names the argument and the value; a micro-batch with nothing to imitate
gives a finite 0 that is still attached to the graph."""

from __future__ import annotations

import math
import re

import pytest
import torch

from eksft.objectives import OBJECTIVES, ObjectiveParams, compute_objective, eksft_loss, objective_loss
from eksft.stats import token_stats

NEEDS_REFERENCE = [name for name, objective in OBJECTIVES.items() if objective.needs_reference]
B, T, V = 2, 5, 4


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=g, dtype=dtype)
    ref_logits = torch.randn(B, T, V, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    return logits, labels, ref_logits


# ---- shapes


@pytest.mark.parametrize("shape", [(B, T), (B, T, V, 1), (V,)])
def test_logits_must_be_3d(shape):
    _, labels, _ = inputs()
    with pytest.raises(ValueError, match=rf"^logits.*{re.escape(str(shape))}"):
        objective_loss("nll", torch.randn(shape), labels)


@pytest.mark.parametrize("shape", [(B, T - 1), (B + 1, T), (B, T, 1), (B * T,)])
def test_labels_must_match_logits(shape):
    logits, _, ref_logits = inputs()
    with pytest.raises(ValueError, match=rf"labels.*{re.escape(str(shape))}"):
        objective_loss("eksft", logits, torch.zeros(shape, dtype=torch.long), ref_logits)


@pytest.mark.parametrize("shape", [(B, T - 1, V), (B, T, V + 1), (B, T)])
def test_ref_logits_must_match_logits(shape):
    logits, labels, _ = inputs()
    with pytest.raises(ValueError, match=rf"ref_logits.*{re.escape(str(shape))}"):
        objective_loss("eksft", logits, labels, torch.randn(shape))
    with pytest.raises(ValueError, match=rf"ref_logits.*{re.escape(str(shape))}"):
        eksft_loss(
            logits,
            labels,
            torch.randn(shape),
            rho=0.2,
            lambda_entropy=0.05,
            lambda_kl=0.05,
            combine="union",
            scope="batch",
            normalize_entropy=True,
        )


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_labels_without_a_valid_position(name):
    logits, labels, ref_logits = inputs()
    only_first = labels.clone()
    only_first[:, 1:] = -100  # labels[:, 0] is never a target
    length_one = labels[:, :1]
    for bad_labels, bad_logits in (
        (torch.full_like(labels, -100), logits),
        (only_first, logits),
        (length_one, logits[:, :1]),
    ):
        with pytest.raises(ValueError, match=r"labels.*-100"):
            objective_loss(name, bad_logits, bad_labels, ref_logits[:, : bad_logits.shape[1]])


# ---- hyper-parameters


@pytest.mark.parametrize("rho", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_rho_outside_unit_interval(rho):
    logits, labels, ref_logits = inputs()
    with pytest.raises(ValueError, match=rf"rho.*{re.escape(repr(rho))}"):
        objective_loss("eksft", logits, labels, ref_logits, rho=rho)
    with pytest.raises(ValueError, match=rf"rho.*{re.escape(repr(rho))}"):
        eksft_loss(
            logits,
            labels,
            ref_logits,
            rho=rho,
            lambda_entropy=0.05,
            lambda_kl=0.05,
            combine="union",
            scope="batch",
            normalize_entropy=True,
        )


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("lambda_entropy", -0.05),
        ("lambda_kl", -1.0),
        ("kl_floor", -1e-6),
        ("asft_lambda", -0.5),
        ("iw_clip", 0.0),
        ("iw_clip", -2.0),
        ("eaft_top_k", 1),
        ("eaft_top_k", 2.5),
        ("rho1_ratio", 0.0),
        ("rho1_ratio", 1.5),
        ("combine", "xor"),
        ("combine", "Union"),
        ("scope", "token"),
        ("normalization", "sum"),
    ],
)
def test_bad_hyper_parameter(param, value):
    logits, labels, ref_logits = inputs()
    with pytest.raises(ValueError, match=rf"{param}.*{re.escape(repr(value))}"):
        objective_loss("eksft", logits, labels, ref_logits, **{param: value})


@pytest.mark.parametrize(
    ("param", "value"),
    [("lambda_entropy", -0.05), ("lambda_kl", -1.0), ("combine", "xor"), ("scope", "token"), ("normalization", "sum")],
)
def test_bad_hyper_parameter_through_eksft_loss(param, value):
    logits, labels, ref_logits = inputs()
    kwargs = dict(rho=0.2, lambda_entropy=0.05, lambda_kl=0.05, combine="union", scope="batch", normalize_entropy=True)
    kwargs[param] = value
    with pytest.raises(ValueError, match=rf"{param}.*{re.escape(repr(value))}"):
        eksft_loss(logits, labels, ref_logits, **kwargs)


def test_unknown_parameter_is_named():
    logits, labels, _ = inputs()
    with pytest.raises((TypeError, ValueError), match="rhoo"):
        objective_loss("nll", logits, labels, rhoo=0.1)


def test_unknown_objective_lists_the_known_names():
    logits, labels, ref_logits = inputs()
    with pytest.raises(ValueError, match="'?no_such_objective'?") as excinfo:
        objective_loss("no_such_objective", logits, labels, ref_logits)
    message = str(excinfo.value)
    for name in OBJECTIVES:
        assert name in message, f"{name!r} missing from {message!r}"


# ---- non-finite inputs


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["logits", "ref_logits"])
def test_non_finite_logits(where, value):
    logits, labels, ref_logits = inputs()
    tensors = {"logits": logits, "ref_logits": ref_logits}
    tensors[where][1, 2, 3] = value  # a valid position (labels[1, 3] is a target)
    pattern = rf"^{where}\b.*(NaN|nan|inf)"
    with pytest.raises(ValueError, match=pattern):
        objective_loss("eksft", tensors["logits"], labels, tensors["ref_logits"])
    with pytest.raises(ValueError, match=pattern):
        eksft_loss(
            tensors["logits"],
            labels,
            tensors["ref_logits"],
            rho=0.2,
            lambda_entropy=0.05,
            lambda_kl=0.05,
            combine="union",
            scope="batch",
            normalize_entropy=True,
        )


# ---- a reference is required


@pytest.mark.parametrize("name", NEEDS_REFERENCE)
def test_objective_without_its_reference(name):
    logits, labels, _ = inputs()
    with pytest.raises(ValueError, match=r"ref_logits.*None"):
        objective_loss(name, logits, labels)
    with pytest.raises(ValueError, match=r"ref_logits.*None"):
        objective_loss(name, logits, labels, None)


def test_eksft_loss_without_its_reference():
    logits, labels, _ = inputs()
    with pytest.raises(ValueError, match=r"ref_logits.*None"):
        eksft_loss(
            logits,
            labels,
            None,
            rho=0.2,
            lambda_entropy=0.05,
            lambda_kl=0.05,
            combine="union",
            scope="batch",
            normalize_entropy=True,
        )


# ---- nothing imitated: a finite 0 attached to the graph


def assert_attached_zero(loss: torch.Tensor, logits: torch.Tensor):
    assert loss.dim() == 0
    assert math.isfinite(loss.item())
    assert loss.item() == 0.0
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert not bool(logits.grad.any())


def two_tokens_union_covers_everything():
    """Two valid positions, rho = 0.5 (k = 1): E takes the flat one, K the drifting one, so E | K = everything.

    Position 0: uniform policy (largest entropy), reference equal to the policy (KL 0, below the floor).
    Position 1: peaked policy (small entropy), reference peaked elsewhere (large KL).
    """
    logits = torch.tensor([[[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    ref_logits = logits.clone()
    ref_logits[0, 1] = torch.tensor([0.0, 6.0, 0.0])
    labels = torch.tensor([[0, 1, 2]])
    return logits.requires_grad_(True), labels, ref_logits


@pytest.mark.parametrize("combine_lambdas", [("mask_only", 0.05), ("eksft", 0.0), ("random_mask", 0.05)])
def test_union_covering_every_token_gives_an_attached_zero(combine_lambdas):
    name, lam = combine_lambdas
    logits, labels, ref_logits = two_tokens_union_covers_everything()
    out = objective_loss(name, logits, labels, ref_logits, rho=0.5, lambda_entropy=lam, lambda_kl=lam)
    assert not bool(out.imitated.any())
    if name != "random_mask":
        assert out.entropy_set.tolist() == [[True, False]] and out.kl_set.tolist() == [[False, True]]
    assert out.metrics["frac_masked"] == 1.0 and out.metrics["ce"] == 0.0
    assert_attached_zero(out.loss, logits)


@pytest.mark.parametrize("normalization", ["mean", "token"])
def test_eksft_with_nothing_imitated_keeps_its_regularisers(normalization):
    logits, labels, ref_logits = two_tokens_union_covers_everything()
    out = eksft_loss(
        logits,
        labels,
        ref_logits,
        rho=0.5,
        lambda_entropy=0.05,
        lambda_kl=0.05,
        combine="union",
        scope="sequence",
        normalize_entropy=True,
        normalization=normalization,
    )
    assert not bool(out.imitated.any())
    assert out.metrics["ce"] == 0.0
    assert math.isfinite(out.loss.item()) and out.loss.item() != 0.0
    out.loss.backward()
    assert bool(torch.isfinite(logits.grad).all()) and bool(logits.grad.any())


@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_rho1_with_no_token_kept_gives_an_attached_zero(scope):
    # one valid position and rho1_ratio = 0.6: floor(0.6 * 1) = 0 tokens are trained on
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    ref_logits = torch.randn(1, 2, 5, generator=g, dtype=torch.float64)
    out = objective_loss("rho1", logits, torch.tensor([[4, 1]]), ref_logits, rho1_ratio=0.6, scope=scope)
    assert not bool(out.imitated.any())
    assert_attached_zero(out.loss, logits)


@pytest.mark.parametrize("normalization", ["mean", "token"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_compute_objective_on_statistics_without_a_valid_position(name, normalization):
    from eksft.objectives import ObjectiveParams

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    ref_logits = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    labels = torch.full((2, 4), -100)
    params = ObjectiveParams(normalization=normalization)
    stats = token_stats(logits, labels, ref_logits, top_k_entropy=params.eaft_top_k)
    out = compute_objective(name, stats, params)
    assert not bool(out.imitated.any()) and not bool(out.entropy_set.any()) and not bool(out.kl_set.any())
    for key, value in out.metrics.items():
        assert math.isfinite(value), f"metric {key} = {value!r}"
    assert_attached_zero(out.loss, logits)


def test_num_items_in_batch_smaller_than_the_micro_batch_is_rejected():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"num_items_in_batch.*at least the 3 .* got 0"):
        objective_loss("nll", logits, labels, normalization="token", num_items_in_batch=0)
    objective_loss("nll", logits, labels, normalization="token", num_items_in_batch=3)


def test_float_labels_are_rejected():
    with pytest.raises(ValueError, match=r"labels must hold integer token ids.*float32"):
        objective_loss("nll", torch.randn(1, 4, 5), torch.ones(1, 4))


def test_unknown_parameter_is_a_value_error():
    with pytest.raises(ValueError, match=r"unknown objective parameter\(s\) \['rhoo'\]"):
        objective_loss("nll", torch.randn(1, 4, 5), torch.ones(1, 4, dtype=torch.long), rhoo=0.1)


def test_non_finite_logits_at_ignored_positions_are_allowed():
    """Only trained positions are checked: padding rows of some models are legitimately NaN."""
    logits = torch.randn(1, 5, 7)
    logits[0, 0] = float("nan")  # predicts labels[1], which is ignored
    logits[0, -1] = float("inf")  # the last position predicts nothing
    labels = torch.tensor([[-100, -100, 1, 2, 3]])
    assert torch.isfinite(objective_loss("nll", logits, labels).loss)


# ---- the scale of the regularisers under normalization="token" (documented in docs/objectives.md)


def test_token_normalization_scales_each_term_by_its_share_of_the_tokens():
    g = torch.Generator().manual_seed(1)
    logits, ref_logits = torch.randn(4, 50, 16, generator=g), torch.randn(4, 50, 16, generator=g)
    labels = torch.randint(0, 16, (4, 50), generator=g)
    stats = token_stats(logits, labels, ref_logits)
    n = stats.num_valid
    mean = compute_objective("eksft", stats, ObjectiveParams(rho=0.2, kl_floor=0.0))
    token = compute_objective("eksft", stats, ObjectiveParams(rho=0.2, kl_floor=0.0, normalization="token"))
    entropy_share = float(mean.entropy_set.sum()) / n
    kl_share = float(mean.kl_set.sum()) / n
    assert entropy_share == pytest.approx(0.2, abs=0.01) and kl_share == pytest.approx(0.2, abs=0.01)
    assert token.metrics["entropy_term"] == pytest.approx(mean.metrics["entropy_term"] * entropy_share, rel=1e-5)
    assert token.metrics["kl_term"] == pytest.approx(mean.metrics["kl_term"] * kl_share, rel=1e-5)
    # the documented remedy: lambdas divided by rho give the means' weights back (here |E| = |K| = rho N exactly
    # up to rounding of rho N)
    scaled = ObjectiveParams(rho=0.2, kl_floor=0.0, normalization="token", lambda_entropy=0.25, lambda_kl=0.25)
    rescaled = compute_objective("eksft", stats, scaled)
    assert rescaled.metrics["entropy_term"] == pytest.approx(mean.metrics["entropy_term"], rel=0.05)
    assert rescaled.metrics["kl_term"] == pytest.approx(mean.metrics["kl_term"], rel=0.05)
