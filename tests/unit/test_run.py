"""The subprocess gate (overlayboot/run.py): one-line errors that keep the whole stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from overlayboot.errors import ToolError
from overlayboot.run import last_line, run, spawn

REPO = Path(__file__).resolve().parents[2]
NOISY = "echo first detail >&2; echo the reason >&2; echo '   ' >&2; exit 3"


def test_a_failure_is_one_line_and_keeps_the_whole_stderr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="overlayboot.run"), pytest.raises(ToolError) as ei:
        run(["sh", "-c", NOISY])
    err = ei.value
    assert err.line().endswith("failed: the reason") and "\n" not in err.line()
    assert err.stderr == "first detail\nthe reason\n   \n"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "exit code 3" in logged and "first detail\nthe reason" in logged


def test_a_silent_failure_names_the_exit_code() -> None:
    with pytest.raises(ToolError, match=r"failed: exit code 7$") as ei:
        run(["sh", "-c", "exit 7"])
    assert ei.value.stderr == ""


def test_a_missing_tool_names_its_package() -> None:
    with pytest.raises(ToolError) as ei:
        run(["mksquashfs-not-here"])
    assert ei.value.line() == "mksquashfs-not-here not found"
    with pytest.raises(ToolError) as ei:
        run(["/nonexistent/xorriso"])
    assert "cannot run /nonexistent/xorriso" in ei.value.line()


def test_unchecked_failure_returns_the_process() -> None:
    proc = run(["sh", "-c", "echo out; exit 4"], check=False)
    assert (proc.returncode, proc.stdout) == (4, b"out\n")


def test_last_line() -> None:
    assert last_line("a\n b \n\n  \n") == "b"
    assert last_line("\n \n") == ""


def test_spawn_runs_beside_us() -> None:
    proc = spawn(["sh", "-c", "read line; echo got $line"], stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE)  # fmt: skip
    out, _ = proc.communicate(b"it\n", timeout=30)
    assert (proc.returncode, out) == (0, b"got it\n")
    with pytest.raises(ToolError, match="not found"):
        spawn(["qemu-not-here"])


FAILING_COMMAND = f"""
import sys
from overlayboot.cli import cli, main
from overlayboot.clierrors import domain_errors
from overlayboot.run import run

@cli.command("fails")
@domain_errors
def fails() -> None:
    run(["sh", "-c", {NOISY!r}])

main(sys.argv[1:])
"""


@pytest.mark.parametrize("debug", [False, True])
def test_cli_shows_one_line_and_the_whole_stderr_with_debug(debug: bool) -> None:
    args = ["--debug", "fails"] if debug else ["fails"]
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_COMMAND, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 5
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("overlayboot: error: /usr/bin/sh -c") and lines[-1].endswith(
        "the reason"
    )
    assert ("first detail" in lines) is debug  # a line of the tool's stderr, as it was
    if not debug:
        assert len(lines) == 1, proc.stderr
