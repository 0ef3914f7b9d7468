"""The evaluation loop: sample n completions per problem, grade them, resume after any interruption.

Layout of an output directory::

    OUT/results.json, OUT/results.md        all benchmarks of the run, written only when every sample is done
    OUT/<benchmark>/run.json                what the samples were drawn with (checked on every rerun)
    OUT/<benchmark>/samples.jsonl           one line per sample, appended as produced
    OUT/<benchmark>/results.json            that benchmark's metrics, written only when it is done

Nothing is lost: each batch of samples is appended to ``samples.jsonl`` (``problem_id``, ``sample``, ``text``,
``answer`` extracted, ``gold``, ``correct``) and flushed to disk (``fsync``) as soon as it is graded: with the hf
backend before the next batch starts, with vllm (chunks of thousands of requests, graded while the next chunk
generates) before the next chunk's results are written; see ``eksft.evaluation.sampling``. A rerun
with the same output directory reads what is there and generates only the missing (problem, sample) pairs, so a
larger ``--num-samples`` or ``--limit`` extends a finished run. The rerun must use the same model and sampling
settings (``run.json``); mixing samples drawn differently would make the metrics meaningless.

What a kill at any moment can leave, and what the next run does with it:

* a line is a record once its newline is on disk: bytes after the last newline are the torn write of a killed run,
  ignored when reading and cut off before the next append, so a bad line can never end up inside the file; a bad
  line that is followed by a newline is damage, and an error naming the file and line;
* a batch (or chunk) whose write fails (disk full, Ctrl-C) is cut back off, so the file holds whole batches;
* each (problem, sample) is drawn once: the rerun draws the pairs missing from the file, in the same order, with
  the same per-sample seeds, so an interrupted and resumed run ends with the bytes an uninterrupted one writes
  (exactly in float32 on a CPU; in bf16 on a GPU a batch of another shape can rarely change a token);
* results are written to a temporary file and renamed, and stale ones are deleted before any new sample is drawn,
  so a results file that exists always describes a finished run. A temporary file left by a kill is removed by the
  next run: every writer holds an advisory lock on the directory (``flock``) while its temporary file exists, so one
  seen under the lock is stale. The lock also refuses a second run on the same benchmark directory.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from ..files import append_jsonl_fd, check_writable, jsonl_lines, parse_object, write_text_atomic
from .benchmarks import Benchmark
from .conventions import DEFAULT_CONVENTION, DEFAULT_PROMPT_TEMPLATE, get_convention
from .metrics import pass_at_k_table
from .report import average_metrics, render_table
from .sampling import DEFAULT_CHUNK_SIZE, draw, missing_pairs, sample_seed

try:
    import fcntl
except ImportError:  # Windows: no flock; keeping one run per output directory is then up to the user
    fcntl = None

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE", "EvalSettings", "SampleScan", "check_output", "evaluate",
    "format_prompt", "read_samples", "run_identity", "sample_seed", "scan_samples",
]  # fmt: skip

SAMPLES_FILE, RUN_FILE, RESULTS_FILE, TABLE_FILE = "samples.jsonl", "run.json", "results.json", "results.md"
_DAMAGED = "the file is damaged: delete that line (its sample is drawn again) and rerun"


@dataclass(frozen=True)
class EvalSettings:
    """How a run samples. ``batch_size`` is the prompts per generation call of the hf backend, ``chunk_size`` that
    of the vllm backend (thousands: vLLM batches internally and wants every request at once); neither changes a
    sample, so neither is part of :meth:`sampling_identity`."""

    model: str
    num_samples: int = 1
    ks: tuple[int, ...] = (1,)
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    seed: int = 0
    prompt_template: str | None = None  # None: the convention's, for each benchmark
    system_prompt: str | None = None
    chat_template: bool = True
    batch_size: int = 8
    backend: str = "hf"
    chunk_size: int = DEFAULT_CHUNK_SIZE

    convention: str = DEFAULT_CONVENTION  # how answers are read and graded (eksft.evaluation.conventions)

    def template_for(self, benchmark: str | None = None) -> str:
        """The user message's template for a benchmark: ``prompt_template``, else the convention's for it."""
        return self.prompt_template or get_convention(self.convention).prompt_template_for(benchmark)

    def sampling_identity(self) -> dict:
        """What decides how a sample is drawn; a rerun must match it to reuse the samples on disk."""
        keys = ("model", "temperature", "top_p", "max_new_tokens", "seed", "prompt_template", "system_prompt",
                "chat_template")  # fmt: skip
        return {key: getattr(self, key) for key in keys}


def run_identity(benchmark: Benchmark, settings: EvalSettings) -> dict:
    """What a rerun must match to add samples to a benchmark's directory: the sampling identity and the source.

    The hub commit and the fingerprint of the problems are recorded beside it (:func:`provenance`) but not matched:
    a rerun with a larger ``--limit`` extends the same run, and a changed gold answer is caught sample by sample.
    """
    spec = benchmark.spec
    sampling = {**settings.sampling_identity(), "prompt_template": settings.template_for(spec.name),
                "convention": settings.convention}  # fmt: skip
    return {**sampling, "benchmark": spec.name, "source": spec.source, "split": spec.split,
            "problem_field": spec.problem_field, "answer_field": spec.answer_field}  # fmt: skip


def provenance(benchmark: Benchmark) -> dict:
    """Which problems were asked: the hub commit they were read at (None for a local file) and the fingerprint of
    the problems and answers, recorded in ``run.json`` and ``results.json``."""
    return {"revision": benchmark.revision, "content_sha256": benchmark.content_sha256}


def format_prompt(tokenizer, problem: str, settings: EvalSettings, benchmark: str | None = None) -> str:
    """The prompt text: the benchmark's template filled with the problem, inside the chat template unless that is
    switched off."""
    user = settings.template_for(benchmark).replace("{problem}", problem)
    if not settings.chat_template:
        return user
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---- reading what is on disk (nothing here writes) ----------------------------------------------------------------


@dataclass(frozen=True)
class SampleScan:
    """What ``samples.jsonl`` holds: its records (without their texts, which can be large), the byte length of its
    whole lines (``end``; bytes past it are the torn write of a killed run) and the file's size and mtime."""

    records: list[dict]
    end: int = 0
    size: int = 0
    mtime_ns: int = 0


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_record(record: dict, where: str) -> dict:
    """The record without its text, after checking the fields a resume and the metrics rely on."""
    for name, kind in (("problem_id", "an integer >= 0"), ("sample", "an integer >= 0"), ("correct", "true or false")):
        if name not in record:
            raise UserError(f"{where}: the record has no field {name!r}; {_DAMAGED}")
        value = record[name]
        valid = isinstance(value, bool) if name == "correct" else type(value) is int and value >= 0
        if not valid:
            raise UserError(f"{where}: field {name!r} must be {kind}, got {_short(value)}; {_DAMAGED}")
    return {key: value for key, value in record.items() if key != "text"}


def _parse_line(line: bytes, where: str) -> dict:
    record, error = parse_object(line)
    if error is not None:
        raise UserError(f"{where}: not a sample record ({error}); {_DAMAGED}")
    return record


def scan_samples(path: Path) -> SampleScan:
    """Read ``samples.jsonl`` without changing it (see the module docstring for what a kill can leave).

    Every whole line must be a sample record and each (problem, sample) may appear once; anything else is a
    UserError naming the file, line and field.
    """
    try:
        data, stat = path.read_bytes(), path.stat()
    except FileNotFoundError:
        return SampleScan([])
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err}); check its permissions") from None
    end = data.rfind(b"\n") + 1
    records, seen = [], {}
    for lineno, line in jsonl_lines(data[:end]):
        where = f"{path}:{lineno}"
        record = _check_record(_parse_line(line, where), where)
        key = (record["problem_id"], record["sample"])
        if key in seen:
            raise UserError(f"{where}: problem {key[0]} sample {key[1]} is already on line {seen[key]} (two runs "
                            "appended to one file?); delete one of the two lines and rerun")  # fmt: skip
        seen[key] = lineno
        records.append(record)
    return SampleScan(records, end, len(data), stat.st_mtime_ns)


def read_samples(path: Path) -> list[dict]:
    """The sample records of a ``samples.jsonl`` (without texts), read-only; see :func:`scan_samples`."""
    return scan_samples(path).records


def _check_golds(scan: SampleScan, benchmark: Benchmark, path: Path) -> None:
    """The data behind a problem id must not have changed since its samples were drawn (a hub dataset can be
    updated, a local file edited)."""
    problems = {p.id: p for p in benchmark.problems}
    for record in scan.records:
        pid = record["problem_id"]
        if pid in problems and record.get("gold", problems[pid].answer) != problems[pid].answer:
            raise UserError(f"{path}: problem {pid} has gold answer {_short(record['gold'])} on disk but "
                            f"{_short(problems[pid].answer)} in {benchmark.spec.source} now; use another "
                            "--output-dir")  # fmt: skip


def _check_run_file(directory: Path, identity: dict) -> None:
    """A ``UserError`` unless ``directory`` may take samples drawn as ``identity`` says (a fresh directory may)."""
    path = directory / RUN_FILE
    if not path.exists():
        if (directory / SAMPLES_FILE).exists():
            raise UserError(f"{directory / SAMPLES_FILE} exists without {RUN_FILE}, so nothing says how its samples "
                            "were drawn; use another --output-dir")  # fmt: skip
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        previous = None
    if not isinstance(previous, dict):
        raise UserError(f"{path} is damaged; delete {directory} to start this benchmark afresh")
    changed = [key for key in identity if previous.get(key) != identity[key]]
    if changed:
        details = "; ".join(f"{key}: {_short(previous.get(key))} on disk, {_short(identity[key])} now" for key in changed)
        raise UserError(f"{directory} holds samples drawn with other settings ({details}); use another --output-dir, "
                        "or the same settings to resume")  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One benchmark's directory, checked: what ``run.json`` must say, and what ``samples.jsonl`` holds."""

    benchmark: Benchmark
    directory: Path
    identity: dict
    scan: SampleScan


def check_output(benchmarks: list[Benchmark], settings: EvalSettings, output_dir: str | os.PathLike) -> list[Run]:
    """Every check that needs no model, before anything is written: options, the directories, and what they hold."""
    output_dir = Path(output_dir)
    if len({b.name for b in benchmarks}) != len(benchmarks):
        raise UserError(f"two benchmarks share a name ({', '.join(b.name for b in benchmarks)}); rename a file")
    for name in ("batch_size", "chunk_size"):
        if getattr(settings, name) < 1:
            raise UserError(f"{name} must be >= 1; got {getattr(settings, name)}")
    for k in settings.ks:
        if not 1 <= k <= settings.num_samples:
            raise UserError(f"k={k} needs at least {k} samples per problem; --num-samples is {settings.num_samples}")
    check_writable(output_dir, "--output-dir")
    runs = []
    for benchmark in benchmarks:
        directory = output_dir / benchmark.name
        check_writable(directory, "--output-dir")
        identity = run_identity(benchmark, settings)
        _check_run_file(directory, identity)
        scan = scan_samples(directory / SAMPLES_FILE)
        _check_golds(scan, benchmark, directory / SAMPLES_FILE)
        runs.append(Run(benchmark, directory, identity, scan))
    return runs


# ---- writing ------------------------------------------------------------------------------------------------------


def _remove_stale_temps(directory: Path) -> None:
    for name in (RUN_FILE, RESULTS_FILE, TABLE_FILE):
        for temp in directory.glob(f".{name}.*.tmp"):
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(directory: Path, wait: bool) -> Iterator[None]:
    """Hold an advisory lock on ``directory``; the kernel releases it however the process ends.

    Every writer of a temporary file in the directory holds the lock while the file exists, so one found under the
    lock was left by a killed run and is removed here. Without ``wait`` a held lock means another run is working on
    this benchmark, which must not append to the same file.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UserError(f"{directory} is in use by another eksft eval (same --output-dir and benchmark); let it "
                            "finish, or use another --output-dir") from None  # fmt: skip
        _remove_stale_temps(directory)
        yield
    finally:
        os.close(fd)


def _append(fd: int, path: Path, records: list[dict]) -> None:
    """Append whole lines and push them to disk; a failure (disk full) leaves the file as it was (whole batches)."""
    try:
        append_jsonl_fd(fd, records)
    except OSError as err:
        raise UserError(f"cannot append to {path}: {err.strerror or err}; the samples before this batch are kept: "
                        "make room and rerun the same command to resume") from None  # fmt: skip


@contextlib.contextmanager
def _opened_samples(path: Path, scan: SampleScan) -> Iterator[tuple[int, SampleScan]]:
    """The file opened for appending, with a torn last line (from a kill) cut off; rescanned if it changed since
    ``scan`` was taken (another run finished in between)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        stat = os.fstat(fd)
        if (stat.st_size, stat.st_mtime_ns) != (scan.size, scan.mtime_ns) and (stat.st_size or scan.size):
            scan = scan_samples(path)
        if scan.size > scan.end:
            print(f"{path}: cutting off an unfinished last line ({scan.size - scan.end} bytes) left by an interrupted "
                  "run; its sample is drawn again", file=sys.stderr)  # fmt: skip
            os.ftruncate(fd, scan.end)
            os.fsync(fd)
        yield fd, scan
    finally:
        os.close(fd)


def _sample(run: Run, generate, prompt_of, settings: EvalSettings, progress: bool) -> list[dict]:
    """Draw, grade and append the missing samples of ``run``; returns every record of the file (without texts)."""
    from tqdm.auto import tqdm

    benchmark, path = run.benchmark, run.directory / SAMPLES_FILE
    with _opened_samples(path, run.scan) as (fd, scan):
        _check_golds(scan, benchmark, path)
        records = list(scan.records)
        done = {(r["problem_id"], r["sample"]) for r in records}
        todo = missing_pairs(benchmark.problems, settings.num_samples, done)
        if todo:
            (run.directory / RESULTS_FILE).unlink(missing_ok=True)  # it would describe fewer samples than asked for
        if records and progress:
            print(f"{benchmark.name}: resuming, {len(records)} samples on disk, {len(todo)} to generate", file=sys.stderr)
        with tqdm(total=len(todo), desc=f"{benchmark.name}: sampling", unit="sample", disable=not progress,
                  dynamic_ncols=True) as bar:  # fmt: skip

            def write(new: list[dict]) -> None:  # with vllm, called from the grading thread, one chunk at a time
                _append(fd, path, new)
                records.extend({k: v for k, v in record.items() if k != "text"} for record in new)
                bar.update(len(new))

            draw(todo, {p.id: p for p in benchmark.problems}, generate, prompt_of, settings, write)
    return records


def _results(benchmark: Benchmark, records: list[dict], settings: EvalSettings) -> dict:
    by_problem: dict[int, dict[int, bool]] = {p.id: {} for p in benchmark.problems}
    for record in records:
        if record["problem_id"] in by_problem and record["sample"] < settings.num_samples:
            by_problem[record["problem_id"]][record["sample"]] = record["correct"]
    table = pass_at_k_table({pid: list(c.values()) for pid, c in by_problem.items()}, settings.ks)
    n = settings.num_samples
    metrics = {f"avg@{n}": table.pop("avg@n"), **table}
    spec = benchmark.spec
    return {
        "benchmark": spec.name, "source": spec.source, "split": spec.split, **provenance(benchmark),
        "prompt_template": settings.template_for(spec.name), "convention": settings.convention,
        "problem_field": spec.problem_field, "answer_field": spec.answer_field,
        "num_problems": len(benchmark.problems), "num_samples": n,
        "num_correct": sum(sum(c.values()) for c in by_problem.values()), "metrics": metrics, "complete": True,
    }  # fmt: skip


def _prompt_builder(prompt_of, benchmark: str):
    """``prompt_of`` for one benchmark: called with ``benchmark=`` when it takes that keyword (its template may
    depend on the benchmark, as the lighteval convention's does), else with the problem alone."""
    try:
        takes_benchmark = "benchmark" in inspect.signature(prompt_of).parameters
    except (TypeError, ValueError):  # a builtin such as str: no signature, one argument
        takes_benchmark = False
    return functools.partial(prompt_of, benchmark=benchmark) if takes_benchmark else prompt_of


def _run_benchmark(run: Run, generate, prompt_of, settings: EvalSettings, progress: bool) -> dict:
    """Generate what is missing in the run's directory (whose lock the caller holds), then write its results."""
    _check_run_file(run.directory, run.identity)  # checked again: the directory may have changed meanwhile
    record = {**run.identity, **provenance(run.benchmark)}  # rewritten on every run: a larger --limit adds problems
    write_text_atomic(run.directory / RUN_FILE, json.dumps(record, indent=2) + "\n")
    records = _sample(run, generate, _prompt_builder(prompt_of, run.benchmark.name), settings, progress)
    result = _results(run.benchmark, records, settings)
    write_text_atomic(run.directory / RESULTS_FILE, json.dumps(result, indent=2) + "\n")
    return result


def _make_directories(runs: list[Run]) -> None:
    for run in runs:
        try:
            run.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--output-dir: cannot create {run.directory} ({err.strerror or err}); choose another "
                            "--output-dir") from None  # fmt: skip


def evaluate(
    benchmarks: list[Benchmark],
    generate: Callable[[list[str], list[int]], list[str]],
    prompt_of: Callable[[str], str],
    settings: EvalSettings,
    output_dir: str | os.PathLike,
    progress: bool = True,
    checked: list[Run] | None = None,
) -> dict:
    """Run every benchmark (resuming what is on disk); write ``results.json`` and ``results.md`` when all are done.

    ``generate(prompts, seeds)`` returns one completion per prompt (see ``eksft.evaluation.generation``); it gets
    ``settings.batch_size`` prompts per call with ``settings.backend`` hf, ``settings.chunk_size`` with vllm (see
    ``eksft.evaluation.sampling``). ``prompt_of(problem)`` (or ``prompt_of(problem, benchmark=name)``, when it takes
    that keyword) builds the prompt text (``format_prompt`` with a
    tokenizer). ``checked`` is what :func:`check_output` returned, when the caller ran it already (the command line
    does, before loading a model).
    """
    output_dir = Path(output_dir)
    runs = checked if checked is not None else check_output(benchmarks, settings, output_dir)
    _make_directories(runs)
    with contextlib.ExitStack() as held:
        for run in runs:  # all of them first: a run refused for a busy benchmark must not touch anything
            held.enter_context(_locked(run.directory, wait=False))
        with _locked(output_dir, wait=True):  # the summary is rewritten at the end; until then none may exist
            for name in (RESULTS_FILE, TABLE_FILE):
                (output_dir / name).unlink(missing_ok=True)
        results = {run.benchmark.name: _run_benchmark(run, generate, prompt_of, settings, progress) for run in runs}
    summary = {
        "model": settings.model,
        "complete": True,
        "settings": {**asdict(settings), "ks": list(settings.ks)},
        "benchmarks": results,
        "average": average_metrics(results),
    }
    with _locked(output_dir, wait=True):
        write_text_atomic(output_dir / RESULTS_FILE, json.dumps(summary, indent=2) + "\n")
        write_text_atomic(output_dir / TABLE_FILE, render_table([summary]))
    return summary
