"""docs/reliability.md is what the suite records. Runs after every other test, whatever the order or selection
(``pytest_collection_modifyitems`` in this folder's conftest)."""

import pytest

from .table import DOC, REGENERATE, keys_in, mutation_part, render, table_part


def test_reliability_doc_matches_the_suite(reliability, request):
    rows = list(reliability.rows.values())
    if not rows:
        pytest.skip("no robustness test ran in this session")
    rendered = render(rows)
    if request.config.getoption("--write-reliability-doc"):
        # a run with failures records fewer rows: writing it would silently drop them
        assert request.session.testsfailed == 0, f"{DOC.name} not written: fix the failing tests first"
        kept = mutation_part(DOC.read_text(encoding="utf-8")) if DOC.is_file() else ""
        DOC.write_text(rendered + ("\n" + kept if kept else ""), encoding="utf-8")
        return
    assert DOC.is_file(), f"{DOC} is missing; run `{REGENERATE}`"
    text = table_part(DOC.read_text(encoding="utf-8")).rstrip("\n") + "\n"
    missing = sorted(keys_in(text) - set(reliability.rows))
    assert not missing, (
        f"rows of {DOC.name} that no test recorded in this run: {missing}. Run the whole suite (make test), or "
        f"`{REGENERATE}` if those tests were removed"
    )
    assert text == rendered, f"{DOC.name} differs from what the suite records; run `{REGENERATE}` and review the diff"
