"""The demo report's summary: sentences chosen by comparing the numbers of ``results.json`` (``eksft_demo.comparison``);
nothing is claimed that the numbers do not say."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from .comparison import STAGE_NAMES, _entries, _mean, _metric, _n, compare


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
