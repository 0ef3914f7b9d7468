"""Fixtures of the robustness suite: the recorder behind ``docs/reliability.md``."""

import pytest

from .table import Recorder

_RECORDER = Recorder()


def pytest_addoption(parser):
    parser.addoption(
        "--write-reliability-doc",
        action="store_true",
        default=False,
        help="rewrite docs/reliability.md from the rows the robustness suite records (make reliability-doc)",
    )


@pytest.fixture(scope="session")
def reliability() -> Recorder:
    """``reliability.record(key, surface, fault, outcome)``: one row of docs/reliability.md."""
    return _RECORDER


def pytest_collection_modifyitems(session, config, items):
    """The doc check last: it compares the rows every other test recorded (whatever order the tests were given in)."""
    last = [item for item in items if item.name == "test_reliability_doc_matches_the_suite"]
    items[:] = [item for item in items if item not in last] + last
