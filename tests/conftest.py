"""Every tier: counts per tier for the run's summary, and no silent tier under CI.

- At the end of a run, one line per tier (``core``, ``host``, ``browser``, ...): passed / failed / skipped.
  With ``$SCG_TIER_SUMMARY`` set, the counts are also appended there as JSON lines (``tests/run`` prints them
  per host at the very end).
- With ``CI`` set to a true value, a skipped test is a failed one (its reason kept): in CI every tier of the
  support matrix must run. Outside CI a skip stays a loud skip (users run the suite without a ComfyUI).
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}
_COUNTS: dict[str, Counter] = defaultdict(Counter)


def tier_of(nodeid: str) -> str:
    """``tests/<tier>/test_x.py::test`` -> ``<tier>`` (node ids are relative to the project's root)."""
    parts = Path(nodeid.split("::")[0]).parts
    return parts[1] if len(parts) > 2 and parts[0] == HERE.name else "other"


def _reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)


def _strict(report) -> None:
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"CI=true: a skipped test fails the run (every tier must run in CI): {_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _strict(outcome.get_result())


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":  # one count per test: its call, or where it stopped
        _COUNTS[tier_of(report.nodeid)][report.outcome] += 1


def pytest_collectreport(report):
    if report.outcome != "passed":
        _COUNTS[tier_of(report.nodeid)][report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    if not _COUNTS:
        return
    terminalreporter.write_sep("-", "per tier")
    rows = []
    for tier in sorted(_COUNTS):
        c = _COUNTS[tier]
        rows.append({"tier": tier, "passed": c["passed"], "failed": c["failed"], "skipped": c["skipped"]})
        terminalreporter.write_line(f"{tier}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    if out := os.environ.get("SCG_TIER_SUMMARY"):
        with open(out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"label": os.environ.get("SCG_RUN_LABEL", ""), **row}) + "\n")
