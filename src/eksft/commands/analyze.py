"""``eksft analyze``: parameter drift, distribution shift, entropy/KL token sets and pass@k curves, with plots.

    eksft analyze --base base/ --model sft=out/sft --model grpo=out/grpo --run-dir out/sft \\
        --demo-texts 64 --output-dir analysis/

Order of work: check every path and option and read every small file (run logs, texts, eval samples, weight-file
headers) without writing anything; then compute (drift from the weight files, shift by running the models); then
write everything into a hidden sibling of OUTPUT_DIR and rename it into place, so OUTPUT_DIR appears complete or
not at all. Files written: ``analysis.json`` (every number), ``analysis.md`` (tables + plots) and the PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from ..files import fresh_sibling, json_safe, replace_directory

JSON_FILE, MARKDOWN_FILE = "analysis.json", "analysis.md"
PLOT_FILES = {
    "drift": "drift_per_layer.png",
    "histograms": "token_histograms.png",
    "training": "training_curves.png",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eksft analyze",
        description=(
            "Compare fine-tuned models with their base: relative L2 parameter drift (total and per layer, read from "
            "the weight files), distribution shift on held-out text (mean KL(model || base) per token and the "
            "entropies of both), the entropy/KL token-set overlap over training (from token_stats.jsonl), and pass@k "
            "curves (from `eksft eval` output). Writes OUTPUT_DIR/analysis.json, analysis.md and PNG plots. "
            "DIR arguments take an optional label: --model sft=out/sft."
        ),
    )
    parser.add_argument("--model", action="append", default=[], metavar="[LABEL=]DIR",
                        help="fine-tuned model directory (Hugging Face format); repeat for several")
    parser.add_argument("--base", metavar="DIR", help="the base model the others started from (needed with --model)")
    parser.add_argument("--run-dir", action="append", default=[], metavar="[LABEL=]DIR",
                        help="output_dir of an `eksft sft` run (or its token_stats.jsonl); repeat for several")
    parser.add_argument("--eval-dir", action="append", default=[], metavar="[LABEL=]DIR",
                        help="output directory of `eksft eval` (pass@k for k = 1..n from its samples); repeatable")
    texts = parser.add_mutually_exclusive_group()
    texts.add_argument("--texts", metavar="FILE",
                       help="held-out texts, JSONL: one object per line with 'text', or 'messages' (rendered with "
                            "the base tokenizer's chat template)")  # fmt: skip
    texts.add_argument("--demo-texts", type=int, metavar="N",
                       help="use N held-out test problems of the demo math world as texts")
    parser.add_argument("--demo-format", choices=("document", "chat"), default="document",
                        help="demo texts as plain pre-training documents or chat conversations (default: document)")
    parser.add_argument("--demo-seed", type=int, default=0, help="seed of the demo test problems (default: 0)")
    parser.add_argument("--text-field", default=None, metavar="NAME",
                        help="field of --texts holding the text (default: 'text', else 'messages')")
    parser.add_argument("--batch-size", type=int, default=4, help="texts per forward pass (default: 4)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per text, longer ones are cut (default: 1024)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="weights dtype for the shift (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="where analysis.json, analysis.md and PNGs go")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT_DIR if it holds an earlier analysis (an analysis.json)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let models with custom architectures run their own Python code (off by default: only "
                             "for models whose code you trust)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


# ---- checks and inputs (nothing written) ----------------------------------------------------------------------------


def _labelled(spec: str, option: str) -> tuple[str | None, Path]:
    """``LABEL=DIR`` or ``DIR`` (a path that exists is taken whole, even with an '=' in it)."""
    if not os.path.exists(spec) and "=" in spec:
        label, path = spec.split("=", 1)
        if label and "/" not in label and os.sep not in label:
            return label, Path(path).expanduser()
    if not spec:
        raise UserError(f"{option}: empty path")
    return None, Path(spec).expanduser()


def _unique_labels(specs: list[tuple[str | None, Path]], option: str) -> list[tuple[str, Path]]:
    labels = []
    for label, path in specs:
        name = label or path.resolve().name or str(path)
        if label is None and name in labels:  # two checkpoints of one run: keep the parent in the name
            name = f"{path.resolve().parent.name}/{name}"
        if name in labels:
            raise UserError(f"{option}: two entries are labelled {name!r}; give labels as LABEL=DIR")
        labels.append(name)
    return [(label, path) for label, (_, path) in zip(labels, specs, strict=True)]


def _check_output_dir(path: Path, overwrite: bool) -> None:
    """OUTPUT_DIR must be new, empty, or (with --overwrite) an earlier analysis: --overwrite replaces the directory
    whole, so a directory of other files (a typo'd path, a home directory) is never taken."""
    from ..files import check_writable

    if path.is_symlink() and not path.exists():
        raise UserError(f"--output-dir {path} is a broken symbolic link; choose another --output-dir")
    check_writable(path, "--output-dir")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--output-dir {path} exists and is not empty; pass --overwrite to replace it")
    if not (path / JSON_FILE).is_file():
        raise UserError(f"--output-dir {path} is not an earlier output of eksft analyze (it has no {JSON_FILE}), so "
                        "--overwrite will not replace it; choose another --output-dir")  # fmt: skip


def _check_numbers(args) -> None:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_length < 2:
        raise UserError(f"--max-length must be >= 2, got {args.max_length}")
    if args.demo_texts is not None and args.demo_texts < 1:
        raise UserError(f"--demo-texts must be >= 1, got {args.demo_texts}")
    if not (args.model or args.run_dir or args.eval_dir):
        raise UserError("nothing to analyze: give --model DIR (with --base DIR), --run-dir DIR or --eval-dir DIR")
    if args.model and not args.base:
        raise UserError("--model needs --base DIR: drift and shift are measured against the base model")
    if (args.texts or args.demo_texts) and not args.model:
        raise UserError("--texts / --demo-texts measure the shift of a --model from --base; give --model DIR")


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available; use --device cpu")
    if not (name == "cpu" or name.startswith(("cuda", "mps", "xpu"))):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return name


def _load_tokenizer(dirs: list[Path], trust_remote_code: bool):
    from transformers import AutoTokenizer

    errors = []
    for directory in dirs:
        try:
            return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as err:
            errors.append(f"{directory}: {err}")
    raise UserError("no tokenizer found to encode the held-out texts; " + "; ".join(errors))


def _render_messages(tokenizer, messages, where: str) -> str:
    if not all(isinstance(m, dict) for m in messages):
        raise UserError(f"{where}: 'messages' must be a list of {{role, content}} objects; fix or delete that line")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: a 'messages' text needs a tokenizer with a chat template; give 'text' instead")
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _text_of(record: dict, field: str | None, tokenizer, where: str) -> str:
    """The text of one --texts record: its string field, or its messages rendered with the chat template."""
    names = [field] if field else ["text", "messages"]
    name = next((k for k in names if k in record), None)
    if name is None:
        fields = ", ".join(list(map(str, record))[:10]) or "none"
        raise UserError(f"{where}: no field {' or '.join(repr(k) for k in names)} (fields: {fields}); "
                        "choose one with --text-field")  # fmt: skip
    value = record[name]
    if isinstance(value, list):
        text = _render_messages(tokenizer, value, where)
    elif isinstance(value, str):
        text = value
    else:
        raise UserError(f"{where}: field {name!r} must be a string (or a list of {{role, content}} messages), got "
                        f"{type(value).__name__}; fix or delete that line")  # fmt: skip
    if not text.strip():
        raise UserError(f"{where}: field {name!r} is empty; fix or delete that line")
    return text


def _read_texts(path: Path, field: str | None, tokenizer) -> list[str]:
    from ..files import read_jsonl

    if not path.is_file():
        raise UserError(f"--texts {path}: no such file")
    texts = [_text_of(record, field, tokenizer, f"{path}:{lineno}")
             for lineno, record in read_jsonl(path)]  # fmt: skip
    if not texts:
        raise UserError(f"--texts {path} holds no texts; give one JSON object per line with 'text' or 'messages'")
    return texts


def _demo_texts(n: int, seed: int, form: str, tokenizer) -> list[str]:
    from ..demo.world import STYLES, Task, chat_messages, format_document

    problems = Task(seed).problems("test", n)
    styles = [STYLES[i % len(STYLES)] for i in range(n)]  # every solution style, in turn
    if form == "document":
        return [format_document(p, s) for p, s in zip(problems, styles, strict=True)]
    return [_render_messages(tokenizer, chat_messages(p, s), "--demo-format chat")
            for p, s in zip(problems, styles, strict=True)]  # fmt: skip


def _read_eval_dir(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{benchmark: [(k, pass@k)] for k = 1..n}`` from the samples of an ``eksft eval`` output directory."""
    from ..analysis.plots import pass_at_k_curve
    from ..evaluation.runner import scan_samples

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


# ---- writing ----------------------------------------------------------------------------------------------------------


def render_markdown(result: dict) -> str:
    """``analysis.md``: the tables of ``analysis.json`` and the plots it embeds."""
    from ..analysis.table import markdown_table

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


def _draw_plots(directory: Path, result: dict, drift_reports: dict, token_arrays: dict, run_records: dict,
                eval_curves: dict) -> None:  # fmt: skip
    """Write the PNGs into ``directory`` and list them in ``result["plots"]``."""
    from ..analysis import plots
    from ..analysis.token_sets import training_records

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
            _say(f"no training-curve plot: {err}")
    for bench in dict.fromkeys(b for curves in eval_curves.values() for b in curves):
        name = f"pass_at_k_{bench}.png"
        curves = {label: c[bench] for label, c in eval_curves.items() if bench in c}
        plots.plot_pass_at_k(curves, directory / name, title=f"pass@k on {bench}")
        result["plots"][f"pass@k {bench}"] = name


def _write_into_place(output_dir: Path, overwrite: bool, write) -> None:
    """Run ``write(tmp)`` on a hidden sibling of OUTPUT_DIR, then rename it into place, so that OUTPUT_DIR appears
    complete or not at all; a failure to write (disk full, permissions) removes the sibling and is a UserError."""
    tmp = None
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = fresh_sibling(output_dir, "tmp")
        write(tmp)
        _check_output_dir(output_dir, overwrite)  # something may have appeared there meanwhile
        replace_directory(tmp, output_dir)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot write the analysis to {output_dir} ({err.strerror or err}); nothing was left "
                            "there: make room or choose another --output-dir, and rerun") from None  # fmt: skip
        raise


# ---- the command --------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
    output_dir = Path(args.output_dir).expanduser().absolute()
    _check_output_dir(output_dir, args.overwrite)

    from ..analysis.drift import check_compatible, open_weights
    from ..analysis.token_sets import read_token_stats, set_summary, training_records

    # 1. every input checked and every small file read, before anything is computed or written
    models = _unique_labels([_labelled(s, "--model") for s in args.model], "--model")
    runs = _unique_labels([_labelled(s, "--run-dir") for s in args.run_dir], "--run-dir")
    evals = _unique_labels([_labelled(s, "--eval-dir") for s in args.eval_dir], "--eval-dir")
    base = Path(args.base).expanduser() if args.base else None
    # open_weights reads only the headers; it gives a clear error for a missing dir, an adapter-only dir, a dir
    # without weights or an unreadable weights file
    base_weights = open_weights(base) if models else None
    model_weights = {label: open_weights(path) for label, path in models}
    for source in model_weights.values():
        check_compatible(source, base_weights)  # same parameter names and shapes, before any time is spent
    with warnings.catch_warnings(record=True) as caught:  # an unfinished last line: say so plainly, go on
        warnings.simplefilter("always")
        run_records = {label: read_token_stats(path) for label, path in runs}
        eval_curves = {label: _read_eval_dir(path) for label, path in evals}
    for warning in caught:
        print(f"eksft analyze: warning: {warning.message}", file=sys.stderr)
    want_shift = bool(args.texts or args.demo_texts)
    tokenizer, texts, text_source = None, None, None
    if want_shift:
        if args.no_progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        device = _resolve_device(args.device)
        tokenizer = _load_tokenizer([base, *(path for _, path in models)], args.trust_remote_code)
        if args.texts:
            texts = _read_texts(Path(args.texts).expanduser(), args.text_field, tokenizer)
            text_source = f"`{args.texts}`"
        else:
            texts = _demo_texts(args.demo_texts, args.demo_seed, args.demo_format, tokenizer)
            text_source = f"test problems of the demo world (seed {args.demo_seed}, {args.demo_format} format)"
    elif models:
        _say("no --texts / --demo-texts: computing parameter drift only (no distribution shift)")

    # 2. compute
    from ..analysis.drift import parameter_drift

    result: dict = {"base": str(base.absolute()) if base else None, "models": [], "runs": [], "evals": [], "plots": {}}
    if want_shift:
        result["texts"] = {"source": text_source, "num_texts": len(texts), "max_length": args.max_length}
    drift_reports, token_arrays = {}, {}
    base_model = None
    for i, (label, path) in enumerate(models, start=1):
        _say(f"[{i}/{len(models)}] {label}: parameter drift from {base}")
        drift = parameter_drift(model_weights[label], base_weights)
        drift_reports[label] = drift
        entry = {"label": label, "path": str(path.absolute()), "drift": drift.to_dict()}
        _say(f"    relative drift {drift.relative:.4g} over {drift.total.num_parameters:,} parameters")
        if want_shift:
            from ..analysis.shift import distribution_shift, load_model

            if base_model is None:
                _say(f"    loading the base model on {device}")
                base_model = load_model(base, device, args.dtype, trust_remote_code=args.trust_remote_code)
            model = load_model(path, device, args.dtype, trust_remote_code=args.trust_remote_code)
            shift = distribution_shift(model, base_model, tokenizer, texts, args.batch_size, args.max_length,
                                       keep_tokens=True, progress=not args.no_progress,
                                       desc=f"{label}: shift")  # fmt: skip
            del model
            entry["shift"] = shift.to_dict()
            token_arrays[label] = shift.tokens
            _say(f"    KL(model || base) {shift.mean_kl:.4g} nats/token, entropy {shift.mean_entropy:.4g} "
                 f"(base {shift.base_mean_entropy:.4g}) over {shift.num_tokens:,} tokens")  # fmt: skip
        result["models"].append(entry)
    del base_model
    for label, path in runs:
        records = run_records[label]
        summary = set_summary(records)
        result["runs"].append({"label": label, "path": str(path.absolute()), "num_steps": len(training_records(records)),
                               "token_sets": summary})  # fmt: skip
        iou = summary.get("iou")
        _say(f"run {label}: {len(training_records(records))} logged steps"
             + (f", IoU {iou['first']:.3g} -> {iou['last']:.3g} (mean {iou['mean']:.3g})" if iou else ""))  # fmt: skip
    for label, path in evals:
        result["evals"].append({"label": label, "path": str(path.absolute()), "pass_at_k": eval_curves[label]})

    # 3. write everything into a hidden sibling, then rename it into place
    def write(directory: Path) -> None:
        _draw_plots(directory, result, drift_reports, token_arrays, run_records, eval_curves)
        (directory / JSON_FILE).write_text(json.dumps(json_safe(result), indent=2) + "\n", encoding="utf-8")
        (directory / MARKDOWN_FILE).write_text(render_markdown(result), encoding="utf-8")

    _write_into_place(output_dir, args.overwrite, write)
    _say(f"wrote {output_dir / MARKDOWN_FILE}, {JSON_FILE} and {len(result['plots'])} plot(s) to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
