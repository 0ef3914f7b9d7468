"""What ``eksft analyze`` reads and writes besides the numbers: the held-out texts, the pass@k curves of ``eksft
eval`` output, ``analysis.md`` and the plots. The numbers themselves come from ``drift``, ``shift`` and
``token_sets``; the command (``eksft.commands.analyze``) checks the options and puts the output in place.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import UserError
from ..files import read_jsonl

PLOT_FILES = {
    "drift": "drift_per_layer.png",
    "histograms": "token_histograms.png",
    "training": "training_curves.png",
}


def render_messages(tokenizer, messages, where: str) -> str:
    if not all(isinstance(m, dict) for m in messages):
        raise UserError(f"{where}: 'messages' must be a list of {{role, content}} objects; fix or delete that line")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: a 'messages' text needs a tokenizer with a chat template; give 'text' instead")
    return tokenizer.apply_chat_template(messages, tokenize=False)


def text_of(record: dict, field: str | None, tokenizer, where: str) -> str:
    """The text of one held-out record: its string field, or its messages rendered with the chat template."""
    names = [field] if field else ["text", "messages"]
    name = next((k for k in names if k in record), None)
    if name is None:
        fields = ", ".join(list(map(str, record))[:10]) or "none"
        raise UserError(f"{where}: no field {' or '.join(repr(k) for k in names)} (fields: {fields}); "
                        "choose one with --text-field")  # fmt: skip
    value = record[name]
    if isinstance(value, list):
        text = render_messages(tokenizer, value, where)
    elif isinstance(value, str):
        text = value
    else:
        raise UserError(f"{where}: field {name!r} must be a string (or a list of {{role, content}} messages), got "
                        f"{type(value).__name__}; fix or delete that line")  # fmt: skip
    if not text.strip():
        raise UserError(f"{where}: field {name!r} is empty; fix or delete that line")
    return text


def read_texts(path: Path, field: str | None, tokenizer) -> list[str]:
    """The held-out texts of a JSONL file (``--texts``): each line's ``field`` (default 'text', else 'messages',
    rendered with the tokenizer's chat template)."""
    if not path.is_file():
        raise UserError(f"--texts {path}: no such file")
    texts = [text_of(record, field, tokenizer, f"{path}:{lineno}")
             for lineno, record in read_jsonl(path)]  # fmt: skip
    if not texts:
        raise UserError(f"--texts {path} holds no texts; give one JSON object per line with 'text' or 'messages'")
    return texts


def read_eval_dir(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{benchmark: [(k, pass@k)] for k = 1..n}`` from the samples of an ``eksft eval`` output directory."""
    from ..evaluation.runner import scan_samples
    from .plots import pass_at_k_curve

    if not path.is_dir():
        raise UserError(f"--eval-dir {path}: no such directory")
    curves = {}
    for samples in sorted(path.glob("*/samples.jsonl")):
        results_file = samples.parent / "results.json"  # written only when every sample of the run is done
        if not results_file.is_file():
            warnings.warn(f"{samples.parent}: the evaluation is unfinished (no results.json); left out", stacklevel=2)
            continue
        try:
            num_samples = int(json.loads(results_file.read_text(encoding="utf-8"))["num_samples"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{results_file}: cannot read num_samples ({err}); rerun eksft eval on {path}") from None
        by_problem: dict[object, dict[int, bool]] = {}
        for record in scan_samples(samples).records:
            if record["sample"] < num_samples:
                by_problem.setdefault(record["problem_id"], {})[record["sample"]] = record["correct"]
        if by_problem:
            curves[samples.parent.name] = pass_at_k_curve({p: list(c.values()) for p, c in by_problem.items()})
    if not curves:
        raise UserError(f"--eval-dir {path}: no finished <benchmark>/samples.jsonl; is it an `eksft eval` output?")
    return curves


def render_markdown(result: dict) -> str:
    """``analysis.md``: the tables of ``analysis.json`` and the plots it embeds."""
    from .table import markdown_table

    lines = ["# Analysis", ""]
    if result.get("base"):
        lines.append(f"Base model: `{result['base']}`.")
    if result.get("texts"):
        t = result["texts"]
        lines.append(f"Held-out text: {t['source']}; {t['num_texts']} texts, each cut to at most {t['max_length']} tokens.")
    lines.append("")
    models = result["models"]
    if models:
        rows = [{"model": m["label"], "drift": m["drift"]["total"],
                 "kl": (m.get("shift") or {}).get("mean_kl"), "entropy": (m.get("shift") or {}).get("mean_entropy"),
                 "base_entropy": (m.get("shift") or {}).get("base_mean_entropy"),
                 "tokens": (m.get("shift") or {}).get("num_tokens")} for m in models]  # fmt: skip
        lines += ["## Drift and distribution shift", "",
                  markdown_table(rows, ["model", "drift", "kl", "entropy", "base_entropy", "tokens"],
                                 headers={"drift": "drift ‖θ−θ0‖/‖θ0‖", "kl": "KL(model‖base) / token",
                                          "entropy": "entropy / token", "base_entropy": "base entropy / token",
                                          "tokens": "tokens"},
                                 formats={"tokens": "d"},
                                 note="KL and entropies in nats, token-weighted means over the held-out text; "
                                      "– where no text was given."),
                  "## Drift per parameter group", ""]  # fmt: skip
        groups: list[str] = []
        for m in models:
            groups += [g for g in m["drift"]["groups"] if g not in groups]
        rows = [{"group": g, **{m["label"]: (m["drift"]["groups"].get(g) or {}).get("relative") for m in models}}
                for g in groups]  # fmt: skip
        lines += [markdown_table(rows, ["group", *(m["label"] for m in models)],
                                 note="Relative L2 drift ‖θ_G − θ0_G‖ / ‖θ0_G‖ of each group G of parameters.")]  # fmt: skip
    if result["runs"]:
        rows = []
        for run in result["runs"]:
            s = run["token_sets"]
            rows.append({"run": run["label"], "steps": run["num_steps"],
                         "iou_first": s.get("iou", {}).get("first"), "iou_last": s.get("iou", {}).get("last"),
                         "iou_mean": s.get("iou", {}).get("mean"),
                         "masked": s.get("frac_masked", {}).get("mean"),
                         "entropy_set": s.get("frac_entropy_set", {}).get("mean"),
                         "kl_set": s.get("frac_kl_set", {}).get("mean")})  # fmt: skip
        lines += ["## Entropy / KL token sets over training", "",
                  markdown_table(rows, ["run", "steps", "iou_first", "iou_last", "iou_mean", "masked", "entropy_set",
                                        "kl_set"],
                                 headers={"iou_first": "IoU (first step)", "iou_last": "IoU (last step)",
                                          "iou_mean": "IoU (mean)", "masked": "frac masked (mean)",
                                          "entropy_set": "frac entropy set (mean)", "kl_set": "frac KL set (mean)"},
                                 formats={"steps": "d"},
                                 note="IoU = |E ∩ K| / |E ∪ K| of the entropy set E and the KL set K per step; "
                                      "fractions of the valid tokens. – where the run logged no token sets.")]  # fmt: skip
    if result["evals"]:
        rows = [{"model": e["label"], "benchmark": bench, "n": curve[-1][0], "pass@1": curve[0][1],
                 "pass@n": curve[-1][1]} for e in result["evals"] for bench, curve in e["pass_at_k"].items()]  # fmt: skip
        lines += ["## pass@k", "", markdown_table(rows, ["model", "benchmark", "n", "pass@1", "pass@n"],
                                                  formats={"n": "d", "pass@1": ".1%", "pass@n": ".1%"},
                                                  note="Unbiased estimator of Chen et al. (2021), mean over problems.")]  # fmt: skip
    if result["plots"]:
        lines += ["## Plots", ""]
        for name, file in result["plots"].items():
            lines += [f"![{name}]({file})", ""]
    return "\n".join(lines).rstrip() + "\n"


def draw_plots(directory: Path, result: dict, drift_reports: dict, token_arrays: dict, run_records: dict,
               eval_curves: dict, say=print) -> None:  # fmt: skip
    """Write the PNGs into ``directory`` and list them in ``result["plots"]``; ``say`` reports a plot left out."""
    from . import plots
    from .token_sets import training_records

    if drift_reports:
        plots.plot_drift_per_layer(drift_reports, directory / PLOT_FILES["drift"])
        result["plots"]["drift per layer"] = PLOT_FILES["drift"]
    if token_arrays:
        plots.plot_token_histograms(token_arrays, directory / PLOT_FILES["histograms"])
        result["plots"]["entropy and KL histograms"] = PLOT_FILES["histograms"]
    logged = {label: records for label, records in run_records.items() if training_records(records)}
    if logged:
        try:
            plots.plot_training_curves(logged, directory / PLOT_FILES["training"])
            result["plots"]["training curves"] = PLOT_FILES["training"]
        except ValueError as err:  # runs that logged none of the plotted metrics
            say(f"no training-curve plot: {err}")
    for bench in dict.fromkeys(b for curves in eval_curves.values() for b in curves):
        name = f"pass_at_k_{bench}.png"
        curves = {label: c[bench] for label, c in eval_curves.items() if bench in c}
        plots.plot_pass_at_k(curves, directory / name, title=f"pass@k on {bench}")
        result["plots"][f"pass@k {bench}"] = name
