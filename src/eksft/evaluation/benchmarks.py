"""Benchmarks: a registry of the paper's math test sets, and local files with a problem and an answer field.

Field names and splits, checked against each dataset's card (``dataset_info`` in its README on the Hub) and, for
four of them, against real copies of the data:

==============  ============================  =======  =========  ========  ==========================================
name            hub id                        split    problem    answer    notes
==============  ============================  =======  =========  ========  ==========================================
``aime24``      ``HuggingFaceH4/aime_2024``   train    problem    answer    30 rows; answers are strings like ``025``
``aime25``      ``yentinglin/aime_2025``      train    problem    answer    30 rows
``amc23``       ``math-ai/amc23``             test     problem    answer    40 rows; answers are floats (``27.0``)
``hmmt_feb25``  ``MathArena/hmmt_feb_2025``   train    problem    answer    30 rows; LaTeX answers
``math500``     ``HuggingFaceH4/MATH-500``    test     problem    answer    500 rows; LaTeX answers
==============  ============================  =======  =========  ========  ==========================================

A float answer that is a whole number is written as an integer (``27.0`` -> ``27``), so that the gold reads as the
contest states it. Each problem's id is its row number in the source, which is what ``samples.jsonl`` records.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..files import read_jsonl

__all__ = ["BENCHMARKS", "LOCAL_SUFFIXES", "Benchmark", "BenchmarkSpec", "Problem", "load_benchmark", "read_hub_rows"]

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and which fields hold the problem and its gold answer."""

    name: str
    source: str  # hub dataset id or local file
    split: str | None = None  # hub datasets only
    problem_field: str = "problem"
    answer_field: str = "answer"
    revision: str | None = None  # hub datasets only: a commit, branch or tag (``--benchmark aime24@REVISION``)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("aime24", "HuggingFaceH4/aime_2024", split="train"),
    "aime25": BenchmarkSpec("aime25", "yentinglin/aime_2025", split="train"),
    "amc23": BenchmarkSpec("amc23", "math-ai/amc23", split="test"),
    "hmmt_feb25": BenchmarkSpec("hmmt_feb25", "MathArena/hmmt_feb_2025", split="train"),
    "math500": BenchmarkSpec("math500", "HuggingFaceH4/MATH-500", split="test"),
}


@dataclass(frozen=True)
class Problem:
    id: int  # row number in the source
    problem: str
    answer: str


@dataclass(frozen=True)
class Benchmark:
    spec: BenchmarkSpec
    problems: list[Problem]
    revision: str | None = None  # the hub commit the problems were read at (None for a local file)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def content_sha256(self) -> str:
        """A fingerprint of the problems and answers read, in order: two runs with the same one asked the same
        questions, whatever the source and revision (recorded in ``run.json`` and ``results.json``)."""
        digest = hashlib.sha256()
        for problem in self.problems:
            digest.update(json.dumps([problem.id, problem.problem, problem.answer], ensure_ascii=False).encode())
        return digest.hexdigest()


def is_local(name: str) -> bool:
    """Whether a dataset name means a local file (a data suffix, an existing path, or a path-like start)."""
    path = Path(name).expanduser()
    return path.suffix.lower() in LOCAL_SUFFIXES or path.exists() or name.startswith((".", "/", "~"))


def resolve(name: str, problem_field: str | None = None, answer_field: str | None = None) -> BenchmarkSpec:
    """The spec for a registry name or a local file (named after its stem); field overrides apply to either."""
    registry_name, _, revision = name.partition("@")
    if registry_name in BENCHMARKS and not is_local(name):
        spec = BENCHMARKS[registry_name]
        if revision:
            spec = replace(spec, revision=revision)
    elif is_local(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"benchmark file not found: {path}")
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise UserError(f"unknown benchmark file type {path.suffix!r} for {path}; use .jsonl, .json or .parquet")
        spec = BenchmarkSpec(path.stem, str(path.resolve()))
    else:
        raise UserError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}; "
            "or give the path of a local .jsonl / .json / .parquet file"
        )
    return replace(spec, problem_field=problem_field or spec.problem_field,
                   answer_field=answer_field or spec.answer_field)  # fmt: skip


def _read_local(path: Path) -> list[tuple[str, dict]]:
    """Rows of a local file, each with where it is (``file:line`` for JSON Lines, ``file row N`` otherwise)."""
    if path.suffix.lower() == ".jsonl":
        return [(f"{path}:{lineno}", row) for lineno, row in read_jsonl(path)]
    from ..data import read_rows

    return [(f"{path} row {i}", row) for i, row in enumerate(read_rows(str(path)))]


def read_hub_rows(name: str, split: str, config: str | None = None, revision: str | None = None) -> list[dict]:
    """Rows of one split of a hub dataset; any failure (offline, unknown id or split) becomes a ``UserError``."""
    return read_hub_split(name, split, config, revision)[0]


def read_hub_split(name: str, split: str, config: str | None = None,
                   revision: str | None = None) -> tuple[list[dict], str | None]:  # fmt: skip
    """``read_hub_rows`` and the commit the rows were read at (``datasets`` resolves ``revision``, default the main
    branch, to one commit before it downloads anything; None where it cannot say)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(name, config, revision=revision)
        builder.download_and_prepare()
        rows = builder.as_dataset(split=split).to_list()
    except Exception as err:  # offline, no such dataset / split / config: many types, from datasets and the hub client
        at = f" at revision {revision!r}" if revision else ""
        raise UserError(
            f"cannot load {name!r} (split {split!r}){at} from the Hugging Face Hub: {type(err).__name__}: {err}. "
            "Without network access, copy the data to a local .jsonl / .parquet file and pass its path instead"
        ) from None
    commit = builder.hash if isinstance(builder.hash, str) and len(builder.hash) == 40 else None
    return rows, commit


def _read_hub(spec: BenchmarkSpec) -> tuple[list[tuple[str, dict]], str | None]:
    rows, commit = read_hub_split(spec.source, spec.split, revision=spec.revision)
    return [(f"{spec.source} ({spec.split}) row {i}", row) for i, row in enumerate(rows)], commit


def gold_text(value) -> str:
    """The gold answer as text; whole-number floats lose their ``.0``."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _field_names(row: dict, limit: int = 10) -> str:
    """The row's field names for a message, a few and each cut short (a huge row must not flood the terminal)."""
    names = [name if len(name) <= 40 else name[:37] + "..." for name in map(str, list(row)[:limit])]
    return ", ".join(names) + (f" and {len(row) - limit} more" if len(row) > limit else "") or "none"


def _problem(index: int, where: str, row, spec: BenchmarkSpec) -> Problem:
    """One checked problem: both fields present and non-empty, the problem a string, the answer a string or number."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for role, field in (("problem", spec.problem_field), ("answer", spec.answer_field)):
        value = row.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            what = "is empty" if field in row else f"has no field {field!r}"
            raise UserError(f"{where}: this row {what} (the {role} field of benchmark {spec.name}; fields present: "
                            f"{_field_names(row)}); choose another with --{role}-field")  # fmt: skip
    problem, answer = row[spec.problem_field], row[spec.answer_field]
    if not isinstance(problem, str):
        raise UserError(f"{where}: field {spec.problem_field!r} must be a string, got {type(problem).__name__}; "
                        "fix the row or choose another with --problem-field")  # fmt: skip
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise UserError(f"{where}: field {spec.answer_field!r} must be a string or a number, got "
                        f"{type(answer).__name__}; fix the row or choose another with --answer-field")  # fmt: skip
    return Problem(index, problem, gold_text(answer))


def load_benchmark(spec: BenchmarkSpec, limit: int | None = None) -> Benchmark:
    """Read the benchmark (the first ``limit`` problems when given); a bad row is a ``UserError`` naming it."""
    path = Path(spec.source).expanduser()
    rows, commit = (_read_local(path), None) if path.is_file() else _read_hub(spec)
    if not rows:
        raise UserError(f"benchmark {spec.name}: {spec.source} holds no rows; give a file with one JSON object per "
                        f"line, with fields {spec.problem_field!r} and {spec.answer_field!r}")  # fmt: skip
    problems = [_problem(i, where, row, spec) for i, (where, row) in enumerate(rows[:limit] if limit else rows)]
    return Benchmark(spec, problems, revision=commit)
