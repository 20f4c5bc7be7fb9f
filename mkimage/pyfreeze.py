"""The frozen Python runtime: the modules the daemon imports, found by reading their imports.

:func:`find_modules` walks import statements (``ast``, no code of the scanned
modules is run) from entry modules over a search path, and sorts what it finds
into pure-Python modules, extension modules and packages that must stay on
disk (a package whose ``__init__`` is an extension, like pyfuse3, cannot live in
a zip). :func:`write_zip` stores pure modules as sourceless ``.pyc`` with
unchecked-hash headers in a deterministic zip, which zipimport loads.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import marshal
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Never frozen: test suites, GUIs, build and dev tools.
DEFAULT_EXCLUDES = frozenset(
    {
        "test", "tests", "tkinter", "turtle", "turtledemo", "idlelib", "lib2to3", "ensurepip",
        "pydoc", "pydoc_data", "distutils", "setuptools", "pip", "_pytest", "pytest", "hypothesis",
        "mypy", "ruff", "venv", "doctest", "unittest", "sqlite3", "curses", "dbm", "xmlrpc",
        "multiprocessing", "concurrent.futures.process", "_tkinter", "readline", "_sqlite3",
        "lzma", "_lzma", "bz2", "_bz2", "tomllib", "pdb", "IPython", "numpy", "cffi",
    }
)  # fmt: skip

ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Module:
    """One module found: its name, its file, and its kind."""

    name: str
    path: Path | None  # None for built-in and frozen modules
    kind: str  # "source", "extension", "builtin", "frozen", "namespace"
    is_package: bool


@dataclass(frozen=True)
class FoundModules:
    modules: tuple[Module, ...]
    missing: tuple[str, ...]
    disk_packages: tuple[str, ...] = field(default=())

    def by_kind(self, kind: str) -> list[Module]:
        return [m for m in self.modules if m.kind == kind]


def _excluded(name: str, excludes: frozenset[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in excludes for i in range(len(parts)))


def _imports_of(source: bytes, name: str, is_package: bool) -> set[str]:
    """Module names a source file imports (absolute, with relative imports resolved)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                mod = f"{base}.{node.module}" if node.module and base else (node.module or base)
            else:
                mod = node.module or ""
            if not mod:
                continue
            found.add(mod)
            for alias in node.names:
                if alias.name != "*":
                    found.add(f"{mod}.{alias.name}")
    return found


class _Finder:
    def __init__(self, path: Sequence[str], excludes: frozenset[str]) -> None:
        self.path = list(path)
        self.excludes = excludes
        self.found: dict[str, Module] = {}
        self.missing: set[str] = set()
        self.search: dict[str, list[str]] = {}

    def spec(self, name: str) -> importlib.machinery.ModuleSpec | None:
        parent, _, leaf = name.rpartition(".")
        if name in sys.builtin_module_names:
            return importlib.machinery.ModuleSpec(name, None, origin="built-in")
        if not parent and importlib.machinery.FrozenImporter.find_spec(name) is not None:
            return importlib.machinery.ModuleSpec(name, None, origin="frozen")
        if parent:
            if parent not in self.found and not self.add(parent, required=False):
                return None
            locations = self.search.get(parent)
            if not locations:
                return None
            return importlib.machinery.PathFinder.find_spec(leaf, locations)
        return importlib.machinery.PathFinder.find_spec(name, self.path)

    def add(self, name: str, *, required: bool = True) -> bool:
        if name in self.found:
            return True
        if _excluded(name, self.excludes):
            return False
        parent = name.rpartition(".")[0]
        if parent and parent in self.found and parent not in self.search:
            return False  # "from module import attribute": not a module
        spec = self.spec(name)
        if spec is None:
            if required and not parent:  # X.Y not found is an attribute of package X
                self.missing.add(name)
            return False
        is_pkg = spec.submodule_search_locations is not None
        if is_pkg:
            self.search[name] = list(spec.submodule_search_locations or [])
        origin = spec.origin
        if origin == "built-in":
            self.found[name] = Module(name, None, "builtin", False)
            return True
        if origin == "frozen":
            self.found[name] = Module(name, None, "frozen", is_pkg)
            return True
        if origin is None:
            self.found[name] = Module(name, None, "namespace", True)
            return True
        path = Path(origin)
        if path.suffix == ".py":
            self.found[name] = Module(name, path, "source", is_pkg)
            for imp in sorted(_imports_of(path.read_bytes(), name, is_pkg)):
                # "from X import Y" names Y, which may be an attribute, not a module
                self.add(imp, required="." not in imp or imp.rpartition(".")[0] in self.found)
            return True
        if any(str(path).endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES):
            self.found[name] = Module(name, path, "extension", is_pkg)
            return True
        self.found[name] = Module(name, path, "source", is_pkg)  # e.g. a sourceless .pyc
        return True


def find_modules(
    entries: Iterable[str],
    path: Sequence[str] | None = None,
    excludes: frozenset[str] = DEFAULT_EXCLUDES,
    extra: Iterable[str] = ("encodings", "encodings.utf_8", "encodings.latin_1", "encodings.ascii"),
) -> FoundModules:
    """Find every module ``entries`` import, transitively, over ``path`` (default sys.path)."""
    finder = _Finder(path if path is not None else sys.path, excludes)
    for name in [*entries, *extra]:
        finder.add(name)
    # every encodings codec: the interpreter needs the one for the locale at start-up; but
    # not those built on an excluded module (the CJK codecs, when their C tables are)
    for loc in finder.search.get("encodings", []):
        for p in sorted(Path(loc).glob("*.py")):
            name = f"encodings.{p.stem}"
            if p.stem == "__init__" or any(
                _excluded(imp, excludes) for imp in _imports_of(p.read_bytes(), name, False)
            ):
                continue
            finder.add(name, required=False)
    disk = sorted(
        {
            m.name.split(".")[0]
            for m in finder.found.values()
            if m.kind == "extension" and m.is_package
        }
    )
    modules = tuple(sorted(finder.found.values(), key=lambda m: m.name))
    # a module reported missing that was later found as an attribute import is not missing
    missing = tuple(sorted(n for n in finder.missing if n not in finder.found))
    return FoundModules(modules, missing, tuple(disk))


def pyc_bytes(source: bytes, display_name: str) -> bytes:
    """A sourceless .pyc with an unchecked-hash header: reproducible, never revalidated."""
    code = compile(source, display_name, "exec", dont_inherit=True, optimize=0)
    header = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def archive_name(module: Module) -> str:
    base = module.name.replace(".", "/")
    return f"{base}/__init__.pyc" if module.is_package else f"{base}.pyc"


def write_zip(modules: Iterable[Module], dest: Path) -> int:
    """Write the pure-Python ``modules`` into a deterministic zip; return its size."""
    entries: dict[str, bytes] = {}
    for m in modules:
        if m.kind != "source" or m.path is None:
            continue
        name = archive_name(m)
        if m.path.suffix == ".pyc":
            entries[name] = m.path.read_bytes()
        else:
            entries[name] = pyc_bytes(m.path.read_bytes(), name[:-1])
    tmp = dest.with_name(dest.name + ".tmp")
    # stored, not deflated: the initramfs' own compression does better on raw bytecode
    # (zstd initramfs 11.9 -> 10.8 MB), and imports skip an inflate per module
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, entries[name])
    tmp.replace(dest)
    return dest.stat().st_size
