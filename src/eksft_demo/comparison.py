"""The numbers behind the demo report's verdicts: per-problem accuracies of a model, and the paired comparison of two
models with its noise level (twice the standard error over the test problems, or over the seeds, whichever is
larger)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from eksft.evaluation.metrics import pass_at_k

STAGES = ("base", "sft", "rl")
BASE_OBJECTIVE = "(none)"
STAGE_NAMES = {"base": "base", "sft": "SFT", "rl": "SFT + GRPO"}
# GRPO log names -> the names the RL training-curve panels show
RL_METRICS = {"rewards/accuracy_reward/mean": "accuracy reward", "rewards/format_reward/mean": "format reward",
              "completions/mean_length": "completion length (tokens)", "entropy": "entropy (nats)"}  # fmt: skip  # the objective column of the base row, shared by every objective


def _n(results: Mapping) -> int:
    return int(results["settings"]["eval_samples"])


def _ks(results: Mapping) -> list[int]:
    n = _n(results)
    ks = sorted({int(k) for k in results["settings"].get("eval_ks", (1, n))} | {n})
    return [k for k in ks if k > 1]  # pass@1 is avg@n (the unbiased estimate), shown once


def _entries(results: Mapping, objective: str | None, stage: str) -> list[dict]:
    return [m for m in results["models"] if m["stage"] == stage and (stage == "base" or m["objective"] == objective)]


def _per_problem(entries: Sequence[Mapping], n: int, k: int | None) -> list[float]:
    """Per test problem: accuracy (``k=None``) or pass@k, averaged over the seeds' entries."""
    columns = []
    for entry in entries:
        counts = entry["correct"]
        columns.append([c / n if k is None else pass_at_k(n, c, k) for c in counts])
    return [sum(values) / len(values) for values in zip(*columns, strict=True)]


def _metric(entries: Sequence[Mapping], n: int, k: int | None) -> float:
    values = _per_problem(entries, n, k)
    return sum(values) / len(values)


def _mean(entries: Sequence[Mapping], name: str) -> float | None:
    values = [e[name] for e in entries if isinstance(e.get(name), (int, float))]
    return sum(values) / len(values) if values else None


class Comparison:
    """A paired difference ``a - b`` with its standard error.

    ``a`` and ``b`` are per-problem values (averaged over seeds) on the same test problems: the standard error of
    the mean difference over problems measures the noise of drawing the problems and the samples. With several
    seeds, ``seed_deltas`` (the difference of the two cells' metrics within each seed: same data, same seed) also
    give a standard error over seeds, which measures the training's randomness; the larger of the two is used.
    """

    def __init__(self, a: Sequence[float], b: Sequence[float], seed_deltas: Sequence[float] = ()) -> None:
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        self.a = sum(a) / len(a)
        self.b = sum(b) / len(b)
        self.delta = self.a - self.b
        self.se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        if len(seed_deltas) > 1:
            self.se = max(self.se, statistics.stdev(seed_deltas) / math.sqrt(len(seed_deltas)))

    @property
    def resolved(self) -> bool:
        """The difference exceeds twice its standard error (or every problem moved the same way by the same amount)."""
        if self.delta == 0:
            return False
        return abs(self.delta) > 2 * self.se

    def verdict(self, unit: str = " points", scale: float = 100) -> str:
        size = f"{self.delta * scale:+.1f}{unit}"
        if self.delta == 0:
            return "no difference"
        if not self.resolved:
            return f"{size}, within the noise (2 SE = {2 * self.se * scale:.1f}{unit})"
        return f"{size}, beyond the noise (2 SE = {2 * self.se * scale:.1f}{unit})"


def compare(results: Mapping, left: tuple[str | None, str], right: tuple[str | None, str],
            k: int | None = None) -> Comparison:  # fmt: skip
    """Paired comparison of two (objective, stage) cells on accuracy (``k=None``) or pass@k."""
    n = _n(results)
    lefts, rights = _entries(results, *left), _entries(results, *right)
    by_seed = [([e for e in lefts if e["seed"] == s], [e for e in rights if e["seed"] == s]) for s in results["seeds"]]
    seed_deltas = [_metric(a, n, k) - _metric(b, n, k) for a, b in by_seed if a and b]
    return Comparison(_per_problem(lefts, n, k), _per_problem(rights, n, k), seed_deltas)
