"""Smoke test of benchmarks/step_cost.py: every variant runs on a tiny preset and reports what the issue asks for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["sft", "floor", "eksft_chunked", "eksft_materialised", "published"]


def test_step_cost_tiny_preset(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--preset", "tiny", "--steps", "1",
         "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["variant"] for row in rows] == VARIANTS
    for row in rows:
        assert "error" not in row, row
        assert row["tokens"] == 256 and row["median_step_s"] > 0 and row["peak_mem_gib"] >= 0
        assert row["peak_mem_kind"] == "rss_hwm_above_model_build" and row["device"]
    chunked = rows[VARIANTS.index("eksft_chunked")]
    assert chunked["max_abs_diff_loss"] < 1e-4 and chunked["max_abs_diff_lm_head_grad"] < 1e-5
    assert "| eksft_chunked / floor, time |" in result.stdout  # the Markdown summary


def test_step_cost_pretrained_model(tmp_path, tiny_model_dir):
    """--model DIR: a local pretrained model (its weights, its tokenizer's token ids) at the tiny preset's shape;
    --phases: the parts of each step timed separately."""
    out = tmp_path / "rows.jsonl"
    variants = ["sft", "floor", "eksft_chunked"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--preset", "tiny", "--model", tiny_model_dir,
         "--variants", ",".join(variants), "--steps", "1", "--warmup", "0", "--phases", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["variant"] for row in rows] == variants
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    for row in rows:
        assert "error" not in row, row
        assert row["model"] == str(Path(tiny_model_dir).resolve()) and row["token_ids"] == "text"
        assert row["vocab_size"] == config["vocab_size"] and row["tokens"] == 256 and row["median_step_s"] > 0
        parts = {"policy_trunk_fwd", "head_fwd", "head_bwd", "policy_trunk_bwd"}
        parts |= set() if row["variant"] == "sft" else {"reference_trunk"}
        assert parts <= set(row["phases_s"]) and all(t > 0 for t in row["phases_s"].values()), row["phases_s"]
    chunked = rows[variants.index("eksft_chunked")]
    assert chunked["max_abs_diff_loss"] < 1e-4 and chunked["max_abs_diff_lm_head_grad"] < 1e-5
    assert f"pretrained {Path(tiny_model_dir).resolve()} (text token ids)" in result.stdout
    assert "Where the time goes" in result.stdout and "| eksft_chunked / floor, time |" in result.stdout


def test_step_cost_pretrained_preset_needs_model():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--preset", "cpu-smollm2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "--model DIR" in result.stderr
