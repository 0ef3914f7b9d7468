"""eksft's "lighteval" convention against lighteval's own metric, on realistic completions.

lighteval is an optional test dependency, installed without changing any installed package (the command is in
``docs/evaluation.md, "Grading conventions"``); without it this module skips. Its metric code is called as its pipeline calls it:
the task's prompt function builds the ``Doc`` (AIME: the bare answer as gold; MATH-500: ``ANSWER: <solution>``), the
response's ``text_post_processed`` has the reasoning tags removed (``PipelineParameters`` defaults), and
``lighteval.metrics.apply_metric`` runs the task's own metrics. lighteval 0.13.0 has no amc23 task: amc23 rows are
built like AIME rows (bare gold), as a custom lighteval task would build them.

Two shims let lighteval's metric code import next to eksft's pins; neither changes what it computes:

* ``inspect_ai`` cannot be installed without changing pinned packages; ``lighteval/metrics/metrics.py`` and the task
  modules import it at module level, for the inspect-ai backend only. Empty stand-ins fill ``sys.modules`` when it
  is missing.
* lighteval checks at call time that latex2sympy2_extended is exactly 1.0.6, while math-verify 0.9 needs 1.11.0; the
  check is told to accept the installed one. So ``test_agreement_with_lighteval`` runs both sides on the same parser
  and measures the rules (extraction, gold, comparison). ``test_agreement_with_lighteval_on_its_pinned_parser`` runs
  lighteval in a subprocess on latex2sympy2_extended 1.0.6, as ``pip install lighteval`` gets it, when
  ``EKSFT_LIGHTEVAL_PINNED_PATH`` names a folder holding that version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest

pytest.importorskip(
    "lighteval",
    reason="lighteval is an optional test dependency (docs/evaluation.md, Grading conventions; make install adds it): "
    "pip install --no-deps lighteval==0.13.0 && pip install -c constraints.txt sacrebleu scikit-learn nltk==3.9.1 "
    "pytablewriter aenum==3.1.15",
)

from eksft.evaluation.conventions import CONVENTIONS, LIGHTEVAL_VERSION  # noqa: E402
from eksft.grading import grade_and_extract  # noqa: E402

DATA = Path(__file__).parent / "data" / "lighteval_completions.jsonl"
REASONING_TAGS = [("<think>", "</think>")]  # lighteval/pipeline.py: PipelineParameters.reasoning_tags default
PINNED_LATEX2SYMPY = "1.0.6"  # lighteval 0.13.0's requirement

# Rows on which eksft's lighteval convention and lighteval disagree, each with the reason. A listed row must still
# disagree (so the list cannot go stale); every other row must agree.
KNOWN_DIFFERENCES: dict[str, str] = {
    "amc-latex-gold": (
        "the gold form: lighteval reads an AIME-style gold bare, and from a bare 2\\sqrt{3} it extracts the leading "
        "number 2; eksft reads every gold as \\boxed{gold}, which is what lighteval does with MATH-500's solutions. "
        "No AIME or AMC gold is LaTeX (integers, floats), so the real benchmarks never meet this"
    ),
}
# On lighteval's own parser (latex2sympy2_extended 1.0.6), the above and:
KNOWN_DIFFERENCES_PINNED: dict[str, str] = {
    **KNOWN_DIFFERENCES,
    "aime-two-bare-boxes-corrected": (
        "the parser version: for two boxes outside $...$ lighteval's catch-all box pattern spans both and keeps "
        "the 'last' box; latex2sympy2_extended 1.0.6 keeps only \\boxed{204}, 1.11.0 (math-verify 0.9's) joins boxes "
        "less than 70 characters apart with a comma or 'and' between them, giving {202, 204}"
    ),
}


def _stub_inspect_ai() -> None:
    """Empty stand-ins for the parts of inspect_ai that lighteval imports at module level (none is called here)."""
    try:
        import inspect_ai  # noqa: F401

        return
    except ImportError:
        pass

    def decorator_factory(*args, **kwargs):
        return lambda function: function

    def anything(*args, **kwargs):
        return None

    names = ("inspect_ai", "inspect_ai.scorer", "inspect_ai.solver", "inspect_ai.dataset")
    modules = {name: types.ModuleType(name) for name in names}
    scorer, solver, dataset = modules["inspect_ai.scorer"], modules["inspect_ai.solver"], modules["inspect_ai.dataset"]
    scorer.scorer = decorator_factory
    scorer.accuracy = scorer.stderr = scorer.model_graded_fact = anything
    scorer.Score, scorer.Target = type("Score", (), {}), type("Target", (), {})
    solver.TaskState = type("TaskState", (), {})
    solver.generate = solver.prompt_template = anything
    dataset.Sample = type("Sample", (), {})
    modules["inspect_ai"].scorer, modules["inspect_ai"].solver, modules["inspect_ai"].dataset = scorer, solver, dataset
    sys.modules.update(modules)


def _accept_installed_latex2sympy() -> None:
    """Let lighteval's ``requires("latex2sympy2_extended")`` accept the installed version (see the module doc)."""
    import lighteval.utils.imports as imports

    original = imports.is_package_available
    if getattr(original, "eksft_shim", False):
        return

    def is_package_available(package):
        if getattr(package, "name", package) == "latex2sympy2_extended":
            return bool(version("latex2sympy2_extended"))
        return original(package)

    is_package_available.eksft_shim = True
    imports.is_package_available = is_package_available


def import_lighteval() -> types.SimpleNamespace:
    """lighteval's pieces: its version, metric application, response type, tasks, reasoning-tag removal."""
    _stub_inspect_ai()
    _accept_installed_latex2sympy()
    from lighteval.metrics import apply_metric
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.tasks.aime import aime24, aime25, aime_prompt
    from lighteval.tasks.tasks.math_500 import math_500, math_500_prompt
    from lighteval.utils.utils import remove_reasoning_tags

    tasks = {
        "aime24": (aime24, aime_prompt, "answer"),
        "aime25": (aime25, aime_prompt, "answer"),
        "amc23": (aime24, aime_prompt, "answer"),  # no amc23 task in lighteval 0.13.0: built like AIME
        "math500": (math_500, math_500_prompt, "solution"),
    }
    return types.SimpleNamespace(version=version("lighteval"), apply_metric=apply_metric, ModelResponse=ModelResponse,
                                 tasks=tasks, remove_reasoning_tags=remove_reasoning_tags)  # fmt: skip


def load_rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def lighteval_verdict(api: types.SimpleNamespace, row: dict) -> bool:
    """lighteval's pass@1 for one completion, computed as its pipeline computes it."""
    config, prompt_function, gold_field = api.tasks[row["task"]]
    doc = prompt_function({"problem": row["problem"], gold_field: row[gold_field]}, config.name)
    response = api.ModelResponse(text=[row["completion"]])
    response.text_post_processed = [api.remove_reasoning_tags(text, REASONING_TAGS) for text in response.text]
    [scores] = api.apply_metric(responses=[response], docs=[doc], metrics=config.metrics)
    values = {float(value) for name, value in scores.items() if name.startswith(("pass@k", "avg@n"))}
    assert len(values) == 1, scores  # pass@1 and avg@1 of one sample are the same number
    return values.pop() == 1.0


def check_agreement(theirs: dict[str, bool], ours: dict[str, bool], known: dict[str, str], label: str) -> None:
    """Print the agreement; fail on a difference not in ``known``, or on a ``known`` one that now agrees."""
    differ = {key: (theirs[key], ours[key]) for key in ours if theirs[key] != ours[key]}
    print(f"\n{label}: {len(ours) - len(differ)}/{len(ours)} verdicts agree ({sum(theirs.values())} correct for "
          f"lighteval, {sum(ours.values())} for eksft's lighteval convention); differ: {sorted(differ)}")  # fmt: skip
    unexplained = {key: value for key, value in differ.items() if key not in known}
    assert not unexplained, f"(lighteval, eksft) verdicts that differ: {unexplained}"
    stale = sorted(set(known) - set(differ))
    assert not stale, f"listed as differences but agreeing now (remove them from the list): {stale}"


@pytest.fixture(scope="module")
def lighteval_api() -> types.SimpleNamespace:
    return import_lighteval()


@pytest.fixture(scope="module")
def eksft_verdicts() -> dict[str, bool]:
    rows = load_rows()
    graded = grade_and_extract([row["completion"] for row in rows], [row["answer"] for row in rows],
                               convention="lighteval")  # fmt: skip
    return {row["id"]: ok for row, (ok, _) in zip(rows, graded, strict=True)}


def test_lighteval_version_is_the_one_the_convention_follows(lighteval_api) -> None:
    assert lighteval_api.version == LIGHTEVAL_VERSION


def test_tasks_use_the_metric_the_convention_recreates(lighteval_api) -> None:
    """aime24 / aime25 / math_500 score with pass_at_k_math: LaTeX (box priority 55) + expressions on both sides,
    first-match fallback, any-match extraction, precision 6. A lighteval that changes this fails here."""
    from lighteval.metrics.utils.extractive_match_utils import ExprExtractionConfig, LatexExtractionConfig

    for config, _, _ in lighteval_api.tasks.values():
        metric = next(m for m in config.metrics if m.metric_name.startswith("pass@k"))
        scoring = metric.sample_level_fn.compute_score.__self__
        for targets in (scoring.gold_extraction_target, scoring.pred_extraction_target):
            assert sorted(type(t).__name__ for t in targets) == ["ExprExtractionConfig", "LatexExtractionConfig"]
            latex = next(t for t in targets if isinstance(t, LatexExtractionConfig))
            assert latex.boxed_match_priority == 55 and latex.try_extract_without_anchor
            assert all(t.try_extract_without_anchor for t in targets if isinstance(t, ExprExtractionConfig))
        assert (scoring.fallback_mode, scoring.extraction_mode, scoring.precision) == ("first_match", "any_match", 6)
        assert metric.sample_level_fn.strip_strings and metric.sample_level_fn.normalize is None


def test_prompts_are_lightevals(lighteval_api) -> None:
    convention, problem = CONVENTIONS["lighteval"], "What is $1+1$?"
    for task in ("aime24", "aime25", "math500"):
        config, prompt_function, gold_field = lighteval_api.tasks[task]
        doc = prompt_function({"problem": problem, gold_field: "2"}, config.name)
        assert convention.format_prompt(problem, task) == doc.query, task


def test_agreement_with_lighteval(lighteval_api, eksft_verdicts) -> None:
    theirs = {row["id"]: lighteval_verdict(lighteval_api, row) for row in load_rows()}
    label = f"lighteval {lighteval_api.version}, latex2sympy2_extended {version('latex2sympy2_extended')}"
    check_agreement(theirs, eksft_verdicts, KNOWN_DIFFERENCES, label)


def test_agreement_with_lighteval_on_its_pinned_parser(eksft_verdicts) -> None:
    """lighteval on latex2sympy2_extended 1.0.6, in a subprocess (math-verify 0.9 cannot import that version)."""
    folder = os.environ.get("EKSFT_LIGHTEVAL_PINNED_PATH")
    if not folder:
        pytest.skip(f"set EKSFT_LIGHTEVAL_PINNED_PATH to a folder holding latex2sympy2_extended {PINNED_LATEX2SYMPY} "
                    "(pip install --no-deps --target DIR latex2sympy2_extended==1.0.6)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["latex2sympy2_extended"] == PINNED_LATEX2SYMPY, report["latex2sympy2_extended"]
    label = f"lighteval {report['lighteval']}, latex2sympy2_extended {report['latex2sympy2_extended']}"
    check_agreement(report["verdicts"], eksft_verdicts, KNOWN_DIFFERENCES_PINNED, label)


def test_data_covers_the_cases() -> None:
    rows = load_rows()
    assert len(rows) >= 60 and len({row["id"] for row in rows}) == len(rows)
    assert {row["task"] for row in rows} == {"aime24", "aime25", "amc23", "math500"}
    assert all(row["solution"] for row in rows if row["task"] == "math500")
    assert set(KNOWN_DIFFERENCES_PINNED) <= {row["id"] for row in rows}


if __name__ == "__main__":  # lighteval's verdicts as JSON: the pinned-parser test runs this in a subprocess
    api = import_lighteval()
    print(json.dumps({"lighteval": api.version, "latex2sympy2_extended": version("latex2sympy2_extended"),
                      "verdicts": {row["id"]: lighteval_verdict(api, row) for row in load_rows()}}))  # fmt: skip
