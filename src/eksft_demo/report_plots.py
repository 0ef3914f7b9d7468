"""The demo report's plots: pass@k curves of each stage, SFT and GRPO training curves, drift and token histograms."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .comparison import RL_METRICS, STAGE_NAMES, _entries, _metric, _n


def pass_at_k_curves(results: Mapping, stage: str) -> dict[str, list[tuple[int, float]]]:
    """pass@k for k = 1..n of the base and of each objective's model at ``stage`` (mean over seeds)."""
    n = _n(results)
    curves = {"base": [(k, _metric(_entries(results, None, "base"), n, k)) for k in range(1, n + 1)]}
    for objective in results["objectives"]:
        entries = _entries(results, objective, stage)
        if entries:
            curves[objective] = [(k, _metric(entries, n, k)) for k in range(1, n + 1)]
    return curves


def make_plots(results: Mapping, output_dir: str | Path, token_values: Mapping | None = None) -> dict[str, str]:
    """Write the PNGs into ``output_dir``; returns ``{title: file name}`` in the order the report shows them.

    Training curves, drift and histograms show the first seed; pass@k curves are means over seeds.
    """
    from eksft.analysis import plots
    from eksft.analysis.token_sets import read_token_stats
    from eksft.files import read_jsonl

    output_dir = Path(output_dir)
    seed = results["seeds"][0]
    first = [m for m in results["models"] if m["seed"] == seed]
    written: dict[str, str] = {}

    sft_runs = {m["objective"]: read_token_stats(m["path"]) for m in first if m["stage"] == "sft"}
    if sft_runs:
        plots.plot_training_curves(
            sft_runs, output_dir / "sft_training_curves.png",
            metrics=("loss", "ce", "mean_entropy", "mean_kl", "frac_masked", "iou"),
            title=f"SFT training curves (seed {seed})",
        )  # fmt: skip
        written["SFT training curves: loss, cross-entropy of imitated tokens, entropy, KL to the reference, "
                "fraction of masked tokens and the entropy/KL set IoU"] = "sft_training_curves.png"  # fmt: skip
    rl_runs = {}
    for m in first:
        log = Path(m["path"]) / "grpo_log.jsonl"
        if m["stage"] == "rl" and log.is_file():
            rl_runs[m["objective"]] = [{RL_METRICS.get(k, k): v for k, v in r.items()} for _, r in read_jsonl(log, torn_tail_ok=True)]
    if rl_runs:
        plots.plot_training_curves(
            rl_runs, output_dir / "rl_training_curves.png",
            metrics=tuple(RL_METRICS.values()),
            title=f"GRPO training curves (seed {seed})",
        )  # fmt: skip
        written["GRPO training curves: accuracy and format rewards, completion length, entropy"] = "rl_training_curves.png"
    for stage in ("sft", "rl"):
        curves = pass_at_k_curves(results, stage)
        if len(curves) > 1:
            name = f"pass_at_k_{stage}.png"
            plots.plot_pass_at_k(curves, output_dir / name,
                                 title=f"pass@k on held-out problems: base and {STAGE_NAMES[stage]}")  # fmt: skip
            written[f"pass@k for k = 1..{_n(results)}: base and {STAGE_NAMES[stage]} models"] = name
    for stage in ("sft", "rl"):
        drifts = {m["objective"]: {"total": m["drift"], "groups": {g: {"relative": v} for g, v in m["drift_groups"].items()}}
                  for m in first if m["stage"] == stage and m.get("drift_groups")}  # fmt: skip
        if drifts:
            name = f"drift_{stage}.png"
            plots.plot_drift_per_layer(drifts, output_dir / name,
                                       title=f"Parameter drift from the base: {STAGE_NAMES[stage]} (seed {seed})")  # fmt: skip
            written[f"Parameter drift per layer: {STAGE_NAMES[stage]} models"] = name
    for stage in ("sft", "rl"):
        values = {m["objective"]: token_values[(seed, m["label"])] for m in first
                  if m["stage"] == stage and token_values and (seed, m["label"]) in token_values}  # fmt: skip
        if values:
            name = f"token_histograms_{stage}.png"
            plots.plot_token_histograms(values, output_dir / name,
                                        title=f"Per-token entropy and KL to the base on held-out conversations: "
                                              f"{STAGE_NAMES[stage]} (seed {seed})")  # fmt: skip
            written[f"Entropy and KL(model ‖ base) histograms: {STAGE_NAMES[stage]} models"] = name
    return written
