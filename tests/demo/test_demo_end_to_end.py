"""`eksft demo` end to end: the quick profile (what CI runs) and, behind the slow marker, the full one."""

from __future__ import annotations

import json
import math
import time

import pytest

from eksft import cli
from eksft_demo import pipeline
from eksft_demo.report import BASE_OBJECTIVE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table(report: str) -> list[list[str]]:
    """The rows of the report's main table (under "## Results"), header first, without the alignment row."""
    section = report.split("## Results", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [rows[0], *rows[2:]]


def check_report(out, profile) -> dict:
    report = (out / "report.md").read_text(encoding="utf-8")
    header, *rows = table(report)
    assert header[:2] == ["objective", "stage"]
    assert [h for h in header if h.startswith(("avg@", "pass@"))] and "KL to base" in header and "drift" in header
    expected = [(BASE_OBJECTIVE, "base")] + [(o, s) for o in profile.objectives for s in ("SFT", "SFT + GRPO")]
    assert [(r[0], r[1]) for r in rows] == expected
    for row in rows:
        for cell in row[2:]:
            assert math.isfinite(float(cell.split("±")[0])), row
    plots = sorted(out.glob("*.png"))
    assert len(plots) >= 4
    for plot in plots:
        assert plot.read_bytes()[:8] == PNG_MAGIC
        assert f"]({plot.name})" in report
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(results["models"]) == 1 + 2 * len(profile.objectives)
    assert "**Base model.**" in report and "**What this run does not show.**" in report
    return results


def test_quick_profile_end_to_end_then_resume_without_training(tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    argv = ["demo", "--profile", "quick", "--output-dir", str(out), "--cache-dir", str(cache), "--threads", "1"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert f"report: {out / 'report.md'}" in captured.out
    assert "pre-training the base model" in captured.err and "ETA" in captured.err and "GRPO from SFT" in captured.err
    results = check_report(out, pipeline.PROFILES["quick"])
    assert results["base"]["built_now"] is True
    first_report = (out / "report.md").read_text(encoding="utf-8")

    # The same command again: the cached base model and every finished model and sample are reused.
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("eksft.tiny_model.build_tiny_model", must_not_run)
    monkeypatch.setattr(pipeline, "train_sft", must_not_run)
    monkeypatch.setattr(pipeline, "train_grpo", must_not_run)
    assert cli.main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    results = check_report(out, pipeline.PROFILES["quick"])
    assert results["base"]["built_now"] is False
    # the same samples, so the same table
    assert table(first_report) == table((out / "report.md").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_full_profile_within_fifteen_minutes(tmp_path):
    start = time.monotonic()
    out = tmp_path / "demo"
    assert cli.main(["demo", "--profile", "full", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                     "--no-progress"]) == 0
    assert time.monotonic() - start < 15 * 60
    results = check_report(out, pipeline.PROFILES["full"])
    assert len(results["plots"]) >= 4
