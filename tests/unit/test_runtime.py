"""The frozen Python runtime: self-contained, sourceless, reproducible (no root, no VM)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from mkimage.elf import read_elf
from mkimage.runtime import (
    DYNLOAD_DIR,
    INTERPRETER,
    PACKAGES_DIR,
    PARTS,
    PTH_FILE,
    ZIP_FILE,
    Runtime,
    part_of,
    runtime_sizes,
    stage_runtime,
)

MTIME = 1_650_000_000


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return stage_runtime(tmp_path_factory.mktemp("rt") / "runtime", mtime=MTIME)


@pytest.fixture(scope="module")
def copied(staged: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime copied elsewhere, as the boot copies it to /run: it must not care."""
    dest = tmp_path_factory.mktemp("elsewhere") / "some" / "where"
    shutil.copytree(staged.root, dest, symlinks=True)
    return dest


def run_python(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(root / "python"), *args],
        env=env if env is not None else {},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_imports_pyfuse3_and_trio_from_a_copy_with_empty_environment(copied: Path) -> None:
    out = run_python(
        copied, "-c", "import pyfuse3, trio; print(pyfuse3.__version__, trio.__version__)"
    )
    pyfuse3_version, trio_version = out.split()
    assert pyfuse3_version.startswith("3.")
    assert trio_version[0].isdigit()


def test_imports_the_daemon_and_uses_only_its_own_files(copied: Path) -> None:
    code = (
        "import sys, ssl, overlayboot.fs.daemon, overlayboot.cli, pyfuse3, trio\n"
        "print(sys.flags.isolated, sys.flags.no_site)\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None)\n"
        "    if f: print(f)\n"
        "print('path', *sys.path)\n"
    )
    # a hostile environment must change nothing: the ._pth file makes Python isolated
    env = {"PYTHONPATH": "/usr/lib/python3.11", "PYTHONHOME": "/usr", "LD_LIBRARY_PATH": "/nope"}
    lines = run_python(copied, "-c", code, env=env).splitlines()
    assert lines[0] == "1 1"
    files = [line for line in lines[1:] if not line.startswith("path ")]
    assert files and all(f.startswith(str(copied)) for f in files), files
    assert lines[-1].split()[1:] == [
        str(copied / "lib/python311.zip"),
        str(copied / "lib/python3.11/lib-dynload"),
        str(copied / "lib/python3.11/site-packages"),
    ]


def test_loads_only_bundled_libraries(copied: Path) -> None:
    code = "import pyfuse3, trio, ssl; print(open('/proc/self/maps').read())"
    maps = run_python(copied, "-c", code)
    paths = [line.split()[-1] for line in maps.splitlines() if len(line.split()) == 6]
    objects = {p for p in paths if ".so" in p}
    assert objects and all(o.startswith(str(copied)) for o in objects), objects


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_argv0_for_systemd(copied: Path) -> None:
    code = "import sys; print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[0].decode())"
    proc = subprocess.run(
        ["busybox", "sh", str(copied / "python"), "--argv0", "@overlayboot", "-c", code],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == "@overlayboot"


def test_cli_launcher_runs_overlayboot(copied: Path) -> None:
    proc = subprocess.run(
        [str(copied / "overlayboot"), "--help"],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "mount" in proc.stdout


def test_zip_holds_no_sources(staged: Runtime) -> None:
    with zipfile.ZipFile(staged.root / ZIP_FILE) as zf:
        names = zf.namelist()
    assert "overlayboot/fs/daemon.pyc" in names
    assert "trio/__init__.pyc" in names
    assert all(n.endswith(".pyc") for n in names), [n for n in names if not n.endswith(".pyc")]
    assert not list(staged.root.rglob("*.py"))
    assert not list(staged.root.rglob("__pycache__"))


def test_utf8_and_single_byte_codecs_but_no_cjk(staged: Runtime) -> None:
    """The CJK codecs (0.9 MB of C tables) are left out, and the codecs built on them."""
    with zipfile.ZipFile(staged.root / ZIP_FILE) as zf:
        names = set(zf.namelist())
    assert {"encodings/utf_8.pyc", "encodings/latin_1.pyc", "encodings/cp1252.pyc"} <= names
    assert "encodings/euc_jp.pyc" not in names and "encodings/big5.pyc" not in names
    assert not list(staged.root.rglob("_codecs_jp*")) and not list(staged.root.rglob("_multibyte*"))


def test_layout(staged: Runtime) -> None:
    root = staged.root
    assert (root / INTERPRETER).is_file()
    assert (root / PTH_FILE).read_text().splitlines()[0] == "../lib/python311.zip"
    assert "ld-linux-x86-64.so.2" in staged.libraries
    assert {"libssl.so.3", "libcrypto.so.3", "libc.so.6"} <= set(staged.libraries)
    assert len([n for n in staged.libraries if n.startswith("libfuse3.so.")]) == 1
    assert "pyfuse3" in staged.disk_packages
    assert (root / DYNLOAD_DIR).is_dir()
    assert any(p.name.startswith("_ssl.") for p in (root / DYNLOAD_DIR).iterdir())
    assert not any(m.startswith(("elftools", "pytest", "mypy")) for m in staged.zipped)


def test_bundles_the_libfuse_pyfuse3_was_built_against(staged: Runtime, copied: Path) -> None:
    """The Makefile's pyfuse3 needs libfuse 3.17 (libfuse3.so.4, FUSE passthrough) from
    build/libfuse, found through its RUNPATH: the runtime carries that one, not the
    system's 3.14, and the bundled interpreter loads it."""
    ext = next((staged.root / PACKAGES_DIR / "pyfuse3").glob("__init__*.so"))
    needed = [lib for lib in read_elf(ext).needed if lib.startswith("libfuse3.so.")]
    assert needed and needed[0] in staged.libraries
    code = "import pyfuse3; print(hasattr(pyfuse3, 'passthrough_open'))\n"
    code += "print(open('/proc/self/maps').read())"
    out = run_python(copied, "-c", code).splitlines()
    loaded = {line.split()[-1] for line in out[1:] if "libfuse3" in line}
    assert loaded == {str(copied / "lib" / needed[0])}
    if out[0] == "True":  # built against our libfuse: it has passthrough
        assert needed[0] == "libfuse3.so.4"
        assert b"fuse_passthrough_open" in (staged.root / "lib" / needed[0]).read_bytes()


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out: dict[str, tuple[int, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[path.relative_to(root).as_posix()] = (st.st_mode, int(st.st_mtime), data)
    return out


def test_reproducible(staged: Runtime, tmp_path: Path) -> None:
    again = stage_runtime(tmp_path / "runtime", mtime=MTIME)
    first, second = _snapshot(staged.root), _snapshot(again.root)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert {mtime for _, mtime, _ in first.values()} == {MTIME}


def test_refuses_an_existing_destination(staged: Runtime) -> None:
    with pytest.raises(Exception, match="already exists"):
        stage_runtime(staged.root)


def test_sizes_by_part(staged: Runtime) -> None:
    sizes = runtime_sizes(staged.root)
    assert [name for name, _ in sizes.parts] == list(PARTS)
    for part in ("interpreter", "libraries", "zip", "lib-dynload", "packages"):
        assert sizes.get(part) > 0, part
    on_disk = sum(
        p.stat().st_size for p in staged.root.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert sizes.total == on_disk
    assert part_of("lib/libc.so.6") == "libraries"
    assert part_of("lib/python3.11/lib-dynload/_ssl.so") == "lib-dynload"
    assert part_of("python") == "other"


def test_no_world_writable_files(staged: Runtime) -> None:
    for path in staged.root.rglob("*"):
        assert not os.lstat(path).st_mode & 0o022, path


def test_holds_no_image_builder_and_says_so_in_one_line(staged: Runtime, copied: Path) -> None:
    """The CLI names the builder's commands without importing them: none is bundled."""
    assert not any(m.split(".")[0] == "mkimage" for m in staged.zipped), staged.zipped
    proc = subprocess.run(
        [str(copied / "overlayboot"), "build", "all"],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "'build' is not part of this installation" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runs_what_the_initramfs_runs(copied: Path, tmp_path: Path) -> None:
    """The modules behind mount, standby, status and upper seal import in the runtime, and
    ``upper check`` runs there (on an upper with no partial copy-ups)."""
    code = (
        "import overlayboot.fs.daemon, overlayboot.standby, overlayboot.status, "
        "overlayboot.upper, overlayboot.cmdline, overlayboot.probe"
    )
    run_python(copied, "-c", code)
    (tmp_path / "upper").mkdir()
    (tmp_path / "lower").mkdir()
    proc = subprocess.run(
        [str(copied / "overlayboot"), "upper", "check", "--lower", str(tmp_path / "lower"),
         str(tmp_path / "upper")],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
