"""Answer grading: one definition of "correct" for GRPO rewards and for evaluation.

A completion is correct when the content of its last ``\\boxed{...}`` (or ``\\fbox{...}``) is mathematically
equivalent to the gold answer according to math-verify. Decisions:

* Only the text after the last ``</think>`` is read when that tag is present: an answer boxed inside the thinking
  but never stated after it counts as no answer (so RL does not reward unfinished reasoning).
* The extracted answer and the gold are both wrapped as ``$...$`` and parsed with math-verify's default extraction.
  We tried ``\\boxed{...}`` with ``LatexExtractionConfig`` for the answer: it fails on e.g. ``\\boxed{5.}``, which the
  ``$...$`` form accepts, and it matched nothing the ``$...$`` form missed.
* The gold goes first in ``verify``: the function is not symmetric and treats its first argument as the reference.
  Example: gold ``1 < x \\le 2`` accepts ``(1, 2]``, but gold ``(1, 2]`` rejects ``1 < x \\le 2`` (an interval-looking
  gold may be an ordered pair, so a relation is compared with a set only when the prediction is the set).
* A trailing period is dropped from both sides, also inside a closing brace: math-verify accepts ``5.`` but not
  ``\\text{Evelyn.}``.
* Leading zeros compare as numbers: gold ``33`` matches ``\\boxed{033}`` (AIME answers are written 000-999).
* math-verify's own timeouts use ``signal.alarm``: main thread only, and no help against a hang inside C code (a
  power tower such as ``9^{9^{9^{9^{9}}}}`` never returns). So they are switched off and every check runs in a
  worker process that is killed (SIGKILL) and replaced when it exceeds its own per-item timeout. Workers also get an
  address-space limit (``RLIMIT_AS``) so an input cannot eat the machine, ignore SIGINT, and use the ``spawn`` start
  method (forking a process that holds CUDA or a tokenizer thread pool is unsafe). They stay alive between calls:
  starting one costs about a second (importing sympy).
* Answers or golds longer than ``MAX_ANSWER_CHARS`` are graded False without parsing: no benchmark answer is that
  long, and parsing them only burns a worker's timeout.

Nothing here raises on bad input: garbage, empty text, a crash, a memory error or a timeout all grade as False.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import re
import threading
import time
from collections import deque
from multiprocessing.connection import wait

__all__ = ["MAX_ANSWER_CHARS", "boxed_answers", "extract_answer", "grade_batch", "is_correct"]

MAX_ANSWER_CHARS = 1000
MEMORY_LIMIT_BYTES = 2 * 1024**3
_STARTUP_TIMEOUT_S = 120.0
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TOKEN_RE = re.compile(r"[^\s$]*")
_TRAILING_PERIOD_RE = re.compile(r"\.(\}*)\s*$")  # "5." and "\text{Evelyn.}": math-verify fails on the latter


def _after_think(completion: str) -> str:
    return completion.rsplit("</think>", 1)[-1]


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index just past its matching ``}``, in one pass (``\\{`` and ``\\}`` are not groups)."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 1
        elif char == "{":
            stack.append(i)
        elif char == "}" and stack:
            pairs[stack.pop()] = i + 1
        i += 1
    return pairs


def boxed_answers(completion: str) -> list[str]:
    """Non-empty contents of the (non-nested) boxes after the last ``</think>``, in order of appearance."""
    text, found, pos, pairs = _after_think(completion), [], 0, None
    while (match := _BOX_RE.search(text, pos)) is not None:
        i = match.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            pairs = _brace_pairs(text) if pairs is None else pairs
            if i not in pairs:  # unclosed (truncated generation): not an answer
                pos = i + 1
                continue
            content, end = text[i + 1 : pairs[i] - 1], pairs[i]
        else:  # TeX's brace-less argument, as models write it: "\\boxed 5", "\\boxed -3$"
            token = _TOKEN_RE.match(text, i).group()
            content, end = token.rstrip(".,;"), i + len(token)
        if content.strip():
            found.append(content.strip())
        pos = max(end, match.end())
    return found


def extract_answer(completion: str) -> str | None:
    """Content of the last box after any ``</think>``; None when there is none."""
    answers = boxed_answers(completion) if isinstance(completion, str) else []
    return answers[-1] if answers else None


def _worker_main(conn, memory_limit: int) -> None:
    """Worker process: answers ``(gold, answer)`` pairs with a bool until it gets None or its pipe closes."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills us
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    except (ImportError, ValueError, OSError):
        pass
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout is disabled" and parse-failure chatter
    from math_verify import parse, verify

    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        gold, answer = job
        try:
            gold_parsed = parse(f"${gold}$", parsing_timeout=None)
            answer_parsed = parse(f"${answer}$", parsing_timeout=None)
            ok = bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=None))
        except BaseException:  # MemoryError, RecursionError, anything sympy throws
            ok = False
        conn.send(ok)


class _Worker:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, MEMORY_LIMIT_BYTES), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.job: int | None = None
        self.deadline = time.monotonic() + _STARTUP_TIMEOUT_S

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class _Pool:
    """Persistent workers; each holds at most one job, and one that overruns its deadline is killed and replaced."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.workers: list[_Worker] = []

    def shutdown(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.proc.join(1)
            if worker.proc.is_alive():
                worker.kill()
        self.workers = []

    def _replace(self, slot: int) -> None:
        self.workers[slot].kill()
        self.workers[slot] = _Worker()

    def run(self, jobs: list[tuple[str, str]], timeout: float, n_workers: int) -> list[bool]:
        while len(self.workers) < n_workers:
            self.workers.append(_Worker())
        slots = range(n_workers)
        results, pending = [False] * len(jobs), deque(range(len(jobs)))
        while True:
            for slot in slots:
                worker = self.workers[slot]
                if worker.ready and worker.job is None and pending:
                    worker.job = pending.popleft()
                    worker.deadline = time.monotonic() + timeout
                    try:
                        worker.conn.send(jobs[worker.job])
                    except OSError:  # died while idle: the read below sees EOF
                        pass
            busy = [slot for slot in slots if self.workers[slot].job is not None]
            starting = [slot for slot in slots if not self.workers[slot].ready]
            if not busy and (not pending or not starting):
                return results
            waiting = busy + starting
            next_deadline = min(self.workers[slot].deadline for slot in waiting)
            readable = wait([self.workers[slot].conn for slot in waiting], max(0.0, next_deadline - time.monotonic()))
            now = time.monotonic()
            for slot in waiting:
                worker = self.workers[slot]
                if worker.conn in readable:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):  # crashed (segfault, OOM kill): its job stays False
                        if not worker.ready:
                            raise RuntimeError(
                                "a grading worker died while starting (is math-verify installed?)"
                            ) from None
                        self._replace(slot)
                        continue
                    if worker.ready:
                        results[worker.job] = bool(message)
                        worker.job = None
                    else:
                        worker.ready = True
                elif now >= worker.deadline:
                    if not worker.ready:
                        raise RuntimeError(f"a grading worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
                    self._replace(slot)  # hung: its job stays False


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _shutdown() -> None:
    if _pool is not None and _pool.pid == os.getpid():
        _pool.shutdown()


atexit.register(_shutdown)


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def grade_batch(
    completions: list[str], golds: list[str], timeout: float = 5.0, max_workers: int | None = None
) -> list[bool]:
    """``is_correct`` for each pair, in order, checked in parallel worker processes; each item gets ``timeout`` s."""
    global _pool
    if len(completions) != len(golds):
        raise ValueError(f"completions and golds differ in length: {len(completions)} != {len(golds)}")
    results = [False] * len(completions)
    jobs, where = [], []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        answer, gold = extract_answer(completion), "" if gold is None else str(gold).strip()
        if answer is not None and gold and len(answer) <= MAX_ANSWER_CHARS and len(gold) <= MAX_ANSWER_CHARS:
            jobs.append((_TRAILING_PERIOD_RE.sub(r"\1", gold), _TRAILING_PERIOD_RE.sub(r"\1", answer)))
            where.append(i)
    if not jobs:
        return results
    n_workers = max(1, min(max_workers or _default_workers(), len(jobs)))
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # first use, or we are a fork of the process that made it
            _pool = _Pool()
        try:
            graded = _pool.run(jobs, timeout, n_workers)
        except BaseException:  # KeyboardInterrupt mid-batch: workers hold stale jobs, start afresh next time
            _pool.shutdown()
            _pool = None
            raise
    for i, ok in zip(where, graded, strict=True):
        results[i] = ok
    return results


def is_correct(completion: str, gold: str, timeout: float = 5.0) -> bool:
    """Whether the last boxed answer of ``completion`` is equivalent to ``gold`` (False on any failure or timeout)."""
    return grade_batch([completion], [gold], timeout=timeout, max_workers=1)[0]
