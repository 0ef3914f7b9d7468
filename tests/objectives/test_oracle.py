"""Every objective of the registry against the brute-force float64 reference in ``bruteforce.py``.

Loss value and gradient with respect to the logits (float64, 1e-9), the masks exactly, and the metrics, over odd
shapes, ignored tokens in the middle, left and right padding, rows without a valid position, both scopes, both
combines, the KL floor (reference equal to the policy at some positions), ties, ``largest=False`` and both
normalisations. Logits are continuous random draws (seeded by hypothesis), so the only ties are exact ones made on
purpose (copied positions); near-ties whose order would depend on rounding do not occur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eksft.objectives import OBJECTIVES, eksft_loss, objective_loss

from . import bruteforce as bf

TOL = 1e-9  # float64 value and gradient
METRIC_TOL = 1e-6  # some metrics are counts divided in float32
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DETERMINISTIC = [name for name in OBJECTIVES if name != "random_mask"]


@dataclass
class Case:
    logits: torch.Tensor  # [B, T, V] float64
    labels: torch.Tensor  # [B, T] int64, -100 ignored
    ref_logits: torch.Tensor  # [B, T, V] float64
    params: dict
    num_items_in_batch: object  # None, int or 0-dim tensor


rhos = st.one_of(st.sampled_from([0.0, 0.2, 0.5, 0.7, 0.99]), st.floats(0.0, 1.0, exclude_max=True))
lambdas = st.sampled_from([0.0, 0.05, 0.3, 1.7])


@st.composite
def cases(draw) -> Case:
    B = draw(st.integers(1, 4))
    T = draw(st.integers(2, 12))
    V = draw(st.integers(2, 13))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.3, 1.0, 4.0]))
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, V, (B, T), generator=g)

    # layout of each row: full, right padding, left padding, ignored tokens in the middle, nothing valid
    for b in range(B):
        layout = draw(st.sampled_from(["full", "right", "left", "holes", "empty"]))
        if layout == "right":
            labels[b, T - draw(st.integers(1, T - 1)) :] = bf.IGNORE
        elif layout == "left":
            labels[b, : draw(st.integers(1, T - 1))] = bf.IGNORE
        elif layout == "holes":
            labels[b, torch.rand(T, generator=g) < 0.4] = bf.IGNORE
        elif layout == "empty":
            labels[b] = bf.IGNORE
    if bool((labels[:, 1:] == bf.IGNORE).all()):
        labels[0, 1:] = torch.randint(0, V, (T - 1,), generator=g)  # keep at least one valid position

    ref_scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    ref_logits = logits + torch.randn(B, T, V, generator=g, dtype=torch.float64) * ref_scale
    # KL floor: reference equal to the policy (KL exactly 0) or within a hair of it (KL near the floor)
    kl_pattern = draw(st.sampled_from(["none", "some_equal", "all_equal", "near_floor"]))
    at = torch.rand(B, T, generator=g) < 0.4
    if kl_pattern == "some_equal":
        ref_logits[at] = logits[at]
    elif kl_pattern == "all_equal":
        ref_logits = logits.clone()
    elif kl_pattern == "near_floor":
        ref_logits[at] = logits[at] + 2e-3 * torch.randn(int(at.sum()), V, generator=g, dtype=torch.float64)

    # exact ties: copy whole positions (logits, reference and target) onto others
    for _ in range(draw(st.integers(0, 3))):
        src = (draw(st.integers(0, B - 1)), draw(st.integers(0, T - 2)))
        dst = (draw(st.integers(0, B - 1)), draw(st.integers(0, T - 2)))
        logits[dst] = logits[src]
        ref_logits[dst] = ref_logits[src]
        if labels[src[0], src[1] + 1] != bf.IGNORE and labels[dst[0], dst[1] + 1] != bf.IGNORE:
            labels[dst[0], dst[1] + 1] = labels[src[0], src[1] + 1]

    params = {
        "rho": draw(rhos),
        "lambda_entropy": draw(lambdas),
        "lambda_kl": draw(lambdas),
        "combine": draw(st.sampled_from(["union", "intersection"])),
        "scope": draw(st.sampled_from(["batch", "sequence"])),
        "normalize_entropy": draw(st.booleans()),
        "kl_floor": draw(st.sampled_from([0.0, 1e-6, 1e-3])),
        "entropy_largest": draw(st.booleans()),
        "kl_largest": draw(st.booleans()),
        "normalization": draw(st.sampled_from(["mean", "token"])),
        "asft_lambda": draw(st.sampled_from([0.0, 0.05, 0.7])),
        "iw_clip": draw(st.sampled_from([16.0, 1.0, 0.3])),
        "eaft_top_k": draw(st.integers(2, 15)),
        "rho1_ratio": draw(st.one_of(st.sampled_from([0.6, 1.0]), st.floats(0.01, 1.0))),
    }
    n_valid = int((labels[:, 1:] != bf.IGNORE).sum())
    num_items = draw(st.sampled_from(["none", "int", "tensor"]))
    if num_items == "none":
        num_items_in_batch = None
    else:
        # the accumulated batch holds this micro-batch and possibly others
        total = n_valid + draw(st.integers(0, 20))
        num_items_in_batch = total if num_items == "int" else torch.tensor(total)
    return Case(logits, labels, ref_logits, params, num_items_in_batch)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def valid_of(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, 1:] != bf.IGNORE


def assert_close(actual: float, expected: float, tol: float, what: str):
    assert math.isfinite(actual), f"{what}: {actual}"
    assert abs(actual - expected) <= tol * (1 + abs(expected)), (
        f"{what}: library {actual!r} != brute force {expected!r}"
    )


def assert_masks(out, expected: bf.Reference, labels: torch.Tensor, names=("entropy_set", "kl_set", "imitated")):
    valid = valid_of(labels)
    for name in ("entropy_set", "kl_set", "imitated"):
        mask = getattr(out, name)
        assert mask.dtype == torch.bool and mask.shape == valid.shape, f"{name}: {mask.dtype} {tuple(mask.shape)}"
        assert not bool((mask & ~valid).any()), f"{name} contains an ignored position"
    for name in names:
        got, want = getattr(out, name), getattr(expected, name)
        assert torch.equal(got, want), f"{name}:\nlibrary     {got.int().tolist()}\nbrute force {want.int().tolist()}"


def assert_metrics(metrics: dict, expected: bf.Reference, needs_reference: bool):
    for key in ("ce", "entropy_term", "kl_term", "mean_entropy"):
        assert_close(metrics[key], expected.metrics[key], TOL, key)
    for key in ("frac_masked", "frac_entropy_set", "frac_kl_set", "iou"):
        if key in expected.metrics:
            assert_close(metrics[key], expected.metrics[key], METRIC_TOL, key)
    if needs_reference:
        assert_close(metrics["mean_kl"], expected.metrics["mean_kl"], TOL, "mean_kl")
    for key, value in metrics.items():
        assert isinstance(value, float) and math.isfinite(value), f"metric {key} = {value!r}"


def run_library(name: str, case: Case, *, pass_ref: bool):
    x = leaf(case.logits)
    r = leaf(case.ref_logits) if pass_ref else None
    out = objective_loss(name, x, case.labels, r, num_items_in_batch=case.num_items_in_batch, **case.params)
    assert out.loss.dim() == 0 and out.loss.dtype == torch.float64
    out.loss.backward()
    if r is not None:
        # the reference is a constant of the loss
        assert r.grad is None or not bool(r.grad.any()), "gradient reached ref_logits"
    return out, x.grad


def run_reference(name: str, case: Case):
    x = leaf(case.logits)
    expected = bf.reference(
        name, x, case.labels, case.ref_logits, num_items_in_batch=case.num_items_in_batch, **case.params
    )
    if expected.loss.requires_grad:  # an objective with nothing to train on is a constant 0
        expected.loss.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return expected, grad


def test_every_registered_objective_has_a_brute_force():
    assert set(OBJECTIVES) == {
        "nll",
        "eksft",
        "dft",
        "asft",
        "iw_sft",
        "chord_phi",
        "eaft",
        "rho1",
        "entropy_only",
        "kl_only",
        "random_mask",
        "global_reg",
        "mask_only",
    }
    for name, objective in OBJECTIVES.items():
        assert objective.needs_reference == (name in bf.NEEDS_REFERENCE), name


@pytest.mark.parametrize("name", DETERMINISTIC)
@SETTINGS
@given(case=cases(), pass_ref=st.booleans())
def test_objective_matches_brute_force(name: str, case: Case, pass_ref: bool):
    needs_reference = OBJECTIVES[name].needs_reference
    out, grad = run_library(name, case, pass_ref=pass_ref or needs_reference)
    expected, expected_grad = run_reference(name, case)

    assert_masks(out, expected, case.labels)
    assert_close(out.loss.item(), expected.loss.item(), TOL, f"{name} loss")
    torch.testing.assert_close(grad, expected_grad, rtol=TOL, atol=TOL, msg=lambda m: f"{name} gradient: {m}")
    assert_metrics(out.metrics, expected, needs_reference)


@SETTINGS
@given(case=cases())
def test_eksft_loss_entry_point_matches_brute_force(case: Case):
    x, r = leaf(case.logits), leaf(case.ref_logits)
    p = case.params
    out = eksft_loss(
        x,
        case.labels,
        r,
        rho=p["rho"],
        lambda_entropy=p["lambda_entropy"],
        lambda_kl=p["lambda_kl"],
        combine=p["combine"],
        scope=p["scope"],
        normalize_entropy=p["normalize_entropy"],
        kl_floor=p["kl_floor"],
        entropy_largest=p["entropy_largest"],
        kl_largest=p["kl_largest"],
        normalization=p["normalization"],
        num_items_in_batch=case.num_items_in_batch,
    )
    out.loss.backward()
    expected, expected_grad = run_reference("eksft", case)
    assert_masks(out, expected, case.labels)
    assert_close(out.loss.item(), expected.loss.item(), TOL, "eksft_loss")
    torch.testing.assert_close(x.grad, expected_grad, rtol=TOL, atol=TOL)
    assert_metrics(out.metrics, expected, needs_reference=True)
    assert r.grad is None or not bool(r.grad.any())


@SETTINGS
@given(case=cases(), seed=st.integers(0, 2**31 - 1))
def test_random_mask_structure(case: Case, seed: int):
    torch.manual_seed(seed)
    out, grad = run_library("random_mask", case, pass_ref=True)
    expected = bf.reference("random_mask", leaf(case.logits), case.labels, case.ref_logits, **case.params)
    valid = valid_of(case.labels)
    imitated = out.imitated
    assert imitated.dtype == torch.bool and imitated.shape == valid.shape
    masked = valid & ~imitated
    assert not bool((imitated & ~valid).any()), "imitated contains an ignored position"
    # as many masked tokens per scope as EKSFT's union (or intersection) on the same inputs
    assert bf.scope_rows(masked, case.params["scope"]) == expected.masked_per_scope

    x = leaf(case.logits)
    loss = bf.loss_on(
        imitated,
        x,
        case.labels,
        normalization=case.params["normalization"],
        num_items_in_batch=case.num_items_in_batch,
    )
    if loss.requires_grad:
        loss.backward()
    expected_grad = x.grad if x.grad is not None else torch.zeros_like(x)
    assert_close(out.loss.item(), loss.item(), TOL, "random_mask loss")
    torch.testing.assert_close(grad, expected_grad, rtol=TOL, atol=TOL)
    assert_close(out.metrics["frac_masked"], int(masked.sum()) / int(valid.sum()), METRIC_TOL, "frac_masked")
    assert_close(out.metrics["ce"], loss.item(), TOL, "ce")


# ---- a few hand-made cases whose answer is known without the brute force


def _flat_labels(B: int, T: int, V: int) -> torch.Tensor:
    return torch.arange(B * T).reshape(B, T) % V


@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_ties_go_to_the_earlier_position(scope: str):
    # uniform policy everywhere: every entropy is log|V|, so E is the first k valid positions of each scope
    B, T, V = 2, 6, 5
    logits = torch.zeros(B, T, V, dtype=torch.float64)
    ref = logits.clone()
    ref[..., 0] = 1.0  # the same reference everywhere: every KL is equal (and above the floor)
    labels = _flat_labels(B, T, V)
    labels[0, 2] = bf.IGNORE  # position t=1 of row 0 is not valid
    out = eksft_loss(
        logits,
        labels,
        ref,
        rho=0.5,
        lambda_entropy=0.05,
        lambda_kl=0.05,
        combine="union",
        scope=scope,
        normalize_entropy=True,
    )
    valid = valid_of(labels)
    if scope == "batch":  # N = 9, k = 4: the first four valid positions in flattened order
        want = [[True, False, True, True, True], [False] * 5]
    else:  # N = 4 and 5, k = 2 and 2
        want = [[True, False, True, False, False], [True, True, False, False, False]]
    assert out.entropy_set.tolist() == want
    assert out.kl_set.tolist() == want
    assert torch.equal(out.imitated, valid & ~torch.tensor(want))


def test_first_step_kl_set_is_empty():
    # policy == reference: KL is exactly 0 everywhere, nothing may enter the KL set
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    for scope in ("batch", "sequence"):
        for kl_floor in (0.0, 1e-6):
            out = objective_loss("eksft", logits, labels, logits.clone(), rho=0.5, scope=scope, kl_floor=kl_floor)
            assert not bool(out.kl_set.any())
            assert out.metrics["kl_term"] == 0.0
            assert torch.equal(out.imitated, valid_of(labels) & ~out.entropy_set)
            assert int(out.entropy_set.sum()) > 0


def test_count_is_the_float64_floor_of_rho_times_n():
    # 0.7 * 10 rounds to exactly 7.0 in float64 (the exact product of the double 0.7 and 10 is just below 7)
    assert bf.count(0.7, 10) == 7 and bf.count(0.2, 5) == 1 and bf.count(0.99, 50) == 49
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 11, 7, generator=g, dtype=torch.float64)
    ref = torch.randn(1, 11, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (1, 11), generator=g)
    out = objective_loss("eksft", logits, labels, ref, rho=0.7, kl_floor=0.0)
    assert int(out.entropy_set.sum()) == 7 and int(out.kl_set.sum()) == 7


def test_random_mask_is_uniform_over_valid_positions():
    # 10 valid positions (one ignored in the middle), EKSFT masks a fixed number m of them: over many draws every
    # valid position is masked with frequency about m / 10, the ignored one never
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 12, 6, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(1, 12, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (1, 12), generator=g)
    labels[0, 5] = bf.IGNORE
    valid = valid_of(labels)
    masked_by_eksft = int((valid & ~objective_loss("eksft", logits, labels, ref_logits, rho=0.2).imitated).sum())
    assert 2 <= masked_by_eksft <= 4
    torch.manual_seed(0)
    draws = 400
    frequency = torch.zeros(valid.shape, dtype=torch.float64)
    for _ in range(draws):
        out = objective_loss("random_mask", logits, labels, ref_logits, rho=0.2)
        masked = valid & ~out.imitated
        assert int(masked.sum()) == masked_by_eksft
        frequency += masked
    frequency /= draws
    assert not bool(frequency[~valid].any())
    expected = masked_by_eksft / int(valid.sum())
    assert float((frequency[valid] - expected).abs().max()) < 0.15, frequency.tolist()
