"""Sampling in the Hugging Face backend: each sample depends only on its own seed, with the usual temperature and
top-p semantics, so a resumed evaluation draws what an uninterrupted one would have drawn."""

import pytest
import torch
from transformers import AutoTokenizer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from eksft.evaluation.generation import HFGenerator, PerSampleSampler, SamplingSettings


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFGenerator(tiny_model_dir, tokenizer, SamplingSettings(1.0, 0.9, 10), device="cpu")


PROMPTS = [f"Question: what is {i} + {3 * i}? " * (1 + i % 3) for i in range(6)]  # lengths differ: padding differs
SEEDS = [101, 202, 303, 404, 505, 606]


def test_a_sample_does_not_depend_on_its_batch(generator):
    together = generator.generate(PROMPTS, SEEDS)
    alone = [generator.generate([p], [s])[0] for p, s in zip(PROMPTS, SEEDS, strict=True)]
    reordered = generator.generate(PROMPTS[::-1], SEEDS[::-1])[::-1]
    assert together == alone == reordered
    assert len(set(together)) > 1
    assert generator.generate(PROMPTS[:1], [7]) != generator.generate(PROMPTS[:1], [8])  # the seed matters


def test_draws_follow_temperature_and_top_p():
    """Frequencies of 4000 one-row draws match transformers' own temperature + top-p warpers."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    n = 4000
    sampler = PerSampleSampler(list(range(n)), temperature=0.7, top_p=0.8)
    picked = sampler(None, logits.expand(n, -1).clone()).argmax(-1)
    expected = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())).softmax(-1)[0]
    observed = torch.bincount(picked, minlength=6).double() / n
    assert (observed[expected == 0] == 0).all()  # nothing outside the nucleus
    assert torch.allclose(observed, expected.double(), atol=0.03), (observed, expected)


def test_temperature_zero_is_greedy(generator):
    greedy = HFGenerator.__new__(HFGenerator)
    greedy.__dict__.update(generator.__dict__, settings=SamplingSettings(0.0, 1.0, 10))
    assert greedy.generate(PROMPTS[:2], [1, 2]) == greedy.generate(PROMPTS[:2], [3, 4])
