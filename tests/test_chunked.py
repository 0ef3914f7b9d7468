"""The chunked statistics (hidden states + LM head) against the materialised oracle (full logits), Liger style.

Two paths share every weight: ``token_stats(softcap(scale * (hidden @ W.T + b)), labels, ref_logits)`` and
``chunked_token_stats(hidden, labels, LMHead(W, b, scale, softcap), ...)``. On odd shapes, with ignored tokens in
the middle and padding, tied and untied heads, bias, scale and soft-capping, and tiles shrunk so that many token and
vocabulary tiles are crossed, every TokenStats field and, for every objective, the loss, every metric, the masks
and the gradients of the hidden states, the LM-head weight and bias must agree: float64 to 1e-9, float32 to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

import eksft.chunked as chunked
from eksft.chunked import chunked_token_stats
from eksft.heads import LMHead, hidden_states, lm_head_of
from eksft.objectives import OBJECTIVES, ObjectiveParams, compute_objective
from eksft.stats import IGNORE_INDEX, token_stats

TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
# tiles of 16 tokens x 32 vocabulary entries for backend="torch" (small_tiles shrinks TRL's kernels alike): many
# tiles on tiny shapes
TILES = dict(token_tile=16, vocab_tile=32)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """TRL's kernels in tiles of 16 tokens x 32 vocabulary entries, like TILES: many tiles on tiny shapes."""
    import trl.kernels.chunked_divergence as trl_divergence
    import trl.kernels.chunked_logprob as trl_logprob

    monkeypatch.setattr(chunked, "TRL_VOCAB_CHUNK", 32)
    monkeypatch.setattr(trl_logprob, "TOKEN_CHUNK_SIZE", 16)
    monkeypatch.setattr(trl_divergence, "TOKEN_CHUNK_SIZE", 16)
    monkeypatch.setattr(trl_divergence, "VOCAB_CHUNK_SIZE", 32)


# name: (B, T, H, V, tied, bias, logit_scale, softcap)
CASES = {
    "odd": (3, 47, 31, 123, False, False, 1.0, None),
    "tied_bias": (3, 47, 31, 123, True, True, 1.0, None),
    "scale_softcap_bias": (2, 33, 16, 200, False, True, 0.7, 5.0),
    "tied_scale_softcap": (4, 19, 8, 67, True, False, 1.3, 2.0),
}
# (dtype, backend): TRL's kernels compute in float32 whatever the input, so they are held to float32 only
PATHS = [(torch.float64, "torch"), (torch.float32, "torch"), (torch.float32, "trl")]


class Problem:
    """Policy and reference sharing weights between the two paths; ``hidden`` comes from an embedding lookup
    (through the head's own weight when tied), so that a tied weight's gradient has both contributions."""

    def __init__(self, case: str, dtype: torch.dtype, seed: int = 0):
        B, T, H, V, self.tied, has_bias, self.scale, self.softcap = CASES[case]
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape, std=1.0):
            return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)

        self.input_ids = torch.randint(0, V, (B, T), generator=gen)
        self.weight = randn(V, H, std=0.5).requires_grad_()
        self.bias = randn(V, std=0.2).requires_grad_() if has_bias else None
        self.embedding = self.weight if self.tied else randn(V, H).requires_grad_()
        self.mix = randn(H, H, std=H**-0.5)
        self.ref_weight = self.weight.detach() + randn(V, H, std=0.15)  # the reference has drifted a little
        self.ref_bias = self.bias.detach() + randn(V, std=0.05) if has_bias else None
        self.offset = randn(B, T, H, std=0.3)
        self.ref_hidden = self.hidden().detach() + randn(B, T, H, std=0.05)

        labels = self.input_ids.clone()
        labels[:, :4] = IGNORE_INDEX  # prompt
        labels[0, 17:22] = IGNORE_INDEX  # ignored tokens in the middle
        labels[-1, T - 6 :] = IGNORE_INDEX  # padding
        if B >= 4:
            labels[1] = IGNORE_INDEX  # a sequence with nothing to train on
        self.labels = labels

    def hidden(self) -> torch.Tensor:
        # [B, T, H], a function of the embedding; the per-position offset keeps repeated tokens from having exactly
        # equal statistics (ties in the top-rho selection would be broken by rounding, differently in each path)
        return torch.tanh(self.embedding[self.input_ids] @ self.mix + self.offset)

    def logits(self, hidden, weight, bias) -> torch.Tensor:
        z = torch.nn.functional.linear(hidden, weight, bias) * self.scale
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    def head(self) -> LMHead:
        return LMHead(self.weight, self.bias, self.scale, self.softcap)

    def ref_head(self) -> LMHead:
        return LMHead(self.ref_weight, self.ref_bias, self.scale, self.softcap)

    def params(self) -> dict[str, torch.Tensor]:
        """The leaves gradients are compared on (a tied weight is the embedding too)."""
        params = {"weight": self.weight, "bias": self.bias, "embedding": None if self.tied else self.embedding}
        return {name: p for name, p in params.items() if p is not None}

    def stats(self, path: str, backend: str = "torch", *, top_k: int | None = 5, with_ref: bool = True):
        hidden = self.hidden()
        if path == "materialised":
            ref_logits = self.logits(self.ref_hidden, self.ref_weight, self.ref_bias) if with_ref else None
            stats = token_stats(
                self.logits(hidden, self.weight, self.bias), self.labels, ref_logits, top_k_entropy=top_k
            )
        else:
            ref_hidden, ref_head = (self.ref_hidden, self.ref_head()) if with_ref else (None, None)
            stats = chunked_token_stats(
                hidden, self.labels, self.head(), ref_hidden, ref_head, top_k_entropy=top_k, backend=backend, **TILES
            )
        return stats, hidden


def assert_close(actual, expected, tol, what):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("dtype", "backend"), PATHS)
def test_token_stats_match(case, dtype, backend):
    problem = Problem(case, dtype)
    expected, _ = problem.stats("materialised")
    actual, _ = problem.stats("chunked", backend)
    assert torch.equal(actual.valid, expected.valid)
    assert actual.vocab_size == expected.vocab_size
    for field in ("logp", "entropy", "kl", "ref_logp", "top_k_entropy"):
        value = getattr(actual, field)
        assert value.dtype == dtype and value.shape == expected.valid.shape, field
        assert_close(value, getattr(expected, field), TOL[dtype], field)
        assert bool((value[~actual.valid] == 0).all()), f"{field} is not exactly 0 at invalid positions"
    for stats in (expected, actual):  # constants in both paths (eksft.stats.TokenStats): no gradient through them
        assert stats.ref_logp.grad_fn is None and stats.top_k_entropy.grad_fn is None
        assert not stats.ref_logp.requires_grad and not stats.top_k_entropy.requires_grad


def set_targets_to_the_argmax(problem: Problem) -> torch.Tensor:
    """Every other valid target becomes the policy's argmax (random targets almost never are), in place; returns
    those positions ([B, T-1] bool). Asserts that no target logit is within 1e-4 of the largest other logit, so the
    two paths' rounding (1e-5 at most) cannot flip is_top1 and exact equality is the right test."""
    with torch.no_grad():
        logits = problem.logits(problem.hidden(), problem.weight, problem.bias)[:, :-1]  # [B, T-1, V]
    targets = problem.labels[:, 1:]  # a view: writing it changes the labels
    valid = targets != IGNORE_INDEX
    picked = valid.clone()
    picked[valid] = torch.arange(int(valid.sum())) % 2 == 0
    targets[picked] = logits.argmax(-1)[picked]
    index = targets.clamp(min=0).unsqueeze(-1)
    best_other = logits.scatter(-1, index, -math.inf).amax(-1)
    margin = (logits.gather(-1, index).squeeze(-1) - best_other).abs()
    assert float(margin[valid].min()) > 1e-4, "a near-tie in the test data: is_top1 would depend on rounding"
    assert targets[picked].div(TILES["vocab_tile"], rounding_mode="floor").unique().numel() > 1  # several tiles
    return picked


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("dtype", "backend"), PATHS)
def test_is_top1_matches(case, dtype, backend):
    """Whether the target is the policy's top-1 token (TRL's mean_token_accuracy): the chunked paths' running
    argmax over the vocabulary tiles equals the oracle's argmax exactly; False at invalid positions; no gradient."""
    problem = Problem(case, dtype)
    picked = set_targets_to_the_argmax(problem)
    expected, _ = problem.stats("materialised")
    actual, _ = problem.stats("chunked", backend)
    for stats in (expected, actual):
        assert stats.is_top1.dtype == torch.bool and stats.is_top1.shape == stats.valid.shape
        assert not stats.is_top1.requires_grad
        assert not bool(stats.is_top1[~stats.valid].any()), "is_top1 is not False at invalid positions"
    assert bool(expected.is_top1[picked].all())
    assert 0 < int(expected.is_top1.sum()) < expected.num_valid  # both outcomes occur
    assert torch.equal(actual.is_top1, expected.is_top1)


def test_token_stats_is_top1_by_hand():
    """A clear winner at each position, targets that are and are not it, ignored targets, and an exact tie, which
    argmax gives to the first index (a target tied with an earlier token is not top-1)."""
    logits = torch.tensor(
        [
            [
                [0.1, 5.0, 0.2, 0.3],  # predicts labels[1] = 1: the winner
                [4.0, 0.0, 1.0, 2.0],  # predicts labels[2] = 3: the winner is 0
                [0.0, 0.0, 0.0, 9.0],  # labels[3] is ignored (its target would be the winner)
                [2.0, 7.0, 7.0, 1.0],  # predicts labels[4] = 1: tied with 2, first
                [2.0, 7.0, 7.0, 1.0],  # predicts labels[5] = 2: tied with 1, second
                [0.0, 0.0, 0.0, 0.0],  # predicts nothing
            ]
        ],
        requires_grad=True,
    )
    labels = torch.tensor([[IGNORE_INDEX, 1, 3, IGNORE_INDEX, 1, 2]])
    stats = token_stats(logits, labels)
    assert stats.is_top1.dtype == torch.bool and not stats.is_top1.requires_grad
    assert stats.is_top1.tolist() == [[True, False, False, True, False]]


@pytest.mark.parametrize(("dtype", "backend"), [(None, "materialised"), *PATHS])
def test_is_top1_breaks_exact_ties_like_argmax(dtype, backend):
    """Exact ties, across two vocabulary tiles (5 and 40) and within one (50 and 60): the first index is top-1, the
    second is not, in every path. The logits are exact (a one-hot hidden state picks a column of the weight)."""
    dtype = dtype or torch.float64
    V = 70  # three tiles of 32
    weight = torch.linspace(-1.0, 1.0, 2 * V, dtype=dtype).reshape(V, 2)
    weight[[5, 40], 0] = 3.0
    weight[[50, 60], 1] = 3.0
    # position t predicts labels[t + 1]: column 0 (tie 5 / 40) twice, column 1 (tie 50 / 60) twice
    hidden = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], dtype=dtype).unsqueeze(0)  # [1, 5, 2]
    labels = torch.tensor([[IGNORE_INDEX, 5, 40, 50, 60]])
    if backend == "materialised":
        stats = token_stats(hidden @ weight.T, labels)
    else:
        stats = chunked_token_stats(hidden, labels, LMHead(weight), backend=backend, **TILES)
    assert stats.is_top1.tolist() == [[True, False, True, False]]


PARAMS = {
    "defaults": ObjectiveParams(eaft_top_k=5),
    "sequence_intersection_token": ObjectiveParams(
        eaft_top_k=5, rho=0.3, scope="sequence", combine="intersection", normalization="token", normalize_entropy=False
    ),
}


@pytest.mark.parametrize("params", list(PARAMS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("dtype", "backend"), PATHS)
def test_every_objective_matches(case, dtype, backend, params):
    tol = TOL[dtype]
    problem = Problem(case, dtype)
    params = PARAMS[params]
    for name, objective in OBJECTIVES.items():
        results = {}
        for path in ("materialised", "chunked"):
            stats, hidden = problem.stats(
                path, backend, top_k=params.eaft_top_k if objective.top_k_entropy else None,
                with_ref=objective.needs_reference,
            )  # fmt: skip
            torch.manual_seed(1)  # random_mask draws from torch's RNG
            out = compute_objective(name, stats, params)
            grads = torch.autograd.grad(out.loss, [hidden, *problem.params().values()])
            results[path] = out, grads
        (expected, expected_grads), (actual, actual_grads) = results["materialised"], results["chunked"]
        assert_close(actual.loss, expected.loss, tol, f"{name} loss")
        for mask in ("entropy_set", "kl_set", "imitated"):
            assert torch.equal(getattr(actual, mask), getattr(expected, mask)), f"{name} {mask}"
        assert actual.metrics.keys() == expected.metrics.keys(), name
        for key, value in expected.metrics.items():
            assert math.isclose(actual.metrics[key], value, rel_tol=tol, abs_tol=tol), f"{name} metric {key}"
        names = ["hidden", *problem.params()]
        for what, a, e in zip(names, actual_grads, expected_grads, strict=True):
            assert_close(a, e, tol, f"{name} grad of {what}")


@pytest.mark.parametrize("backend", ["torch", "trl"])
def test_no_valid_position_gives_zeros_attached_to_the_graph(backend):
    problem = Problem("odd", torch.float32)
    problem.labels[:] = IGNORE_INDEX
    stats, hidden = problem.stats("chunked", backend)
    assert stats.num_valid == 0
    for field in ("logp", "entropy", "kl", "ref_logp", "top_k_entropy", "is_top1"):
        assert bool((getattr(stats, field) == 0).all()), field
    out = compute_objective("eksft", stats)
    assert out.loss.item() == 0.0
    grads = torch.autograd.grad(out.loss, [hidden, problem.weight])
    assert all(bool((g == 0).all()) for g in grads)


@pytest.mark.parametrize("backend", ["torch", "trl"])
@pytest.mark.parametrize("where", ["hidden", "ref_hidden"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_hidden_state_raises_at_a_trained_position_only(backend, where, value):
    problem = Problem("odd", torch.float32)
    labels = problem.labels  # labels[:, :4] are the prompt: position 1 predicts labels[:, 2], ignored
    for position, trained in ((1, False), (-1, False), (10, True)):  # the last position predicts nothing
        tensors = {"hidden": problem.hidden().detach(), "ref_hidden": problem.ref_hidden.clone()}
        tensors[where][0, position] = value

        def run(check: bool, tensors=tensors):
            return chunked_token_stats(tensors["hidden"], labels, problem.head(), tensors["ref_hidden"],
                                       problem.ref_head(), backend=backend, check_finite=check, **TILES)  # fmt: skip

        if trained:
            with pytest.raises(ValueError, match=r"^chunked (logp|entropy|kl) contains NaN or inf"):
                run(True)
            assert not bool(torch.isfinite(run(False).kl).all())  # unchecked: the trainer's NaN guard sees it
        else:
            stats = run(True)
            assert all(bool(torch.isfinite(getattr(stats, f)).all()) for f in ("logp", "entropy", "kl")), position


# policy case, the reference head's own (logit_scale, softcap): a reference from another model sharing the vocabulary
REFERENCE_TRANSFORMS = {
    "policy_scaled_and_capped": ("scale_softcap_bias", 1.6, 3.0),
    "policy_plain_reference_capped": ("odd", 1.3, 2.0),
}


@pytest.mark.parametrize("transforms", list(REFERENCE_TRANSFORMS))
@pytest.mark.parametrize(("dtype", "backend"), PATHS)
def test_reference_head_with_its_own_scale_and_softcap(transforms, dtype, backend):
    """The reference's logits are ``softcap_ref(scale_ref * (h_ref @ W_ref.T + b_ref))`` with the reference head's own
    scale and cap, not the policy's: KL, ref_logp and the KL's gradient against the materialised oracle."""
    case, ref_scale, ref_softcap = REFERENCE_TRANSFORMS[transforms]
    problem = Problem(case, dtype)
    hidden = problem.hidden()
    z_ref = torch.nn.functional.linear(problem.ref_hidden, problem.ref_weight, problem.ref_bias) * ref_scale
    ref_logits = ref_softcap * torch.tanh(z_ref / ref_softcap)
    ref_head = LMHead(problem.ref_weight, problem.ref_bias, ref_scale, ref_softcap)
    expected = token_stats(problem.logits(hidden, problem.weight, problem.bias), problem.labels, ref_logits)
    actual = chunked_token_stats(
        hidden, problem.labels, problem.head(), problem.ref_hidden, ref_head, backend=backend, **TILES
    )
    for field in ("kl", "ref_logp", "logp", "entropy"):
        assert_close(getattr(actual, field), getattr(expected, field), TOL[dtype], field)
    leaves = [problem.weight, *([problem.bias] if problem.bias is not None else [])]
    grads = [torch.autograd.grad(stats.kl.sum(), leaves) for stats in (expected, actual)]
    for name, e, a in zip(("weight", "bias"), *grads, strict=False):
        assert_close(a, e, TOL[dtype], f"grad of kl wrt {name}")


def test_reference_equal_to_policy_gives_exactly_zero_kl():
    problem = Problem("scale_softcap_bias", torch.float32)
    hidden = problem.hidden()
    stats = chunked_token_stats(
        hidden, problem.labels, problem.head(), hidden.detach(), problem.head(), backend="torch", **TILES
    )
    assert bool((stats.kl == 0).all())  # so the KL floor excludes every position at the first step


def test_only_valid_positions_are_projected_in_tiles(monkeypatch):
    problem = Problem("odd", torch.float32)
    shapes = []
    project = chunked._logits

    def spy(h, *args):
        z = project(h, *args)
        shapes.append(tuple(z.shape))
        return z

    monkeypatch.setattr(chunked, "_logits", spy)
    stats, hidden = problem.stats("chunked", "torch", top_k=None)
    forward = list(shapes)
    compute_objective("eksft", stats).loss.backward()
    n_valid, vocab = stats.num_valid, problem.weight.shape[0]
    assert (
        max(rows for rows, _ in shapes) <= TILES["token_tile"]
        and max(cols for _, cols in shapes) <= TILES["vocab_tile"]
    )
    # forward: every vocabulary tile of every token tile, for the policy and the reference
    assert sum(rows * cols for rows, cols in forward) == 2 * n_valid * vocab
    assert n_valid < problem.labels[:, 1:].numel()


def test_bf16_autocast_on_cpu_is_close():
    """bf16 projections (as under autocast) accumulated in float32; both paths round the logits to bf16."""
    problem = Problem("odd", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = problem.stats("materialised")
        actual, _ = problem.stats("chunked", "torch")
    assert actual.logp.dtype == torch.float32
    for field in ("logp", "entropy", "kl", "ref_logp"):
        assert_close(getattr(actual, field), getattr(expected, field), 5e-2, field)


def test_backward_outside_autocast_recomputes_in_the_forward_precision():
    """Forward under autocast (bf16 projections of float32 hidden states), backward outside it, as in training: the
    backward must project in bf16 again, or its probabilities do not sum to 1 with the forward's normaliser. The
    bias gradient of sum(logp) is sum_t (onehot_t - p_t), whose entries add up to 0 when they do (4e-6 here; 5e-3
    when the backward projects in float32). Not for backend="trl", which rounds its gradient tiles to bf16."""
    problem = Problem("tied_bias", torch.float32)
    hidden = problem.hidden()  # float32, as a float32 model's final norm returns under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = chunked_token_stats(hidden, problem.labels, problem.head(), backend="torch", **TILES)
    stats.logp.sum().backward()
    assert abs(problem.bias.grad.sum().item()) < 1e-4


def test_backend_is_checked():
    problem = Problem("odd", torch.float32)
    with pytest.raises(ValueError, match="backend"):
        chunked_token_stats(problem.hidden(), problem.labels, problem.head(), backend="triton", **TILES)
    with pytest.raises(ValueError, match="token_tile and vocab_tile must be >= 1, got 0 and 32"):
        chunked_token_stats(problem.hidden(), problem.labels, problem.head(), token_tile=0, vocab_tile=32)


def test_the_default_tiles_give_the_small_tiles_values():
    problem = Problem("odd", torch.float64)
    hidden = problem.hidden()
    small = chunked_token_stats(hidden, problem.labels, problem.head(), problem.ref_hidden, problem.ref_head(),
                                top_k_entropy=5, backend="torch", **TILES)  # fmt: skip
    default = chunked_token_stats(hidden, problem.labels, problem.head(), problem.ref_hidden, problem.ref_head(),
                                  top_k_entropy=5, backend="torch")  # fmt: skip
    for name in ("logp", "entropy", "kl", "ref_logp", "top_k_entropy"):
        assert_close(getattr(default, name), getattr(small, name), 1e-12, name)


# --------------------------------------------------------------------------------------------------------------------
# Real models: hidden_states + lm_head_of reproduce model(...).logits


def tiny_qwen3(tied: bool, dtype=torch.float64, seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=tied,
    )  # fmt: skip
    return Qwen3ForCausalLM(config).to(dtype)


def batch(vocab=97, B=2, T=23, seed=0):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (B, T), generator=gen)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, -5:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[:, :6] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


@pytest.mark.parametrize("tied", [False, True])
def test_qwen3_hidden_states_and_head_reproduce_logits(tied):
    model = tiny_qwen3(tied)
    reference = tiny_qwen3(tied, seed=1)
    inputs, labels = batch()
    logits = model(**inputs).logits
    hidden = hidden_states(model, **inputs, labels=labels)  # loss-only keys are ignored
    head = lm_head_of(model)
    assert head.weight is model.get_output_embeddings().weight
    assert (head.weight is model.get_input_embeddings().weight) == tied
    torch.testing.assert_close(hidden @ head.weight.T, logits, rtol=1e-12, atol=1e-12)

    results = []
    for path in ("materialised", "chunked"):
        model.zero_grad()
        if path == "materialised":
            stats = token_stats(model(**inputs).logits, labels, reference(**inputs).logits.detach())
        else:
            with torch.no_grad():
                ref_hidden = hidden_states(reference, **inputs)
            stats = chunked_token_stats(
                hidden_states(model, **inputs), labels, lm_head_of(model), ref_hidden, lm_head_of(reference), **TILES
            )
        out = compute_objective("eksft", stats)
        out.loss.backward()
        results.append((stats, out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (expected, expected_loss, expected_grads), (actual, actual_loss, actual_grads) = results
    for field in ("logp", "entropy", "kl", "ref_logp"):
        assert_close(getattr(actual, field), getattr(expected, field), 1e-9, field)
    assert torch.equal(actual.is_top1, expected.is_top1)
    assert_close(actual_loss, expected_loss, 1e-9, "loss")
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, 1e-9, f"grad of {name}")


def test_peft_lora_policy_and_disabled_adapter_reference():
    import peft

    model = tiny_qwen3(tied=False)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = peft.get_peft_model(model, config).to(torch.float64)
    inputs, labels = batch()
    head = lm_head_of(model)
    assert not head.weight.requires_grad  # LoRA: the head is frozen

    results = []
    for path in ("materialised", "chunked"):
        model.zero_grad()
        if path == "materialised":
            with torch.no_grad(), model.disable_adapter():
                ref_logits = model(**inputs).logits
            stats = token_stats(model(**inputs).logits, labels, ref_logits)
        else:
            with torch.no_grad(), model.disable_adapter():
                ref_hidden = hidden_states(model, **inputs)
                ref_head = lm_head_of(model)
            stats = chunked_token_stats(hidden_states(model, **inputs), labels, head, ref_hidden, ref_head, **TILES)
        assert bool((stats.kl[stats.valid] > 1e-6).any())  # the adapters moved the policy away from the reference
        out = compute_objective("eksft", stats)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert grads and all("lora_" in n for n in grads)
        results.append((out.loss.detach(), grads))
    (expected_loss, expected_grads), (actual_loss, actual_grads) = results
    assert_close(actual_loss, expected_loss, 1e-9, "loss")
    for name, grad in expected_grads.items():
        assert_close(actual_grads[name], grad, 1e-9, f"grad of {name}")


def test_lora_on_the_head_is_refused_while_active():
    import peft

    model = peft.get_peft_model(tiny_qwen3(tied=False), peft.LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="materialised"):
        lm_head_of(model)
    with model.disable_adapter():
        assert lm_head_of(model).weight is model.get_base_model().lm_head.base_layer.weight


def test_lm_head_of_reads_scale_and_softcap_like_trl():
    model = tiny_qwen3(tied=False)
    assert (lm_head_of(model).logit_scale, lm_head_of(model).softcap) == (1.0, None)
    model.config.final_logit_softcapping = 30.0
    model.config.logit_scale = 0.25
    head = lm_head_of(model)
    assert (head.logit_scale, head.softcap, head.bias) == (0.25, 30.0, None)
    model.config.logit_scale = None
    model.config.logits_scaling = 8.0  # Granite divides by it
    assert lm_head_of(model).logit_scale == 1 / 8


def test_fsdp2_dtensor_head_is_gathered(tmp_path):
    """A DTensor head (FSDP2) is gathered with full_tensor(); gradients flow back to the DTensor (1 process)."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        problem = Problem("odd", torch.float64)
        mesh = init_device_mesh("cpu", (1,))
        weight = distribute_tensor(problem.weight.detach(), mesh, [Shard(0)]).requires_grad_()
        hidden = problem.hidden().detach().requires_grad_()
        stats = chunked_token_stats(
            hidden, problem.labels, LMHead(weight), problem.ref_hidden, problem.ref_head(), **TILES
        )
        compute_objective("eksft", stats).loss.backward()
        expected = token_stats(hidden @ problem.weight.T, problem.labels, problem.ref_hidden @ problem.ref_weight.T)
        assert_close(stats.kl, expected.kl, 1e-9, "kl")
        assert type(weight.grad).__name__ == "DTensor" and weight.grad.full_tensor().abs().sum() > 0
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------------------
# GPU (run by benchmarks/gpu_check.sh)

BF16_TOL = 2e-2  # bf16 logits differ by one rounding (different GEMM tilings); stats and grads agree to this


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "trl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_chunked_matches_materialised(backend, dtype, monkeypatch):
    """On CUDA (Triton kernels for backend="trl"), real tile sizes, a 32k vocabulary: bf16 within BF16_TOL, float32
    within 1e-4 (TF32 off)."""
    for module, name, value in [
        (chunked, "TRL_VOCAB_CHUNK", 32768),
    ]:
        monkeypatch.setattr(module, name, value)
    import trl.kernels.chunked_divergence as trl_divergence
    import trl.kernels.chunked_logprob as trl_logprob

    monkeypatch.setattr(trl_logprob, "TOKEN_CHUNK_SIZE", 4096)
    monkeypatch.setattr(trl_divergence, "TOKEN_CHUNK_SIZE", 4096)
    monkeypatch.setattr(trl_divergence, "VOCAB_CHUNK_SIZE", 32768)
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, V = 2, 3000, 256, 32_000
    hidden = (torch.randn(B, T, H, device="cuda", generator=gen) * 2).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device="cuda", generator=gen) * H**-0.5).to(dtype).requires_grad_()
    ref_hidden = (hidden.detach().float() + 0.3 * torch.randn(B, T, H, device="cuda", generator=gen)).to(dtype)
    ref_weight = weight.detach()
    labels = torch.randint(0, V, (B, T), device="cuda", generator=gen)
    labels[:, :100] = IGNORE_INDEX
    tol = BF16_TOL if dtype == torch.bfloat16 else 1e-4

    results = []
    for path in ("materialised", "chunked"):
        if path == "materialised":
            stats = token_stats(hidden @ weight.T, labels, ref_hidden @ ref_weight.T, top_k_entropy=20)
        else:
            stats = chunked_token_stats(
                hidden, labels, LMHead(weight), ref_hidden, LMHead(ref_weight), top_k_entropy=20, backend=backend
            )
        out = compute_objective("global_reg", stats)  # nll, entropy and KL on every token: every gradient term
        results.append((stats, out.loss, torch.autograd.grad(out.loss, [hidden, weight])))
    (expected, expected_loss, expected_grads), (actual, actual_loss, actual_grads) = results
    for field in ("logp", "entropy", "kl", "ref_logp", "top_k_entropy"):
        assert_close(getattr(actual, field), getattr(expected, field), tol, field)
    assert_close(actual_loss, expected_loss, tol, "loss")
    for what, a, e in zip(("hidden", "weight"), actual_grads, expected_grads, strict=True):
        scale = e.float().abs().max()
        assert_close(a.float() / scale, e.float() / scale, tol, f"grad of {what} (relative to its largest entry)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "trl"])
def test_cuda_chunked_matches_materialised_under_bf16_autocast(backend):
    """float32 weights and hidden states under ``torch.autocast("cuda", bfloat16)``, as the Trainer runs with
    ``bf16=True``: the chunked path projects in bf16 like the materialised one (and the GEMMs' output is float32
    in both), so both agree within BF16_TOL; ``_compute_dtype`` follows the autocast region."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    B, T, H, V = 2, 1500, 256, 32_000
    hidden = (torch.randn(B, T, H, device="cuda", generator=gen) * 2).requires_grad_()
    weight = (torch.randn(V, H, device="cuda", generator=gen) * H**-0.5).requires_grad_()
    ref_hidden = hidden.detach() + 0.3 * torch.randn(B, T, H, device="cuda", generator=gen)
    labels = torch.randint(0, V, (B, T), device="cuda", generator=gen)
    labels[:, :100] = IGNORE_INDEX

    results = []
    for path in ("materialised", "chunked"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if path == "materialised":
                logits = hidden @ weight.T
                assert logits.dtype == torch.bfloat16
                stats = token_stats(logits.float(), labels, (ref_hidden @ weight.detach().T).float())
            else:
                stats = chunked_token_stats(
                    hidden, labels, LMHead(weight), ref_hidden, LMHead(weight.detach()), backend=backend
                )
            out = compute_objective("global_reg", stats)
        results.append((stats, out.loss, torch.autograd.grad(out.loss, [hidden, weight])))
    (expected, expected_loss, expected_grads), (actual, actual_loss, actual_grads) = results
    for field in ("logp", "entropy", "kl"):
        assert_close(getattr(actual, field), getattr(expected, field), BF16_TOL, field)
    assert_close(actual_loss, expected_loss, BF16_TOL, "loss")
    for what, a, e in zip(("hidden", "weight"), actual_grads, expected_grads, strict=True):
        scale = e.float().abs().max()
        assert_close(a.float() / scale, e.float() / scale, BF16_TOL, f"grad of {what} (relative to its largest entry)")
