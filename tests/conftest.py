"""Shared pytest set-up: the ``slow`` marker and the order of the test files (both from a
measured list), and the ``project_copy`` fixture.

``make test`` runs everything (CI), on two workers (pytest-xdist, ``-n 2 --dist loadfile``: the
tests of one file run on one worker, so a module-scoped fixture such as a whole workflow run is
set up once). ``make test-fast`` runs ``-m "not slow"``: the tests that each took under
``SLOW_SECONDS`` (set-up included) in the last measured full run, listed in
``tests/slow_tests.txt`` by ``python tools/slow_tests.py REPORT.xml`` from a JUnit report of the
full suite (``pytest --junitxml=REPORT.xml``), and every test sharing a module-scoped fixture
with a listed one (its set-up is the cost). A new test is fast until the list is regenerated; a
listed test that no longer exists is ignored.

The list is written slowest first, and the files are collected in its order (a file at its
slowest test's place, the files with no listed test after, each file's tests in their own order):
the longest work starts first and no long file is left for the end of a parallel run
(``--no-loadscope-reorder`` keeps this order).
"""
from pathlib import Path

import pytest

from project_copy import WORKFLOW, copy_project

SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def _slow_ids() -> list[str]:
    """The listed test ids (or whole files), slowest first."""
    if not SLOW_LIST.is_file():
        return []
    lines = (line.strip() for line in SLOW_LIST.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _shared_fixtures(item) -> set[str]:
    """The fixtures of ``item`` set up once for several tests (module scope or wider)."""
    defs = getattr(item, "_fixtureinfo", None)
    if defs is None:
        return set()
    return {name for name, fdefs in defs.name2fixturedefs.items()
            if fdefs and fdefs[-1].scope in ("module", "package", "session")}


def pytest_collection_modifyitems(config, items):
    ids = _slow_ids()
    slow = set(ids)
    listed = [i for i in items if i.nodeid in slow or i.nodeid.split("::")[0] in slow]
    # the report charges a shared fixture's set-up (a whole workflow run) to the first test
    # that uses it: every test of that module using the same fixture is slow too
    costly = {(i.nodeid.split("::")[0], f) for i in listed for f in _shared_fixtures(i)}
    for item in items:
        module = item.nodeid.split("::")[0]
        if item in listed or any((module, f) in costly for f in _shared_fixtures(item)):
            item.add_marker(pytest.mark.slow)

    # the files in the order of their slowest test in the list (stable: each file's own order)
    rank = {test_id: n for n, test_id in enumerate(ids)}
    place = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        place[module] = min(place.get(module, len(ids)), rank.get(item.nodeid, len(ids)),
                            rank.get(module, len(ids)))
    items.sort(key=lambda item: place[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def project_copy(tmp_path_factory):
    """``project_copy(names=WORKFLOW)``: a fresh copy of those parts of the project (default:
    what a workflow run needs) in a new temporary folder; module fixtures may use it too."""
    def make(names=WORKFLOW, name="project"):
        return copy_project(tmp_path_factory.mktemp(name), names)

    return make
