"""The paper-shaped Markdown table: one row per model, columns = benchmark x metric, then the average.

Input is the ``results.json`` that ``eksft eval`` writes when a run is complete (see ``eksft.evaluation.runner``).
Scores are percentages with one decimal. ``pass@1`` is not shown next to ``avg@n``: the unbiased pass@1 estimate
is exactly the mean accuracy over the n samples, so the column would repeat ``avg@n``. The average is the unweighted
mean over the benchmarks of a row (as papers report it), for the metrics every one of them has; a row that lacks
some benchmark of the table gets no average, since it would not compare with the others.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

__all__ = ["average_metrics", "load_results", "render_table"]

MISSING = "–"


def _shown(metrics: dict[str, float]) -> list[str]:
    """Metric names for the table, in order: avg@n first, then pass@k by k (pass@1 only when no avg@n)."""
    avg = [name for name in metrics if name.startswith("avg@")]
    passes = sorted((name for name in metrics if name.startswith("pass@")), key=lambda name: int(name[5:]))
    return avg + [name for name in passes if not (avg and name == "pass@1")]


def average_metrics(benchmarks: dict[str, dict]) -> dict[str, float]:
    """Mean over benchmarks of each metric that all of them report."""
    if not benchmarks:
        return {}
    per_benchmark = [result["metrics"] for result in benchmarks.values()]
    common = [name for name in per_benchmark[0] if all(name in metrics for metrics in per_benchmark)]
    return {name: sum(metrics[name] for metrics in per_benchmark) / len(per_benchmark) for name in common}


def model_label(summary: dict) -> str:
    return summary.get("label") or Path(str(summary.get("model", "model"))).name or "model"


def render_table(summaries: list[dict]) -> str:
    """Markdown table: rows = models, columns = (benchmark, metric) pairs and the average over benchmarks."""
    columns: list[tuple[str, str]] = []
    for summary in summaries:
        groups = [(name, result["metrics"]) for name, result in summary["benchmarks"].items()]
        if len(groups) > 1:
            groups.append(("average", summary.get("average") or average_metrics(summary["benchmarks"])))
        for group, metrics in groups:
            columns += [(group, metric) for metric in _shown(metrics) if (group, metric) not in columns]
    # the average columns go last whatever order the models listed their benchmarks in
    columns = [c for c in columns if c[0] != "average"] + [c for c in columns if c[0] == "average"]

    benchmarks = {group for group, _ in columns if group != "average"}
    header = ["model", *(f"{group} {metric}" for group, metric in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for summary in summaries:
        values = {name: result["metrics"] for name, result in summary["benchmarks"].items()}
        # an average over fewer benchmarks than the other rows would not compare: show it only for full rows
        if len(values) > 1 and benchmarks <= values.keys():
            values["average"] = summary.get("average") or average_metrics(summary["benchmarks"])
        cells = [model_label(summary)]
        for group, metric in columns:
            value = values.get(group, {}).get(metric)
            cells.append(MISSING if value is None else f"{100 * value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Scores in %. avg@n: mean accuracy over n samples per problem (= unbiased pass@1); "
                 "pass@k: unbiased estimator of Chen et al. (2021).")  # fmt: skip
    lines.append(_convention_note(summaries))
    return "\n".join(lines) + "\n"


def _convention_note(summaries: list[dict]) -> str:
    """Which grading convention the rows follow (``eksft.evaluation.conventions``); runs from before conventions
    existed graded as ``eksft`` does."""
    used = {model_label(s): (s.get("settings") or {}).get("convention") or "eksft" for s in summaries}
    rules = {"eksft": "the last \\boxed{} after any </think>", "lighteval": "lighteval's math tasks' prompts and "
             "extraction"}  # fmt: skip
    if len(set(used.values())) == 1:
        name = next(iter(used.values()))
        return f"Graded with the {name} convention ({rules.get(name, name)})."
    rows = ", ".join(f"{label}: {name}" for label, name in used.items())
    return f"Rows graded with different conventions ({rows}): their scores do not compare."


def load_results(path: str | Path) -> dict:
    """A complete ``results.json`` (or the directory holding one); anything else is a UserError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"no results file {path} (an eval run writes it only when every sample is done)")
    what = "give the results.json of a finished eksft eval run, or its output directory"
    try:
        summary = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a results file (not UTF-8 text); {what}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not a results file (invalid JSON: {err.msg} at line {err.lineno}); {what}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("benchmarks"), dict):
        raise UserError(f"{path}: not a results file of eksft eval (no 'benchmarks'); {what}")
    if summary.get("complete") is not True:
        raise UserError(f"{path}: the run is not complete; rerun the same eksft eval command to finish it")
    return summary
