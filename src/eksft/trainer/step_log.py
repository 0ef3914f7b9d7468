"""The per-step log of a training run: one JSON line per logging step in ``output_dir`` (``token_stats.jsonl`` for
``eksft sft``, ``grpo_log.jsonl`` for ``eksft grpo``), appended by the main process as the Trainer logs.

Appending alone is wrong after a crash: a run killed at step 609 with its last checkpoint at step 600 has already
written steps 601-609, and the resumed run writes them again. So before a run trains, its log is cut back to the step
it starts from (``cut_back``): the checkpoint's step on a resume, 0 for a fresh run in an old ``output_dir``. Each step
is then in the file once, with the values the run that reached it computed; a kill in the middle of an append leaves
a torn last line, which the cut drops too. The cut writes a new file and renames it over the old one, so a kill
during the cut leaves the old file or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback

from ..files import append_jsonl, atomic_file, jsonl_lines, parse_object


def _step(line: bytes) -> int | float | None:
    """The ``step`` of a log line; None for a line that is not a JSON object with a numeric step."""
    record, _ = parse_object(line)
    step = record.get("step") if record is not None else None
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else None


def cut_back(path: str | os.PathLike, step: int) -> int:
    """Remove the lines of ``path`` logged after ``step`` and a torn last line; returns how many lines went.

    Lines are kept byte for byte. A line in the middle that cannot be read (no JSON, no step) is kept: only the
    writer's last append can be torn, and a line nobody can date is not ours to delete. No file: nothing to do; every
    line removed: the file goes too.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = [line for _, line in jsonl_lines(path.read_bytes())]
    kept = []
    for number, line in enumerate(lines):
        line_step = _step(line)
        if line_step is None:
            if number < len(lines) - 1:
                kept.append(line)
        elif line_step <= step:
            kept.append(line)
    removed = len(lines) - len(kept)
    if not kept:
        path.unlink()
    elif removed:
        with atomic_file(path, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in kept))
    return removed


def append(path: str | os.PathLike, record: dict) -> None:
    """One JSON line at the end of ``path`` (created with its directory), fsynced."""
    append_jsonl(path, [record])


class StepLogWriter(TrainerCallback):
    """Appends each line the Trainer logs (``state.log_history``, which it extends before calling ``on_log``) to
    ``path``, on the main process; the end-of-training summary is left out (its runtimes say nothing about a step)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and state.log_history and "train_runtime" not in state.log_history[-1]:
            append(self.path, state.log_history[-1])
