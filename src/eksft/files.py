"""Files: every reader and writer of the library goes through here.

* **Atomic writes.** A file is written to a hidden temporary sibling, fsynced, then renamed over the target
  (``atomic_file``, ``write_text_atomic``); a directory is built in a hidden sibling and renamed into place at the end
  (``fresh_sibling``, ``replace_directory``). A reader (or a resumed run) sees the old version or the whole new one,
  never a part; siblings live on the same file system, which makes the renames atomic.
* **JSON Lines.** ``jsonl_lines`` splits the bytes into numbered lines, ``parse_object`` reads one line as a JSON
  object, and ``read_jsonl`` reads a whole file, naming ``file:line`` in every error; the last line may be torn (a
  writer killed in the middle of an append): ``torn_tail_ok`` skips it with a warning, for logs we write ourselves.
  ``append_jsonl`` appends whole lines and fsyncs them, or leaves the file as it was.
* ``json_safe`` turns NaN / inf into None, so that strict JSON readers accept what we write.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w"):
    """``open`` for writing (``"w"`` text in UTF-8, ``"wb"`` bytes), into a hidden sibling that is fsynced and renamed
    over ``path`` when the block ends without an exception (and removed when it raises).

    The sibling gets the usual umask permissions (not ``mkstemp``'s private 0600: results and plots are for others to
    read too).
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    exclusive = mode.replace("w", "x")
    try:
        with open(tmp, exclusive, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(text)


def fresh_sibling(out_dir: Path, tag: str) -> Path:
    """A new hidden directory next to ``out_dir`` (umask permissions, unlike ``tempfile.mkdtemp``)."""
    while True:
        candidate = out_dir.parent / f".{out_dir.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def replace_directory(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``out_dir``, replacing an existing ``out_dir`` (restored if the rename fails)."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = fresh_sibling(out_dir, "old")
    os.rename(out_dir, old / "previous")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old / "previous", out_dir)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Fail now, not after hours of work, when ``path`` cannot become a directory to write into: a file in the way,
    or a parent without write permission (checked with ``os.access``, which root always passes)."""
    from .errors import UserError

    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory; choose another {flag}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory, so nothing can be written under it; "
                        f"choose another {flag}")  # fmt: skip
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable (permission denied); choose another {flag} or "
                        "make it writable")  # fmt: skip


# ---- JSON Lines -----------------------------------------------------------------------------------------------------


def jsonl_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for each non-blank line of JSON Lines bytes, counted from 1."""
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield lineno, line


def parse_object(line: bytes) -> tuple[dict | None, str | None]:
    """``(object, None)`` for a line holding a JSON object, else ``(None, what is wrong)``."""
    try:
        record = json.loads(line)  # bytes: decoded as UTF-8
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} (column {err.colno})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, None


def read_jsonl(path: str | os.PathLike, *, torn_tail_ok: bool = False) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file, in order, read-only (see ``parse_jsonl``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    return parse_jsonl(data, path, torn_tail_ok=torn_tail_ok)


def parse_jsonl(data: bytes, path: str | os.PathLike, *, torn_tail_ok: bool = False) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of the JSONL bytes ``data`` read from ``path``.

    A line that is not a JSON object is a UserError naming the file and the line, except, with ``torn_tail_ok``, a
    last line: a log that an interrupted writer cut off, skipped with a warning. Inputs a person wrote are read with
    ``torn_tail_ok=False``: nothing was interrupted there, so a bad last line is an error too.
    """
    numbered = list(jsonl_lines(data))
    records = []
    for position, (lineno, line) in enumerate(numbered):
        record, error = parse_object(line)
        if error is None:
            records.append((lineno, record))
        elif torn_tail_ok and position == len(numbered) - 1:
            warnings.warn(f"{path}:{lineno}: skipping an unfinished last line (an interrupted run?): {error}",
                          stacklevel=3)  # fmt: skip
        else:
            raise UserError(f"{path}:{lineno}: not a JSON object ({error}); fix or delete that line")
    return records


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (one call may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_jsonl_fd(fd: int, records: list[dict]) -> None:
    """Append one JSON line per record to the open file ``fd`` and push them to disk (fsync). On a failure (disk
    full, Ctrl-C) the file is cut back to where it was and the error raised again, so that it holds whole appends
    only; a kill cannot be caught: readers drop a torn last line instead (``read_jsonl``)."""
    start = os.lseek(fd, 0, os.SEEK_END)
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.ftruncate(fd, start)
        raise


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """``append_jsonl_fd`` on ``path``, created (with its directory) when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        append_jsonl_fd(fd, records)
    finally:
        os.close(fd)


def json_safe(value):
    """``value`` with every NaN / inf float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
