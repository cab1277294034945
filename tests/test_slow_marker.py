"""The slow marker's list comes from a measured JUnit report (tools/slow_tests.py)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_quick" time="0.3"/>
<testcase classname="tests.test_a" name="test_workflow[micro]" time="61.0"/>
<testcase classname="tests.test_b" name="test_edge" time="2.0"/>
<testcase classname="tests.test_b" name="test_bigger" time="5.0"/>
</testsuite></testsuites>"""


def test_tests_at_or_over_the_threshold_are_listed_slowest_first(tmp_path):
    report, out = tmp_path / "r.xml", tmp_path / "slow.txt"
    report.write_text(REPORT)
    subprocess.run([sys.executable, str(ROOT / "tools/slow_tests.py"), str(report), "--seconds",
                    "2", "--out", str(out)], check=True, capture_output=True, timeout=60)
    lines = [x for x in out.read_text().splitlines() if not x.startswith("#")]
    assert lines == ["tests/test_a.py::test_workflow[micro]", "tests/test_b.py::test_bigger",
                     "tests/test_b.py::test_edge"]
    assert "the rest took 0.0 min" in out.read_text()


def test_the_committed_list_names_existing_test_files():
    listed = [x for x in (ROOT / "tests/slow_tests.txt").read_text().splitlines()
              if x and not x.startswith("#")]
    assert listed, "tests/slow_tests.txt is empty: regenerate it (tools/slow_tests.py)"
    missing = {x.split("::")[0] for x in listed} - {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")}
    assert not missing, f"listed files that do not exist: {sorted(missing)}"
