"""``eksft analyze``: parameter drift, distribution shift, entropy/KL token sets and pass@k curves, with plots.

    eksft analyze --base base/ --model sft=out/sft --model grpo=out/grpo --run-dir out/sft \\
        --texts held_out.jsonl --output-dir analysis/

Order of work: check every path and option and read every small file (run logs, texts, eval samples, weight-file
headers) without writing anything; then compute (drift from the weight files, shift by running the models); then
write everything into a hidden sibling of OUTPUT_DIR and rename it into place, so OUTPUT_DIR appears complete or
not at all. Files written: ``analysis.json`` (every number), ``analysis.md`` (tables + plots) and the PNGs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UserError
from ..files import fresh_sibling, json_safe, replace_directory
from .options import option, parse_options, repeatable

JSON_FILE, MARKDOWN_FILE = "analysis.json", "analysis.md"


DESCRIPTION = (
    "Compare fine-tuned models with their base: relative L2 parameter drift (total and per layer, read from the weight "
    "files), distribution shift on held-out text (mean KL(model || base) per token and the entropies of both), the "
    "entropy/KL token-set overlap over training (from token_stats.jsonl), and pass@k curves (from `eksft eval` "
    "output). Writes OUTPUT_DIR/analysis.json, analysis.md and PNG plots. DIR arguments take an optional label: "
    "--model sft=out/sft. Options: flags or a --config YAML file."
)


@dataclass
class AnalyzeArguments:
    model: list[str] = repeatable("fine-tuned model directory (Hugging Face format); repeat for several",
                                  metavar="[LABEL=]DIR")  # fmt: skip
    base: str | None = option(None, "the base model the others started from (needed with --model)", metavar="DIR")
    run_dir: list[str] = repeatable("output_dir of an `eksft sft` run (or its token_stats.jsonl); repeat for several",
                                    metavar="[LABEL=]DIR")  # fmt: skip
    eval_dir: list[str] = repeatable("output directory of `eksft eval` (pass@k for k = 1..n from its samples); "
                                     "repeatable", metavar="[LABEL=]DIR")  # fmt: skip
    texts: str | None = option(None, "held-out texts, JSONL: one object per line with 'text', or 'messages' (rendered "
                                     "with the base tokenizer's chat template)", metavar="FILE")  # fmt: skip
    text_field: str | None = option(None, "field of --texts holding the text (none: 'text', else 'messages')",
                                    metavar="NAME")  # fmt: skip
    batch_size: int = option(4, "texts per forward pass")
    max_length: int = option(1024, "tokens per text, longer ones are cut")
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "weights dtype for the shift (auto: bfloat16 on GPU, float32 on CPU)"
    )
    output_dir: str | None = option(None, "where analysis.json, analysis.md and PNGs go (required)", metavar="DIR")
    overwrite: bool = option(False, "replace OUTPUT_DIR if it holds an earlier analysis (an analysis.json)")
    trust_remote_code: bool = option(False, "let models with custom architectures run their own Python code (only "
                                            "for models whose code you trust)")  # fmt: skip
    no_progress: bool = option(False, "no progress bars")


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
    if not (args.model or args.run_dir or args.eval_dir):
        raise UserError("nothing to analyze: give --model DIR (with --base DIR), --run-dir DIR or --eval-dir DIR")
    if args.model and not args.base:
        raise UserError("--model needs --base DIR: drift and shift are measured against the base model")
    if args.texts and not args.model:
        raise UserError("--texts measures the shift of a --model from --base; give --model DIR")


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available; use --device cpu")
    if not (name == "cpu" or name.startswith(("cuda", "mps", "xpu"))):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return name


def _load_tokenizer(dirs: list[tuple[str, Path]], trust_remote_code: bool):
    """The tokenizer of the first of ``(flag, directory)`` that has one (the base's, normally)."""
    from ..loading import load_tokenizer

    errors = []
    for flag, directory in dirs:
        try:
            return load_tokenizer(str(directory), flag, trust_flag="--trust-remote-code",
                                  trust_remote_code=trust_remote_code)  # fmt: skip
        except UserError as err:
            errors.append(str(err))
    raise UserError("no tokenizer found to encode the held-out texts; " + "; ".join(errors))


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
    (args,) = parse_options((AnalyzeArguments,), argv, "eksft analyze", DESCRIPTION)
    if not args.output_dir:
        raise UserError("--output_dir is required: the directory where analysis.json, analysis.md and the plots go")
    _check_numbers(args)
    output_dir = Path(args.output_dir).expanduser().absolute()
    _check_output_dir(output_dir, args.overwrite)

    from ..analysis.drift import check_compatible, open_weights
    from ..analysis.report import draw_plots, read_eval_dir, read_texts, render_markdown
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
        eval_curves = {label: read_eval_dir(path) for label, path in evals}
    for warning in caught:
        print(f"eksft analyze: warning: {warning.message}", file=sys.stderr)
    want_shift = bool(args.texts)
    tokenizer, texts, text_source = None, None, None
    if want_shift:
        if args.no_progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        device = _resolve_device(args.device)
        tokenizer = _load_tokenizer(
            [("--base", base), *(("--model", path) for _, path in models)], args.trust_remote_code
        )
        texts = read_texts(Path(args.texts).expanduser(), args.text_field, tokenizer)
        text_source = f"`{args.texts}`"
    elif models:
        _say("no --texts: computing parameter drift only (no distribution shift)")

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
        draw_plots(directory, result, drift_reports, token_arrays, run_records, eval_curves, say=_say)
        (directory / JSON_FILE).write_text(json.dumps(json_safe(result), indent=2) + "\n", encoding="utf-8")
        (directory / MARKDOWN_FILE).write_text(render_markdown(result), encoding="utf-8")

    _write_into_place(output_dir, args.overwrite, write)
    _say(f"wrote {output_dir / MARKDOWN_FILE}, {JSON_FILE} and {len(result['plots'])} plot(s) to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
