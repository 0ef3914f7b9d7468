"""Tiny offline models shared by the analysis tests: a base, the base with one layer perturbed, and a helper to
write the trainer's ``token_stats.jsonl``."""

import json
import shutil

import pytest
import torch

PERTURBED_LAYER = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="package")
def base_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen3 model + tokenizer (2 layers, tied embeddings)."""
    from eksft.tiny_model import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "base"
    build_tiny_model(path, progress=False, seed=0)
    return path


def copy_tokenizer(source, target):
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)


@pytest.fixture(scope="package")
def perturbed_dir(base_dir, tmp_path_factory):
    """The base with a known random perturbation added to every parameter of one layer; returns (dir, deltas)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    generator = torch.Generator().manual_seed(1)
    deltas = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".layers.{PERTURBED_LAYER}." in name:
                delta = 0.02 * torch.randn(param.shape, generator=generator)
                param.add_(delta)
                deltas[name] = delta
    path = tmp_path_factory.mktemp("models") / "perturbed"
    model.save_pretrained(path)
    copy_tokenizer(base_dir, path)
    return path, deltas


def write_token_stats(path, steps=5, extra_lines=()):
    """A token_stats.jsonl shaped like the one EKSFTTrainer writes (one flat object per logging step)."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"loss": 2.0 - 0.1 * s, "grad_norm": 1.0, "learning_rate": 1e-3, "ce": 2.1 - 0.1 * s,
                    "entropy_term": -0.03, "kl_term": 0.002 * s, "mean_entropy": 3.0 - 0.05 * s,
                    "frac_masked": 0.3, "frac_entropy_set": 0.2, "frac_kl_set": 0.2, "iou": 0.4 + 0.02 * s,
                    "mean_kl": 0.04 * s, "num_tokens": 100.0 * s, "epoch": s / steps, "step": s})
        for s in range(1, steps + 1)
    ]
    (path / "token_stats.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    return path
