"""The frozen Python runtime: Debian's python3.11, a pruned stdlib and the daemon, in one dir.

Layout of a staged runtime (``R``; the directory can be copied anywhere and keeps working)::

    R/python                         launcher: python [--argv0 NAME] [PYTHON-ARGS...]
    R/overlayboot                    launcher: the overlayboot CLI, argv[0] = "@overlayboot"
    R/e2fsck                         launcher: the host's e2fsck (phase upper checks the
                                     persistence partition with it); R/bin/e2fsck is the binary
    R/bin/python3.11                 Debian's interpreter (libpython is static in it)
    R/bin/python3.11._pth            sys.path, relative to bin/ (see below)
    R/lib/ld-linux-x86-64.so.2       the dynamic loader (the name of the binary's PT_INTERP)
    R/lib/lib*.so.*                  the ELF closure of the interpreter and every extension
    R/lib/python311.zip              stdlib + trio + click + overlayboot, sourceless .pyc
    R/lib/python3.11/lib-dynload/    the extension modules that are needed
    R/lib/python3.11/site-packages/  packages that cannot live in a zip (pyfuse3: .so + .pyc,
                                     and its dist-info METADATA, read for __version__)

How the interpreter finds its stdlib (found out by experiment with Debian's 3.11.2, which
also reads a zip ``lib/python311.zip`` under a prefix found from ``argv[0]``):

* ``PYTHONHOME``/``PYTHONPATH`` work but leak into every child process and are ignored
  under ``-E``/``-I``; ``-I -S`` alone works through the landmark search, but only while
  the layout keeps the names ``getpath`` expects.
* A ``python3.11._pth`` file next to the executable (supported on POSIX since 3.11) is
  what is used: ``sys.path`` is exactly its lines (relative to ``bin/``), and it implies
  isolated mode (``sys.flags.isolated``, ``ignore_environment``, ``no_site``), so no
  environment variable of the host or the initramfs can change what is imported. It needs
  the interpreter to know its own path, which it takes from ``argv[0]``.

The launcher runs ``R/lib/ld-linux-x86-64.so.2 --inhibit-cache --library-path R/lib
R/bin/python3.11 ...``: the bundled loader with the bundled libc, never the ones of the
root it happens to run in (after ``switch_root`` that is another system, maybe another
glibc). The loader gives Python ``argv[0] = R/bin/python3.11``, so the ``._pth`` file is
found. The kernel-level ``argv[0]`` (what ``/proc/PID/cmdline`` and systemd see) is set
with the shell's ``exec -a NAME`` on the loader instead, which leaves Python's view
alone: ``--argv0 @overlayboot`` gives the ``@`` that systemd's killing spree at
switch-root and shutdown spares. ld.so's own ``--argv0`` is no use here: it changes only
what the program sees, not ``/proc/PID/cmdline``, and would hide the interpreter's path.
``exec -a`` exists in busybox ash and bash, not dash; without it the launcher warns and
runs with an unchanged ``argv[0]``.

Zipimport and lib-dynload reopen files by path, so a runtime that must survive
``switch_root`` is copied to a tmpfs first (``/run/overlayboot/runtime``) and run from
there. Staging is reproducible: same inputs, same bytes, modes and mtimes.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from mkimage.elf import (
    Closure,
    Library,
    default_dirs,
    ld_so_conf_dirs,
    read_elf,
    resolve_closure,
)
from mkimage.pyfreeze import DEFAULT_EXCLUDES, FoundModules, Module, find_modules, pyc_bytes
from mkimage.pyfreeze import write_zip as write_module_zip
from overlayboot.errors import OverlaybootError
from overlayboot.run import run

# What the runtime must be able to import: the daemon, the CLI (python -m overlayboot)
# and runpy (for -m). Hooks add theirs here (e.g. overlayboot.cmdline).
ENTRY_MODULES: tuple[str, ...] = (
    "overlayboot.__main__",
    "overlayboot.cli",
    "overlayboot.cmdline",
    "overlayboot.mediacheck",  # hooks/25-check.sh
    "overlayboot.probe",
    "overlayboot.status",
    "overlayboot.fs.config",
    "overlayboot.fs.daemon",
    "overlayboot.net.reach",
    "overlayboot.net.fetch",
    "overlayboot.net.httpfs",
    "overlayboot.net.nbd",
    "overlayboot.block.cli",  # overlayboot.overlay=block (hooks/block.sh)
    "overlayboot.block.daemon",
    "overlayboot.block.manage",
    "runpy",
)
# The image builder is not needed at boot: overlayboot.cli names its commands in a table
# of lazily imported ones (no import the finder follows), and overlayboot.demo imports it
# inside functions; excluded as a whole, so that nothing of it is bundled.
# Nor are the CJK codecs (0.9 MB of C tables): the daemon and the hooks speak UTF-8 only.
RUNTIME_EXCLUDES = DEFAULT_EXCLUDES | {
    "_multibytecodec",
    "_codecs_cn",
    "_codecs_hk",
    "_codecs_iso2022",
    "_codecs_jp",
    "_codecs_kr",
    "_codecs_tw",
    "elftools",
    "mkimage",
}
PYTHON = PurePosixPath("/usr/bin/python3.11")
# Host programs the boot runs with the bundled loader and libraries (their ELF closure is
# added to lib/): e2fsck checks the persistence partition before it is mounted;
# cryptsetup opens a LUKS-encrypted one (hooks/35-persistence.sh).
TOOLS: tuple[PurePosixPath, ...] = (
    PurePosixPath("/usr/sbin/e2fsck"),
    PurePosixPath("/usr/sbin/cryptsetup"),
)
_TOOL_PACKAGES = {"e2fsck": "e2fsprogs", "cryptsetup": "cryptsetup-bin"}
# Loaded with dlopen, so not in any DT_NEEDED: glibc's pthread_exit/cancel need libgcc_s,
# trio looks up pthread_setname_np in libpthread through ctypes.
DLOPENED: tuple[str, ...] = ("libgcc_s.so.1", "libpthread.so.0")
PY_VERSION = (3, 11)

INTERPRETER = "bin/python3.11"
PTH_FILE = "bin/python3.11._pth"
LIB_DIR = "lib"
ZIP_FILE = "lib/python311.zip"
DYNLOAD_DIR = "lib/python3.11/lib-dynload"
PACKAGES_DIR = "lib/python3.11/site-packages"
LAUNCHER = "python"
CLI_LAUNCHER = "overlayboot"
DAEMON_ARGV0 = "@overlayboot"

# where the boot copies the runtime so that it survives switch_root
RUN_COPY = PurePosixPath("/run/overlayboot/runtime")


class RuntimeBuildError(OverlaybootError):
    """The runtime cannot be built from what this host has."""


# --- what goes in ----------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeSpec:
    """What to freeze: entry modules, the interpreter, where modules are searched."""

    entries: tuple[str, ...] = ENTRY_MODULES
    python: PurePosixPath = PYTHON  # inside the host root "/"
    tools: tuple[PurePosixPath, ...] = TOOLS  # inside the host root "/"
    search_path: tuple[str, ...] | None = None  # default: the repo, then this sys.path
    excludes: frozenset[str] = RUNTIME_EXCLUDES
    strip: bool = True  # strip debug info from objects that have it (pyfuse3's .so)


@dataclass(frozen=True)
class Runtime:
    """A staged runtime and what went into it."""

    root: Path
    zipped: tuple[str, ...]  # module names in the zip
    extensions: tuple[str, ...]  # lib-dynload modules
    disk_packages: tuple[str, ...]
    libraries: tuple[str, ...]  # file names under lib/, the loader included
    missing: tuple[str, ...]  # imports the finder could not place (optional ones, mostly)


def repo_root() -> Path:
    """The source tree holding the ``overlayboot`` package."""
    import overlayboot

    return Path(overlayboot.__file__).resolve().parent.parent


def default_search_path() -> tuple[str, ...]:
    """The repo first (overlayboot is installed editable), then this interpreter's path."""
    repo = str(repo_root())
    rest = [p for p in sys.path if p and p != repo and os.path.exists(p)]
    return (repo, *rest)


def _check_host_python(spec: RuntimeSpec) -> Path:
    if sys.version_info[:2] != PY_VERSION:
        raise RuntimeBuildError(
            f"the builder runs on Python {sys.version_info[0]}.{sys.version_info[1]}; "
            f"the runtime needs {PY_VERSION[0]}.{PY_VERSION[1]} bytecode",
            "run it from the project venv (.venv/bin/overlayboot)",
        )
    python = Path(spec.python)
    if not python.is_file():
        raise RuntimeBuildError(
            f"{python} not found", "install the Debian package python3.11-minimal"
        )
    return python


# --- finding modules -------------------------------------------------------------------


def _package_sources(found: FoundModules, packages: Iterable[str]) -> list[str]:
    """Every pure-Python module inside the given on-disk packages (their .so imports them)."""
    names: list[str] = []
    by_name = {m.name: m for m in found.modules}
    for pkg in packages:
        top = by_name.get(pkg)
        if top is None or top.path is None:
            continue
        base = top.path.parent
        for py in sorted(base.rglob("*.py")):
            rel = py.relative_to(base).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def find_runtime_modules(spec: RuntimeSpec) -> tuple[FoundModules, tuple[str, ...]]:
    """The modules to freeze, and the top-level packages that must stay on disk.

    A package stays on disk when an extension module is part of it (pyfuse3, whose
    ``__init__`` is one): zipimport cannot load extensions. Its pure-Python modules are
    all taken, since imports made by compiled code cannot be read from source.
    """
    path = list(spec.search_path if spec.search_path is not None else default_search_path())
    found = find_modules(spec.entries, path, spec.excludes)
    disk = set(found.disk_packages)
    disk |= {m.name.split(".")[0] for m in found.by_kind("extension") if "." in m.name}
    extra = _package_sources(found, sorted(disk))
    if extra:
        found = find_modules([*spec.entries, *extra], path, spec.excludes)
        disk |= set(found.disk_packages)
    return found, tuple(sorted(disk))


def find_dlopened(python: Path, names: Iterable[str]) -> list[str]:
    """Host paths of libraries the runtime dlopens, searched as the loader would."""
    root = Path("/")
    dirs = [*ld_so_conf_dirs(root), *default_dirs(read_elf(python).abi)]
    found: list[str] = []
    for name in names:
        for d in dirs:
            if (Path(d) / name).is_file():
                found.append(str(d / name))
                break
        else:
            raise RuntimeBuildError(f"{name} not found in {', '.join(map(str, dirs))}")
    return found


# --- copying files -------------------------------------------------------------------


def _has_debug_info(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            return any(elf.get_section_by_name(n) is not None for n in (".debug_info", ".symtab"))
    except (ELFError, OSError):
        return False


def _copy_elf(src: Path, dest: Path, *, strip: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if strip and _has_debug_info(src):
        run(["strip", "--strip-unneeded", "-o", dest, src])
    else:
        shutil.copyfile(src, dest)
    os.chmod(dest, 0o755)


def _write(dest: Path, data: bytes, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    os.chmod(dest, mode)


def _dist_metadata(packages: Iterable[str]) -> dict[str, bytes]:
    """``NAME-VERSION.dist-info/METADATA`` of the distributions providing ``packages``.

    pyfuse3 reads its ``__version__`` through importlib.metadata; only METADATA is kept.
    """
    providers = importlib.metadata.packages_distributions()
    out: dict[str, bytes] = {}
    for pkg in packages:
        for dist_name in providers.get(pkg) or [pkg]:  # editable installs may be unmapped
            try:
                dist = importlib.metadata.distribution(dist_name)
            except importlib.metadata.PackageNotFoundError:
                continue
            text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")  # or egg-info
            if text is None:
                continue
            name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
            out[f"{name}-{dist.version}.dist-info/METADATA"] = text.encode()
    return out


def _disk_target(module: Module, base: Path) -> Path:
    """Where a module of an on-disk package goes under ``site-packages``."""
    assert module.path is not None
    parts = module.name.split(".")
    folder = base.joinpath(*(parts if module.is_package else parts[:-1]))
    if module.kind == "extension":
        return folder / module.path.name
    return folder / ("__init__.pyc" if module.is_package else f"{parts[-1]}.pyc")


_LAUNCHER_HEAD = """\
#!/bin/sh
# {role}
# Generated by overlayboot's mkimage/runtime.py. Uses nothing outside its own directory
# (the bundled loader, libc and libraries); start it by its path, not through a symlink.
self=$0
case $self in */*) ;; *) self=$(command -v "$self") || exit 127 ;; esac
rt=$(cd "${{self%/*}}" && pwd -P) || exit 127
"""

_PYTHON_LAUNCHER = (
    _LAUNCHER_HEAD
    + """\
# usage: python [--argv0 NAME] [PYTHON-ARGS...]
# --argv0 NAME: the process's argv[0] (/proc/PID/cmdline) becomes NAME, e.g. @overlayboot
# (systemd spares processes whose argv[0] starts with @); needs the shell's "exec -a".
ld=$rt/{lib}/{loader}
if [ "$1" = --argv0 ] && [ $# -ge 2 ]; then
    name=$2
    shift 2
    if (exec -a x true) 2>/dev/null; then
        exec -a "$name" "$ld" --inhibit-cache --library-path "$rt/{lib}" "$rt/{python}" "$@"
    fi
    echo "${{0##*/}}: this shell has no 'exec -a': argv[0] is not $name" >&2
fi
exec "$ld" --inhibit-cache --library-path "$rt/{lib}" "$rt/{python}" "$@"
"""
)

_CLI_LAUNCHER = (
    _LAUNCHER_HEAD
    + """\
# usage: overlayboot COMMAND ...   (the daemon started by "mount" keeps argv[0] {argv0})
exec "$rt/{launcher}" --argv0 {argv0} -m overlayboot "$@"
"""
)


_TOOL_LAUNCHER = (
    _LAUNCHER_HEAD
    + """\
exec "$rt/{lib}/{loader}" --inhibit-cache --library-path "$rt/{lib}" "$rt/bin/{name}" "$@"
"""
)


def _check_tools(spec: RuntimeSpec) -> list[Path]:
    tools = [Path(t) for t in spec.tools]
    for tool in tools:
        if not tool.is_file():
            package = _TOOL_PACKAGES.get(tool.name, "that provides it")
            raise RuntimeBuildError(f"{tool} not found", f"install the Debian package {package}")
    return tools


def launcher_texts(loader: str, tools: Iterable[str] = ()) -> dict[str, str]:
    """The launcher scripts by file name, for a loader file named ``loader`` in lib/, and
    one for each program of ``tools`` in bin/."""
    python = _PYTHON_LAUNCHER.format(
        role="The overlayboot Python runtime: runs bin/python3.11.",
        lib=LIB_DIR,
        loader=loader,
        python=INTERPRETER,
    )
    cli = _CLI_LAUNCHER.format(
        role="The overlayboot command, run by the bundled Python.",
        launcher=LAUNCHER,
        argv0=DAEMON_ARGV0,
    )
    texts = {LAUNCHER: python, CLI_LAUNCHER: cli}
    for name in tools:
        role = f"{name} of the build host, run with the runtime's loader and libraries."
        texts[name] = _TOOL_LAUNCHER.format(role=role, lib=LIB_DIR, loader=loader, name=name)
    return texts


def pth_text() -> str:
    """``sys.path`` of the runtime, relative to ``bin/``."""
    entries = [ZIP_FILE, DYNLOAD_DIR, PACKAGES_DIR]
    return "".join(f"../{e}\n" for e in entries)


def _set_times(tree: Path, mtime: int) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(tree, (mtime, mtime))


# --- staging -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What a runtime is made of, found before anything is written."""

    python: Path  # the host's interpreter
    found: FoundModules
    disk: tuple[str, ...]  # top-level packages kept on disk (under site-packages)
    closure: Closure  # the ELF closure of the interpreter, extensions and dlopened libraries
    loader: Library  # the dynamic loader (PT_INTERP)
    tools: tuple[Path, ...] = ()  # host programs run with the bundled loader (TOOLS)

    def on_disk(self, module: Module) -> bool:
        return module.name.split(".")[0] in self.disk

    @property
    def zipped(self) -> list[Module]:
        return [m for m in self.found.modules if m.kind == "source" and not self.on_disk(m)]

    @property
    def dynload(self) -> list[Module]:
        return [m for m in self.found.by_kind("extension") if not self.on_disk(m)]

    @property
    def disk_modules(self) -> list[Module]:
        return [m for m in self.found.modules if self.on_disk(m) and m.path is not None]


def _plan(spec: RuntimeSpec) -> _Plan:
    """Find the modules, the packages kept on disk and the libraries they all need."""
    python = _check_host_python(spec)
    tools = _check_tools(spec)
    found, disk = find_runtime_modules(spec)
    extensions = [m.path for m in found.by_kind("extension") if m.path is not None]
    closure = resolve_closure(
        Path("/"),
        [
            str(python),
            *map(str, tools),
            *(str(p.resolve()) for p in extensions),
            *find_dlopened(python, DLOPENED),
        ],
        strict=True,
    )
    if closure.interpreter is None:
        raise RuntimeBuildError(f"{python} has no program interpreter (PT_INTERP)")
    return _Plan(python, found, disk, closure, closure.interpreter, tuple(tools))


def _copy_binaries(plan: _Plan, tree: Path, *, strip: bool) -> list[str]:
    """The interpreter into bin/, the loader and every library into lib/; their names."""
    _copy_elf(plan.python, tree / INTERPRETER, strip=False)
    for tool in plan.tools:
        _copy_elf(tool, tree / "bin" / tool.name, strip=strip)
    wanted = set(DLOPENED)
    dlopened = [b for b in plan.closure.binaries if b.path_in_root.name in wanted]
    names: list[str] = []
    for lib in (plan.loader, *dlopened, *plan.closure.libraries):
        name = PurePosixPath(lib.path_in_root).name
        names.append(name)
        _copy_elf(Path(lib.realpath_in_root), tree / LIB_DIR / name, strip=strip)
    return names


def _copy_modules(plan: _Plan, tree: Path, *, strip: bool) -> None:
    """The zip of pure modules, lib-dynload, and the packages that stay on disk."""
    write_module_zip(plan.zipped, tree / ZIP_FILE)
    for ext in plan.dynload:
        assert ext.path is not None
        _copy_elf(ext.path, tree / DYNLOAD_DIR / ext.path.name, strip=strip)
    packages = tree / PACKAGES_DIR
    for module in plan.disk_modules:
        assert module.path is not None
        target = _disk_target(module, packages)
        if module.kind == "extension":
            _copy_elf(module.path, target, strip=strip)
        elif module.path.suffix == ".py":
            rel = target.relative_to(packages).as_posix()
            _write(target, pyc_bytes(module.path.read_bytes(), rel[:-1]))
        else:
            _write(target, module.path.read_bytes())
    for rel, data in sorted(_dist_metadata([*plan.disk, "overlayboot"]).items()):
        _write(packages / rel, data)


def _write_entry_files(plan: _Plan, tree: Path, mtime: int) -> None:
    """The ._pth file and the launchers; then the same modes and times everywhere."""
    _write(tree / PTH_FILE, pth_text().encode())
    loader = PurePosixPath(plan.loader.path_in_root).name
    for name, text in launcher_texts(loader, [t.name for t in plan.tools]).items():
        _write(tree / name, text.encode(), 0o755)
    for d in (tree / DYNLOAD_DIR, tree / PACKAGES_DIR):
        d.mkdir(parents=True, exist_ok=True)
    for dirpath, _, _ in os.walk(tree):
        os.chmod(dirpath, 0o755)
    _set_times(tree, mtime)


def stage_runtime(dest: Path, spec: RuntimeSpec = RuntimeSpec(), *, mtime: int = 0) -> Runtime:
    """Build the runtime into ``dest`` (which must not exist); built aside, then renamed."""
    if dest.exists():
        raise RuntimeBuildError(f"{dest} already exists")
    plan = _plan(spec)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        libs = _copy_binaries(plan, tmp, strip=spec.strip)
        _copy_modules(plan, tmp, strip=spec.strip)
        _write_entry_files(plan, tmp, mtime)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Runtime(
        root=dest,
        zipped=tuple(m.name for m in plan.zipped),
        extensions=tuple(m.name for m in plan.dynload),
        disk_packages=plan.disk,
        libraries=tuple(sorted(libs)),
        missing=plan.found.missing,
    )


# --- sizes ---------------------------------------------------------------------------

PARTS: tuple[str, ...] = ("interpreter", "libraries", "zip", "lib-dynload", "packages", "other")


def part_of(rel: str) -> str:
    """Which part of the runtime a path (relative to the runtime root) belongs to."""
    if rel == INTERPRETER:
        return "interpreter"
    if rel == ZIP_FILE:
        return "zip"
    if rel.startswith(DYNLOAD_DIR + "/"):
        return "lib-dynload"
    if rel.startswith(PACKAGES_DIR + "/"):
        return "packages"
    if rel.startswith(LIB_DIR + "/") and "/" not in rel[len(LIB_DIR) + 1 :]:
        return "libraries"
    return "other"


@dataclass(frozen=True)
class RuntimeSizes:
    """Bytes per part of a runtime (regular files only)."""

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.parts)

    def get(self, part: str) -> int:
        return dict(self.parts).get(part, 0)

    def lines(self) -> list[str]:
        """Human-readable lines: part, bytes, MiB."""
        rows = [*self.parts, ("total", self.total)]
        return [f"{name:<12} {size:>11,d}  {size / 2**20:6.1f} MiB" for name, size in rows]


def sizes_of(files: Iterable[tuple[str, int]]) -> RuntimeSizes:
    """Sizes by part of ``(path relative to the runtime root, size)`` pairs."""
    totals = dict.fromkeys(PARTS, 0)
    for rel, size in files:
        totals[part_of(rel)] += size
    return RuntimeSizes(tuple(totals.items()))


def runtime_sizes(root: Path) -> RuntimeSizes:
    """Sizes by part of the runtime staged at ``root``."""
    files: list[tuple[str, int]] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sizes_of(files)


def launcher_command(root: PurePosixPath | str, *args: str, argv0: str | None = None) -> list[str]:
    """The command line that runs the runtime at ``root`` with ``args`` for Python."""
    head = [f"{root}/{LAUNCHER}"]
    if argv0 is not None:
        head += ["--argv0", argv0]
    return [*head, *args]
