"""pass@k and avg@n over sampled completions.

``pass_at_k`` is the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on Code":
with ``n`` samples of which ``c`` are correct, pass@k = 1 - C(n-c, k) / C(n, k), the probability that a random
k-subset of the samples holds at least one correct one. We use the product form
``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms the (huge) binomial coefficients.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

__all__ = ["avg_at_n", "pass_at_k", "pass_at_k_table"]


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (requires n >= 1, 0 <= c <= n, 1 <= k <= n)."""
    n, c, k = _as_int("n", n), _as_int("c", c), _as_int("k", k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def avg_at_n(correct: Sequence[bool]) -> float:
    """Fraction of the ``n`` samples that are correct (the mean accuracy, avg@n)."""
    if len(correct) == 0:
        raise ValueError("avg_at_n needs at least one sample, got an empty list")
    return sum(bool(x) for x in correct) / len(correct)


def pass_at_k_table(correct_by_problem: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """Means over problems: ``{"avg@n": ..., "pass@1": ..., "pass@8": ...}`` for each k in ``ks``.

    Problems may have different sample counts, but each needs at least ``max(ks)`` of them.
    """
    if not correct_by_problem:
        raise ValueError("pass_at_k_table needs at least one problem, got none")
    ks = list(dict.fromkeys(ks))  # a repeated k would be summed twice
    sums = dict.fromkeys(["avg@n", *(f"pass@{k}" for k in ks)], 0.0)
    for problem, correct in correct_by_problem.items():
        try:
            sums["avg@n"] += avg_at_n(correct)
            for k in ks:
                sums[f"pass@{k}"] += pass_at_k(len(correct), sum(bool(x) for x in correct), k)
        except ValueError as error:
            raise ValueError(f"problem {problem!r}: {error}") from None
    return {key: total / len(correct_by_problem) for key, total in sums.items()}
