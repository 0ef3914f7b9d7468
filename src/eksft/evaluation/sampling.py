"""Drawing the missing samples of one benchmark: which requests go to each generation call, and grading beside them.

How many requests go to one call (``requests_per_call``) depends on the backend:

* ``hf``: ``batch_size`` prompts. ``model.generate`` pads a batch to its longest row and keeps every row until the
  longest is done, so the batch size is what bounds memory; each batch is graded and appended before the next
  starts.
* ``vllm``: ``chunk_size`` requests (everything pending when fewer). vLLM schedules the requests of one call itself
  (continuous batching, one cached prompt prefix shared by the samples of a problem) and needs thousands of them in
  flight: a small call leaves the GPU nearly idle at its tail, where its last long completions run alone, and a run
  of 5 benchmarks x 32 samples made thousands of them. Not everything at once: the chunk is the unit written to
  ``samples.jsonl``, so an interrupted run loses at most the chunk being generated.

Grading overlaps generation (vllm only): math-verify (``eksft.grading``, worker processes) takes a while
on thousands of completions, during which the GPU would wait. One background thread grades chunk i and appends it
while chunk i+1 generates. The order of the file is kept: the thread holds one job at a time, and chunk i+1 is
handed over only after chunk i's job is finished (its error, e.g. a full disk, is raised then), so chunks reach the
file in the order of the pending list, as batches do. When Ctrl-C or any error stops a generation, the chunk being
graded is still finished and written before the error goes on (grading workers ignore SIGINT); only a kill that
cannot be caught (SIGKILL, power loss) in the seconds that grading takes can also lose that chunk.

The records do not depend on how the pairs were grouped: each (problem, sample) pair is drawn with
``sample_seed(seed, problem, sample)``, and a backend's text depends on that seed only (see
``eksft.evaluation.generation``), so chunked, batched, interrupted and resumed runs write the same records.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..grading import grade_and_extract

__all__ = ["DEFAULT_CHUNK_SIZE", "draw", "missing_pairs", "overlaps_grading", "requests_per_call", "sample_seed"]

DEFAULT_CHUNK_SIZE = 4096

Pair = tuple[int, int]  # (problem id, sample index)
Generate = Callable[[list[str], list[int]], list[str]]
Write = Callable[[list[dict]], None]


def sample_seed(seed: int, problem_id: int, sample: int) -> int:
    """A stable seed per (problem, sample), the same in every process and on every rerun."""
    return zlib.crc32(f"{seed}/{problem_id}/{sample}".encode())


def requests_per_call(settings) -> int:
    """Prompts per generation call: ``chunk_size`` with the vllm backend, ``batch_size`` with hf."""
    return settings.chunk_size if settings.backend == "vllm" else settings.batch_size


def overlaps_grading(settings) -> bool:
    """Whether a chunk is graded while the next one generates: with vllm only. An hf batch is small and slow to
    generate, so its grading costs little, and writing each batch before the next starts keeps hf as it was."""
    return settings.backend == "vllm"


def missing_pairs(problems, num_samples: int, done: set[Pair]) -> list[Pair]:
    """The (problem, sample) pairs still to draw, problem by problem: a problem's samples share a call (and vLLM's
    prefix cache) as far as the call size allows."""
    return [(p.id, s) for p in problems for s in range(num_samples) if (p.id, s) not in done]


def _texts(pairs: list[Pair], problems: dict, prompts: dict[int, str], generate: Generate, prompt_of,
           seed: int) -> list[str]:  # fmt: skip
    """One generation call for ``pairs``; a problem's prompt is built once and kept in ``prompts``."""
    for pid, _ in pairs:
        if pid not in prompts:
            prompts[pid] = prompt_of(problems[pid].problem)
    return generate([prompts[pid] for pid, _ in pairs], [sample_seed(seed, pid, s) for pid, s in pairs])


def _graded(pairs: list[Pair], texts: list[str], problems: dict, convention: str) -> list[dict]:
    """The records of ``pairs`` in their order: text, the answer the convention reads, gold and the verdict."""
    golds = [problems[pid].answer for pid, _ in pairs]
    graded = grade_and_extract(texts, golds, convention=convention)
    return [
        {"problem_id": pid, "sample": s, "text": text, "answer": answer, "gold": gold, "correct": ok}
        for (pid, s), text, gold, (ok, answer) in zip(pairs, texts, golds, graded, strict=True)
    ]


def _overlapped(chunks: list[list[Pair]], generate_chunk: Callable[[list[Pair]], list[str]],
                grade_and_write: Callable[[list[Pair], list[str]], None]) -> None:  # fmt: skip
    """Generate each chunk in this thread while the previous one is graded and written in a background thread.

    Leaving the ``with`` block waits for the job in the thread (``shutdown(wait=True)``), also when a generation
    raised (Ctrl-C): the chunk whose generation finished is written before the error goes on.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eksft-grading") as grader:
        job: Future | None = None
        for chunk in chunks:
            if job is not None and job.done():
                job.result()  # a failed write stops the run now, not after another chunk's generation
            texts = generate_chunk(chunk)
            if job is not None:
                job.result()  # chunk i is on disk before chunk i+1 is handed over: appends stay in order
            job = grader.submit(grade_and_write, chunk, texts)
        if job is not None:
            job.result()


def draw(pairs: list[Pair], problems: dict, generate: Generate, prompt_of, settings, write: Write) -> None:
    """Generate and grade ``pairs`` and hand their records to ``write``, one call's worth at a time, in order.

    ``problems`` maps problem ids to problems; ``write(records)`` appends them (with the vllm backend it runs in the
    grading thread, one call at a time, never two at once).
    """
    size = requests_per_call(settings)
    chunks = [pairs[start : start + size] for start in range(0, len(pairs), size)]
    prompts: dict[int, str] = {}

    def generate_chunk(chunk: list[Pair]) -> list[str]:
        return _texts(chunk, problems, prompts, generate, prompt_of, settings.seed)

    def grade_and_write(chunk: list[Pair], texts: list[str]) -> None:
        write(_graded(chunk, texts, problems, settings.convention))

    if overlaps_grading(settings):
        _overlapped(chunks, generate_chunk, grade_and_write)
    else:
        for chunk in chunks:
            grade_and_write(chunk, generate_chunk(chunk))
