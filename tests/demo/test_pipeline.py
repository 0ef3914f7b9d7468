"""The demo pipeline's pieces: the corpus, the base-model cache, progress lines, the output directory, the CLI."""

from __future__ import annotations

import io
import json

import pytest

from eksft import cli
from eksft.cache import cache_root
from eksft.demo.world import STYLES, Task
from eksft.errors import UserError
from eksft_demo import pipeline
from eksft_demo.base_model import base_model_dir, ensure_base_model
from eksft_demo.profiles import BASE_MODEL_FILE, PROFILES, BaseModelConfig
from eksft_demo.progress import Progress
from eksft_demo.world_data import grpo_rows, held_out_problems, pretraining_documents, sft_rows, shift_conversations

# a base model that builds in about a second
TINY = BaseModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                       pretrain_steps=2, batch_size=2, seq_len=32, plain_problems=20, chat_problems=20)


def test_corpus_has_every_style_as_text_and_some_boxed_chat():
    docs = pretraining_documents(BaseModelConfig(plain_problems=30, chat_problems=200))
    assert docs == pretraining_documents(BaseModelConfig(plain_problems=30, chat_problems=200))  # deterministic
    plain = [d for d in docs if d.startswith("Question: ")]
    chat = [d for d in docs if d.startswith("<|im_start|>user\n")]
    assert len(plain) == 30 * len(STYLES) and len(chat) == 200 and len(docs) == len(plain) + len(chat)
    assert all("\\boxed{" in d for d in plain)
    boxed = sum("\\boxed{" in d for d in chat) / len(chat)
    assert 0.25 < boxed < 0.55  # boxed_chat_fraction = 0.4: the boxed chat answer is there, but latent
    assert all(d.endswith("<|im_end|>\n") and "<|im_start|>assistant\n" in d for d in chat)
    unboxed = next(d for d in chat if "\\boxed{" not in d)
    assert unboxed.rstrip().removesuffix("<|im_end|>").split("\n")[-1].startswith("The answer is ")


def test_stages_never_share_problems_and_test_problems_are_held_out():
    profile = PROFILES["quick"]
    questions = {
        "pretraining": {line.split("\n")[0] for line in pretraining_documents(profile.base)},
        "sft": {row["messages"][0]["content"] for row in sft_rows(profile, 0)},
        "grpo": {row["prompt"][0]["content"] for row in grpo_rows(profile, 0)},
        "test": {p.question for p in held_out_problems(profile)},
        "shift": {c[0]["content"] for c in shift_conversations(profile)},
    }
    # training-split stages draw from one finite space of questions (a few may repeat); the test split is apart
    training_text = "\n".join(pretraining_documents(profile.base) + [*questions["sft"], *questions["grpo"]])
    for name in ("test", "shift"):
        assert not any(q in training_text for q in questions[name]), name
    assert not questions["test"] & questions["shift"]
    assert {p.question for p in Task(0).problems("test", 200)} >= questions["test"] | questions["shift"]
    sft = sft_rows(profile, 0)
    assert len(sft) == profile.sft_examples and sft != sft_rows(profile, 1)  # each seed draws its own few examples
    assert all("\\boxed{" in row["messages"][1]["content"] for row in sft)


def test_cache_key_follows_the_config(tmp_path):
    assert TINY.key() == BaseModelConfig(**{**TINY.__dict__}).key()
    assert TINY.key() != BaseModelConfig(**{**TINY.__dict__, "pretrain_steps": 3}).key()
    assert base_model_dir(TINY, tmp_path).parent == tmp_path
    assert base_model_dir(TINY, tmp_path) != base_model_dir(PROFILES["quick"].base, tmp_path)


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("EKSFT_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("EKSFT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "eksft"


def test_base_model_is_built_once_then_taken_from_the_cache(tmp_path, monkeypatch):
    path, built = ensure_base_model(TINY, tmp_path)
    assert built and (path / "config.json").is_file() and (path / BASE_MODEL_FILE).is_file()
    info = json.loads((path / BASE_MODEL_FILE).read_text())
    assert info["config"]["pretrain_steps"] == 2 and info["documents"] == 20 * len(STYLES) + 20
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging directory left behind

    def no_build(*args, **kwargs):
        raise AssertionError("the cached base model was pre-trained again")

    monkeypatch.setattr("eksft.tiny_model.build_tiny_model", no_build)
    assert ensure_base_model(TINY, tmp_path) == (path, False)


def test_an_unfinished_cache_entry_is_rebuilt(tmp_path):
    path = base_model_dir(TINY, tmp_path)
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")  # e.g. an interrupted copy: no record of what was built
    assert ensure_base_model(TINY, tmp_path) == (path, True)
    assert (path / BASE_MODEL_FILE).is_file()


def test_progress_prints_stage_step_and_eta():
    stream = io.StringIO()
    progress = Progress([("a", 10.0), ("b", 30.0)], stream=stream, interval=0)
    progress.begin("a", "SFT nll: step", 4)
    progress.update(2, "(loss 0.5)")
    assert progress.eta() > 0
    progress.end()
    progress.begin("b", "GRPO", 2)
    progress.end()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[demo 0s | ETA ") and "SFT nll: step 0/4" in lines[0]
    assert any("step 2/4 (loss 0.5)" in line for line in lines)
    assert lines[-1].endswith("GRPO 2/2 done") and "ETA 0s" in lines[-1]
    quiet = io.StringIO()
    Progress([("a", 1.0)], enabled=False, stream=quiet).begin("a", "x")
    assert quiet.getvalue() == ""


def test_output_dir_of_another_kind_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # never deleted, even with --overwrite
        with pytest.raises(UserError, match="not a demo run"):
            pipeline.run_demo("quick", tmp_path, cache_dir=tmp_path / "cache", progress=False, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / pipeline.SETTINGS_FILE).write_text(json.dumps({"profile": "other"}))
    with pytest.raises(UserError, match="other settings"):
        pipeline.run_demo("quick", tmp_path, cache_dir=tmp_path / "cache", progress=False)


def test_bad_arguments():
    with pytest.raises(UserError, match="unknown profile"):
        pipeline.run_demo("huge", "unused")
    with pytest.raises(UserError, match="seeds"):
        pipeline.run_demo("quick", "unused", seeds=0)
    assert cli.main(["demo", "--seeds", "0"]) == 2
    assert cli.main(["demo", "--profile", "nope"]) == 2
    assert cli.main(["demo", "--help"]) == 0


def test_profiles_are_valid():
    for profile in PROFILES.values():
        profile.validate()
        assert {"nll", "eksft", "dft"} <= set(profile.objectives) and len(profile.objectives) >= 5
        assert profile.eval_samples in profile.eval_ks
    assert PROFILES["quick"].base.key() != PROFILES["full"].base.key()
