"""In CI a skip is a failure: a test that cannot run must say so loudly, not pass silently.

When the environment variable ``CI`` is set (``.ci/run`` sets it), every skipped test
whose reason is not on :data:`ALLOWED_SKIPS` is reported as failed, and the run ends
with a summary listing every unexpected skip. A test that needs a tool gets it from the
Makefile (``APT_PACKAGES``), not from a skip. Outside CI skips stay skips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass

import pytest

pytest_plugins = ["pytester"]  # tests/unit/test_skip_guard.py runs pytest inside pytest

# Skip reasons (regular expressions, searched in the reason) that may skip in CI, each
# with why. Empty: in CI every test runs (root, /dev/fuse, kernel overlayfs, QEMU, the
# tools of APT_PACKAGES, user.* xattrs are all there).
ALLOWED_SKIPS: Mapping[str, str] = {}

SUMMARY_TITLE = "unexpected skips in CI"
SKIPPED_IN_CI = "skipped in CI: "  # how a skip made a failure begins its report


def ci_enabled() -> bool:
    """``CI`` is set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report gives (pytest stores it as ``(path, line, 'Skipped: …')``)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return longrepr[2].removeprefix("Skipped: ")
    return f"(no reason given: {longrepr!r} in {getattr(report, 'when', 'collect')})"


@dataclass(frozen=True)
class UnexpectedSkip:
    nodeid: str
    reason: str


class SkipGuard:
    """The plugin: turns every skip whose reason ``allowed`` does not match into a failure."""

    def __init__(self, allowed: Mapping[str, str]) -> None:
        self.allowed = [re.compile(pattern) for pattern in allowed]
        self.unexpected: list[UnexpectedSkip] = []

    def is_allowed(self, reason: str) -> bool:
        return any(p.search(reason) for p in self.allowed)

    def _unexpected(self, report: pytest.TestReport | pytest.CollectReport) -> str | None:
        """The reason of an unexpected skip (recorded), else None."""
        if not report.skipped or hasattr(report, "wasxfail"):
            return None
        reason = skip_reason(report)
        if self.is_allowed(reason):
            return None
        self.unexpected.append(UnexpectedSkip(report.nodeid, reason))
        return reason

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        reason = self._unexpected(report)
        if reason is not None:
            report.outcome = "failed"
            report.longrepr = (
                f"{SKIPPED_IN_CI}{reason}\n"
                "CI must run every test: give it what it needs (a tool: APT_PACKAGES in the "
                "Makefile) or allow the reason, with why, in ALLOWED_SKIPS (tests/conftest.py)"
            )
        return report

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # a skipped module stays skipped (a failed collection would stop the whole run);
        # the session fails at its end instead. This hook also sees the reports of
        # pytest-xdist's workers, where the collection happens
        self._unexpected(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # under pytest-xdist the worker made the skip a failure; the controller lists it
        text = str(report.longrepr) if report.failed else ""
        if text.startswith(SKIPPED_IN_CI) and all(
            s.nodeid != report.nodeid for s in self.unexpected
        ):
            reason = text.removeprefix(SKIPPED_IN_CI).splitlines()[0]
            self.unexpected.append(UnexpectedSkip(report.nodeid, reason))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section(SUMMARY_TITLE, sep="=", red=True, bold=True)
        for skip in self.unexpected:
            terminalreporter.line(f"{skip.nodeid}: {skip.reason}")
        terminalreporter.line(
            f"{len(self.unexpected)} test(s) skipped for reasons not in ALLOWED_SKIPS "
            "(tests/conftest.py); CI counts each as a failure"
        )


def pytest_configure(config: pytest.Config) -> None:
    if ci_enabled():
        config.pluginmanager.register(SkipGuard(ALLOWED_SKIPS), "overlayboot-skip-guard")
