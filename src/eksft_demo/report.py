"""The demo's ``report.md``: the paper-shaped table, the plots (``report_plots``), and a summary written from the
numbers (``verdicts``, on the comparisons of ``comparison``).

Input is the ``results`` dict the pipeline also saves as ``results.json``::

    {"profile": "full", "seeds": [0], "objectives": ["nll", "eksft", ...], "settings": {...Profile fields...},
     "base": {"num_parameters": ..., "documents": ..., "config": {...}, "built_now": bool, ...},
     "models": [{"label": "sft-eksft", "objective": "eksft", "stage": "sft", "seed": 0,
                 "metrics": {"avg@8": 0.2, "pass@1": 0.2, "pass@4": 0.4, "pass@8": 0.5},
                 "correct": [3, 0, 8, ...],          # correct samples (of n) of each test problem
                 "kl_to_base": 0.1, "entropy": 0.5, "drift": 0.02,
                 "token_sets": {...}, "rl_reward": {"first": .., "last": ..}}, ...],   # (SFT / RL rows only)
     "plots": {"title": "file.png", ...}, "timings": {...}}

Every sentence of the summary is chosen by comparing numbers of this dict; nothing is claimed that the numbers do
not say, and a difference is called real only when it exceeds twice its standard error: over the test problems
(paired: the same problems for both models; per-problem values averaged over seeds first) and, with several seeds,
over the seeds, whichever is larger.
"""

from __future__ import annotations

from collections.abc import Mapping

from eksft.analysis.table import markdown_table, merge_seeds

from .comparison import BASE_OBJECTIVE, STAGE_NAMES, Comparison, _entries, _ks, _metric, _n, compare
from .report_plots import make_plots
from .verdicts import summary

__all__ = ["Comparison", "compare", "make_plots", "render_report", "summary", "table_rows"]

def table_rows(results: Mapping) -> list[dict]:
    """One row per (objective, stage): the base once, then SFT and SFT + GRPO of each objective; a value per seed
    (a list with several seeds, shown as mean ± std)."""
    n, ks = _n(results), _ks(results)
    rows = []
    order = [(BASE_OBJECTIVE, "base")] + [(o, s) for o in results["objectives"] for s in ("sft", "rl")]
    for objective, stage in order:
        for entry in _entries(results, None if stage == "base" else objective, stage):
            row = {"objective": objective, "stage": STAGE_NAMES[stage], f"avg@{n}": 100 * _metric([entry], n, None)}
            for k in ks:
                row[f"pass@{k}"] = 100 * _metric([entry], n, k)
            if entry.get("boxed") is not None:
                row["boxed"] = 100 * sum(entry["boxed"]) / (n * len(entry["boxed"]))
            row["kl_to_base"] = entry.get("kl_to_base")
            row["entropy"] = entry.get("entropy")
            row["drift"] = entry.get("drift")
            rows.append(row)
    return merge_seeds(rows)


def render_table(results: Mapping) -> str:
    n, ks = _n(results), _ks(results)
    rows = table_rows(results)
    boxed = ["boxed"] if any("boxed" in row for row in rows) else []
    columns = ["objective", "stage", f"avg@{n}", *(f"pass@{k}" for k in ks), *boxed, "kl_to_base", "entropy", "drift"]
    headers = {"kl_to_base": "KL to base", "entropy": "entropy", "drift": "drift"}
    formats = {f"avg@{n}": ".1f", **{f"pass@{k}": ".1f" for k in ks}, "boxed": ".1f", "kl_to_base": ".4f",
               "entropy": ".3f", "drift": ".4f"}  # fmt: skip
    seeds = results["seeds"]
    note = (f"avg@{n} and pass@k in % over {results['settings']['eval_problems']} held-out test problems, {n} samples "
            f"each (temperature {results['settings']['eval_temperature']}); pass@1 equals avg@{n}. "
            + ("Boxed: % of samples that end in a \\boxed{} answer (right or wrong). " if boxed else "")
            + "KL to base: mean "
            "KL(model ‖ base) per token, and entropy: the model's mean entropy per token (nats), on "
            f"{results['settings']['shift_texts']} held-out conversations in every solution style. Drift: relative L2 "
            "distance ‖θ − θ0‖ / ‖θ0‖ of all parameters from the base. "
            + (f"Seed {seeds[0]}." if len(seeds) == 1 else
               f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}."))  # fmt: skip
    return markdown_table(rows, columns, headers=headers, formats=formats, note=note)


def _token_set_table(results: Mapping) -> str | None:
    rows = []
    for entry in results["models"]:
        sets = entry.get("token_sets") or {}
        if entry["stage"] != "sft" or "iou" not in sets:
            continue
        rows.append({"objective": entry["objective"], "iou_first": sets["iou"]["first"], "iou_last": sets["iou"]["last"],
                     "iou_mean": sets["iou"]["mean"], "frac_masked": (sets.get("frac_masked") or {}).get("mean")})  # fmt: skip
    if not rows:
        return None
    return markdown_table(
        merge_seeds(rows, keys=("objective",)), ["objective", "iou_first", "iou_last", "iou_mean", "frac_masked"],
        headers={"iou_first": "IoU, first step", "iou_last": "IoU, last step", "iou_mean": "IoU, mean",
                 "frac_masked": "fraction masked, mean"},
        formats={"iou_first": ".3f", "iou_last": ".3f", "iou_mean": ".3f", "frac_masked": ".3f"},
        note="IoU = |E ∩ K| / |E ∪ K| of the entropy set E and the KL set K over the SFT steps (from "
             "token_stats.jsonl); at the first step the policy equals the reference, so K is empty and the IoU is 0. "
             "Objectives that select no tokens are left out.",
    )  # fmt: skip


def _rl_table(results: Mapping) -> str | None:
    rows = [{"objective": e["objective"], "first": e["rl_reward"]["first"], "last": e["rl_reward"]["last"]}
            for e in results["models"] if e["stage"] == "rl" and e.get("rl_reward")]  # fmt: skip
    if not rows:
        return None
    return markdown_table(
        merge_seeds(rows, keys=("objective",)), ["objective", "first", "last"],
        headers={"first": "accuracy reward, first quarter", "last": "accuracy reward, last quarter"},
        formats={"first": ".3f", "last": ".3f"},
        note="Mean accuracy reward of the GRPO completions over the first and the last quarter of the training steps "
             "(training prompts, sampled at temperature 1).",
    )



# ---- the document -------------------------------------------------------------------------------------------------


def render_report(results: Mapping) -> str:
    """The whole ``report.md``."""
    n = _n(results)
    lines = [f"# EKSFT demo: the paper in miniature (profile `{results['profile']}`)", ""]
    lines += ["## Summary", ""]
    for paragraph in summary(results):
        lines += [paragraph, ""]
    lines += ["## Results", "", render_table(results).rstrip(), ""]
    lines += [f"The base row is the shared starting point of every objective. Columns: avg@{n} is the mean accuracy "
              f"over the {n} samples of a problem; pass@k is the unbiased estimator of Chen et al. (2021).", ""]  # fmt: skip
    token_sets = _token_set_table(results)
    if token_sets:
        lines += ["## Entropy and KL token sets during SFT", "", token_sets.rstrip(), ""]
    rl = _rl_table(results)
    if rl:
        lines += ["## GRPO training reward", "", rl.rstrip(), ""]
    if results.get("plots"):
        lines += ["## Plots", ""]
        for title, name in results["plots"].items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += ["## Reproduce", "", "```bash",
              f"eksft demo --profile {results['profile']} --seeds {len(results['seeds'])}", "```", ""]  # fmt: skip
    timings = results.get("timings") or {}
    if "total" in timings:
        lines += [f"This run took {timings['total']:.0f} s with {results.get('threads', '?')} thread(s) "
                  f"(base model: {timings.get('base', 0):.0f} s). Every number above is in `results.json`; the "
                  "models, their training logs and the evaluation samples are under `runs/`.", ""]  # fmt: skip
    return "\n".join(lines)

