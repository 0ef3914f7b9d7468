"""The demo's ``report.md``: the paper-shaped table, the plots, and a paragraph written from the numbers.

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

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from eksft.analysis.table import markdown_table, merge_seeds
from eksft.evaluation.metrics import pass_at_k

__all__ = ["Comparison", "compare", "make_plots", "render_report", "summary", "table_rows"]

STAGES = ("base", "sft", "rl")
STAGE_NAMES = {"base": "base", "sft": "SFT", "rl": "SFT + GRPO"}
BASE_OBJECTIVE = "(none)"
# GRPO log names -> the names the RL training-curve panels show
RL_METRICS = {"rewards/accuracy_reward/mean": "accuracy reward", "rewards/format_reward/mean": "format reward",
              "completions/mean_length": "completion length (tokens)", "entropy": "entropy (nats)"}  # fmt: skip  # the objective column of the base row, shared by every objective


# ---- numbers ------------------------------------------------------------------------------------------------------


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


# ---- the paragraph -------------------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _names(items: Sequence[str]) -> str:
    items = [f"`{i}`" for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _rank(results: Mapping, stage: str, k: int | None) -> list[tuple[str, float]]:
    n = _n(results)
    scored = [(o, _metric(_entries(results, o, stage), n, k)) for o in results["objectives"]
              if _entries(results, o, stage)]  # fmt: skip
    return sorted(scored, key=lambda item: -item[1])


def _best_sentence(results: Mapping, stage: str, k: int | None, what: str) -> str:
    ranked = _rank(results, stage, k)
    if not ranked:
        return ""
    top = [o for o, v in ranked if v == ranked[0][1]]
    listing = ", ".join(f"`{o}` {_pct(v)}" for o, v in ranked)
    if len(top) == len(ranked):
        return f"After {STAGE_NAMES[stage]}, every objective has the same {what} ({_pct(ranked[0][1])})."
    leader = top[0] if len(top) == 1 else None
    if leader is None:
        return f"After {STAGE_NAMES[stage]}, {_names(top)} tie for the highest {what} ({listing})."
    runner = next(o for o, v in ranked if o != leader)
    gap = compare(results, (leader, stage), (runner, stage), k)
    return (f"After {STAGE_NAMES[stage]}, the highest {what} is `{leader}`'s ({listing}); its lead over `{runner}` "
            f"is {gap.verdict()}.")  # fmt: skip


def _boxed_share(entries: Sequence[Mapping], n: int) -> tuple[float, float] | None:
    """(share of samples with a boxed answer, accuracy among those samples), pooled over seeds."""
    if not entries or any(e.get("boxed") is None for e in entries):
        return None
    boxed = sum(sum(e["boxed"]) for e in entries)
    correct = sum(sum(e["correct"]) for e in entries)
    total = n * sum(len(e["boxed"]) for e in entries)
    return boxed / total, (correct / boxed if boxed else math.nan)


def _format_sentence(results: Mapping) -> str:
    """Separates the answer format from the arithmetic: how often each model boxes, and how often a box is right."""
    n = _n(results)
    base = _boxed_share(_entries(results, None, "base"), n)
    shares = [(o, _boxed_share(_entries(results, o, "sft"), n)) for o in results["objectives"]]
    shares = [(o, s) for o, s in shares if s is not None]
    if base is None or not shares:
        return ""

    def accuracy(value: float) -> str:
        return "–" if math.isnan(value) else _pct(value)

    boxes = ", ".join(f"`{o}` {_pct(s[0])}" for o, s in shares)
    right = ", ".join(f"`{o}` {accuracy(s[1])}" for o, s in shares)
    return (f"Share of samples that end in a boxed answer: base {_pct(base[0])}; after SFT {boxes}. Of the boxed "
            f"answers, base {accuracy(base[1])} are right; after SFT {right}.")  # fmt: skip


def _gap_sentence(results: Mapping, stage: str) -> str:
    """What more samples buy each model, pass@n - avg@n: small when a model keeps giving the same answers."""
    n = _n(results)
    gaps = [(o, _metric(_entries(results, o, stage), n, n) - _metric(_entries(results, o, stage), n, None))
            for o in results["objectives"] if _entries(results, o, stage)]  # fmt: skip
    if len(gaps) < 2:
        return ""
    gaps.sort(key=lambda item: -item[1])
    base = _entries(results, None, "base")
    base_gap = _metric(base, n, n) - _metric(base, n, None)
    listing = ", ".join(f"`{o}` {100 * g:.1f}" for o, g in gaps)
    return (f"What {n} samples add over one (pass@{n} − avg@{n}, points) after {STAGE_NAMES[stage]}: {listing}; "
            f"base {100 * base_gap:.1f}.")  # fmt: skip


def _iou_sentence(results: Mapping) -> str:
    values = [e["token_sets"]["iou"]["mean"] for e in _entries(results, "eksft", "sft")
              if isinstance((e.get("token_sets") or {}).get("iou"), Mapping)]  # fmt: skip
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return ""
    return (f"EKSFT's entropy and KL token sets overlapped with a mean IoU of {sum(values) / len(values):.2f} over "
            "training (the paper reports about 0.5).")  # fmt: skip


def summary(results: Mapping) -> list[str]:
    """The paragraphs of the report's summary, each chosen by the numbers of ``results``."""
    n, settings, objectives = _n(results), results["settings"], list(results["objectives"])
    problems, seeds = settings["eval_problems"], results["seeds"]
    base_entries = _entries(results, None, "base")
    base_avg, base_pass = _metric(base_entries, n, None), _metric(base_entries, n, n)
    paragraphs = []

    # what was run
    base = results.get("base") or {}
    config = base.get("config") or {}
    corpus = ""
    if "boxed_chat_fraction" in config:
        corpus = (f"; every solution style as plain text, plus chat conversations of which "
                  f"{100 * config['boxed_chat_fraction']:.0f}% end in a boxed answer")  # fmt: skip
    paragraphs.append(
        f"**What ran.** A {base.get('num_parameters', 0):,}-parameter Qwen3-architecture model was pre-trained for "
        f"{config.get('pretrain_steps', 0):,} steps on {base.get('documents', 0):,} documents of the synthetic "
        f"math world ({'built in this run' if base.get('built_now') else 'taken from the cache'}){corpus}. It was "
        f"fine-tuned on {settings['sft_examples']} chat examples ({settings['sft_steps']} steps; one solution style, "
        f"every answer boxed) with each of {len(objectives)} objectives ({_names(objectives)}) on identical data and "
        f"seeds, and each SFT model was trained with GRPO for {settings['grpo_steps']} steps. Every model was "
        f"evaluated on the same {problems} held-out test problems with {n} samples each; "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}."
    )  # fmt: skip

    # the base model
    if base_pass == 0:
        quality = ("it never solves a test problem, so there is nothing for SFT to preserve and nothing for RL to "
                   "reinforce at the start")  # fmt: skip
    elif base_avg >= 0.9:
        quality = "it is close to perfect already, which leaves little room for SFT or RL to show anything"
    else:
        quality = "it is neither useless nor perfect, so the later stages have room to improve it and to lose"
    diversity = ""
    if base_avg > 0 and base_pass > 1.2 * base_avg:
        diversity = (f" Its pass@{n} is {base_pass / base_avg:.1f} times its avg@{n}: different samples solve different "
                     "problems, the diversity that pass@k rewards.")  # fmt: skip
    paragraphs.append(f"**Base model.** avg@{n} {_pct(base_avg)}, pass@{n} {_pct(base_pass)}: {quality}.{diversity}")

    # SFT
    sft_lines = []
    moved = [(o, compare(results, (o, "sft"), (None, "base"))) for o in objectives if _entries(results, o, "sft")]
    up = [o for o, c in moved if c.resolved and c.delta > 0]
    down = [o for o, c in moved if c.resolved and c.delta < 0]
    same = [o for o, c in moved if not c.resolved]
    parts = []
    if up:
        parts.append(f"raised avg@{n} beyond the noise for {_names(up)}")
    if down:
        parts.append(f"lowered avg@{n} beyond the noise for {_names(down)}")
    if same:
        parts.append(f"changed avg@{n} only within the noise for {_names(same)}")
    if parts:
        sft_lines.append("Compared with the base, SFT " + "; ".join(parts) + ".")
    format_sentence = _format_sentence(results)
    if format_sentence:
        sft_lines.append(format_sentence)
    sft_lines.append(_best_sentence(results, "sft", None, f"avg@{n}"))
    sft_lines.append(_best_sentence(results, "sft", n, f"pass@{n}"))
    narrowed = [o for o in objectives if _entries(results, o, "sft")
                and (c := compare(results, (o, "sft"), (None, "base"), n)).resolved and c.delta < 0]  # fmt: skip
    if narrowed:
        sft_lines.append(f"SFT lowered pass@{n} below the base's beyond the noise for {_names(narrowed)}: those models "
                         "lost problems the base could solve in some sample.")  # fmt: skip
    kls = [(o, _mean(_entries(results, o, "sft"), "kl_to_base")) for o in objectives]
    kls = sorted([(o, v) for o, v in kls if v is not None], key=lambda item: item[1])
    if len(kls) > 1:
        sft_lines.append(f"Closest to the base in distribution (KL to base on held-out conversations): `{kls[0][0]}` "
                         f"({kls[0][1]:.4f} nats/token); furthest: `{kls[-1][0]}` ({kls[-1][1]:.4f}).")  # fmt: skip
    drifts = [(o, _mean(_entries(results, o, "sft"), "drift")) for o in objectives]
    drifts = sorted([(o, v) for o, v in drifts if v is not None], key=lambda item: item[1])
    if len(drifts) > 1:
        sft_lines.append(f"Smallest parameter drift: `{drifts[0][0]}` ({drifts[0][1]:.4f}); largest: "
                         f"`{drifts[-1][0]}` ({drifts[-1][1]:.4f}).")  # fmt: skip
    sft_lines.append(_gap_sentence(results, "sft"))
    sft_lines.append(_iou_sentence(results))
    paragraphs.append("**SFT.** " + " ".join(line for line in sft_lines if line))

    # RL
    rl_objectives = [o for o in objectives if _entries(results, o, "rl") and _entries(results, o, "sft")]
    if rl_objectives:
        changes = [(o, compare(results, (o, "rl"), (o, "sft"))) for o in rl_objectives]
        mean_change = sum(c.delta for _, c in changes) / len(changes)
        gained = [o for o, c in changes if c.resolved and c.delta > 0]
        lost = [o for o, c in changes if c.resolved and c.delta < 0]
        rl_lines = [f"GRPO changed avg@{n} by {100 * mean_change:+.1f} points on average over the objectives"]
        if gained:
            rl_lines[-1] += f"; the gain is beyond the noise for {_names(gained)}"
        if lost:
            rl_lines[-1] += f"; it lost beyond the noise for {_names(lost)}"
        if not gained and not lost:
            rl_lines[-1] += ", and for no objective is the change beyond the noise"
        rl_lines[-1] += "."
        rewards = [e["rl_reward"] for e in results["models"] if e["stage"] == "rl" and e.get("rl_reward")]
        if rewards:
            first = sum(r["first"] for r in rewards) / len(rewards)
            last = sum(r["last"] for r in rewards) / len(rewards)
            if last == first:
                rl_lines.append(f"The training accuracy reward stayed at {first:.3f} (mean over runs, first and last quarter "
                                "of the steps).")  # fmt: skip
            else:
                trend = "rose" if last > first else "fell"
                rl_lines.append(f"The training accuracy reward {trend} from {first:.3f} to {last:.3f} (mean over runs, "
                                "first and last quarter of the steps).")  # fmt: skip
        rl_lines.append(_best_sentence(results, "rl", None, f"avg@{n}"))
        rl_lines.append(_best_sentence(results, "rl", n, f"pass@{n}"))
        rl_lines.append(_gap_sentence(results, "rl"))
        paragraphs.append("**GRPO.** " + " ".join(line for line in rl_lines if line))

    # the paper's claims, EKSFT against plain SFT
    if "eksft" in objectives and "nll" in objectives:
        claims = []
        kl_e, kl_n = _mean(_entries(results, "eksft", "sft"), "kl_to_base"), _mean(_entries(results, "nll", "sft"), "kl_to_base")
        dr_e, dr_n = _mean(_entries(results, "eksft", "sft"), "drift"), _mean(_entries(results, "nll", "sft"), "drift")
        if kl_e is not None and kl_n is not None:
            closer = kl_e < kl_n
            drift_text = ""
            if dr_e is not None and dr_n is not None:
                drift_text = f"; parameter drift {dr_e:.4f} against {dr_n:.4f}"
            claims.append(f"(i) *EKSFT stays closer to the base than plain SFT*: "
                          f"{'supported' if closer else 'not supported'} here (KL to base {kl_e:.4f} against "
                          f"{kl_n:.4f} nats/token{drift_text}).")  # fmt: skip
        for label, stage, k, what in (
            ("(ii) *EKSFT keeps more diversity after SFT*", "sft", n, f"pass@{n}"),
            ("(iii) *EKSFT is a better start for RL*, in accuracy", "rl", None, f"avg@{n} after GRPO"),
            ("(iv) *EKSFT is a better start for RL*, in exploration", "rl", n, f"pass@{n} after GRPO"),
        ):
            if not (_entries(results, "eksft", stage) and _entries(results, "nll", stage)):
                continue
            c = compare(results, ("eksft", stage), ("nll", stage), k)
            if not c.resolved:
                verdict = "not resolved"
            else:
                verdict = "supported" if c.delta > 0 else "contradicted"
            claims.append(f"{label}: {verdict} here ({what}: EKSFT {_pct(c.a)}, plain SFT {_pct(c.b)}; "
                          f"{c.verdict()}).")  # fmt: skip
        paragraphs.append("**The paper's claims, EKSFT against plain SFT (`nll`).** " + " ".join(claims))

    # what the run cannot show
    n_models = len(objectives)
    typical = [compare(results, (o, "sft"), ("nll" if o != "nll" else objectives[-1], "sft")).se
               for o in objectives if _entries(results, o, "sft") and len(objectives) > 1]  # fmt: skip
    typical = [t for t in typical if math.isfinite(t)]
    resolution = (f"differences below about {200 * statistics.median(typical):.0f} points of avg@{n} are not "
                  f"resolved with {problems} test problems") if typical else f"{problems} test problems"  # fmt: skip
    seeds_text = ("one seed, so nothing here measures how much the results move from seed to seed (run with "
                  "`--seeds 3` for a spread)") if len(seeds) == 1 else (
                  f"{len(seeds)} seeds; the table's ± is their standard deviation")  # fmt: skip
    paragraphs.append(
        f"**What this run does not show.** The resolution is limited: {resolution}; {seeds_text}. The model has "
        f"{base.get('num_parameters', 0):,} parameters and the problems are synthetic arithmetic with "
        f"{n_models} objectives compared in one setting of their hyper-parameters, so the run checks that the "
        "pipeline works end to end and how these objectives behave at this scale, not whether the paper's results "
        "hold for real models and benchmarks."
    )  # fmt: skip
    return paragraphs


# ---- plots ----------------------------------------------------------------------------------------------------------


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

