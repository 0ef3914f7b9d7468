"""PNG plots of the analysis, with matplotlib's object API (no pyplot state, no display needed).

Every function takes data (not files) and an output path, writes the PNG atomically (a temporary file renamed into
place, so a reader never sees half an image) and returns the path:

* :func:`plot_training_curves` - the trainer's metrics against the step, one panel per metric, runs overlaid;
* :func:`plot_pass_at_k` - pass@k against k = 1..n, one line per model (:func:`pass_at_k_curve` computes it);
* :func:`plot_drift_per_layer` - relative L2 drift of each parameter group, one bar per model;
* :func:`plot_token_histograms` - per-token entropy (models vs base) and KL(model || base) on held-out text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from .token_sets import TRAINING_METRICS, metric_series

__all__ = [
    "pass_at_k_curve",
    "plot_drift_per_layer",
    "plot_pass_at_k",
    "plot_token_histograms",
    "plot_training_curves",
    "save_figure",
]

_TITLES = {
    "loss": "training loss",
    "ce": "cross-entropy on imitated tokens",
    "entropy_term": "entropy term (-λ_H · mean H / log|V|)",
    "kl_term": "KL term (λ_KL · mean KL)",
    "mean_entropy": "mean token entropy (nats)",
    "mean_kl": "mean KL(policy || reference) (nats)",
    "frac_masked": "fraction of tokens masked",
    "frac_entropy_set": "fraction in the entropy set",
    "frac_kl_set": "fraction in the KL set",
    "iou": "IoU of entropy and KL sets",
}


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as a PNG at ``path`` atomically (temporary sibling + rename); returns the path."""
    from ..files import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    return path


def _finite(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_training_curves(
    runs: Mapping[str, Sequence[Mapping]],
    path: str | os.PathLike,
    metrics: Sequence[str] = TRAINING_METRICS,
    title: str = "Training curves",
) -> Path:
    """One panel per metric (those some run logged), value against step, one line per run label.

    ``runs`` maps a label to that run's records (what ``read_token_stats`` returns). A run without a metric
    (plain SFT logs no KL) is simply absent from that panel.
    """
    series = {name: {label: _finite(metric_series(records, name)) for label, records in runs.items()}
              for name in metrics}  # fmt: skip
    shown = [name for name in metrics if any(xs for xs, _ in series[name].values())]
    if not shown:
        raise ValueError(f"no run logged any of {', '.join(metrics)}; nothing to plot")
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    figure = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    colors = {label: f"C{i % 10}" for i, label in enumerate(runs)}
    for ax, name in zip(axes, shown, strict=False):
        for label, (xs, ys) in series[name].items():
            if xs:
                ax.plot(xs, ys, color=colors[label], label=label, marker="." if len(xs) < 30 else None, lw=1.3)
        ax.set_title(_TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes[: len(shown)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.suptitle(title)
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
    return save_figure(figure, path)


def pass_at_k_curve(correct_by_problem: Mapping[object, Sequence[bool]]) -> list[tuple[int, float]]:
    """``[(k, pass@k)]`` for k = 1..n, n the smallest sample count of any problem (unbiased estimator, mean over
    problems). Each problem's list holds one bool per sample."""
    from ..evaluation.metrics import pass_at_k_table

    if not correct_by_problem:
        raise ValueError("pass_at_k_curve needs at least one problem")
    n = min(len(c) for c in correct_by_problem.values())
    if n < 1:
        raise ValueError("every problem needs at least one sample")
    table = pass_at_k_table(correct_by_problem, range(1, n + 1))
    return [(k, table[f"pass@{k}"]) for k in range(1, n + 1)]


def plot_pass_at_k(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike,
    title: str = "pass@k",
) -> Path:
    """pass@k (y, in % when every value is a fraction) against k (x, log2 scale when k reaches 16), one line per model."""
    if not any(curves.values()):
        raise ValueError("no pass@k values to plot")
    figure = Figure(figsize=(6, 4.2))
    ax = figure.subplots()
    values = [v for points in curves.values() for _, v in points]
    fractions = all(0 <= v <= 1 for v in values if math.isfinite(v))
    max_k = max(k for points in curves.values() for k, _ in points)
    for i, (label, points) in enumerate(curves.items()):
        ks, ys = _finite(sorted(points))
        if ks:
            ax.plot(ks, ys, marker="o" if len(ks) <= 32 else None, ms=3.5, color=f"C{i % 10}", label=label)
    if max_k >= 16:  # k = 1, 2, 4, ..., n evenly spaced, labelled as plain integers
        ax.set_xscale("log", base=2)
        ax.set_xticks([2**i for i in range(int(math.log2(max_k)) + 1)])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if fractions:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def _group_values(drift) -> dict[str, float]:
    if hasattr(drift, "per_group"):
        return drift.per_group()
    if isinstance(drift, Mapping) and isinstance(drift.get("groups"), Mapping):  # DriftReport.to_dict()
        return {name: g["relative"] if isinstance(g, Mapping) else g for name, g in drift["groups"].items()}
    return dict(drift)


def plot_drift_per_layer(
    drifts: Mapping[str, object],
    path: str | os.PathLike,
    title: str = "Parameter drift from the base model",
) -> Path:
    """Grouped bars: relative L2 drift ||θ - θ0|| / ||θ0|| of each parameter group (x), one bar per model.

    ``drifts`` maps a model label to a ``DriftReport``, its ``to_dict()``, or ``{group: relative drift}``.
    """
    per_model = {label: _group_values(drift) for label, drift in drifts.items()}
    groups: list[str] = []
    for values in per_model.values():
        groups += [g for g in values if g not in groups]
    if not groups:
        raise ValueError("no drift values to plot")
    totals = {label: drift.get("total") if isinstance(drift, Mapping) and "groups" in drift else
              getattr(drift, "relative", None) for label, drift in drifts.items()}  # fmt: skip
    figure = Figure(figsize=(max(6.0, 0.55 * len(groups) * max(1, len(per_model)) ** 0.5 + 2), 4.2))
    ax = figure.subplots()
    width = 0.8 / len(per_model)
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(per_model.items()):
        heights = [values.get(g, np.nan) for g in groups]
        heights = [h if math.isfinite(h) else np.nan for h in heights]
        total = totals[label]
        shown = f"{label} (total {total:.3g})" if isinstance(total, (int, float)) else label
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=shown, color=f"C{i % 10}")
    ax.set_xticks(x, groups, rotation=45 if len(groups) > 8 else 0, ha="right" if len(groups) > 8 else "center")
    ax.set_xlabel("parameter group")
    ax.set_ylabel("relative drift ||θ - θ0|| / ||θ0||")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_token_histograms(
    values: Mapping[str, object],
    path: str | os.PathLike,
    base_label: str = "base",
    bins: int = 50,
    title: str = "Per-token entropy and KL on held-out text",
) -> Path:
    """Two panels: per-token entropy of each model and of the base; per-token KL(model || base) of each model.

    ``values`` maps a model label to its ``TokenValues`` (``eksft.analysis.shift.token_values``) or anything with
    ``kl``, ``entropy`` and ``base_entropy`` arrays; the base entropy is taken from the first. Counts are on a log
    scale: most tokens sit near 0 KL and the tail is what differs between objectives.
    """
    if not values:
        raise ValueError("no per-token values to plot")
    arrays = {label: {name: np.asarray(getattr(v, name), dtype=np.float64) for name in ("kl", "entropy", "base_entropy")}
              for label, v in values.items()}  # fmt: skip
    base_entropy = next(iter(arrays.values()))["base_entropy"]

    def finite(a: np.ndarray) -> np.ndarray:
        return a[np.isfinite(a)]

    # entropy bins span the data (a near-uniform model sits in a narrow band far from 0); KL bins start at 0
    entropies = np.concatenate([finite(base_entropy), *(finite(a["entropy"]) for a in arrays.values())])
    low, high = (float(entropies.min()), float(entropies.max())) if entropies.size else (0.0, 1.0)
    pad = max(1e-3, 0.02 * (high - low))
    entropy_bins = np.linspace(max(0.0, low - pad), high + pad, bins + 1)
    kl_max = max(float(finite(a["kl"]).max(initial=0)) for a in arrays.values())
    kl_bins = np.linspace(0, max(kl_max * 1.02, 1e-6), bins + 1)

    figure = Figure(figsize=(11, 4.2))
    ax_h, ax_kl = figure.subplots(1, 2)
    ax_h.hist(finite(base_entropy), bins=entropy_bins, color="black", histtype="step", lw=1.8,
              label=f"{base_label} (mean {finite(base_entropy).mean() if base_entropy.size else math.nan:.3g})")  # fmt: skip
    for i, (label, a) in enumerate(arrays.items()):
        color = f"C{i % 10}"
        entropy, kl = finite(a["entropy"]), finite(a["kl"])
        ax_h.hist(entropy, bins=entropy_bins, color=color, histtype="step", lw=1.3,
                  label=f"{label} (mean {entropy.mean() if entropy.size else math.nan:.3g})")  # fmt: skip
        ax_kl.hist(kl, bins=kl_bins, color=color, histtype="step", lw=1.3,
                   label=f"{label} (mean {kl.mean() if kl.size else math.nan:.3g})")  # fmt: skip
    ax_h.set_title("per-token entropy H(p_t)")
    ax_h.set_xlabel("entropy (nats)")
    ax_kl.set_title(f"per-token KL(model || {base_label})")
    ax_kl.set_xlabel("KL (nats)")
    for ax in (ax_h, ax_kl):
        ax.set_yscale("log")
        ax.set_ylabel("tokens (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)
