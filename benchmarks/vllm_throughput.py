"""Samples per second of ``eksft eval --backend vllm`` (the runner path) against one raw ``LLM.generate`` call on the
same requests. Needs a GPU and vLLM; ``--help`` works without them (vLLM is imported only to measure).

    python benchmarks/vllm_throughput.py --model Qwen/Qwen3-0.6B --num-problems 256 --num-samples 16 \\
        --max-new-tokens 2048 --out vllm_throughput.json
    python benchmarks/vllm_throughput.py --model DIR --benchmark math500 --limit 100 --num-samples 32 \\
        --chunk-sizes 8,4096          # the old path (8 prompts per call) against the new default

One engine is loaded once (``eksft.evaluation.generation.VLLMGenerator``, with the engine options given) and serves
every variant, in this order:

* ``raw``: one ``llm.generate`` call with every request: the prompts the runner builds (chat template, token ids),
  the same per-sample seeds and ``SamplingParams``; the ceiling, with nothing of eksft's around it.
* ``runner@C`` for each C of ``--chunk-sizes``: ``eksft.evaluation.runner.evaluate`` with backend vllm and
  ``chunk_size`` C, into a fresh output directory: C requests per engine call, grading overlapped with the next
  call, fsync'ed appends to ``samples.jsonl``, the results files.

Each variant reports wall seconds, samples/s and, for ``raw``, generated tokens/s; each runner variant also its
samples/s as a share of ``raw``'s and the share of its texts equal to ``raw``'s (same seeds: below 1 only where the
batch's composition moved a bf16 logit). A short warm-up call comes first. The raw call runs first, so its prompts'
prefixes are in vLLM's prefix cache for the runner variants; prompts are short next to the completions, so this
favours the runner slightly. Problems: a benchmark (``--benchmark``, as ``eksft eval`` reads it) or synthetic
arithmetic problems (``--num-problems``), which need no network.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory or hub id (safetensors weights)")
    parser.add_argument("--benchmark", help="a benchmark name (math500, ...) or a local file; default: synthetic")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of --benchmark")
    parser.add_argument("--num-problems", type=int, default=128, help="synthetic problems without --benchmark")
    parser.add_argument("--num-samples", type=int, default=16, help="samples per problem (default: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="longest completion (default: 2048)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--chunk-sizes", default="4096", help="runner chunk sizes to measure, comma-separated")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="vllm_throughput.json", help="where the JSON result goes")
    return parser


def load_problems(args):
    from eksft.evaluation.benchmarks import Benchmark, BenchmarkSpec, Problem, load_benchmark, resolve

    if args.benchmark:
        return load_benchmark(resolve(args.benchmark), args.limit)
    problems = [Problem(i, f"What is {17 + i} times {23 + 2 * i}?", str((17 + i) * (23 + 2 * i)))
                for i in range(args.num_problems)]  # fmt: skip
    return Benchmark(BenchmarkSpec("synthetic", "synthetic"), problems)


def eval_settings(args, model: str, chunk_size: int):
    from eksft.evaluation.runner import EvalSettings

    return EvalSettings(model=model, num_samples=args.num_samples, ks=(1,), temperature=args.temperature,
                        top_p=args.top_p, max_new_tokens=args.max_new_tokens, backend="vllm",
                        chunk_size=chunk_size)  # fmt: skip


def measure_raw(generator, prompts: list[str], seeds: list[int]) -> tuple[dict, list[str]]:
    """One ``llm.generate`` call with every request, exactly those ``VLLMGenerator.generate`` would send."""
    requests, params = generator.requests(prompts, seeds)
    start = time.perf_counter()
    outputs = generator.llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    row = {"variant": "raw", "calls": 1, "seconds": seconds, "samples_per_s": len(prompts) / seconds,
           "generated_tokens": tokens, "tokens_per_s": tokens / seconds}  # fmt: skip
    return row, [output.outputs[0].text for output in outputs]


def measure_runner(generator, benchmark, prompt_of, settings, raw_texts: dict) -> dict:
    """``evaluate`` into a fresh directory; the engine's calls are counted by wrapping ``generate``."""
    from eksft.evaluation.runner import evaluate

    calls = []

    def generate(prompts, seeds):
        calls.append(len(prompts))
        return generator.generate(prompts, seeds)

    with tempfile.TemporaryDirectory(prefix="vllm_throughput_") as out:
        start = time.perf_counter()
        summary = evaluate([benchmark], generate, prompt_of, settings, out, progress=False)
        seconds = time.perf_counter() - start
        lines = (Path(out) / benchmark.name / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    same = sum(raw_texts[(r["problem_id"], r["sample"])] == r["text"] for r in records)
    return {"variant": f"runner@{settings.chunk_size}", "calls": len(calls), "seconds": seconds,
            "samples_per_s": len(records) / seconds, "texts_equal_to_raw": same / len(records),
            "avg_correct": summary["benchmarks"][benchmark.name]["metrics"][f"avg@{settings.num_samples}"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chunk_sizes = [int(part) for part in args.chunk_sizes.split(",") if part.strip()]

    import vllm

    from eksft.evaluation.generation import SamplingSettings, VLLMGenerator
    from eksft.evaluation.runner import format_prompt
    from eksft.evaluation.sampling import missing_pairs, sample_seed
    from eksft.loading import load_tokenizer

    benchmark = load_problems(args)
    tokenizer = load_tokenizer(args.model)
    settings = eval_settings(args, args.model, chunk_sizes[0])
    sampling = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens)
    generator = VLLMGenerator(args.model, tokenizer, sampling, dtype=args.dtype,
                              tensor_parallel_size=args.tensor_parallel_size,
                              gpu_memory_utilization=args.gpu_memory_utilization,
                              max_model_len=args.max_model_len)  # fmt: skip

    def prompt_of(problem: str) -> str:
        return format_prompt(tokenizer, problem, settings)

    text_of = {p.id: prompt_of(p.problem) for p in benchmark.problems}
    pairs = missing_pairs(benchmark.problems, args.num_samples, set())
    seeds = [sample_seed(settings.seed, pid, s) for pid, s in pairs]
    generator.generate([text_of[pairs[0][0]]] * 4, [1, 2, 3, 4])  # warm-up: first-call costs out of the timings

    raw, texts = measure_raw(generator, [text_of[pid] for pid, _ in pairs], seeds)
    rows = [raw]
    print(json.dumps(raw), file=sys.stderr)
    raw_texts = dict(zip(pairs, texts, strict=True))
    for chunk_size in chunk_sizes:
        row = measure_runner(generator, benchmark, prompt_of, eval_settings(args, args.model, chunk_size), raw_texts)
        row["share_of_raw"] = row["samples_per_s"] / raw["samples_per_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    result = {"model": args.model, "benchmark": benchmark.name, "problems": len(benchmark.problems),
              "num_samples": args.num_samples, "requests": len(pairs), "max_new_tokens": args.max_new_tokens,
              "engine": {"tensor_parallel_size": args.tensor_parallel_size, "max_model_len": args.max_model_len,
                         "gpu_memory_utilization": args.gpu_memory_utilization, "dtype": args.dtype},
              "vllm": vllm.__version__, "python": platform.python_version(), "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
