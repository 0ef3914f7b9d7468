"""Distribution shift: KL(model || base) is 0 for identical models, positive otherwise, and equals a direct
per-text computation (so padding in batches is ignored)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eksft.analysis.shift import distribution_shift, token_values
from eksft.demo.world import Task, format_document
from eksft.errors import UserError


@pytest.fixture(scope="module")
def models(base_dir, perturbed_dir):
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    perturbed = AutoModelForCausalLM.from_pretrained(perturbed_dir[0]).eval()
    return base, perturbed, AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="module")
def texts():
    # different lengths, so a batch needs padding
    styles = ["stepwise", "verbose", "regrouped", "stepwise", "verbose"]
    return [format_document(p, style) for p, style in zip(Task(0).problems("test", 5), styles, strict=True)]


@torch.no_grad()
def direct(model, base, tokenizer, texts):
    """Mean KL(model || base) and entropies, one unpadded text at a time, from the definitions."""
    kl_sum = h_sum = h0_sum = 0.0
    count = 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        log_p = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)  # [L-1, V]
        log_q = torch.log_softmax(base(ids).logits[0, :-1].double(), -1)
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum())
        h_sum += float(-(log_p.exp() * log_p).sum())
        h0_sum += float(-(log_q.exp() * log_q).sum())
        count += ids.shape[1] - 1
    return kl_sum / count, h_sum / count, h0_sum / count, count


def test_identical_models_have_zero_kl(models, texts):
    base, _, tokenizer = models
    report = distribution_shift(base, base, tokenizer, texts, batch_size=2, progress=False)
    assert report.mean_kl == pytest.approx(0.0, abs=1e-6)
    assert report.mean_entropy == pytest.approx(report.base_mean_entropy, abs=1e-9)
    assert report.num_texts == len(texts)


def test_matches_a_direct_computation(models, texts):
    base, perturbed, tokenizer = models
    kl, entropy, base_entropy, count = direct(perturbed, base, tokenizer, texts)
    report = distribution_shift(perturbed, base, tokenizer, texts, batch_size=3, progress=False)
    assert report.mean_kl > 1e-4
    assert report.num_tokens == count
    assert report.mean_kl == pytest.approx(kl, rel=1e-4)
    assert report.mean_entropy == pytest.approx(entropy, rel=1e-5)
    assert report.base_mean_entropy == pytest.approx(base_entropy, rel=1e-5)


def test_token_values_and_truncation(models, texts):
    base, perturbed, tokenizer = models
    values = token_values(perturbed, base, tokenizer, texts, batch_size=2, progress=False)
    report = distribution_shift(perturbed, base, tokenizer, texts, batch_size=5, progress=False)
    assert values.kl.shape == values.entropy.shape == values.base_entropy.shape == (report.num_tokens,)
    assert values.kl.mean() == pytest.approx(report.mean_kl, rel=1e-6)
    assert (values.kl >= -1e-6).all()
    short = distribution_shift(perturbed, base, tokenizer, texts, batch_size=2, max_length=8, progress=False)
    assert short.num_tokens == 7 * len(texts)


def test_bad_input(models):
    base, perturbed, tokenizer = models
    with pytest.raises(UserError, match="no held-out texts"):
        distribution_shift(perturbed, base, tokenizer, [], progress=False)
    with pytest.raises(UserError, match="non-empty string"):
        distribution_shift(perturbed, base, tokenizer, ["ok", ""], progress=False)
    with pytest.raises(UserError, match="max_length"):
        distribution_shift(perturbed, base, tokenizer, ["ok"], max_length=1, progress=False)
