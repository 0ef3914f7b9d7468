"""``eksft eval``: pass@k of a model on math benchmarks, resumable, with a paper-shaped table.

    eksft eval --model out/grpo --benchmark aime24 --benchmark math500 --num-samples 32 --k 1,8,32 --output-dir ev
    eksft eval --report ev/base ev/sft ev/grpo        # one table, one row per model

Order of work: check every option, read every benchmark, load the tokenizer, check the weight files and what the
output directory holds (all without writing anything), and only then load the model and sample. See
``eksft.evaluation.runner`` for the files and what an interrupted run leaves.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..adapters import adapter_base, is_adapter_dir
from ..errors import UserError
from ..evaluation.benchmarks import BENCHMARKS
from ..evaluation.conventions import DEFAULT_PROMPT_TEMPLATE
from ..evaluation.sampling import DEFAULT_CHUNK_SIZE
from ..loading import load_tokenizer
from .options import option, parse_options, repeatable

DESCRIPTION = (
    "Sample completions for math benchmarks, grade them with math-verify, and report avg@n and pass@k. Samples are "
    "appended to OUTPUT_DIR/<benchmark>/samples.jsonl as they are produced; rerunning the same command resumes. "
    "results.json and results.md appear only when every sample is done. Options: flags or a --config YAML file."
)


@dataclass
class EvalArguments:
    model: str | None = option(None, "model directory (or hub id) with its tokenizer", metavar="DIR")
    benchmark: list[str] = repeatable(f"one of {', '.join(BENCHMARKS)}, or a local .jsonl/.json/.parquet file; "
                                      "repeat for several", metavar="NAME|FILE")  # fmt: skip
    problem_field: str | None = option(None, "field holding the problem text (none: the benchmark's, else "
                                             "'problem')")  # fmt: skip
    answer_field: str | None = option(None, "field holding the gold answer (none: the benchmark's, else 'answer')")
    num_samples: int = option(1, "samples per problem", metavar="N")
    k: str | None = option(None, "pass@k values, each <= N (none: 1 and N)", metavar="K,K,...")
    temperature: float = option(0.6, "sampling temperature; 0 = greedy")
    top_p: float = option(0.95, "nucleus sampling threshold")
    max_new_tokens: int = option(8192, "longest completion in tokens")
    batch_size: int = option(8, "hf backend: sequences per generation call")
    backend: Literal["hf", "vllm"] = option("hf", "hf: transformers generate (CPU or GPU); vllm: vLLM, when installed")
    chunk_size: int = option(DEFAULT_CHUNK_SIZE, "vllm backend: requests per LLM.generate call (the pending samples "
                                                 "of a benchmark, in chunks of this size)")  # fmt: skip
    tensor_parallel_size: int = option(1, "vllm backend: GPUs one engine is split over")
    gpu_memory_utilization: float = option(0.9, "vllm backend: fraction of each GPU's memory the engine may use")
    max_model_len: int | None = option(None, "vllm backend: longest prompt + completion in tokens (none: the model's "
                                             "own limit)")  # fmt: skip
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "weights dtype (auto: bfloat16 on GPU, float32 on CPU)"
    )
    output_dir: str | None = option(None, "where samples and results go (rerun with it to resume)", metavar="DIR")
    seed: int = option(0, "seed of the sampling")
    limit: int | None = option(None, "only the first N problems of each benchmark", metavar="N")
    convention: Literal["eksft", "lighteval"] = option(
        "eksft", "how answers are read and graded, and the default prompt: eksft (the last \\boxed{} after any "
        "</think>, the GRPO reward's rule) or lighteval (lighteval's math tasks: their prompts, and math-verify's "
        "extraction of boxed or unboxed answers); docs/evaluation.md compares them"
    )  # fmt: skip
    prompt_template: str | None = option(None, "user message; {problem} is replaced by the problem (none: the "
                                               f"convention's; eksft's is {DEFAULT_PROMPT_TEMPLATE!r})")  # fmt: skip
    system_prompt: str | None = option(None, "optional system message")
    system_prompt_from: str | None = option(None, "take the system message from a training set (a local file or hub "
                                                  "dataset that eksft sft / grpo read): the system turn its rows "
                                                  "share", metavar="DATASET")  # fmt: skip
    chat_template: bool = option(True, "send the filled template through the tokenizer's chat template "
                                       "(--no_chat_template: as plain text)")  # fmt: skip
    trust_remote_code: bool = option(False, "let a model with a custom architecture run its own Python code (only for "
                                            "models whose code you trust)")  # fmt: skip
    no_progress: bool = option(False, "no progress bars")
    report_to: list[str] = repeatable("experiment trackers that get the results once the run is complete, as "
                                      "TrainingArguments names them: wandb, tensorboard, trackio, mlflow, ... "
                                      "(tensorboard writes to OUTPUT_DIR/tracking)", metavar="TRACKER")  # fmt: skip
    run_name: str | None = option(None, "the run's name in the trackers (none: OUTPUT_DIR's name); the project is "
                                        "eksft-eval")  # fmt: skip
    report: list[str] | None = option(None, "print one table from finished runs (results.json files or their "
                                            "directories) and exit", metavar="RESULTS")  # fmt: skip


def parse_ks(text: str | None, num_samples: int) -> tuple[int, ...]:
    if text is None:
        return tuple(sorted({1, num_samples}))
    try:
        ks = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise UserError(f"--k must be comma-separated integers such as 1,8,32; got {text!r}") from None
    if not ks:
        raise UserError("--k is empty; give values such as 1,8,32")
    for k in ks:
        if k < 1:
            raise UserError(f"--k values must be >= 1; got {k}")
        if k > num_samples:
            raise UserError(f"k={k} is larger than --num-samples {num_samples}: pass@{k} needs at least {k} samples "
                            "per problem; raise --num-samples or drop that k")  # fmt: skip
    return ks


def _check_numbers(args) -> None:
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1; got {args.num_samples}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a number >= 0 (0 = greedy); got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1]; got {args.top_p}")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size),
                        ("--limit", args.limit if args.limit is not None else 1)):  # fmt: skip
        if value < 1:
            raise UserError(f"{flag} must be >= 1; got {value}")
    if args.prompt_template is not None and "{problem}" not in args.prompt_template:
        raise UserError(f"--prompt-template must contain {{problem}}; got {args.prompt_template!r}")


def _engine_options(args) -> dict:
    return {"tensor_parallel_size": args.tensor_parallel_size, "gpu_memory_utilization": args.gpu_memory_utilization,
            "max_model_len": args.max_model_len}  # fmt: skip


def _check_backend_options(args) -> None:
    """vLLM's options checked before anything is read; with the hf backend they must keep their defaults."""
    from ..evaluation.generation import changed_engine_options, check_vllm_options, vllm_available

    if args.backend == "hf":
        changed = changed_engine_options(_engine_options(args)) + ["chunk_size"] * (args.chunk_size != DEFAULT_CHUNK_SIZE)
        if changed:
            raise UserError(f"{', '.join('--' + key for key in changed)}: options of --backend vllm; drop them, or "
                            "add --backend vllm")  # fmt: skip
        return
    check_vllm_options(**_engine_options(args))
    if not vllm_available():
        raise UserError("--backend vllm: vLLM is not installed (pip install 'eksft[vllm]'); or use --backend hf")


def _report(args) -> int:
    from ..evaluation.report import load_results, render_table

    given = [flag for flag, value in (("--model", args.model), ("--benchmark", args.benchmark),
                                      ("--output-dir", args.output_dir)) if value]  # fmt: skip
    if given:
        raise UserError(f"--report prints a table from finished runs and samples nothing; drop {', '.join(given)} "
                        "(or drop --report to evaluate)")  # fmt: skip
    print(render_table([load_results(path) for path in args.report]), end="")
    return 0


def _check_weights(model: str) -> None:
    """A local model must hold safetensors weights (a hub id is held to that by ``use_safetensors=True``): a
    pickled checkpoint is refused with the command that converts it. For a LoRA adapter folder, its base."""
    from ..analysis.drift import find_weights

    if is_adapter_dir(model):
        model = adapter_base(model)
    if Path(model).is_dir():
        find_weights(model)


def _load_and_evaluate(args, benchmarks, tokenizer, settings, runs) -> dict:
    """Load the model and run the evaluation; on Ctrl-C say where the samples are and how to resume."""
    from ..evaluation.generation import SamplingSettings, make_generator
    from ..evaluation.runner import evaluate, format_prompt

    sampling = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens)
    try:
        generator = make_generator(args.backend, settings.model, tokenizer, sampling, dtype=args.dtype,
                                   trust_remote_code=args.trust_remote_code, use_tqdm=not args.no_progress,
                                   **_engine_options(args))  # fmt: skip
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the model weights: {err}") from None
    def prompt_of(problem: str, benchmark: str) -> str:  # the template may depend on the benchmark (lighteval)
        return format_prompt(tokenizer, problem, settings, benchmark)

    try:
        return evaluate(benchmarks, generator.generate, prompt_of, settings, args.output_dir,
                        progress=not args.no_progress, checked=runs)  # fmt: skip
    except KeyboardInterrupt:
        print(f"eksft eval: the samples drawn so far are kept in {args.output_dir}; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        raise


def main(argv: list[str]) -> int:
    (args,) = parse_options((EvalArguments,), argv, "eksft eval", DESCRIPTION)
    if args.report:
        return _report(args)
    for flag, value in (("--model", args.model), ("--benchmark", args.benchmark), ("--output-dir", args.output_dir)):
        if not value:
            raise UserError(f"{flag} is required (or use --report to print a table from finished runs)")
    _check_numbers(args)
    _check_backend_options(args)
    ks = parse_ks(args.k, args.num_samples)
    if args.report_to:
        from ..evaluation.tracking import check_trackers

        check_trackers(args.report_to)
    if args.system_prompt_from:
        if args.system_prompt is not None:
            raise UserError("give --system_prompt or --system_prompt_from, not both")
        from ..data import training_system_prompt

        args.system_prompt = training_system_prompt(args.system_prompt_from)
        shown = (
            "none"
            if args.system_prompt is None
            else repr(args.system_prompt[:80] + "..." * (len(args.system_prompt) > 80))
        )
        print(f"system prompt from {args.system_prompt_from}: {shown}", file=sys.stderr)

    from ..evaluation.benchmarks import load_benchmark, resolve
    from ..evaluation.runner import EvalSettings, check_output

    benchmarks = [load_benchmark(resolve(name, args.problem_field, args.answer_field), args.limit)
                  for name in args.benchmark]  # fmt: skip
    tokenizer = load_tokenizer(args.model, trust_flag="--trust_remote_code", adapters=True,
                               trust_remote_code=args.trust_remote_code)  # fmt: skip
    model = str(Path(args.model).expanduser().resolve()) if Path(args.model).expanduser().is_dir() else args.model
    _check_weights(model)
    if args.chat_template and not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {args.model} has no chat template; pass --no-chat-template")
    settings = EvalSettings(
        model=model, num_samples=args.num_samples, ks=ks, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed, prompt_template=args.prompt_template,
        system_prompt=args.system_prompt, chat_template=args.chat_template, batch_size=args.batch_size,
        backend=args.backend, chunk_size=args.chunk_size, convention=args.convention,
    )  # fmt: skip
    runs = check_output(benchmarks, settings, args.output_dir)  # before the (slow) model load
    summary = _load_and_evaluate(args, benchmarks, tokenizer, settings, runs)
    out = Path(args.output_dir)
    if args.report_to and summary["complete"]:
        from ..evaluation.tracking import report_results

        report_results(summary, args.report_to, "eksft-eval", args.run_name or out.absolute().name,
                       str(out / "tracking"))  # fmt: skip
    print((out / "results.md").read_text(encoding="utf-8"), end="")
    print(f"results: {out / 'results.json'}  samples: {os.path.join(str(out), '<benchmark>', 'samples.jsonl')}",
          file=sys.stderr)  # fmt: skip
    return 0 if summary["complete"] else 1
