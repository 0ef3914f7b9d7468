"""The tiny tokenizer (round trip, chat template, assistant mask) and the tiny model (loading, atomic write, CLI)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eksft import cli
from eksft import tiny_model as tm
from eksft.demo.tokenizer import EOS_TOKEN, IM_END, IM_START, build_tokenizer, train_tokenizer
from eksft.demo.world import Task, pretraining_corpus, sft_dataset
from eksft.errors import UserError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    result = tm.build_tiny_model(out, progress=False)
    assert result.path == out
    return out


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_vocab_and_special_tokens(tokenizer):
    assert 300 <= len(tokenizer) <= 2048
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == EOS_TOKEN
    assert tokenizer.eos_token_id == tokenizer.pad_token_id
    ids = tokenizer.convert_tokens_to_ids([EOS_TOKEN, IM_START, IM_END])
    assert len(set(ids)) == 3 and tokenizer.unk_token_id not in ids
    assert tokenizer.encode(f"{IM_START}user\nhi{IM_END}")[0] == ids[1]
    assert train_tokenizer().to_str() == train_tokenizer().to_str()  # deterministic


def test_tokenizer_round_trip(tokenizer):
    texts = pretraining_corpus(30, seed=4) + [p.question for p in Task(1).problems("test", 20)]
    texts.append(tokenizer.apply_chat_template(sft_dataset(2)[0]["messages"], tokenize=False))
    # characters never seen in training fall back to bytes instead of failing or turning into <unk>
    texts += ["naïve café ∑ 🙂 中文", "tabs\tand  double  spaces\n\n", "  leading space", ""]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    digits = tokenizer.tokenize("12345")
    assert [t.strip("Ġ") for t in digits] == list("12345")  # digits are split one by one


def test_chat_template_and_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 2 + 3."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompute 2 + 3.<|im_end|>\n<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert without == text.removesuffix("<|im_start|>assistant\n")
    full = messages + [{"role": "assistant", "content": "5"}]
    assert tokenizer.apply_chat_template(full, tokenize=False) == text + "5<|im_end|>\n"


def test_assistant_mask_covers_exactly_assistant_content_and_end_token(tokenizer):
    answers = [r"2 + 3 = 5." + "\n" + r"The answer is \boxed{5}.", r"The answer is \boxed{7}."]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compute 2 + 3."},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "And 3 + 4?"},
        {"role": "assistant", "content": answers[1]},
    ]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and sum(mask) > 0
    spans, current = [], []
    for token_id, masked in zip(ids, mask, strict=True):
        if masked:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(span) for span in spans] == [a + IM_END for a in answers]
    assert all(span[-1] == tokenizer.convert_tokens_to_ids(IM_END) for span in spans)

    # what TRL's SFTTrainer(assistant_only_loss=True) checks before training
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


# ---------------------------------------------------------------- model


def test_model_loads_offline_and_gives_logits(model_dir, tokenizer):
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", tm.METADATA_FILE):
        assert (model_dir / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.vocab_size == len(tok) == len(tokenizer)
    assert tok.chat_template == tokenizer.chat_template
    assert tok.model_max_length == model.config.max_position_embeddings
    text = pretraining_corpus(1)[0]
    assert tok.encode(text) == tokenizer.encode(text)
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert set(model.generation_config.eos_token_id) == {tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)}

    batch = tok(["Question: Compute (1 + 2) * 3 - 4.", "Solve for x: 2x + 1 = 7."], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    meta = json.loads((model_dir / tm.METADATA_FILE).read_text())
    assert meta["num_parameters"] == model.num_parameters()
    umask = os.umask(0)
    os.umask(umask)
    assert model_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # not the 0700 of a private temporary directory


def test_seed_and_tied_embeddings(tokenizer):
    spec = tm.TinyModelSpec()
    a, b, c = (tm.make_model(tokenizer, spec, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    untied = tm.make_model(tokenizer, tm.TinyModelSpec(tie_word_embeddings=False))
    assert untied.num_parameters() == a.num_parameters() + len(tokenizer) * spec.hidden_size
    with pytest.raises(UserError, match="multiple of num_kv_heads"):
        tm.TinyModelSpec(num_heads=3, num_kv_heads=2).validate()


def test_pretraining_reduces_loss_and_is_deterministic(tokenizer):
    config = tm.PretrainConfig(steps=25, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=3, corpus_problems=100)
    stream = tm.corpus_tokens(tokenizer, 100, seed=123)  # held out from the training stream's seed
    batch = tm.sample_batch(stream, 8, 64, torch.Generator().manual_seed(0))
    model = tm.make_model(tokenizer, tm.TinyModelSpec(), seed=0)
    before = tm.eval_loss(model, batch)
    threads = torch.get_num_threads()
    losses = tm.pretrain(model, tokenizer, config, seed=0, progress=False)
    assert torch.get_num_threads() == threads  # restored after training single-threaded
    after = tm.eval_loss(model, batch)
    assert len(losses) == 25
    assert after < before - 1.0, (before, after)

    short = tm.PretrainConfig(steps=3, batch_size=4, seq_len=32, corpus_problems=20)
    runs = [tm.pretrain(tm.make_model(tokenizer, tm.TinyModelSpec()), tokenizer, short, progress=False) for _ in "ab"]
    assert runs[0] == runs[1]


def test_build_with_pretraining_writes_metadata(tmp_path):
    config = tm.PretrainConfig(batch_size=4, seq_len=32, corpus_problems=20)
    result = tm.build_tiny_model(tmp_path / "m", pretrain_steps=2, pretrain_config=config, progress=False)
    meta = json.loads((tmp_path / "m" / tm.METADATA_FILE).read_text())
    assert meta["pretrain"]["steps"] == 2 and len(result.losses) == 2
    assert meta["final_loss"] == pytest.approx(result.losses[-1])


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_write_leaves_nothing_when_the_build_fails(tmp_path, monkeypatch, error):
    real_write = tm._write_model

    def write_then_fail(directory, *args, **kwargs):
        real_write(directory, *args, **kwargs)  # the files are all there...
        raise error  # ...but the build dies before the final rename

    monkeypatch.setattr(tm, "_write_model", write_then_fail)
    with pytest.raises(type(error)):
        tm.build_tiny_model(tmp_path / "m", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the final directory nor a temporary one


def test_overwrite_refused_unless_asked(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="overwrite"):
        tm.build_tiny_model(out, progress=False)
    assert (out / "keep.txt").read_text() == "precious"

    tm.build_tiny_model(out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers

    empty = tmp_path / "empty"
    empty.mkdir()
    tm.build_tiny_model(empty, progress=False)  # an empty directory is fine without overwrite
    assert (empty / "config.json").is_file()

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        tm.build_tiny_model(tmp_path / "file", overwrite=True, progress=False)


def test_cli(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["tiny-model", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "parameters:" in printed
    assert AutoModelForCausalLM.from_pretrained(out).config.tie_word_embeddings is True

    assert cli.main(["tiny-model", str(out)]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["tiny-model"]) != 0  # OUT_DIR missing
    assert cli.main(["tiny-model", str(tmp_path / "x"), "--pretrain-steps", "-1"]) == 2
    assert cli.main(["tiny-model", str(tmp_path / "x"), "--num-heads", "3"]) == 2
    assert not (tmp_path / "x").exists()
    assert cli.main(["tiny-model", "--help"]) == 0
    assert "--pretrain-steps" in capsys.readouterr().out

    untied = tmp_path / "untied"
    assert cli.main(["tiny-model", str(untied), "--no-tie-word-embeddings", "--hidden-size", "32", "--head-dim", "8"]) == 0
    config = AutoModelForCausalLM.from_pretrained(untied).config
    assert config.tie_word_embeddings is False and config.hidden_size == 32
