"""The evaluation loop: sample n completions per problem, grade them, resume after any interruption.

Layout of an output directory::

    OUT/results.json, OUT/results.md        all benchmarks of the run, written only when every sample is done
    OUT/<benchmark>/run.json                what the samples were drawn with (checked on every rerun)
    OUT/<benchmark>/samples.jsonl           one line per sample, appended as produced
    OUT/<benchmark>/results.json            that benchmark's metrics, written only when it is done

Nothing is lost: each batch of samples is appended to ``samples.jsonl`` (``problem_id``, ``sample``, ``text``,
``answer`` extracted, ``gold``, ``correct``) and flushed to disk (``fsync``) before the next batch starts. A rerun
with the same output directory reads what is there and generates only the missing (problem, sample) pairs, so a
larger ``--num-samples`` or ``--limit`` extends a finished run. A process killed mid-write leaves a last line
without its newline: it is cut off and that sample is generated again. The rerun must use the same model and
sampling settings (``run.json``); mixing samples drawn differently would make the metrics meaningless.

Results are written with write-to-temporary + rename, and stale ones are deleted before any new sample is drawn, so
a results file that exists always describes a finished run.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import UserError
from ..grading import extract_answer, grade_batch
from .benchmarks import Benchmark
from .metrics import pass_at_k_table
from .report import average_metrics, render_table

__all__ = ["DEFAULT_PROMPT_TEMPLATE", "EvalSettings", "check_output", "evaluate", "format_prompt", "read_samples", "run_benchmark"]

DEFAULT_PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
SAMPLES_FILE, RUN_FILE, RESULTS_FILE, TABLE_FILE = "samples.jsonl", "run.json", "results.json", "results.md"


@dataclass(frozen=True)
class EvalSettings:
    model: str
    num_samples: int = 1
    ks: tuple[int, ...] = (1,)
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    seed: int = 0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = None
    chat_template: bool = True
    batch_size: int = 8
    backend: str = "hf"

    def sampling_identity(self) -> dict:
        """What decides how a sample is drawn; a rerun must match it to reuse the samples on disk."""
        keys = ("model", "temperature", "top_p", "max_new_tokens", "seed", "prompt_template", "system_prompt",
                "chat_template")  # fmt: skip
        return {key: getattr(self, key) for key in keys}


def format_prompt(tokenizer, problem: str, settings: EvalSettings) -> str:
    """The prompt text: the template filled with the problem, inside the chat template unless that is switched off."""
    user = settings.prompt_template.replace("{problem}", problem)
    if not settings.chat_template:
        return user
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def sample_seed(seed: int, problem_id: int, sample: int) -> int:
    """A stable seed per (problem, sample), the same in every process and on every rerun."""
    return zlib.crc32(f"{seed}/{problem_id}/{sample}".encode())


# ---- files --------------------------------------------------------------------------------------------------------




def read_samples(path: Path) -> list[dict]:
    """The sample records in ``path``; a last line cut off by a kill (no newline, or not JSON) is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    keep = len(data) - len(lines[-1])  # bytes up to the last newline; what follows it was never finished
    records = []
    for lineno, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and {"problem_id", "sample", "correct"} <= record.keys()
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            if lineno == len(lines) - 1:  # the last full line: a write interrupted before it was complete
                keep -= len(line) + 1
                break
            raise UserError(f"{path}:{lineno}: not a sample record; delete this line (or the file) and rerun")
        records.append(record)
    if keep < len(data):
        print(f"{path}: ignoring an unfinished last line ({len(data) - keep} bytes) from an interrupted run",
              file=sys.stderr)  # fmt: skip
        with path.open("r+b") as handle:
            handle.truncate(keep)
    return records


def _check_run_file(directory: Path, identity: dict) -> bool:
    """Whether ``directory`` may take samples drawn as ``identity`` says; True when its run file is still to write."""
    path = directory / RUN_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is damaged; delete {directory} to start this benchmark afresh") from None
        changed = [key for key in identity if previous.get(key) != identity[key]]
        if changed:
            details = "; ".join(f"{key}: {previous.get(key)!r} on disk, {identity[key]!r} now" for key in changed)
            raise UserError(
                f"{directory} holds samples drawn with other settings ({details}); use another --output-dir, "
                "or the same settings to resume"
            )
        return False
    if (directory / SAMPLES_FILE).exists():
        raise UserError(f"{directory / SAMPLES_FILE} exists without {RUN_FILE}; use another --output-dir")
    return True


# ---- the loop -----------------------------------------------------------------------------------------------------


def _todo(benchmark: Benchmark, num_samples: int, done: set[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(p.id, s) for p in benchmark.problems for s in range(num_samples) if (p.id, s) not in done]


def run_benchmark(
    benchmark: Benchmark,
    generate: Callable[[list[str], list[int]], list[str]],
    prompt_of: Callable[[str], str],
    settings: EvalSettings,
    directory: Path,
    progress: bool = True,
) -> dict:
    """Generate what is missing in ``directory``, then write and return this benchmark's results."""
    from tqdm.auto import tqdm

    samples_path = directory / SAMPLES_FILE
    records = read_samples(samples_path)
    done = {(r["problem_id"], r["sample"]) for r in records}
    todo = _todo(benchmark, settings.num_samples, done)
    problems = {p.id: p for p in benchmark.problems}
    for record in records:  # the data behind a problem id must not have changed (a hub dataset can be updated)
        pid = record["problem_id"]
        if pid in problems and record.get("gold", problems[pid].answer) != problems[pid].answer:
            raise UserError(f"{samples_path}: problem {pid} has gold answer {record['gold']!r} on disk but "
                            f"{problems[pid].answer!r} in {benchmark.spec.source} now; use another --output-dir")  # fmt: skip
    if todo:
        (directory / RESULTS_FILE).unlink(missing_ok=True)  # it would describe fewer samples than asked for now
    if done and progress:
        print(f"{benchmark.name}: resuming, {len(done)} samples on disk, {len(todo)} to generate", file=sys.stderr)
    prompts: dict[int, str] = {}
    bar = tqdm(total=len(todo), desc=f"{benchmark.name}: sampling", unit="sample", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    with samples_path.open("a", encoding="utf-8") as out, bar:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            for pid, _ in batch:
                if pid not in prompts:
                    prompts[pid] = prompt_of(problems[pid].problem)
            texts = generate([prompts[pid] for pid, _ in batch], [sample_seed(settings.seed, pid, s) for pid, s in batch])
            golds = [problems[pid].answer for pid, _ in batch]
            correct = grade_batch(texts, golds)
            new = [
                {"problem_id": pid, "sample": s, "text": text, "answer": extract_answer(text), "gold": gold,
                 "correct": ok}
                for (pid, s), text, gold, ok in zip(batch, texts, golds, correct, strict=True)
            ]  # fmt: skip
            out.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in new))
            out.flush()
            os.fsync(out.fileno())
            records += new
            bar.update(len(batch))

    by_problem: dict[int, dict[int, bool]] = {p.id: {} for p in benchmark.problems}
    for record in records:
        if record["problem_id"] in by_problem and record["sample"] < settings.num_samples:
            by_problem[record["problem_id"]].setdefault(record["sample"], bool(record["correct"]))
    table = pass_at_k_table({pid: list(c.values()) for pid, c in by_problem.items()}, settings.ks)
    n = settings.num_samples
    metrics = {f"avg@{n}": table.pop("avg@n"), **table}
    spec = benchmark.spec
    result = {
        "benchmark": spec.name, "source": spec.source, "split": spec.split, "problem_field": spec.problem_field,
        "answer_field": spec.answer_field, "num_problems": len(benchmark.problems), "num_samples": n,
        "num_correct": sum(sum(c.values()) for c in by_problem.values()), "metrics": metrics, "complete": True,
    }  # fmt: skip
    write_text_atomic(directory / RESULTS_FILE, json.dumps(result, indent=2) + "\n")
    return result


def check_output(benchmarks: list[Benchmark], settings: EvalSettings, output_dir: str | os.PathLike):
    """Every check that needs no model, before anything is written: ``(directory, run identity, is new)`` each."""
    output_dir = Path(output_dir)
    if len({b.name for b in benchmarks}) != len(benchmarks):
        raise UserError(f"two benchmarks share a name ({', '.join(b.name for b in benchmarks)}); rename a file")
    for k in settings.ks:
        if not 1 <= k <= settings.num_samples:
            raise UserError(f"k={k} needs at least {k} samples per problem; --num-samples is {settings.num_samples}")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} exists and is not a directory")
    runs = []
    for benchmark in benchmarks:
        spec = benchmark.spec
        identity = {**settings.sampling_identity(), "benchmark": spec.name, "source": spec.source,
                    "split": spec.split, "problem_field": spec.problem_field, "answer_field": spec.answer_field}  # fmt: skip
        runs.append((output_dir / benchmark.name, identity, _check_run_file(output_dir / benchmark.name, identity)))
    return runs


def evaluate(
    benchmarks: list[Benchmark],
    generate: Callable[[list[str], list[int]], list[str]],
    prompt_of: Callable[[str], str],
    settings: EvalSettings,
    output_dir: str | os.PathLike,
    progress: bool = True,
) -> dict:
    """Run every benchmark (resuming what is on disk); write ``results.json`` and ``results.md`` when all are done.

    ``generate(prompts, seeds)`` returns one completion per prompt (see ``eksft.evaluation.generation``);
    ``prompt_of(problem)`` builds the prompt text (``format_prompt`` with a tokenizer).
    """
    output_dir = Path(output_dir)
    runs = check_output(benchmarks, settings, output_dir)
    for directory, identity, fresh in runs:
        directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_text_atomic(directory / RUN_FILE, json.dumps(identity, indent=2) + "\n")
    directories = [directory for directory, _, _ in runs]
    # the summary is rewritten at the end; until then no file may claim a finished run
    for name in (RESULTS_FILE, TABLE_FILE):
        (output_dir / name).unlink(missing_ok=True)

    results = {}
    for benchmark, directory in zip(benchmarks, directories, strict=True):
        results[benchmark.name] = run_benchmark(benchmark, generate, prompt_of, settings, directory, progress)
    summary = {
        "model": settings.model,
        "complete": True,
        "settings": {**asdict(settings), "ks": list(settings.ks)},
        "benchmarks": results,
        "average": average_metrics(results),
    }
    write_text_atomic(output_dir / RESULTS_FILE, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(output_dir / TABLE_FILE, render_table([summary]))
    return summary
