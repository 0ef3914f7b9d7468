"""The report writer on synthetic numbers: the table's rows and cells, and a summary that follows the numbers."""

from __future__ import annotations

import math
import re

import pytest

from eksft_demo.report import BASE_OBJECTIVE, compare, render_report, render_table, summary, table_rows

N, PROBLEMS = 4, 20


def _entry(objective, stage, seed, correct, kl=None, drift=None, **extra):
    label = "base" if stage == "base" else f"{stage}-{objective}"
    return {"label": label, "objective": objective, "stage": stage, "seed": seed, "path": f"/nowhere/{label}",
            "metrics": {}, "correct": list(correct), "kl_to_base": kl, "entropy": 0.5, "drift": drift, **extra}


def _counts(solved: int, per_problem: int = N) -> list[int]:
    """``solved`` problems get ``per_problem`` correct samples, the rest none."""
    return [per_problem] * solved + [0] * (PROBLEMS - solved)


def make_results(*, base=4, sft=None, rl=None, kl=None, seeds=(0,), objectives=("nll", "eksft", "dft")) -> dict:
    """Results of a synthetic run: ``sft`` / ``rl`` / ``kl`` map an objective to its number of solved problems / KL."""
    sft = sft or {"nll": 6, "eksft": 6, "dft": 6}
    rl = rl or {"nll": 8, "eksft": 8, "dft": 8}
    kl = kl or {"nll": 0.2, "eksft": 0.1, "dft": 0.3}
    models = []
    for seed in seeds:
        models.append(_entry("base", "base", seed, [2] * base + [0] * (PROBLEMS - base), kl=0.0, drift=0.0))
        for o in objectives:
            models.append(_entry(o, "sft", seed, _counts(sft[o]), kl=kl[o], drift=0.01 + kl[o] / 10,
                                 token_sets={"iou": {"first": 0.0, "last": 0.5, "mean": 0.4, "steps": 10},
                                             "frac_masked": {"first": 0.2, "last": 0.3, "mean": 0.3, "steps": 10}}))
            models.append(_entry(o, "rl", seed, _counts(rl[o]), kl=kl[o] * 2, drift=0.02,
                                 rl_reward={"first": 0.1, "last": 0.3, "steps": 10}))
    return {
        "profile": "synthetic", "seeds": list(seeds), "objectives": list(objectives), "threads": 1,
        "settings": {"eval_samples": N, "eval_ks": [1, 2, N], "eval_problems": PROBLEMS, "eval_temperature": 1.0,
                     "shift_texts": 8, "sft_examples": 16, "sft_steps": 10, "grpo_steps": 5},
        "base": {"num_parameters": 1234, "documents": 100, "config": {"pretrain_steps": 10}, "built_now": True},
        "models": models, "plots": {"pass@k curves": "pass_at_k_sft.png"}, "timings": {"total": 12.0, "base": 3.0},
    }


def _table_lines(report: str) -> list[list[str]]:
    section = report.split("## Results", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table_has_a_row_per_objective_and_stage_with_finite_numbers():
    report = render_report(make_results())
    rows = _table_lines(report)
    header, body = rows[0], rows[2:]
    assert header[:2] == ["objective", "stage"] and f"avg@{N}" in header and f"pass@{N}" in header
    assert "KL to base" in header and "drift" in header
    keys = [(r[0], r[1]) for r in body]
    assert keys == [(BASE_OBJECTIVE, "base")] + [(o, s) for o in ("nll", "eksft", "dft") for s in ("SFT", "SFT + GRPO")]
    for row in body:
        for cell in row[2:]:
            assert math.isfinite(float(cell))


def test_table_values_are_the_metrics():
    # one value per seed (here one seed)
    rows = {(r["objective"], r["stage"]): r for r in table_rows(make_results(sft={"nll": 5, "eksft": 10, "dft": 0}))}
    assert rows[("eksft", "SFT")][f"avg@{N}"] == [pytest.approx(50.0)]  # 10 of 20 problems, every sample correct
    assert rows[("nll", "SFT")][f"pass@{N}"] == [pytest.approx(25.0)]
    assert rows[("dft", "SFT")][f"avg@{N}"] == [0.0]
    base = rows[(BASE_OBJECTIVE, "base")]
    assert base[f"avg@{N}"] == [pytest.approx(100 * 4 * 2 / N / PROBLEMS)]
    assert base["pass@2"][0] > base[f"avg@{N}"][0]


def test_several_seeds_give_mean_and_spread():
    results = make_results(seeds=(0, 1))
    results["models"][1]["correct"] = _counts(10)  # seed 0's nll SFT model differs from seed 1's
    table = render_table(results)
    assert "±" in table and "seeds 0, 1" in table
    nll_sft = next(line for line in table.splitlines() if line.startswith("| nll | SFT |"))
    assert re.search(r"40\.0 ± 14\.\d", nll_sft)  # 50% and 30%: mean 40, sample std 14.1


def _paragraph(paragraphs: list[str], title: str) -> str:
    return next(p for p in paragraphs if p.startswith(f"**{title}"))


def test_summary_follows_which_objective_wins_after_rl():
    eksft_wins = summary(make_results(rl={"nll": 4, "eksft": 16, "dft": 8}))
    nll_wins = summary(make_results(rl={"nll": 16, "eksft": 4, "dft": 8}))
    assert "the highest avg@4 is `eksft`'s" in _paragraph(eksft_wins, "GRPO")
    assert "the highest avg@4 is `nll`'s" in _paragraph(nll_wins, "GRPO")
    assert "(iii) *EKSFT is a better start for RL*, in accuracy: supported" in _paragraph(eksft_wins, "The paper")
    assert "(iii) *EKSFT is a better start for RL*, in accuracy: contradicted" in _paragraph(nll_wins, "The paper")
    assert "(iv) *EKSFT is a better start for RL*, in exploration: supported" in _paragraph(eksft_wins, "The paper")


def test_summary_says_unresolved_when_the_difference_is_noise():
    results = make_results(rl={"nll": 8, "eksft": 8, "dft": 8})
    # one problem more for EKSFT: a difference of 5 points that 20 problems cannot resolve
    results["models"] = [m if not (m["objective"] == "eksft" and m["stage"] == "rl") else {**m, "correct": _counts(9)}
                         for m in results["models"]]
    claims = _paragraph(summary(results), "The paper")
    assert "(iii) *EKSFT is a better start for RL*, in accuracy: not resolved" in claims and "within the noise" in claims
    gap = compare(results, ("eksft", "rl"), ("nll", "rl"))
    assert gap.delta == pytest.approx(0.05) and not gap.resolved


def test_summary_follows_the_kl_numbers():
    closer = _paragraph(summary(make_results(kl={"nll": 0.3, "eksft": 0.1, "dft": 0.2})), "The paper")
    further = _paragraph(summary(make_results(kl={"nll": 0.1, "eksft": 0.3, "dft": 0.2})), "The paper")
    assert "(i) *EKSFT stays closer to the base than plain SFT*: supported" in closer
    assert "(i) *EKSFT stays closer to the base than plain SFT*: not supported" in further
    sft = _paragraph(summary(make_results(kl={"nll": 0.3, "eksft": 0.1, "dft": 0.2})), "SFT")
    assert "Closest to the base in distribution (KL to base on held-out conversations): `eksft`" in sft
    assert "furthest: `nll`" in sft


def test_summary_describes_the_base_model():
    useless = _paragraph(summary(make_results(base=0)), "Base model")
    assert "never solves a test problem" in useless
    useful = _paragraph(summary(make_results(base=4)), "Base model")
    assert "neither useless nor perfect" in useful and "pass@4 20.0%" in useful and "avg@4 10.0%" in useful
    assert "times its avg@4" in useful  # two of four samples correct on the solved problems: pass@4 > avg@4


def test_summary_reports_sft_gains_and_losses_against_the_base():
    sft = _paragraph(summary(make_results(base=4, sft={"nll": 20, "eksft": 4, "dft": 0})), "SFT")
    assert "raised avg@4 beyond the noise for `nll`" in sft
    assert "lowered pass@4 below the base's beyond the noise for `dft`" in sft


def test_summary_states_the_seeds():
    one = _paragraph(summary(make_results()), "What this run does not show")
    assert "one seed" in one and "--seeds 3" in one
    two = _paragraph(summary(make_results(seeds=(0, 1))), "What this run does not show")
    assert "2 seeds" in two


def test_report_embeds_the_plots_and_the_reproduce_command():
    report = render_report(make_results())
    assert "![pass@k curves](pass_at_k_sft.png)" in report
    assert "eksft demo --profile synthetic --seeds 1" in report
    assert "## Entropy and KL token sets during SFT" in report and "## GRPO training reward" in report


def test_boxed_share_separates_format_from_arithmetic():
    results = make_results(base=4, sft={"nll": 10, "eksft": 4, "dft": 6})
    for m in results["models"]:  # the base boxes half of its samples, SFT models every one
        m["boxed"] = [N // 2 if m["stage"] == "base" else N] * PROBLEMS
    header = _table_lines(render_report(results))[0]
    assert "boxed" in header
    rows = {(r["objective"], r["stage"]): r for r in table_rows(results)}
    assert rows[(BASE_OBJECTIVE, "base")]["boxed"] == [50.0] and rows[("nll", "SFT")]["boxed"] == [100.0]
    sft = _paragraph(summary(results), "SFT")
    # base: 8 correct of 40 boxed samples; nll: 40 correct of 80 boxed samples
    assert "boxed answer: base 50.0%; after SFT `nll` 100.0%" in sft
    assert "Of the boxed answers, base 20.0% are right; after SFT `nll` 50.0%" in sft


def test_summary_reports_what_more_samples_add_and_the_iou():
    results = make_results(rl={"nll": 8, "eksft": 8, "dft": 8})
    for m in results["models"]:  # eksft's RL model: half the samples right on 16 problems; nll: all right on 8
        if m["objective"] == "eksft" and m["stage"] == "rl":
            m["correct"] = [N // 2] * 16 + [0] * 4
    grpo = _paragraph(summary(results), "GRPO")
    assert "What 4 samples add over one (pass@4 − avg@4, points) after SFT + GRPO: `eksft` 40.0, `nll` 0.0" in grpo
    assert "mean IoU of 0.40" in _paragraph(summary(results), "SFT")


def test_seed_to_seed_spread_widens_the_noise():
    # EKSFT's RL model solves 12 problems with seed 0 and 4 with seed 1; nll solves 8 with both. Over problems alone
    # (pooled seeds) the per-problem differences look consistent; over seeds the difference flips sign.
    results = make_results(seeds=(0, 1), rl={"nll": 8, "eksft": 8, "dft": 8})
    for m in results["models"]:
        if m["objective"] == "eksft" and m["stage"] == "rl":
            m["correct"] = _counts(12 if m["seed"] == 0 else 4)
    gap = compare(results, ("eksft", "rl"), ("nll", "rl"))
    assert gap.delta == pytest.approx(0.0)
    results["models"] = [m if not (m["objective"] == "eksft" and m["stage"] == "rl" and m["seed"] == 1)
                         else {**m, "correct": _counts(10)} for m in results["models"]]
    gap = compare(results, ("eksft", "rl"), ("nll", "rl"))  # +20 and +10 points: consistent over seeds
    assert gap.delta == pytest.approx(0.15) and gap.resolved
    results["models"] = [m if not (m["objective"] == "eksft" and m["stage"] == "rl" and m["seed"] == 1)
                         else {**m, "correct": _counts(7)} for m in results["models"]]
    gap = compare(results, ("eksft", "rl"), ("nll", "rl"))  # +20 and -5 points: the seeds disagree
    assert gap.delta == pytest.approx(0.075) and not gap.resolved
    assert gap.se == pytest.approx(0.125)  # stdev(0.2, -0.05) / sqrt(2), larger than the problems' SE
