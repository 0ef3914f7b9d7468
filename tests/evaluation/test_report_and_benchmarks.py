"""The Markdown table's shape, the benchmark registry, and reading benchmark files (fields, errors)."""

import json

import pytest

from eksft.errors import UserError
from eksft.evaluation import benchmarks as bm
from eksft.evaluation.report import average_metrics, load_results, render_table

from .conftest import write_jsonl


def summary(model, results):
    benchmarks = {name: {"metrics": metrics} for name, metrics in results.items()}
    return {"model": model, "complete": True, "benchmarks": benchmarks, "average": average_metrics(benchmarks)}


def test_table_rows_are_models_and_columns_benchmark_by_metric_then_average():
    base = summary("/runs/base", {"aime24": {"avg@4": 0.1, "pass@1": 0.1, "pass@4": 0.3},
                                  "math500": {"avg@4": 0.5, "pass@1": 0.5, "pass@4": 0.8}})  # fmt: skip
    grpo = summary("/runs/grpo", {"aime24": {"avg@4": 0.2, "pass@1": 0.2, "pass@4": 0.4}})
    lines = render_table([base, grpo]).splitlines()
    assert lines[0] == ("| model | aime24 avg@4 | aime24 pass@4 | math500 avg@4 | math500 pass@4 "
                        "| average avg@4 | average pass@4 |")  # fmt: skip
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| base | 10.0 | 30.0 | 50.0 | 80.0 | 30.0 | 55.0 |"
    # one benchmark: no average of its own; the missing benchmark shows as a dash
    assert lines[3] == "| grpo | 20.0 | 40.0 | – | – | – | – |"
    assert lines[4] == "" and "pass@k" in lines[5]
    assert len({line.count("|") for line in lines[:4]}) == 1  # every row has every column


def test_the_table_says_which_grading_convention_its_rows_follow():
    ours = summary("/runs/a", {"aime24": {"avg@4": 0.1}})
    theirs = {**summary("/runs/b", {"aime24": {"avg@4": 0.3}}), "settings": {"convention": "lighteval"}}
    assert render_table([ours]).splitlines()[-1] == "Graded with the eksft convention (the last \\boxed{} after any </think>)."
    assert render_table([theirs]).splitlines()[-1].startswith("Graded with the lighteval convention")
    assert render_table([ours, theirs]).splitlines()[-1] == (
        "Rows graded with different conventions (a: eksft, b: lighteval): their scores do not compare.")


def test_pass_at_1_is_shown_only_without_avg():
    only_pass = summary("m", {"toy": {"pass@1": 0.25, "pass@2": 0.5}})
    assert render_table([only_pass]).splitlines()[0] == "| model | toy pass@1 | toy pass@2 |"


def test_load_results_refuses_unfinished_or_foreign_files(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"benchmarks": {}, "complete": False}))
    with pytest.raises(UserError, match="not complete"):
        load_results(tmp_path)
    with pytest.raises(UserError, match="no results file"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a results file"):
        load_results(tmp_path / "results.json")


def test_registry_names_hub_ids_splits_and_fields():
    assert {name: (s.source, s.split, s.problem_field, s.answer_field) for name, s in bm.BENCHMARKS.items()} == {
        "aime24": ("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
        "aime25": ("yentinglin/aime_2025", "train", "problem", "answer"),
        "amc23": ("math-ai/amc23", "test", "problem", "answer"),
        "hmmt_feb25": ("MathArena/hmmt_feb_2025", "train", "problem", "answer"),
        "math500": ("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    }


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        bm.resolve("aime2024")
    assert "unknown benchmark 'aime2024'" in str(err.value)
    for name in bm.BENCHMARKS:
        assert name in str(err.value)


class FakeSplit:
    def __init__(self, rows):
        self.rows = rows

    def to_list(self):
        return self.rows


class FakeBuilder:
    """``datasets.load_dataset_builder``'s result for a hub dataset: ``hash`` is the commit it resolved."""

    calls: list = []

    def __init__(self, name, config=None, revision=None):
        FakeBuilder.calls.append((name, config, revision))
        self.hash = "3f0e" * 10 if revision is None else revision

    def download_and_prepare(self):
        pass

    def as_dataset(self, split):
        FakeBuilder.calls.append(split)
        # the shape of math-ai/amc23: float answers, an extra "question" column
        return FakeSplit([{"id": 0, "problem": "Cities...", "answer": 27.0, "question": "Cities..."},
                          {"id": 1, "problem": "x?", "answer": -1.0, "question": "x?"},
                          {"id": 2, "problem": "y?", "answer": 0.5, "question": "y?"}])  # fmt: skip


def test_hub_benchmark_is_read_by_id_and_split_at_a_recorded_commit(monkeypatch):
    FakeBuilder.calls = []
    monkeypatch.setattr("datasets.load_dataset_builder", FakeBuilder)
    loaded = bm.load_benchmark(bm.resolve("amc23"), limit=3)
    assert FakeBuilder.calls == [("math-ai/amc23", None, None), "test"]
    assert [(p.id, p.problem, p.answer) for p in loaded.problems] == [(0, "Cities...", "27"), (1, "x?", "-1"),
                                                                      (2, "y?", "0.5")]  # fmt: skip
    assert loaded.revision == "3f0e" * 10  # the commit main pointed to, for run.json
    pinned = bm.load_benchmark(bm.resolve("amc23@" + "9" * 40), limit=3)  # NAME@REVISION reads that commit
    assert FakeBuilder.calls[-2] == ("math-ai/amc23", None, "9" * 40) and pinned.revision == "9" * 40
    assert pinned.content_sha256 == loaded.content_sha256  # same problems, same fingerprint
    assert bm.load_benchmark(bm.resolve("amc23"), limit=2).content_sha256 != loaded.content_sha256


def test_hub_failure_is_one_message(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/aime_2024' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr("datasets.load_dataset_builder", offline)
    with pytest.raises(UserError, match="cannot load 'HuggingFaceH4/aime_2024' .split 'train'. from the Hugging Face Hub"):
        bm.load_benchmark(bm.resolve("aime24"))


def test_local_file_fields_limit_and_overrides(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": f"p{i}", "gold": i, "answer": "wrong"} for i in range(6)])
    loaded = bm.load_benchmark(bm.resolve(path, problem_field="q", answer_field="gold"), limit=4)
    assert loaded.name == "mine" and [(p.id, p.problem, p.answer) for p in loaded.problems] == [
        (0, "p0", "0"), (1, "p1", "1"), (2, "p2", "2"), (3, "p3", "3")]  # fmt: skip


def test_missing_field_names_the_field_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "solution": "2"}\n')
    with pytest.raises(UserError) as err:
        bm.load_benchmark(bm.resolve(str(path)))
    message = str(err.value)
    assert f"{path}:3" in message and "'answer'" in message and "--answer-field" in message and "solution" in message


@pytest.mark.parametrize(
    "content, match",
    [("", "holds no rows"),
     ('{"problem": "a", "answer": "1"}\n{"problem": \n', r"bad.jsonl:2: not a JSON object \(invalid JSON"),
     ('{"problem": 5, "answer": "1"}\n', "must be a string"), ('{"problem": "a", "answer": " "}\n', "is empty"),
     ('{"problem": "a", "answer": "1"}\n{"problem": "\udcff"}\n', r"bad.jsonl:2: not a JSON object \(not UTF-8 text\)")],
)  # fmt: skip
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError, match=match):
        bm.load_benchmark(bm.resolve(str(path)))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(UserError, match="benchmark file not found"):
        bm.resolve(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.csv").write_text("problem,answer\n")
    with pytest.raises(UserError, match="unknown benchmark file type '.csv'"):
        bm.resolve(str(tmp_path / "data.csv"))


@pytest.mark.parametrize(
    "line",
    ['{"problem": "' + "x" * 5_000_000, json.dumps({"problem": "y" * 5_000_000, "x" * 5_000: 1})],
    ids=["unterminated", "no-answer"],
)
def test_a_huge_line_is_named_but_not_echoed(tmp_path, line):
    """A multi-megabyte line: the message names file and line, and stays short (no content, field names cut)."""
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"problem": "1 + 1?", "answer": "2"}) + "\n" + line + "\n")
    with pytest.raises(UserError) as raised:
        bm.load_benchmark(bm.resolve(str(path)))
    message = str(raised.value)
    assert f"{path}:2" in message and len(message) < 400 + len(str(path)), message
