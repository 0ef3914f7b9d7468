"""pass@k against brute force over all k-subsets, argument checks, avg@n and the table helper."""

from __future__ import annotations

import itertools
import math

import pytest

from eksft.evaluation import pass_at_k
from eksft.evaluation.metrics import avg_at_n, pass_at_k_table


def _brute_force(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_brute_force(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_closed_form_and_edges() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(8, 6, 3) == 1.0  # n - c < k
    # large n: the product form stays finite where the binomials would be astronomically large
    assert pass_at_k(1000, 10, 500) == pytest.approx(1 - math.comb(990, 500) / math.comb(1000, 500))


@pytest.mark.parametrize(
    ("n", "c", "k", "name"),
    [
        (0, 0, 1, "n"),
        (-1, 0, 1, "n"),
        (4, 5, 1, "c"),
        (4, -1, 1, "c"),
        (4, 1, 0, "k"),
        (4, 1, 5, "k"),
        (2.5, 1, 1, "n"),
        (4, 1.0, 1, "c"),
        (4, 1, "2", "k"),
        (4, True, 1, "c"),
    ],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} "):
        pass_at_k(n, c, k)


def test_avg_at_n() -> None:
    assert avg_at_n([True, False, False, True]) == 0.5
    assert avg_at_n([False]) == 0.0
    with pytest.raises(ValueError):
        avg_at_n([])


def test_pass_at_k_table_is_the_mean_over_problems() -> None:
    correct = {"p1": [True, False] * 4, "p2": [False] * 8, "p3": [True] * 3 + [False] * 5}
    table = pass_at_k_table(correct, [1, 8, 1])
    assert set(table) == {"avg@n", "pass@1", "pass@8"}
    assert table["avg@n"] == pytest.approx((0.5 + 0 + 3 / 8) / 3)
    assert table["pass@1"] == pytest.approx(table["avg@n"])  # pass@1 is the mean accuracy
    assert table["pass@8"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="p2"):
        pass_at_k_table({"p1": [True] * 8, "p2": [True] * 4}, [8])
    with pytest.raises(ValueError):
        pass_at_k_table({}, [1])


def test_pass_at_k_table_uses_each_problem_own_sample_count() -> None:
    # 16 and 6 samples per problem, k up to 4: pass@4 picks 4 of each problem's own samples (n = 16, n = 6)
    correct = {"p1": [True] * 2 + [False] * 14, "p2": [False] * 8 + [True] * 8, "p3": [False] * 5 + [True]}
    table = pass_at_k_table(correct, [1, 4])
    assert _brute_force(16, 2, 4) == pytest.approx(1 - 1001 / 1820)  # 1 - C(14, 4) / C(16, 4)
    expected = (_brute_force(16, 2, 4) + _brute_force(16, 8, 4) + _brute_force(6, 1, 4)) / 3
    assert table["pass@4"] == pytest.approx(expected, abs=1e-12)
    assert table["pass@1"] == pytest.approx((2 / 16 + 8 / 16 + 1 / 6) / 3, abs=1e-12)
