"""The CI skip guard (tests/conftest.py): under CI a skip not on the allow-list fails the run."""

from __future__ import annotations

import pytest

SKIPPING = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no frobnicator here")
def test_skipped_by_mark():
    pass

def test_skipped_in_body():
    pytest.skip("the frobnicator is busy")
"""

MODULE_SKIP = """
import pytest
pytest.skip("this whole module needs a frobnicator", allow_module_level=True)
"""

# a conftest that puts the guard on with its own allow-list (the real one is empty)
ALLOWING = """
import pytest
from tests.conftest import SkipGuard

def pytest_configure(config):
    config.pluginmanager.register(
        SkipGuard({r"frobnicator": "frobnicators are not on CI machines"}), "test-guard"
    )
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in ``pytester``'s dir (in process), without the slow hypothesis plugin."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def test_without_ci_skips_stay_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(SKIPPING)
    result = _run(pytester, "-p", "tests.conftest")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*unexpected skips in CI*")


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_an_unlisted_skip_fails_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    pytester.makepyfile(SKIPPING)
    result = _run(pytester, "-p", "tests.conftest")
    # the mark skips in setup (an error), pytest.skip in the test body (a failure)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= unexpected skips in CI =*",
            "*::test_skipped_by_mark: no frobnicator here",
            "*::test_skipped_in_body: the frobnicator is busy",
            "2 test(s) skipped for reasons not in ALLOWED_SKIPS*",
        ]
    )


def test_under_ci_other_outcomes_keep_their_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(
        """
        import pytest

        def test_fails():
            assert 1 == 2, "one is not two"

        @pytest.mark.xfail(strict=True, reason="a known bug")
        def test_known_bug():
            assert False
        """
    )
    result = _run(pytester, "-p", "tests.conftest")
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*AssertionError: one is not two*"])
    result.stdout.no_fnmatch_line("*skipped in CI*")


def test_under_ci_a_module_skip_fails_the_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_mod=MODULE_SKIP, test_other="def test_runs():\n    pass\n")
    result = _run(pytester, "-p", "tests.conftest")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_mod.py: this whole module needs a frobnicator"])


def test_under_ci_a_listed_skip_stays_a_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(ALLOWING)
    pytester.makepyfile(SKIPPING)
    result = _run(pytester)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*unexpected skips in CI*")


def test_ci_false_or_empty_is_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value in ("", "0", "false"):
        monkeypatch.setenv("CI", value)
        pytester.makepyfile(SKIPPING)
        result = _run(pytester, "-p", "tests.conftest")
        result.assert_outcomes(passed=1, skipped=2)
