"""Shared pytest set-up: the ``slow`` marker, applied from a measured list.

``make test`` runs everything (CI). ``make test-fast`` runs ``-m "not slow"``: the tests that
each took under ``SLOW_SECONDS`` (set-up included) in the last measured full run, listed in
``tests/slow_tests.txt`` by ``python tools/slow_tests.py REPORT.xml`` from a JUnit report of
the full suite (``pytest --junitxml=REPORT.xml``), and every test sharing a module-scoped fixture
with a listed one (its set-up is the cost). A new test is fast until the list is regenerated; a
listed test that no longer exists is ignored.
"""
from pathlib import Path

import pytest

SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def _slow_ids() -> set[str]:
    if not SLOW_LIST.is_file():
        return set()
    lines = (line.strip() for line in SLOW_LIST.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def _shared_fixtures(item) -> set[str]:
    """The fixtures of ``item`` set up once for several tests (module scope or wider)."""
    defs = getattr(item, "_fixtureinfo", None)
    if defs is None:
        return set()
    return {name for name, fdefs in defs.name2fixturedefs.items()
            if fdefs and fdefs[-1].scope in ("module", "package", "session")}


def pytest_collection_modifyitems(config, items):
    slow = _slow_ids()
    listed = [i for i in items if i.nodeid in slow or i.nodeid.split("::")[0] in slow]
    # the report charges a shared fixture's set-up (a whole workflow run) to the first test
    # that uses it: every test of that module using the same fixture is slow too
    costly = {(i.nodeid.split("::")[0], f) for i in listed for f in _shared_fixtures(i)}
    for item in items:
        module = item.nodeid.split("::")[0]
        if item in listed or any((module, f) in costly for f in _shared_fixtures(item)):
            item.add_marker(pytest.mark.slow)
