"""Writing results so that a reader (or a resumed run) sees the old version or the whole new one, never a part.

Files: written to a hidden temporary sibling, fsynced, then renamed over the target. Directories: built in a
hidden sibling and renamed into place at the end, so a killed run never leaves a directory that looks finished.
Siblings live on the same file system, which makes the renames atomic.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
