"""The real-model profile (``eksft demo --profile real``): its data, its text measures, and one toy-size run."""

from __future__ import annotations

import json
import re

import pytest
import torch

from eksft import cli
from eksft.errors import UserError
from eksft.smollm2 import ensure_smollm2
from eksft_demo import real, real_data, real_report, real_texts
from eksft_demo.real import RealProfile, final_answer_text
from eksft_demo.real_texts import measure_texts, text_summary

MATH_WORDS = re.compile(r"\b(equations?|solve[sd]?|sums?|products?|multipl\w*|divid\w*|fractions?|integers?|"
                        r"algebra\w*|geometr\w*|triangles?|angles?|calculat\w*|comput\w*|numbers?|digits?|"
                        r"percent\w*|math\w*|formulas?|boxed|plus|minus|twice|half|dozen)\b",
                        re.IGNORECASE)  # fmt: skip


def test_the_sets_are_valid_and_disjoint():
    from transformers import AutoTokenizer

    profile = real.REAL_PROFILE
    tokenizer = AutoTokenizer.from_pretrained(ensure_smollm2()[0])
    rows = real_data.sft_rows(profile, tokenizer)
    problems = real_data.eval_problems(profile)
    assert len(rows) == profile.sft_examples and len(problems) == profile.eval_problems
    sft_questions = {r["prompt"][-1]["content"] for r in rows}
    example = real_data.example_turns()
    assert example[0]["content"] not in sft_questions | {p["problem"] for p in problems}
    eval_questions = {real_data.prompt_turns(p["problem"])[-1]["content"] for p in problems}
    assert len(sft_questions) == len(rows) and len(eval_questions) == len(problems)
    assert not sft_questions & eval_questions  # train and test splits of the world
    for row in rows:
        assert row["prompt"] == [*example, {"role": "user", "content": row["prompt"][-1]["content"]}]
        assert [m["role"] for m in row["completion"]] == ["assistant"]
        assert row["completion"][0]["content"].endswith(f"\\boxed{{{row['answer']}}}.")
    assert all(p.kind in real_data.KINDS for p in real_data.world_problems("test", 50))
    # the held-out math text: MATH-500 level-3 problems with worked solutions, each once, none among the problems
    math = real_data.math_solutions()
    assert len(math) == 48 and {r["level"] for r in math} == {3}
    assert len({r["unique_id"] for r in math}) == len(math)
    assert all(r["problem"].strip() and "\\boxed" in r["solution"] for r in math)
    texts = real_data.held_out_conversations(profile)
    assert len(texts["math"]) == profile.math_texts and len(texts["general"]) == profile.general_texts
    held_out = {c[0]["content"] for kind in texts.values() for c in kind}
    assert not held_out & ({p["problem"] for p in problems} | sft_questions)


def test_general_conversations_are_not_about_math():
    conversations = real_data.general_conversations()
    assert 40 <= len(conversations) <= 60
    for conversation in conversations:
        assert [m["role"] for m in conversation] == ["user", "assistant"]
        text = " ".join(m["content"] for m in conversation)
        assert not re.search(r"\d", text), text  # no numbers at all
        assert not MATH_WORDS.search(text), MATH_WORDS.search(text)
        assert not set("=+*/^$\\") & set(text), text
    assert len({c[0]["content"] for c in conversations}) == len(conversations)


def test_final_answer_text_reads_a_box_first_then_the_last_number():
    assert final_answer_text("so \\boxed{7}. Then 9") == "so \\boxed{7}. Then 9"
    assert final_answer_text("2 + 3 = 5.\nSo the final answer is 1,250.").endswith("\\boxed{1250}")
    assert final_answer_text("it is -3/4.").endswith("\\boxed{-3/4}")
    assert final_answer_text("no number") == "no number"


@torch.no_grad()
def _direct(model, base, ids, labels):
    """KL, entropy and NLL sums of the response positions, written out from the softmaxes."""
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    logq = torch.log_softmax(base(input_ids=ids).logits[0, :-1].double(), -1)
    targets, keep = labels[0, 1:], labels[0, 1:] != -100
    p = logp.exp()
    kl = (p * (logp - logq)).sum(-1)[keep].sum()
    entropy = -(p * logp).sum(-1)[keep].sum()
    nll = -logp.gather(-1, targets.clamp(min=0)[:, None])[:, 0][keep].sum()
    base_nll = -logq.gather(-1, targets.clamp(min=0)[:, None])[:, 0][keep].sum()
    return float(kl), float(entropy), float(nll), float(base_nll), int(keep.sum())


def test_measure_texts_matches_a_direct_computation():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path, _ = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    torch.manual_seed(0)
    base, model = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config).eval()
    conversations = real_data.general_conversations()[:3]
    sums = measure_texts({"m": model}, base, tokenizer, conversations, max_length=64)
    for i, conversation in enumerate(conversations):
        ids, labels = real_texts._encode_response(tokenizer, conversation, 64)
        prompt = real_texts.token_ids(tokenizer, conversation[:1], add_generation_prompt=True)
        assert (labels[0, : len(prompt)] == -100).all() and (labels[0, len(prompt) :] == ids[0, len(prompt) :]).all()
        kl, entropy, nll, base_nll, count = _direct(model, base, ids, labels)
        assert sums["m"]["tokens"][i] == sums["base"]["tokens"][i] == count > 0
        assert sums["m"]["kl"][i] == pytest.approx(kl, rel=1e-4)
        assert sums["m"]["entropy"][i] == pytest.approx(entropy, rel=1e-4)
        assert sums["m"]["nll"][i] == pytest.approx(nll, rel=1e-4)
        assert sums["base"]["nll"][i] == pytest.approx(base_nll, rel=1e-4)
        assert sums["base"]["kl"][i] == 0.0
    summary = text_summary(sums["m"])
    assert summary["nll"] == pytest.approx(sum(sums["m"]["nll"]) / sum(sums["m"]["tokens"]))
    assert summary["nll_per_text"][0] == pytest.approx(sums["m"]["nll"][0] / sums["m"]["tokens"][0])


def test_profile_validation_names_the_bad_field():
    with pytest.raises(UserError, match="math_texts"):
        RealProfile(math_texts=500).validate()
    with pytest.raises(UserError, match="unknown|objectives"):
        RealProfile(objectives=("nope",)).validate()
    with pytest.raises(UserError, match="every k"):
        RealProfile(eval_samples=2, eval_ks=(1, 4)).validate()
    real.REAL_PROFILE.validate()
    assert cli.main(["demo", "--profile", "real", "--seeds", "2", "--output-dir", "unused"]) == 2  # one seed only


TOY = RealProfile(name="toy", objectives=("nll", "eksft"), sft_examples=2, sft_steps=2, sft_batch_size=1,
                  eval_problems=2, eval_samples=2, eval_ks=(1, 2), eval_max_new_tokens=16,
                  eval_batch_size=4, math_texts=2, general_texts=3, text_max_length=96)  # fmt: skip


def test_toy_run_of_the_whole_real_pipeline(tmp_path):
    out = tmp_path / "run"
    report = real.run_real_demo(TOY, out, progress=False, threads=2)
    text = report.read_text(encoding="utf-8")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [m["label"] for m in results["models"]] == ["base", "nll", "eksft"]
    for model in results["models"]:
        assert len(model["correct"]) == 2 and all(0 <= c <= 2 for c in model["correct"])
        assert set(model["metrics"]) == {"avg@2", "pass@1", "pass@2"}
    for kind in ("math", "general"):
        assert results["texts"][kind]["base"]["kl"] == 0.0
        assert results["texts"][kind]["nll"]["texts"] == (2 if kind == "math" else 3)
        assert results["texts"][kind]["eksft"]["kl"] >= 0
    sft = [m for m in results["models"] if m["stage"] == "sft"]
    assert all(m["drift"] > 0 and m["drift_groups"] for m in sft)
    assert "iou" in next(m for m in sft if m["objective"] == "eksft")["token_sets"]
    for needle in ("## Summary", "## Results", "gen. NLL", "## Forgetting", "MATH-500", "test set", "world",
                   "hand-written", "The paper's claims", "2 SE", "text_deltas.png"):  # fmt: skip
        assert needle in text, needle
    assert all((out / name).is_file() for name in results["plots"].values())
    # a rerun resumes: nothing to train or sample again, the same table
    before = real_report.render_table(results)
    real.run_real_demo(TOY, out, progress=False, threads=2)
    assert real_report.render_table(json.loads((out / "results.json").read_text(encoding="utf-8"))) == before
