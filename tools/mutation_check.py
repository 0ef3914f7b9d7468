"""Mutation check: plant plausible one-line bugs, one at a time, and see whether the tests that should notice do.

    .venv/bin/python tools/mutation_check.py                 # every mutant (about 9 minutes on 2 cores)
    .venv/bin/python tools/mutation_check.py --only stats    # the mutants whose name starts with "stats"
    .venv/bin/python tools/mutation_check.py --list          # the mutants and their tests, nothing run
    .venv/bin/python tools/mutation_check.py --write-doc     # every mutant, score into docs/reliability.md

Each mutant in ``tools/mutants.py`` replaces one exact piece of code (it must occur once in its file) and names the
tests to run against it. The repository is copied (``git ls-files``: committed and staged files) to a temporary
directory; each mutant is applied there, its tests run with that copy first on ``PYTHONPATH`` (``pytest -x -q``,
stopping at the first failure), and the file is restored. The working tree is never touched. A mutant is *killed*
when its tests fail, *survives* when they pass. Mutants marked ``equivalent`` cannot change any output (e.g. a
``.detach()`` removed where no gradient flows): they are run too, and listed apart from the score.

First the tests of every selected mutant run once without any mutant: they must pass (else exit 2). Not part of
``make test``: it runs the same tests dozens of times. The score of the last full run is in docs/reliability.md
(section "Mutation check"). Exit code: 0 when every non-equivalent mutant was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def _table_module():
    """tests/robustness/table.py, which owns docs/reliability.md up to the marker of this script's section."""
    spec = importlib.util.spec_from_file_location("reliability_table", ROOT / "tests" / "robustness" / "table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def write_doc(results: list[tuple[Mutant, str]], minutes: float) -> None:
    """Replace the mutation check's section of docs/reliability.md (after the table's marker) with this run's."""
    table = _table_module()
    counted = [(m, o) for m, o in results if not m.equivalent]
    killed = sum(o == "killed" for _, o in counted)
    lines = [table.MUTATION_MARKER, "", "## Mutation check", "",
             f"`tools/mutation_check.py` plants the {len(results)} bugs of `tools/mutants.py` one at a time in a copy "
             "of the repository and runs the tests that should notice each (`python tools/mutation_check.py "
             "--write-doc` rewrites this section; not part of `make test`). A bug is killed when its tests fail. "
             "Equivalent mutants cannot change any output and are not scored.", "",
             f"Last run: {datetime.date.today().isoformat()}, {minutes:.0f} minutes on 2 CPU cores: **killed {killed} "
             f"of {len(counted)}** mutants that can change an output; {len(results) - len(counted)} equivalent.", "",
             "| Mutant | File | Bug | Outcome |", "|---|---|---|---|"]  # fmt: skip
    for m, outcome in results:
        shown = f"{outcome} (equivalent: {m.equivalent})" if m.equivalent else outcome
        lines.append(f"| {m.name} | {m.file} | {_cell(m.what)} | {_cell(shown)} |")
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(table.table_part(text).rstrip("\n") + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def copy_repository(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(tests: tuple[str, ...], copy: Path, timeout: float) -> tuple[str, str]:
    """("passed" | "failed" | "timeout" | "error", the end of pytest's output) for ``tests`` run in ``copy``."""
    env = {**os.environ, "PYTHONPATH": f"{copy / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timeout", f"no result within {timeout:.0f} s"
    outcome = {0: "passed", 1: "failed"}.get(result.returncode, "error")  # 2-5: interrupted, usage, no tests
    return outcome, (result.stdout + result.stderr)[-1500:]


def check(mutant: Mutant, copy: Path, timeout: float) -> tuple[str, float, str]:
    """("killed" | "survived" | "timeout" | "error", seconds, the end of pytest's output) for one mutant."""
    path = copy / mutant.file
    original = path.read_text(encoding="utf-8")
    found = original.count(mutant.old)
    if found != 1:
        return "error", 0.0, f"{mutant.file}: the code to replace occurs {found} times (must be once): {mutant.old!r}"
    path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
    start = time.monotonic()
    try:
        outcome, tail = run_tests(mutant.tests, copy, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    outcome = {"passed": "survived", "failed": "killed"}.get(outcome, outcome)
    return outcome, time.monotonic() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run the mutants whose name starts with this")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests; run nothing")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the tests without any mutant")
    parser.add_argument("--write-doc", action="store_true",
                        help="write the score into docs/reliability.md (a run of every mutant only)")  # fmt: skip
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name.startswith(tuple(args.only))]
    if args.list:
        for m in mutants:
            print(f"{m.name:32} {m.file}: {m.what}{'  [equivalent: ' + m.equivalent + ']' if m.equivalent else ''}")
        return 0
    if args.write_doc and args.only:
        parser.error("--write-doc records a run of every mutant; drop --only")
    results, start = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eksft-mutation-") as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        if not args.no_baseline:  # a mutant is killed by its tests only if they pass without it
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            outcome, tail = run_tests(tests, copy, args.timeout * 2)
            print(f"baseline (no mutant): {outcome}: {' '.join(tests)}", flush=True)
            if outcome != "passed":
                print("    " + tail.strip().replace("\n", "\n    "))
                return 2
        for number, mutant in enumerate(mutants, start=1):
            outcome, seconds, tail = check(mutant, copy, args.timeout)
            results.append((mutant, outcome))
            print(f"[{number}/{len(mutants)}] {outcome:8} {seconds:5.0f} s  {mutant.name}: {mutant.what}", flush=True)
            if outcome in ("error", "timeout") or (outcome == "survived" and not mutant.equivalent):
                print("    " + tail.strip().replace("\n", "\n    "), flush=True)
    counted = [(m, o) for m, o in results if not m.equivalent]
    killed = sum(o == "killed" for _, o in counted)
    equivalent = [(m, o) for m, o in results if m.equivalent]
    print(f"\nkilled {killed} of {len(counted)} mutants that can change an output; "
          f"{len(equivalent)} equivalent (cannot change an output): "
          f"{', '.join(f'{m.name} ({o})' for m, o in equivalent) or 'none'}")  # fmt: skip
    survivors = [m.name for m, o in counted if o != "killed"]
    if args.write_doc:
        write_doc(results, (time.monotonic() - start) / 60)
        print(f"wrote the score into {DOC.relative_to(ROOT)}")
    if survivors:
        print(f"not killed: {', '.join(survivors)}")
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
