"""Bad input to ``eksft eval``, ``eksft analyze`` and the evaluation / analysis / grading Python API."""

from __future__ import annotations

import json
from pathlib import Path

from eksft.errors import UserError

from .cases import ApiCase, CliCase, write

ROWS = [{"problem": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)} for i in range(5)]


def bench(work: Path, lines: list[str] | bytes | None = None, name: str = "five.jsonl") -> str:
    """A benchmark file under ``work``: the five good rows, or the given lines."""
    lines = [json.dumps(row) for row in ROWS] if lines is None else lines
    text = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines)
    return str(write(work / name, text))


def with_line(index: int, line: str) -> list[str]:
    """The five good rows with row ``index`` (0-based) replaced."""
    lines = [json.dumps(row) for row in ROWS]
    lines[index] = line
    return lines


def ev(work: Path, model: Path, benchmark: str | None = None, *extra: str) -> list[str]:
    """``eksft eval`` on the tiny model with fast CPU settings, writing under ``work/out``."""
    benchmark = benchmark if benchmark is not None else bench(work)
    return ["eval", "--model", str(model), "--benchmark", benchmark, "--num-samples", "2", "--k", "1,2",
            "--max-new-tokens", "4", "--output-dir", str(work / "out"), "--no-progress", *extra]  # fmt: skip


def bin_only(model: Path) -> Path:
    """The model's weights as ``pytorch_model.bin`` (a pickle) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def previous_run(work: Path, model: Path, seed: int = 0, lines: list[str] | None = None) -> None:
    """``work/out/five`` as an earlier ``eksft eval`` (the settings of :func:`ev`, another seed if asked) left it."""
    from eksft.evaluation.benchmarks import load_benchmark, resolve
    from eksft.evaluation.runner import EvalSettings, run_identity

    settings = EvalSettings(model=str(model.resolve()), num_samples=2, ks=(1, 2), max_new_tokens=4, seed=seed)
    identity = run_identity(load_benchmark(resolve(bench(work))), settings)
    write(work / "out" / "five" / "run.json", json.dumps(identity, indent=2) + "\n")
    records = [{"problem_id": p, "sample": s, "text": "…", "answer": None, "gold": ROWS[p]["answer"], "correct": False}
               for p in range(2) for s in range(2)]  # fmt: skip
    lines = [json.dumps(r) for r in records] if lines is None else lines
    write(work / "out" / "five" / "samples.jsonl", "".join(line + "\n" for line in lines))


def _corrupt_samples(work: Path, model: Path) -> list[str]:
    previous_run(work, model, lines=['{"problem_id": 0, "sample": 0, "correct": false}', '{"problem_id": 0, "sa',
                                     '{"problem_id": 0, "sample": 1, "correct": true}'])  # fmt: skip
    return ev(work, model)


def _other_seed(work: Path, model: Path) -> list[str]:
    previous_run(work, model, seed=1)
    return ev(work, model)


def _gold_changed(work: Path, model: Path) -> list[str]:
    previous_run(work, model, lines=['{"problem_id": 0, "sample": 0, "gold": "999", "correct": false}'])
    return ev(work, model)


CASES = [
    # ---- eksft eval: the benchmark file -------------------------------------------------------------------------
    CliCase("input/eval-jsonl-bad-line", "line 3 of 5 of a benchmark file is cut-off JSON",
            lambda w, m: ev(w, m, bench(w, with_line(2, '{"problem": "What is 1 + 1?", "answer": '))),
            ("<tmp>/five.jsonl:3", "not a JSON object (invalid JSON", "fix or delete that line"), subprocess=True),
    CliCase("input/eval-jsonl-missing-answer", "row 2 of a benchmark file has no 'answer' field",
            lambda w, m: ev(w, m, bench(w, with_line(1, json.dumps({"problem": "What is 1 + 1?"})))),
            ("<tmp>/five.jsonl:2", "no field 'answer'", "fields present: problem", "--answer-field")),
    CliCase("input/eval-jsonl-problem-not-text", "row 4 of a benchmark file has a number as its problem",
            lambda w, m: ev(w, m, bench(w, with_line(3, json.dumps({"problem": 12, "answer": "3"})))),
            ("<tmp>/five.jsonl:4", "field 'problem' must be a string, got int")),
    CliCase("input/eval-jsonl-answer-list", "row 1 of a benchmark file has a list as its answer",
            lambda w, m: ev(w, m, bench(w, with_line(0, json.dumps({"problem": "1 + 1?", "answer": [1, 2]})))),
            ("<tmp>/five.jsonl:1", "field 'answer' must be a string or a number, got list")),
    CliCase("input/eval-jsonl-empty", "the benchmark file is empty",
            lambda w, m: ev(w, m, bench(w, [])), ("<tmp>/five.jsonl holds no rows", "one JSON object per line")),
    CliCase("input/eval-jsonl-not-utf8", "line 2 of a benchmark file is Latin-1, not UTF-8",
            lambda w, m: ev(w, m, bench(w, b'{"problem": "1 + 1?", "answer": "2"}\n'
                                           + '{"problem": "Café?", "answer": "1"}\n'.encode("latin-1"))),
            ("<tmp>/five.jsonl:2", "not UTF-8 text")),
    CliCase("input/eval-jsonl-huge-line", "line 2 of a benchmark file is 5 MB of unterminated JSON",
            lambda w, m: ev(w, m, bench(w, with_line(1, '{"problem": "' + "x" * 5_000_000))),
            ("<tmp>/five.jsonl:2", "invalid JSON: Unterminated string")),
    CliCase("input/eval-unknown-benchmark", "--benchmark aime2024 (not a known name, not a file)",
            lambda w, m: ev(w, m, "aime2024"), ("unknown benchmark 'aime2024'", "known benchmarks: aime24")),
    # ---- eksft eval: options -------------------------------------------------------------------------------------
    CliCase("input/eval-k-above-samples", "--k 1,8 with --num-samples 2",
            lambda w, m: ev(w, m, None, "--k", "1,8"), ("k=8", "--num-samples 2", "raise --num-samples")),
    CliCase("input/eval-zero-samples", "--num-samples 0",
            lambda w, m: ev(w, m, None, "--num-samples", "0"), ("--num-samples must be >= 1; got 0",)),
    CliCase("input/eval-negative-temperature", "--temperature -1",
            lambda w, m: ev(w, m, None, "--temperature", "-1"), ("--temperature must be a number >= 0", "got -1.0")),
    CliCase("input/eval-nan-temperature", "--temperature nan",
            lambda w, m: ev(w, m, None, "--temperature", "nan"), ("--temperature", "got nan")),
    CliCase("input/eval-top-p-above-one", "--top-p 2",
            lambda w, m: ev(w, m, None, "--top-p", "2"), ("--top-p must be in (0, 1]; got 2.0",)),
    CliCase("input/eval-report-not-results", "--report given a benchmark JSONL file instead of a results.json",
            lambda w, m: ["eval", "--report", bench(w)],
            ("<tmp>/five.jsonl: not a results file", "invalid JSON", "results.json of a finished")),
    CliCase("input/eval-report-with-model", "--report together with --model and --output-dir (conflicting modes)",
            lambda w, m: ["eval", "--report", str(w), "--model", str(m), "--output-dir", str(w / "out")],
            ("--report prints a table", "drop --model, --output-dir")),
    # ---- eksft eval: the model ---------------------------------------------------------------------------------------
    CliCase("input/eval-model-missing", "--model names a directory that does not exist",
            lambda w, m: ev(w, w / "no-model"), ("<tmp>/no-model", "no such directory")),
    CliCase("input/eval-model-no-tokenizer", "the model directory has no tokenizer files",
            lambda w, m: ev(w, [p.unlink() for p in m.glob("tokenizer*")] and m), ("<model>", "tokenizer")),
    CliCase("input/eval-model-bin-only", "the model's weights are only a pickle (pytorch_model.bin)",
            lambda w, m: ev(w, bin_only(m)),
            ("<model>: the weights are PyTorch pickle files (pytorch_model.bin)", "safetensors files only", "use_safetensors=False).save_pretrained(dst)",
             "<model> <model>-safetensors")),
    # ---- eksft eval: the output directory ---------------------------------------------------------------------------
    CliCase("input/eval-output-under-file", "--output-dir lies under a regular file (a chmod 0o500 parent would not "
            "stop root, so a file blocks the path)",
            lambda w, m: ev(w, m, None, "--output-dir", str(write(w / "taken", "a file")) + "/out"),
            ("--output-dir <tmp>/taken/out", "<tmp>/taken is a file", "choose another --output-dir")),
    CliCase("input/eval-output-other-seed", "--output-dir holds samples.jsonl and run.json of a run with seed 1; "
            "this run has seed 0",
            _other_seed,
            ("<tmp>/out/five holds samples drawn with other settings", "seed: 1 on disk, 0 now",
             "use another --output-dir")),
    CliCase("input/eval-samples-bad-line", "line 2 of 3 of the samples.jsonl being resumed is cut-off JSON",
            _corrupt_samples, ("<tmp>/out/five/samples.jsonl:2", "not a sample record (invalid JSON",
                               "delete that line")),
    CliCase("input/eval-samples-gold-changed", "the benchmark's answer to problem 0 differs from the gold recorded "
            "in the samples being resumed", _gold_changed,
            ("<tmp>/out/five/samples.jsonl: problem 0 has gold answer '999' on disk but '2'", "another --output-dir")),
]


# ---- eksft analyze ------------------------------------------------------------------------------------------------


def an(work: Path, *extra: str, out: str | None = None) -> list[str]:
    """``eksft analyze`` writing to ``work/out`` (or ``out``)."""
    return ["analyze", *extra, "--output-dir", out or str(work / "out"), "--no-progress", "--device", "cpu"]


def other_model(work: Path, model: Path, name: str, **changes) -> Path:
    """A random model like the tiny one but with some config values changed (another architecture or vocabulary)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    for key, value in changes.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(work / name)
    return work / name


def texts(work: Path, *lines: str) -> str:
    return str(write(work / "texts.jsonl", "".join(line + "\n" for line in lines)))


TEXT = json.dumps({"text": "Question: What is 2 + 3?\nAnswer: 5"})


def shift(work: Path, model: Path, text_file: str) -> list[str]:
    return an(work, "--base", str(model), "--model", str(model), "--texts", text_file)


def _eval_dir_bad_samples(work: Path, model: Path) -> list[str]:
    write(work / "ev" / "five" / "results.json", json.dumps({"num_samples": 2, "metrics": {}}))
    write(work / "ev" / "five" / "samples.jsonl", '{"problem_id": 0, "sample": 0, "correct": true}\n[1, 2]\n'
                                                   '{"problem_id": 0, "sample": 1, "correct": true}\n')  # fmt: skip
    return an(work, "--eval-dir", str(work / "ev"))


def _earlier_output(work: Path, model: Path) -> list[str]:
    write(work / "out" / "analysis.json", "{}")
    return an(work, "--run-dir", str(work))


def _foreign_output(work: Path, model: Path) -> list[str]:
    write(work / "out" / "notes.txt", "mine")
    return an(work, "--run-dir", str(work), "--overwrite")


CASES += [
    CliCase("input/analyze-model-bin-only", "--base and --model are a model whose weights are only a pickle "
            "(pytorch_model.bin)", lambda w, m: an(w, "--base", str(bin_only(m)), "--model", str(m)),
            ("<model>: the weights are PyTorch pickle files (pytorch_model.bin)", "safetensors files only", "use_safetensors=False"), subprocess=True),
    CliCase("input/analyze-other-architecture", "--model has 1 layer, --base 2 (another architecture)",
            lambda w, m: an(w, "--base", str(m), "--model", str(other_model(w, m, "one-layer", num_hidden_layers=1,
                                                                        layer_types=["full_attention"]))),
            ("different parameters", "only in <model>: model.layers.1.", "the model this one was fine-tuned from")),
    CliCase("input/analyze-other-vocabulary", "--model has a vocabulary of 640 tokens, --base of 512",
            lambda w, m: an(w, "--base", str(m), "--model", str(other_model(w, m, "big-vocab", vocab_size=640))),
            ("the vocabularies differ: 640 tokens in <tmp>/big-vocab, 512 in <model>",)),
    CliCase("input/analyze-model-missing", "--model names a directory that does not exist",
            lambda w, m: an(w, "--base", str(m), "--model", str(w / "no-model")),
            ("<tmp>/no-model: no such file or directory",)),
    CliCase("input/analyze-model-without-base", "--model without --base",
            lambda w, m: an(w, "--model", str(m)), ("--model needs --base",)),
    CliCase("input/analyze-batch-size-zero", "--batch-size 0",
            lambda w, m: an(w, "--run-dir", str(w), "--batch-size", "0"), ("--batch-size must be >= 1, got 0",)),
    CliCase("input/analyze-texts-bad-line", "line 2 of 3 of the --texts file is cut-off JSON",
            lambda w, m: shift(w, m, texts(w, TEXT, '{"text": "Question', TEXT)),
            ("<tmp>/texts.jsonl:2", "not a JSON object (invalid JSON", "fix or delete that line")),
    CliCase("input/analyze-texts-bad-last-line", "the last line of the --texts file is cut-off JSON (user input: "
            "no interrupted writer to excuse it)", lambda w, m: shift(w, m, texts(w, TEXT, TEXT, '{"text": "Q')),
            ("<tmp>/texts.jsonl:3", "not a JSON object")),
    CliCase("input/analyze-texts-wrong-type", "line 2 of the --texts file has a number as its 'text'",
            lambda w, m: shift(w, m, texts(w, TEXT, json.dumps({"text": 5}))),
            ("<tmp>/texts.jsonl:2", "field 'text' must be a string", "got int")),
    CliCase("input/analyze-texts-missing-field", "line 1 of the --texts file has neither 'text' nor 'messages'",
            lambda w, m: shift(w, m, texts(w, json.dumps({"prompt": "hello"}))),
            ("<tmp>/texts.jsonl:1", "no field 'text' or 'messages' (fields: prompt)", "--text-field")),
    CliCase("input/analyze-texts-empty", "the --texts file is empty",
            lambda w, m: shift(w, m, texts(w)), ("--texts <tmp>/texts.jsonl holds no texts",)),
    CliCase("input/analyze-run-dir-bad-line", "line 2 of 3 of a run's token_stats.jsonl is not JSON",
            lambda w, m: an(w, "--run-dir", str(write(w / "run" / "token_stats.jsonl", '{"step": 1}\n{oops\n{"step": 2}\n')
                                                .parent)),
            ("<tmp>/run/token_stats.jsonl:2", "not a JSON object")),
    CliCase("input/analyze-eval-dir-bad-samples", "line 2 of a finished eval's samples.jsonl is a JSON list",
            _eval_dir_bad_samples, ("<tmp>/ev/five/samples.jsonl:2", "not a sample record (a JSON list, not an object)")),
    CliCase("input/analyze-output-not-empty", "--output-dir holds an earlier analysis and --overwrite is not given",
            _earlier_output,
            ("--output-dir <tmp>/out exists and is not empty", "pass --overwrite")),
    CliCase("input/analyze-overwrite-foreign-dir", "--overwrite on an --output-dir of other files (no analysis.json)",
            _foreign_output,
            ("--output-dir <tmp>/out is not an earlier output of eksft analyze", "will not replace it")),
    CliCase("input/analyze-output-under-file", "--output-dir lies under a regular file",
            lambda w, m: an(w, "--run-dir", str(w), out=str(write(w / "taken", "a file")) + "/out"),
            ("--output-dir <tmp>/taken/out", "<tmp>/taken is a file")),
]


# ---- Python API ---------------------------------------------------------------------------------------------------


def _pass_at_k_k_above_n(work, model):
    from eksft.evaluation import pass_at_k

    return lambda: pass_at_k(4, 1, 8)


def _pass_at_k_table_short(work, model):
    from eksft.evaluation import pass_at_k_table

    return lambda: pass_at_k_table({"p1": [True, False, False, False], "p2": [True, False]}, ks=[1, 4])


def _load_bad_benchmark(work, model):
    from eksft.evaluation.benchmarks import load_benchmark, resolve

    path = bench(work, with_line(1, "{oops"))
    return lambda: load_benchmark(resolve(path))


def _evaluate_k_above_n(work, model):
    from eksft.evaluation.benchmarks import load_benchmark, resolve
    from eksft.evaluation.runner import EvalSettings, evaluate

    benchmark = load_benchmark(resolve(bench(work)))
    settings = EvalSettings(model="m", num_samples=2, ks=(1, 8))
    return lambda: evaluate([benchmark], lambda p, s: ["\\boxed{1}"] * len(p), str, settings, work / "out")


def _drift_of_pickle(work, model):
    from eksft.analysis.drift import parameter_drift

    return lambda: parameter_drift(bin_only(model), work)


def _load_model_pickle(work, model):
    from eksft.analysis.shift import load_model

    bin_only(model)
    return lambda: load_model(model)


def _grade_lengths(work, model):
    from eksft.grading import grade_batch

    return lambda: grade_batch(["\\boxed{2}", "\\boxed{3}"], ["2"])


CASES += [
    ApiCase("input/api-pass-at-k-above-n", "eksft.evaluation.pass_at_k(n=4, c=1, k=8)", _pass_at_k_k_above_n,
            ValueError, ("k must be in [1, n=4], got k=8",)),
    ApiCase("input/api-pass-at-k-table-short", "pass_at_k_table with k=4 and a problem that has 2 samples",
            _pass_at_k_table_short, ValueError, ("problem 'p2'", "k must be in [1, n=2], got k=4")),
    ApiCase("input/api-benchmark-bad-jsonl", "load_benchmark on a local JSONL whose line 2 is not JSON",
            _load_bad_benchmark, UserError, ("<tmp>/five.jsonl:2", "invalid JSON")),
    ApiCase("input/api-evaluate-k-above-n", "evaluate() with ks=(1, 8) and num_samples=2", _evaluate_k_above_n,
            UserError, ("k=8 needs at least 8 samples", "--num-samples is 2")),
    ApiCase("input/api-drift-pickle", "parameter_drift on a model directory with only pytorch_model.bin",
            _drift_of_pickle, UserError, ("<model>: the weights are PyTorch pickle files (pytorch_model.bin)", "safetensors files only")),
    ApiCase("input/api-load-model-pickle", "eksft.analysis.shift.load_model on a directory with only "
            "pytorch_model.bin", _load_model_pickle, UserError, ("<model>: the weights are PyTorch pickle files (pytorch_model.bin)", "safetensors files only")),
    ApiCase("input/api-grade-lengths", "grading.grade_batch with 2 completions and 1 gold answer", _grade_lengths,
            ValueError, ("completions and golds differ in length: 2 != 1",)),
]
