"""What the command line imports: the daemon's start imports nothing of the image builder,
whose commands are loaded when used (overlayboot/lazygroup.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from overlayboot.lazygroup import LazyGroup

REPO = Path(__file__).resolve().parents[2]


def builder_modules_after(code: str) -> tuple[int, list[str]]:
    """Run ``code`` in a fresh interpreter; its exit code and the mkimage modules loaded."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('LOADED', *sorted(m for m in sys.modules"
        " if m.split('.')[0] == 'mkimage')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe + code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED")]
    assert len(loaded) == 1, proc.stdout + proc.stderr
    return proc.returncode, loaded[0].split()[1:]


def test_importing_the_cli_imports_no_builder() -> None:
    assert builder_modules_after("import overlayboot.cli") == (0, [])


def test_mount_imports_no_builder(tmp_path: Path) -> None:
    code = f"from overlayboot.cli import main; main(['mount', {str(tmp_path)!r}])"
    assert builder_modules_after(code) == (2, [])  # stops at "no lower dir", a usage error


def test_standby_imports_the_daemon_but_no_builder(tmp_path: Path) -> None:
    args_file = tmp_path / "standby.args"
    args_file.write_bytes(b"")  # nothing to run
    code = (
        "from overlayboot.cli import main\n"
        "try:\n"
        f"    main(['standby', {str(args_file)!r}])\n"
        "finally:\n"
        "    assert 'overlayboot.fs.daemon' in sys.modules\n"
    )
    assert builder_modules_after(code) == (0, [])
    assert not args_file.exists()


def test_help_lists_and_runs_the_builder_commands() -> None:
    code = "from overlayboot.cli import main; main(['--help'])"
    status, loaded = builder_modules_after(code)
    assert status == 0 and "mkimage.commands" in loaded
    from overlayboot.cli import cli

    result = CliRunner().invoke(cli, ["build", "--help"])
    assert result.exit_code == 0 and "initramfs" in result.output


@click.command("here")
def here_cmd() -> None:
    click.echo("here ran")


def _group() -> click.Group:
    @click.group(
        cls=LazyGroup,
        lazy={"later": f"{__name__}:here_cmd", "gone": "no_such_package.commands:gone"},
    )
    def group() -> None:
        pass

    return group


def test_a_lazy_command_runs_when_called() -> None:
    result = CliRunner().invoke(_group(), ["later"])
    assert result.exit_code == 0 and result.output == "here ran\n"


def test_a_command_whose_module_is_absent_is_not_listed_and_fails_in_one_line() -> None:
    group = _group()
    listing = CliRunner().invoke(group, ["--help"])
    assert listing.exit_code == 0 and "later" in listing.output and "gone" not in listing.output
    called = CliRunner().invoke(group, ["gone"])
    assert called.exit_code == 2
    assert (
        "'gone' is not part of this installation (no module no_such_package.commands)"
        in called.output
    )
    assert "Traceback" not in called.output
