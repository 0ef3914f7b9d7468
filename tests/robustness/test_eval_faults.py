"""Faults during ``eksft eval``: SIGKILL at ten different moments, Ctrl-C, a full disk, a second run on the same
directory, hostile weights and hostile model output. Each test records its row of docs/reliability.md.

The kills run the real evaluation loop on the tiny model in a forked child (a fresh interpreter would spend seconds
importing torch for each), which pauses at the chosen moment and is killed there by the parent (SIGKILL: nothing in
the child gets to clean up). Every resume must end with exactly the files of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eksft import cli
from eksft import files as eksft_files
from eksft.errors import UserError
from eksft.evaluation.benchmarks import Benchmark, BenchmarkSpec, Problem
from eksft.evaluation.runner import EvalSettings, evaluate, scan_samples

EKSFT = Path(sys.executable).parent / "eksft"
BENCHMARKS = [
    Benchmark(BenchmarkSpec("alpha", "in memory"), [Problem(i, f"What is {i} + {i + 2}?", str(2 * i + 2)) for i in range(3)]),
    Benchmark(BenchmarkSpec("beta", "in memory"), [Problem(i, f"What is {i} times 3?", str(3 * i)) for i in range(2)]),
]


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model's generator and the settings of the runs (3 samples per batch, so kills land inside batches)."""
    from transformers import AutoTokenizer

    from eksft.evaluation.generation import HFGenerator, SamplingSettings

    settings = EvalSettings(model=tiny_model_dir, num_samples=4, ks=(1, 2, 4), temperature=1.0, top_p=0.95,
                            max_new_tokens=12, seed=5, prompt_template="{problem}", chat_template=False, batch_size=3)  # fmt: skip
    sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens)
    generator = HFGenerator(tiny_model_dir, AutoTokenizer.from_pretrained(tiny_model_dir), sampling, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKENIZERS_PARALLELISM", "false")  # the children are forks of this process
        yield generator, settings


def run_eval(tiny, out: Path, generate=None):
    generator, settings = tiny
    return evaluate(BENCHMARKS, generate or generator.generate, str, settings, out, progress=False)


# ---- the moments of a kill ------------------------------------------------------------------------------------------


def _pause(ready) -> None:
    ready.set()
    time.sleep(600)  # the parent kills us here


def _count_calls(function, nth: int, before=None, after=None):
    """``function`` with ``before(*args)`` / ``after(*args)`` run at its ``nth`` call."""
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and before:
            before(*args)
        result = function(*args, **kwargs)
        if calls[0] == nth and after:
            after(*args)
        return result

    return wrapped


def _at_replace(out: Path, target: str, ready) -> None:
    """Pause just before ``os.replace`` renames a finished temporary file onto ``out/target``."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == out / target:
            _pause(ready)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def _mid_write(nth: int, keep, ready) -> None:
    """At the ``nth`` append, write only ``keep(data)`` bytes of the batch, then pause."""

    def torn(fd, data):
        real(fd, data[: keep(data)])
        _pause(ready)

    real = eksft_files.write_all
    eksft_files.write_all = _count_calls(real, nth, before=torn)


def _half_first_line(data: bytes) -> int:
    return data.index(b"\n") // 2


def _first_line(data: bytes) -> int:
    return data.index(b"\n") + 1


def _all_but_half_the_last_line(data: bytes) -> int:
    return len(data) - (len(data) - data.rstrip(b"\n").rfind(b"\n")) // 2


KILLS = [  # (what the child was doing, how to make it pause there); each resumes from what the previous one left
    ("writing alpha/run.json (temporary file written, not renamed)", lambda out, ready: _at_replace(out, "alpha/run.json", ready)),
    ("inside the model's generate call for the 2nd batch", "generate"),
    ("half of the first line of a batch written", lambda out, ready: _mid_write(1, _half_first_line, ready)),
    ("resuming: before the torn last line is cut off",
     lambda out, ready: setattr(os, "ftruncate", _count_calls(os.ftruncate, 1, before=lambda *a: _pause(ready)))),
    ("the first line of a 3-sample batch written, the other two not", lambda out, ready: _mid_write(1, _first_line, ready)),
    ("a whole batch written, before its fsync", lambda out, ready: _mid_write(1, len, ready)),
    ("writing alpha/results.json (temporary file written, not renamed)",
     lambda out, ready: _at_replace(out, "alpha/results.json", ready)),
    ("half of the last line of beta's 2nd batch written", lambda out, ready: _mid_write(2, _all_but_half_the_last_line, ready)),
    ("writing the summary results.json (temporary file written, not renamed)",
     lambda out, ready: _at_replace(out, "results.json", ready)),
    ("between the summary results.json and results.md", lambda out, ready: _at_replace(out, "results.md", ready)),
]  # fmt: skip


def _child(tiny, out: Path, point, ready) -> None:
    generate = tiny[0].generate
    if point == "generate":
        generate = _count_calls(generate, 2, before=lambda *a: _pause(ready))
    else:
        point(out, ready)
    run_eval(tiny, out, generate)
    os._exit(0)  # finished without reaching its kill point: the parent sees `ready` unset


def kill_at(tiny, out: Path, point, while_paused=None) -> None:
    """Run the evaluation in a forked child until it pauses at ``point``, call ``while_paused()``, SIGKILL it."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_child, args=(tiny, out, point, ready))
    child.start()
    try:
        assert ready.wait(60), f"the child ended (exit code {child.exitcode}) without reaching its kill point"
        if while_paused:
            while_paused()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL


def check_consistent(out: Path, reference: dict[str, bytes]) -> None:
    """What a kill left: each samples.jsonl a prefix of the uninterrupted run's (a torn last line included), and
    every results file that exists exactly the uninterrupted run's."""
    for name, data in files(out).items():
        if name.endswith("samples.jsonl"):
            assert reference[name].startswith(data), name
        elif Path(name).name in ("results.json", "results.md"):
            assert data == reference[name], name


def test_ten_kills_in_a_row_then_resume_equals_an_uninterrupted_run(tiny, tmp_path, reliability):
    run_eval(tiny, tmp_path / "reference")
    reference = files(tmp_path / "reference")
    assert len(scan_samples(tmp_path / "reference" / "alpha" / "samples.jsonl").records) == 12
    out = tmp_path / "out"

    def second_run_is_refused():
        before = files(out)
        with pytest.raises(UserError, match=r"out/alpha is in use by another eksft eval"):
            run_eval(tiny, out)
        assert files(out) == before

    torn = 0
    for what, point in KILLS:
        kill_at(tiny, out, point, second_run_is_refused if what.startswith("half of the first line") else None)
        check_consistent(out, reference)
        torn += any(scan_samples(p).end < scan_samples(p).size for p in out.glob("*/samples.jsonl"))
    assert torn >= 3, "the kills mid-line left no torn line"
    summary = run_eval(tiny, out)
    assert summary["complete"] is True
    assert files(out) == reference  # samples, run.json and results byte for byte; no temporary file left behind
    reliability.record(
        "eval/kill-resume", "eksft eval (evaluation loop, tiny model)",
        f"SIGKILL {len(KILLS)} times in a row, each run resuming the previous one's output: "
        + "; ".join(what for what, _ in KILLS),
        f"{len(KILLS)}/{len(KILLS)} kills, then a resume: every intermediate samples.jsonl was a prefix of the "
        "uninterrupted run's and no results file existed before it was complete; at the end samples.jsonl, run.json, "
        "results.json and results.md are byte-identical to an uninterrupted run's and no temporary file is left",
    )  # fmt: skip
    reliability.record(
        "eval/second-run-same-dir", "eksft eval (Python API)",
        "a second evaluation started on the output directory of a run that is still appending to it",
        "refused at once with a UserError naming the benchmark directory in use; no file changed",
    )  # fmt: skip


def test_sigint_exits_130_keeps_the_samples_and_resumes(tiny_model_dir, tmp_path, capsys, reliability):
    bench = tmp_path / "five.jsonl"
    bench.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    argv = ["eval", "--model", tiny_model_dir, "--benchmark", str(bench), "--num-samples", "8", "--k", "1,8",
            "--batch-size", "1", "--max-new-tokens", "48", "--prompt-template", "{problem}", "--output-dir", str(out),
            "--no-progress"]  # fmt: skip
    samples = out / "five" / "samples.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([str(EKSFT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (samples.exists() and samples.read_bytes().count(b"\n") >= 3) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "rerun the same command to resume" in stderr and "eksft eval: interrupted" in stderr
    kept = scan_samples(samples)
    # whole lines only: a batch that Ctrl-C interrupted before its fsync returned is cut back off
    assert kept.end == kept.size and 2 <= len(kept.records) < 40
    assert not (out / "results.json").exists()
    resume = [*argv[: argv.index("--batch-size")], "--batch-size", "8", *argv[argv.index("--batch-size") + 2 :]]
    assert cli.main(resume) == 0, capsys.readouterr().err  # the batch size may change: samples do not depend on it
    records = scan_samples(samples).records
    assert sorted((r["problem_id"], r["sample"]) for r in records) == [(p, s) for p in range(5) for s in range(8)]
    assert json.loads((out / "results.json").read_text())["complete"] is True
    reliability.record(
        "eval/sigint", "eksft eval (separate process)",
        "SIGINT (Ctrl-C) once samples are on disk, then the same command again",
        "exit 130 without a traceback, a message saying the samples are kept and how to resume; samples.jsonl held "
        "only whole lines; the rerun drew only the missing samples and wrote complete results",
    )  # fmt: skip


class FakeModel:
    """Deterministic completions from the seed: a stand-in model for faults that need no real one."""

    def __call__(self, prompts, seeds):
        return [f"{prompt} -> \\boxed{{{seed % 7}}}" for prompt, seed in zip(prompts, seeds, strict=True)]


def test_disk_full_mid_batch_keeps_whole_batches_and_resumes(tiny, tmp_path, monkeypatch, reliability):
    run_eval(tiny, tmp_path / "reference", FakeModel())

    def full_disk(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(eksft_files, "write_all", _count_calls(eksft_files.write_all, 2, before=full_disk))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"cannot append to .*alpha/samples.jsonl: No space left on device; the samples "
                                        r"before this batch are kept"):  # fmt: skip
        run_eval(tiny, out, FakeModel())
    kept = scan_samples(out / "alpha" / "samples.jsonl")
    assert kept.end == kept.size and len(kept.records) == 3  # the half-written batch was cut back off
    monkeypatch.undo()
    run_eval(tiny, out, FakeModel())
    assert files(out) == files(tmp_path / "reference")
    reliability.record(
        "eval/disk-full", "eksft eval (evaluation loop)",
        "the disk fills up (ENOSPC) halfway through writing the 2nd batch of samples",
        "a UserError naming samples.jsonl, the error and how to resume; the half-written batch was cut off so the file "
        "held the 1st batch only; the rerun ended byte-identical to an uninterrupted run",
    )  # fmt: skip


class Payload:
    """A pickle that writes a file when it is loaded, as a hostile checkpoint could run any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_weights_are_never_unpickled(tiny_model_dir, tmp_path, capsys, reliability):
    marker = tmp_path / "pickle-ran"
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    bench = tmp_path / "one.jsonl"
    bench.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n")
    evaluation = ["eval", "--model", str(model), "--benchmark", str(bench), "--max-new-tokens", "2", "--no-progress"]
    analysis = ["analyze", "--base", tiny_model_dir, "--model", str(model), "--no-progress"]
    # next to safetensors weights, the pickle is ignored
    assert cli.main([*evaluation, "--output-dir", str(tmp_path / "eval")]) == 0
    assert cli.main([*analysis, "--output-dir", str(tmp_path / "analysis")]) == 0
    # alone, it is refused
    (model / "model.safetensors").unlink()
    capsys.readouterr()
    assert cli.main([*evaluation, "--output-dir", str(tmp_path / "eval-2")]) == 2
    assert cli.main([*analysis, "--output-dir", str(tmp_path / "analysis-2")]) == 2
    assert capsys.readouterr().err.count("(pytorch_model.bin); eksft reads weights from safetensors files only") == 2
    assert not marker.exists()
    assert not (tmp_path / "eval-2").exists() and not (tmp_path / "analysis-2").exists()
    reliability.record(
        "security/eval-analyze-pickle", "eksft eval, eksft analyze",
        "a model directory whose pytorch_model.bin is a pickle that writes a file when loaded: first next to "
        "model.safetensors, then alone",
        "with safetensors present both commands ran and ignored the pickle; alone, both exited 2 with a message giving "
        "the conversion command and wrote nothing; the pickle's file was never written (it was never loaded)",
    )  # fmt: skip


def test_hostile_model_output_is_graded_false_in_bounded_time(tmp_path, reliability):
    tower = r"so the answer is \boxed{9^{9^{9^{9^{9}}}}}"

    def hostile(prompts, seeds):
        return [tower if i % 2 else r"\boxed{4}" for i in range(len(prompts))]

    start = time.monotonic()
    single = Benchmark(BenchmarkSpec("tower", "in memory"), [Problem(0, "What is 2 + 2?", "4")])
    evaluate([single], hostile, str, EvalSettings(model="hostile", num_samples=4, ks=(1, 4), batch_size=4),
             tmp_path, progress=False)  # fmt: skip
    elapsed = time.monotonic() - start
    records = scan_samples(tmp_path / "tower" / "samples.jsonl").records
    outcome = {r["answer"]: r["correct"] for r in records}
    assert outcome == {"9^{9^{9^{9^{9}}}}": False, "4": True}, records
    assert elapsed < 60, elapsed  # one 5 s grading timeout (the stuck workers are killed) and worker start-up
    reliability.record(
        "security/eval-hostile-output", "eksft eval (evaluation loop)",
        r"a model whose completions box a power tower 9^{9^{9^{9^{9}}}}, which math-verify cannot finish evaluating",
        "the run completed in under 60 s (5 s grading timeout, worker start-up included): those samples recorded as "
        "wrong, the correctly boxed ones as right",
    )  # fmt: skip
