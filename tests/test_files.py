"""eksft.files: the one module every reader and writer of the library uses."""

import errno
import json
import math
import os

import pytest

from eksft import files
from eksft.errors import UserError


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_file(path) as handle:
        handle.write("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with files.atomic_file(path, "wb") as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # umask permissions, not mkstemp's private 0600


def test_read_jsonl_names_file_and_line_and_skips_only_a_torn_tail_when_asked(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1}\n\n{"step": 2, "x": NaN}\n{"step": 3, "lo')
    with pytest.raises(UserError, match=r"log.jsonl:4: not a JSON object \(invalid JSON: .*\); fix or delete"):
        files.read_jsonl(path)
    with pytest.warns(UserWarning, match=r"log.jsonl:4: skipping an unfinished last line"):
        records = files.read_jsonl(path, torn_tail_ok=True)
    assert [n for n, _ in records] == [1, 3] and math.isnan(records[1][1]["x"])
    path.write_bytes(b'{"a": 1}\n[1, 2]\n{"a": 2}\n')  # not the last line: an error either way
    with pytest.raises(UserError, match=r"log.jsonl:2: not a JSON object \(a JSON list, not an object\)"):
        files.read_jsonl(path, torn_tail_ok=True)
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(UserError, match=r"log.jsonl:1: not a JSON object \(not UTF-8 text\)"):
        files.read_jsonl(path)


def test_append_jsonl_appends_whole_lines_or_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "log.jsonl"
    files.append_jsonl(path, [{"step": 1}, {"text": "é"}])
    before = path.read_bytes()
    assert before == '{"step": 1}\n{"text": "é"}\n'.encode()

    def disk_full(fd, data):
        os.write(fd, data[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_all", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.append_jsonl(path, [{"step": 2}])
    assert path.read_bytes() == before


def test_json_safe_turns_non_finite_floats_into_null():
    value = {"a": math.nan, 1: [math.inf, 2.0, (-math.inf, "x")], "b": {"c": 1}}
    assert files.json_safe(value) == {"a": None, "1": [None, 2.0, [None, "x"]], "b": {"c": 1}}
    json.dumps(files.json_safe(value), allow_nan=False)
