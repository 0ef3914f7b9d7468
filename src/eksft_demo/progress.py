"""Progress lines with an ETA, for the demo's stages and the trainers inside them."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Stage, step and an ETA for the whole run, on one line of stderr (rewritten in place on a terminal).

    The plan is a list of ``(task, estimated seconds)``. The ETA is the estimate of the work left, scaled by how
    much slower or faster than estimated the work done so far went, so it corrects itself as the run goes.
    """

    def __init__(self, plan: Sequence[tuple[str, float]], enabled: bool = True, stream=None,
                 interval: float | None = None) -> None:  # fmt: skip
        self.estimates = dict(plan)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.5 if self.tty else 15.0)
        self.start = time.monotonic()
        self.done: set[str] = set()
        self.task: str | None = None
        self.label = ""
        self.total = 0
        self.step = 0
        self._task_start = self.start
        self._last_print = 0.0
        self._done_estimate = 0.0
        self._done_actual = 0.0
        self._note = ""

    # the ETA
    def eta(self) -> float:
        current = self.estimates.get(self.task, 0.0) if self.task else 0.0
        fraction = self.step / self.total if self.total else 0.0
        left = sum(v for k, v in self.estimates.items() if k not in self.done) - current * fraction
        spent_estimate = self._done_estimate + current * fraction
        spent_actual = self._done_actual + (time.monotonic() - self._task_start if self.task else 0.0)
        scale = spent_actual / spent_estimate if spent_estimate > 1.0 else 1.0
        return max(0.0, left * min(max(scale, 0.2), 20.0))

    def begin(self, task: str, label: str, total: int = 0) -> None:
        self.task, self.label, self.total, self.step, self._note = task, label, total, 0, ""
        self._task_start = time.monotonic()
        self._print(force=True)

    def update(self, step: int, note: str = "") -> None:
        self.step = min(step, self.total) if self.total else step
        self._note = note
        self._print()

    def advance(self, steps: int = 1) -> None:
        self.update(self.step + steps)

    def end(self) -> None:
        if self.task is None:
            return
        self._done_estimate += self.estimates.get(self.task, 0.0)
        self._done_actual += time.monotonic() - self._task_start
        self.done.add(self.task)
        self.step = self.total
        self._print(force=True, final=True)
        self.task = None

    def say(self, message: str) -> None:
        """A line of its own (a result, a note), below the progress line."""
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(f"[demo] {message}\n")
            self.stream.flush()

    def _print(self, force: bool = False, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self.interval:
            return
        self._last_print = now
        steps = f" {self.step}/{self.total}" if self.total else ""
        note = self._note if not final else ""
        line = (f"[demo {_duration(now - self.start)} | ETA {_duration(self.eta())}] {self.label}{steps}"
                f"{' ' + note if note else ''}{' done' if final else ''}")  # fmt: skip
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _trainer_callback(progress: Progress, metric: str | None = None):
    """A transformers callback that reports the trainer's step (and the latest value of ``metric``)."""
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        latest = ""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if metric and logs and isinstance(logs.get(metric), (int, float)):
                self.latest = f"({metric.split('/')[-2] if '/' in metric else metric} {logs[metric]:.3g})"

        def on_step_end(self, args, state, control, **kwargs):
            progress.update(state.global_step, self.latest)

    return _Report()
