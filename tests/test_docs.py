"""The Python examples in the README and docs/ run as written (a block opting out says `# doc-test: skip`)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(code, id=f"{page.name}:{n}")
    for page in PAGES
    if page.exists()
    for n, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
    if "# doc-test: skip" not in code
]


@pytest.mark.parametrize("code", BLOCKS)
def test_python_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
