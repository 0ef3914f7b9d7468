"""Reading token_stats.jsonl tolerantly, and the token-set metrics over training."""

import json

import pytest

from eksft.analysis.token_sets import metric_series, read_token_stats, set_summary, training_records
from eksft.errors import UserError

from .conftest import write_token_stats


def test_reads_a_run_directory_or_the_file(tmp_path):
    run = write_token_stats(tmp_path / "run", steps=4)
    records = read_token_stats(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert read_token_stats(run / "token_stats.jsonl") == records


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    run = write_token_stats(tmp_path / "run", steps=3)
    with open(run / "token_stats.jsonl", "a") as handle:
        handle.write('{"loss": 1.0, "ce"')  # the writer was killed mid-line
    with pytest.warns(UserWarning, match=r"token_stats.jsonl:4: skipping an unfinished last line"):
        records = read_token_stats(run)
    assert len(records) == 3


def test_a_malformed_middle_line_is_an_error_naming_file_and_line(tmp_path):
    run = write_token_stats(tmp_path / "run", steps=2, extra_lines=["not json", json.dumps({"step": 9})])
    with pytest.raises(UserError, match=r"token_stats.jsonl:3: not a JSON object"):
        read_token_stats(run)
    (run / "token_stats.jsonl").write_text('[1, 2]\n{"step": 1}\n')
    with pytest.raises(UserError, match=r":1: not a JSON object \(a JSON list"):
        read_token_stats(run)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no token_stats.jsonl"):
        read_token_stats(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        read_token_stats(tmp_path / "nope.jsonl")


def test_training_records_and_series():
    records = [
        {"train/loss": 2.0, "train/iou": 0.5, "train/global_step": 10},  # a logger with prefixes
        {"eval_loss": 1.0, "step": 10},  # evaluation: not a training step
        {"loss": 1.5, "iou": 0.6},  # no step: its position
        {"train_runtime": 3.0, "train_loss": 1.7, "step": 20},  # the end-of-training summary
    ]
    kept = training_records(records)
    assert [r["step"] for r in kept] == [10, 3]
    assert metric_series(records, "iou") == [(10.0, 0.5), (3.0, 0.6)]
    assert metric_series(records, "loss") == [(10.0, 2.0), (3.0, 1.5)]


def test_set_summary(tmp_path):
    records = read_token_stats(write_token_stats(tmp_path / "run", steps=5))
    summary = set_summary(records)
    assert summary["iou"] == {"first": pytest.approx(0.42), "last": pytest.approx(0.5), "mean": pytest.approx(0.46),
                              "steps": 5}
    assert summary["frac_masked"]["mean"] == pytest.approx(0.3)
    assert set_summary([{"loss": 1.0, "step": 1}]) == {}  # plain SFT logged no token sets


def test_iou_is_left_out_where_both_sets_are_empty():
    nll = [{"loss": 2.0, "iou": 0.0, "frac_masked": 0.0, "frac_entropy_set": 0.0, "frac_kl_set": 0.0, "step": s}
           for s in (1, 2)]  # fmt: skip
    assert metric_series(nll, "iou") == []
    assert set(set_summary(nll)) == {"frac_masked", "frac_entropy_set", "frac_kl_set"}
    first_step = {"iou": 0.0, "frac_entropy_set": 0.2, "frac_kl_set": 0.0, "step": 1}  # K empty at step 1: IoU 0
    assert metric_series([first_step], "iou") == [(1.0, 0.0)]
