"""Core tier: prints the fuzz suite's counts (cases tried, outcomes by kind) at the end of a run."""
from scg_testing import hostile


def pytest_terminal_summary(terminalreporter):
    if hostile.OUTCOMES:
        terminalreporter.write_line(hostile.summary())
