"""Answer grading: one definition of "correct" for GRPO rewards and for evaluation.

Under the default convention, a completion is correct when the content of its last ``\\boxed{...}`` (or
``\\fbox{...}``) is mathematically equivalent to the gold answer according to math-verify. Decisions:

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
  method (forking a process that holds CUDA or a tokenizer thread pool is unsafe). The limit is ``MEMORY_LIMIT_BYTES``
  on top of what the worker maps when it starts: ``spawn`` re-runs the top of the parent's main script first, and a
  training script that imports CUDA torch there maps gigabytes, which a fixed limit would leave no room above (every
  answer would then grade False). They stay alive between calls: starting one costs about a second (sympy).
* Answers or golds longer than ``MAX_ANSWER_CHARS`` are graded False without parsing: no benchmark answer is that
  long, and parsing them only burns a worker's timeout.

Two conventions, chosen with ``convention=`` (``eksft.evaluation.conventions`` pairs each with its prompts):

* ``"eksft"`` (the default, and the GRPO reward's): the boxed rule above.
* ``"lighteval"``: pass@1 as lighteval 0.13.0 scores its ``aime24``, ``aime25`` and ``math_500`` tasks (metric
  ``Metrics.pass_at_k_math`` in ``lighteval/metrics/metrics.py``, scoring with ``MultilingualExtractiveMatchMetric``
  of ``lighteval/metrics/dynamic_metrics.py``), re-created with math-verify, whose extraction code lighteval
  carries a copy of (``lighteval/metrics/utils/extractive_match_utils.py``, ``math_comparison.py``):

  - every complete ``<think>...</think>`` pair is deleted, then the text is stripped (lighteval's pipeline,
    ``remove_reasoning_tags`` in ``lighteval/utils/utils.py``): after a lone ``</think>`` the thinking stays, and an
    answer in it counts;
  - the whole completion is searched with LaTeX (box priority 55) then expression patterns, first-match fallback,
    any-match extraction: a box, ``final answer is``, ``Answer: 5``, ``$\\frac{1}{2}$`` or the last number all count;
  - the gold is read the same way from ``\\boxed{gold}``, as lighteval's MATH-500 gold is the solution, whose box
    holds the dataset's ``answer`` (an AIME integer reads the same bare or boxed); one nothing is read from is
    compared as text;
  - ``verify`` rounds floats to 6 places, and percentages take lighteval's form, so that ``25\\%`` is not ``25``
    there either (math-verify alone equates an integer percentage with its integer).

  lighteval pins latex2sympy2_extended 1.0.6 and math-verify 0.9 pins 1.11.0, so the two never share a parser:
  ``tests/evaluation/test_lighteval_agreement.py`` measures how often they agree (``docs/evaluation.md, "Grading conventions"``).
  The answer recorded for a sample is the LaTeX text of the first match tried, which lighteval logs too.

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

__all__ = [
    "GRADING_RULES", "MAX_ANSWER_CHARS", "boxed_answers", "extract_answer", "extract_answers", "grade_and_extract",
    "grade_batch", "is_correct",
]  # fmt: skip

GRADING_RULES = ("eksft", "lighteval")
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


def _boxed_answer(completion: str) -> str | None:
    answers = boxed_answers(completion) if isinstance(completion, str) else []
    return answers[-1] if answers else None


def _check_convention(convention: str) -> str:
    if convention not in GRADING_RULES:
        raise ValueError(f"unknown grading convention {convention!r}; known: {', '.join(GRADING_RULES)}")
    return convention


def extract_answer(completion: str, convention: str = "eksft", timeout: float = 5.0) -> str | None:
    """The answer ``convention`` reads from ``completion`` (the text to record), or None when it reads none.

    ``"eksft"``: the content of the last box after any ``</think>``, found here. ``"lighteval"``: the LaTeX text of
    the first match, found by math-verify in a worker process (it parses, which can hang), so it costs a round trip.
    """
    if _check_convention(convention) == "eksft":
        return _boxed_answer(completion)
    return extract_answers([completion], convention, timeout=timeout, max_workers=1)[0]


def _strip_reasoning(text: str) -> str:
    """The text lighteval grades: every complete ``<think>...</think>`` pair deleted (a lone tag stays), stripped."""
    while "<think>" in text and "</think>" in text:
        start = text.find("<think>")
        end = text.find("</think>", start)
        if end < 0:
            break
        text = text[:start] + text[end + len("</think>") :]
    return text.strip()


def _eksft_check(parse, verify, gold: str, answer: str) -> tuple[bool, None]:
    """The boxed rule: both sides wrapped as ``$...$`` and parsed with math-verify's defaults, the gold first."""
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    answer_parsed = parse(f"${answer}$", parsing_timeout=None)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=None)), None


def _lighteval_targets():
    """lighteval's extraction targets for both sides: LaTeX (box priority 55, its default) before expressions.

    lighteval sorts LaTeX before expressions, which decides ties; its normalization also sets ``equations=True``,
    a no-op in latex2sympy2_extended 1.11 (it only logs a deprecation), so math-verify's default is kept.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=55), ExprExtractionConfig()]


def _lighteval_percent(value):
    """``value`` with math-verify's percentage ``x * UnevaluatedExpr(1/100)`` written as lighteval's ``x * (1/100)``.

    math-verify's comparison treats an integer percentage as equal to that integer (``25\\%`` = ``25``); the copy
    of it inside lighteval 0.13.0 (``lighteval/metrics/utils/math_comparison.py``) compares ``25\\%`` as ``0.25``,
    and recognises only its own form. So an AIME/AMC gold ``25`` is wrong for ``\\boxed{25\\%}`` there, and here.
    """
    from sympy import Basic, Mul, Rational, UnevaluatedExpr

    if not isinstance(value, Basic):
        return value
    marker = UnevaluatedExpr(Rational(1, 100))
    return value.replace(
        lambda node: isinstance(node, Mul) and len(node.args) == 2 and node.args[1] == marker,
        lambda node: Mul(node.args[0], Rational(1, 100), evaluate=False),
    )


def _lighteval_check(parse, verify, gold: str | None, completion: str) -> tuple[bool, str | None]:
    """lighteval's rule on one completion: ``(correct, extracted text)``; a None gold only extracts."""
    targets, text = _lighteval_targets(), _strip_reasoning(completion)
    extracted = parse(text, targets, parsing_timeout=None) if text else []
    answer = next((item for item in reversed(extracted) if isinstance(item, str)), None)
    if gold is None or not extracted:
        return False, answer
    gold_parsed = parse(f"\\boxed{{{gold}}}", targets, parsing_timeout=None) or [gold]
    golds, predictions = map(_lighteval_percent, gold_parsed), map(_lighteval_percent, extracted)
    return bool(verify(list(golds), list(predictions), float_rounding=6, timeout_seconds=None)), answer


def _address_space() -> int:
    """Bytes of address space this process maps now (``VmSize``; 0 where ``/proc`` does not say)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _worker_main(conn, memory_limit: int) -> None:
    """Worker process: answers ``(convention, gold, text)`` jobs with ``(correct, extracted)`` until it gets None or
    its pipe closes (``text`` is the boxed answer under ``"eksft"``, the whole completion under ``"lighteval"``)."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills us
    try:
        import resource

        # on top of what the process already maps: a spawned worker has re-run the parent's main script first, and
        # a script that imports CUDA torch at its top maps gigabytes before we get here
        limit = _address_space() + memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
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
        convention, gold, text = job
        check = _eksft_check if convention == "eksft" else _lighteval_check
        try:
            reply = check(parse, verify, gold, text)
        except BaseException:  # MemoryError, RecursionError, anything sympy throws
            reply = (False, None)
        conn.send(reply)


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

    def run(self, jobs: list[tuple], timeout: float, n_workers: int) -> list[tuple | None]:
        """Each job's reply, in order; None for a job whose worker hung (killed) or crashed."""
        while len(self.workers) < n_workers:
            self.workers.append(_Worker())
        slots = range(n_workers)
        results, pending = [None] * len(jobs), deque(range(len(jobs)))
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
                    except (EOFError, OSError):  # crashed (segfault, OOM kill): its job stays None
                        if not worker.ready:
                            raise RuntimeError(
                                "a grading worker died while starting (is math-verify installed?)"
                            ) from None
                        self._replace(slot)
                        continue
                    if worker.ready:
                        results[worker.job] = message
                        worker.job = None
                    else:
                        worker.ready = True
                elif now >= worker.deadline:
                    if not worker.ready:
                        raise RuntimeError(f"a grading worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
                    self._replace(slot)  # hung: its job stays None


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _shutdown() -> None:
    if _pool is not None and _pool.pid == os.getpid():
        _pool.shutdown()


atexit.register(_shutdown)


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def _job(completion, gold, convention: str) -> tuple | None:
    """The worker's job for one pair, or None when it grades False without parsing (no answer, no gold, too long).

    A None gold asks only for the extraction (``"lighteval"``)."""
    if not isinstance(completion, str):
        return None
    if gold is not None:
        gold = str(gold).strip()
        if not gold or len(gold) > MAX_ANSWER_CHARS:
            return None
    if convention == "lighteval":
        return ("lighteval", gold, completion)
    answer = _boxed_answer(completion)
    if answer is None or gold is None or len(answer) > MAX_ANSWER_CHARS:
        return None
    return ("eksft", _TRAILING_PERIOD_RE.sub(r"\1", gold), _TRAILING_PERIOD_RE.sub(r"\1", answer))


def _run_jobs(jobs: list[tuple | None], timeout: float, max_workers: int | None) -> list[tuple]:
    """The pool's ``(correct, extracted)`` reply to each job, in order; ``(False, None)`` for a None job (nothing to
    parse) and for one whose worker was killed or crashed."""
    where = [i for i, job in enumerate(jobs) if job is not None]
    replies = [(False, None)] * len(jobs)
    if not where:
        return replies
    for i, reply in zip(where, _run_pool([jobs[i] for i in where], timeout, max_workers), strict=True):
        replies[i] = reply or (False, None)
    return replies


def _run_pool(jobs: list[tuple], timeout: float, max_workers: int | None) -> list[tuple | None]:
    """``_Pool.run`` on the process's pool, started on first use (and again in a forked child)."""
    global _pool
    n_workers = max(1, min(max_workers or _default_workers(), len(jobs)))
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # first use, or we are a fork of the process that made it
            _pool = _Pool()
        try:
            return _pool.run(jobs, timeout, n_workers)
        except BaseException:  # KeyboardInterrupt mid-batch: workers hold stale jobs, start afresh next time
            _pool.shutdown()
            _pool = None
            raise


def grade_and_extract(
    completions: list[str],
    golds: list[str],
    timeout: float = 5.0,
    max_workers: int | None = None,
    convention: str = "eksft",
) -> list[tuple[bool, str | None]]:
    """``(correct, extracted answer)`` for each pair, in order: ``grade_batch`` and ``extract_answer`` in one pass.

    The extraction is the one ``extract_answer`` returns; under ``"lighteval"`` it is found in the same worker job
    as the verdict (None when that job timed out)."""
    _check_convention(convention)
    if len(completions) != len(golds):
        raise ValueError(f"completions and golds differ in length: {len(completions)} != {len(golds)}")
    jobs = [_job(completion, gold, convention) for completion, gold in zip(completions, golds, strict=True)]
    replies = _run_jobs(jobs, timeout, max_workers)
    if convention == "eksft":  # the worker only checks; the answer is the box found here
        return [(bool(ok), _boxed_answer(completion)) for (ok, _), completion in zip(replies, completions, strict=True)]
    return [(bool(ok), answer) for ok, answer in replies]


def extract_answers(
    completions: list[str], convention: str = "eksft", timeout: float = 5.0, max_workers: int | None = None
) -> list[str | None]:
    """``extract_answer`` for each completion, in order (under ``"lighteval"`` in parallel worker processes)."""
    if _check_convention(convention) == "eksft":
        return [_boxed_answer(completion) for completion in completions]
    jobs = [_job(completion, None, convention) for completion in completions]
    return [answer for _, answer in _run_jobs(jobs, timeout, max_workers)]


def grade_batch(
    completions: list[str],
    golds: list[str],
    timeout: float = 5.0,
    max_workers: int | None = None,
    convention: str = "eksft",
) -> list[bool]:
    """``is_correct`` for each pair, in order, checked in parallel worker processes; each item gets ``timeout`` s."""
    return [ok for ok, _ in grade_and_extract(completions, golds, timeout, max_workers, convention)]


def is_correct(completion: str, gold: str, timeout: float = 5.0, convention: str = "eksft") -> bool:
    """Whether ``completion``'s answer (the last box, under ``"eksft"``) is equivalent to ``gold`` (False on any
    failure or timeout)."""
    return grade_batch([completion], [gold], timeout=timeout, max_workers=1, convention=convention)[0]
