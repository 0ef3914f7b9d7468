"""The reliability table: every fault the suite tries, recorded by the test that tried it, rendered as markdown.

Tests call the session fixture ``reliability.record(key, surface, fault, outcome)``; ``test_reliability_doc``
then compares the rows recorded in this run with ``docs/reliability.md`` (or rewrites it with
``--write-reliability-doc``, which ``make reliability-doc`` passes). The doc's last section, after
``MUTATION_MARKER``, belongs to ``tools/mutation_check.py`` and is kept as it is. ``key`` orders the rows and ties a row to the test
that records it; the texts must not depend on the run (no times, no temporary paths: use ``<tmp>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
REGENERATE = "make reliability-doc"
# what follows this line in the doc is the mutation check's section, written by tools/mutation_check.py --write-doc
MUTATION_MARKER = "<!-- The section below is written by tools/mutation_check.py --write-doc. -->"


def table_part(text: str) -> str:
    """The part of the doc that the suite writes: everything before the mutation check's section."""
    return text.split(MUTATION_MARKER, 1)[0]


def mutation_part(text: str) -> str:
    """The mutation check's section, marker included ("" when the doc has none)."""
    head, marker, tail = text.partition(MUTATION_MARKER)
    return marker + tail
SECTIONS = {
    "input": "Bad input",
    "train": "Faults during training",
    "eval": "Faults during evaluation",
    "security": "Security",
}
HEADER = f"""# Reliability: what we tried, and what happened

Every row below is a fault that `tests/robustness/` injects, with the outcome that the test checked. The table is
written by the test suite, not by hand: `{REGENERATE}` runs `tests/robustness` and rewrites this file, and
`make test` fails when a row here differs from what the suite records. Paths under the test's temporary
directory are written `<tmp>`.

For bad input every row was also checked for: a non-zero exit code (or the exception type, for the Python API), no
traceback, and an output directory left exactly as it was (no file created, changed or removed).
"""


@dataclass(frozen=True)
class Row:
    key: str  # "<section>/<slug>": the section is one of SECTIONS
    surface: str  # "eksft sft", "eksft eval", "Python API", ...
    fault: str  # what was wrong / what was done
    outcome: str  # what the test saw and checked

    @property
    def section(self) -> str:
        return self.key.split("/", 1)[0]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(rows: list[Row]) -> str:
    lines = [HEADER]
    counts = []
    for section, title in SECTIONS.items():
        chosen = sorted((r for r in rows if r.section == section), key=lambda r: r.key)
        if not chosen:
            continue
        counts.append(f"{len(chosen)} {title.lower()}")
        lines += [f"## {title}", "", "| # | Surface | Fault | Outcome |", "|---|---|---|---|"]
        lines += [f"| {r.key} | {_cell(r.surface)} | {_cell(r.fault)} | {_cell(r.outcome)} |" for r in chosen]
        lines.append("")
    lines.insert(1, f"Rows: {len(rows)} ({', '.join(counts)}).\n")
    return "\n".join(lines).rstrip() + "\n"


ROW_PATTERN = re.compile(r"^\| ((?:[a-z]+)/[^ |]+) \|")


def keys_in(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if (m := ROW_PATTERN.match(line))}


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def record(self, key: str, surface: str, fault: str, outcome: str) -> None:
        section = key.split("/", 1)[0]
        if section not in SECTIONS or "/" not in key:
            raise ValueError(f"row key {key!r} must be '<section>/<slug>' with a section in {list(SECTIONS)}")
        row = Row(key, surface, fault, outcome)
        if key in self.rows and self.rows[key] != row:
            raise ValueError(f"two different rows recorded under {key!r}: {self.rows[key]} and {row}")
        self.rows[key] = row
