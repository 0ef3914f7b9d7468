"""The Markdown table writer: shape, alignment, mean ± std over seeds, missing and non-finite values."""

import math

import pytest

from eksft.analysis.table import format_number, markdown_table, mean_std, merge_seeds


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_shape_and_alignment():
    rows = [
        {"objective": "nll", "stage": "sft", "avg@8": 0.25, "pass@8": 0.5, "kl_to_base": 0.1234567, "drift": 0.012},
        {"objective": "eksft", "stage": "grpo", "avg@8": 0.3, "pass@8": None, "kl_to_base": 0.05, "drift": 0.0101},
    ]
    columns = ["objective", "stage", "avg@8", "pass@8", "kl_to_base", "drift"]
    text = markdown_table(rows, columns, formats={"avg@8": ".1%", "pass@8": ".1%"}, headers={"kl_to_base": "KL"})
    lines = text.strip().split("\n")
    assert len(lines) == 2 + len(rows)
    assert cells(lines[0]) == ["objective", "stage", "avg@8", "pass@8", "KL", "drift"]
    assert cells(lines[1]) == ["---", "---", "---:", "---:", "---:", "---:"]
    assert cells(lines[2]) == ["nll", "sft", "25.0%", "50.0%", "0.1235", "0.012"]
    assert cells(lines[3]) == ["eksft", "grpo", "30.0%", "–", "0.05", "0.0101"]
    assert all(len(cells(line)) == len(columns) for line in lines)


def test_mean_and_std_over_seeds():
    text = markdown_table([{"m": "a", "x": [1.0, 2.0, 3.0], "y": [0.5], "z": [0.1, 0.3]}], ["m", "x", "y", "z"],
                          formats={"z": ".2f"})  # fmt: skip
    assert cells(text.split("\n")[2]) == ["a", "2 ± 1", "0.5", "0.20 ± 0.14"]
    assert mean_std([2.0]) == (2.0, 0.0)
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))


def test_merge_seeds():
    rows = [
        {"objective": "nll", "stage": "sft", "seed": 0, "avg@8": 0.2, "note": "x"},
        {"objective": "eksft", "stage": "sft", "seed": 0, "avg@8": 0.4},
        {"objective": "nll", "stage": "sft", "seed": 1, "avg@8": 0.4, "note": "y"},
    ]
    merged = merge_seeds(rows)
    assert [(r["objective"], r["stage"], r["seeds"]) for r in merged] == [("nll", "sft", 2), ("eksft", "sft", 1)]
    assert merged[0]["avg@8"] == [0.2, 0.4] and merged[0]["note"] == "x"
    assert cells(markdown_table(merged, ["objective", "avg@8"]).split("\n")[2]) == ["nll", "0.3 ± 0.1414"]


def test_numbers_and_odd_cells():
    assert format_number(float("nan")) == "nan"
    assert format_number(float("-inf")) == "-inf"
    assert format_number(0.0) == "0"
    assert format_number(1.5e-7) == "1.500e-07"
    assert format_number(106880) == "106880"
    assert format_number(3.0, "d") == "3"
    assert format_number(0.5, lambda v: f"{100 * v:.0f} pts") == "50 pts"
    text = markdown_table([{"a": "x|y", "b": float("nan")}, {}], ["a", "b"])
    assert text.split("\n")[2] == "| x\\|y | nan |"  # a pipe in a cell is escaped, NaN is shown
    assert cells(text.split("\n")[3]) == ["–", "–"]
    with pytest.raises(ValueError):
        markdown_table([], [])
