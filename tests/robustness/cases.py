"""Bad-input cases: what each one writes, what it runs, and what the message must name.

A case's ``setup(work, model)`` writes its bad input under ``work`` (a fresh directory that also holds every output
directory the case names) and returns what to run: an ``argv`` for ``eksft`` (CLI cases) or a zero-argument callable
(API cases). ``model`` is a path to a private copy of the tiny test model that the case may damage. The runner in
``test_bad_inputs.py`` checks: a non-zero exit (or the exception type), no traceback, one error message containing
every ``expect`` fragment (after ``<tmp>`` / ``<model>`` substitution), and ``work`` unchanged by the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliCase:
    key: str  # "input/<command>-<slug>", the row of docs/reliability.md
    fault: str  # what is wrong, one sentence
    setup: Callable[[Path, Path], list[str]]  # (work, model) -> argv after "eksft"
    expect: tuple[str, ...]  # fragments the message must contain: the file, field and value it names
    exit_code: int = 2
    subprocess: bool = False  # also run as a real process (the installed `eksft` script)


@dataclass(frozen=True)
class ApiCase:
    key: str
    fault: str
    setup: Callable[[Path, Path], Callable[[], object]]  # (work, model) -> the call that must raise
    error: type[BaseException]
    expect: tuple[str, ...]
    surface: str = "Python API"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
