"""Every bad-input case of ``cases_*.py``: non-zero exit, no traceback, a message naming the problem, nothing written.

CLI cases run ``eksft.cli.main`` in this process (an exception escaping it is what a user would see as a
traceback); the ones marked ``subprocess=True`` also run as the installed ``eksft`` script.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eksft.cli import SUBCOMMANDS
from eksft.cli import main as eksft_main

from .cases import ApiCase, CliCase

CASES = [
    case
    for path in sorted(Path(__file__).parent.glob("cases_*.py"))
    for case in importlib.import_module(f"{__package__}.{path.stem}").CASES
]
EKSFT = Path(sys.executable).parent / "eksft"
MAX_MESSAGE = 400  # characters of the message kept in the table
LONGEST_MESSAGE = 1000  # a message is read by a person: no dumps of input lines


def test_case_keys_are_unique_and_enough():
    keys = [case.key for case in CASES]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert all(key.startswith("input/") for key in keys)
    assert len(CASES) >= 30


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root`` with its kind, size, mtime and content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (path.is_dir(), info.st_size, info.st_mtime_ns, info.st_mode, digest)
    return state


def normalise(text: str, work: Path, model: Path) -> str:
    for path, name in ((model, "<model>"), (work, "<tmp>")):
        text = text.replace(str(path.resolve()), name).replace(str(path), name)
    return " ".join(text.split())


@pytest.fixture
def work_and_model(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    work = tmp_path / "work"
    work.mkdir()
    return work, model


def error_message(stderr: str, command: str) -> str:
    prefix = f"eksft {command}: error: "
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(starts) == 1, f"expected one '{prefix}...' message, got stderr:\n{stderr}"
    return "\n".join(lines[starts[0] :])[len(prefix) :]


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c, CliCase)], ids=lambda c: c.key)
def test_cli_bad_input(case: CliCase, work_and_model, capsys, reliability):
    work, model = work_and_model
    argv = case.setup(work, model)
    command = argv[0]
    assert command in SUBCOMMANDS
    before = snapshot(work)
    capsys.readouterr()
    code = eksft_main(argv)  # an exception escaping here is a traceback for the user: the test fails
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert code == case.exit_code != 0, stderr
    message = normalise(error_message(stderr, command), work, model)
    assert len(message) <= LONGEST_MESSAGE, message[:LONGEST_MESSAGE]
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in the message: {message}"
    assert snapshot(work) == before, "the run changed its working directory"
    if case.subprocess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        run = subprocess.run([str(EKSFT), *argv], capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == case.exit_code, run.stderr
        assert "Traceback" not in run.stderr
        assert normalise(error_message(run.stderr, command), work, model) == message
        assert snapshot(work) == before
    shown = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
    how = " (also as a separate process)" if case.subprocess else ""
    reliability.record(case.key, f"eksft {command}", case.fault, f"exit {code}{how}: {shown}")


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c, ApiCase)], ids=lambda c: c.key)
def test_api_bad_input(case: ApiCase, work_and_model, reliability):
    work, model = work_and_model
    call = case.setup(work, model)
    before = snapshot(work)
    with pytest.raises(case.error) as raised:
        call()
    message = normalise(str(raised.value), work, model)
    assert len(message) <= LONGEST_MESSAGE, message[:LONGEST_MESSAGE]
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in the message: {message}"
    assert snapshot(work) == before, "the call changed its working directory"
    shown = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
    reliability.record(case.key, case.surface, case.fault, f"raises {type(raised.value).__name__}: {shown}")
