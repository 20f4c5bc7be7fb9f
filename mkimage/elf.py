"""ELF shared-library closure: which objects a set of binaries loads, found inside a root.

The dynamic loader is never run (no ``ldd``): ELF headers and dynamic sections are read
with pyelftools and the search is redone in Python, the way glibc's ``ld.so`` does it:

1. ``DT_RPATH`` of the requesting object, then of the object that loaded it, and so on up
   to the executable (skipped entirely when the requester has ``DT_RUNPATH``; an object
   with ``DT_RUNPATH`` contributes no ``DT_RPATH``);
2. ``LD_LIBRARY_PATH`` (a parameter here, empty by default);
3. ``DT_RUNPATH`` of the requester only (not inherited);
4. the directories of ``ROOT/etc/ld.so.conf`` (with ``include`` globs), standing in for
   ``ld.so.cache``, then the default directories (multiarch ones first);
   both skipped when the requester is linked with ``-z nodeflib``.

``$ORIGIN``/``${ORIGIN}`` expand to the directory of the requester (the resolved path for
an executable, as glibc reads ``/proc/self/exe``; the path it was found at otherwise).
Candidates of another ELF class or machine are skipped, as the loader does. Every path is
a path *inside* the root; symbolic links are followed within the root, so an absolute
target ``/x`` means ``ROOT/x`` and merged-``/usr`` links like ``/lib -> usr/lib`` work.
Not modelled: ``ld.so.cache`` itself, ``glibc-hwcaps`` subdirectories, ``$LIB`` and
``$PLATFORM`` (entries using them are ignored), relative or empty search-path entries.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from overlayboot.errors import OverlaybootError

ELF_MAGIC = b"\x7fELF"
MAX_SYMLINKS = 40  # like the kernel's MAXSYMLINKS
DF_1_NODEFLIB = 0x800

# (e_machine, ELF class, little-endian) -> Debian multiarch triplet
_TRIPLETS: dict[tuple[int, int, bool], str] = {
    (62, 64, True): "x86_64-linux-gnu",
    (62, 32, True): "x86_64-linux-gnux32",
    (3, 32, True): "i386-linux-gnu",
    (183, 64, True): "aarch64-linux-gnu",
    (40, 32, True): "arm-linux-gnueabihf",
    (21, 64, True): "powerpc64le-linux-gnu",
    (22, 64, False): "s390x-linux-gnu",
    (243, 64, True): "riscv64-linux-gnu",
}


class ElfError(OverlaybootError):
    """An ELF object cannot be read or its dependencies cannot be resolved."""


class NotElfError(ElfError):
    """A file given as a binary is not an ELF object."""


class MissingLibraryError(ElfError):
    """A needed library was not found in the root (raised only when asked to be strict)."""


@dataclass(frozen=True)
class ElfAbi:
    """What must match between a binary and the libraries it can load."""

    elf_class: int  # 32 or 64
    little_endian: bool
    machine: int  # e_machine, e.g. 62 for x86-64

    @property
    def triplet(self) -> str | None:
        """The Debian multiarch triplet (``x86_64-linux-gnu``), if known."""
        return _TRIPLETS.get((self.machine, self.elf_class, self.little_endian))


@dataclass(frozen=True)
class ElfInfo:
    """What the loader reads from one ELF object."""

    abi: ElfAbi
    soname: str | None = None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    interpreter: str | None = None
    nodeflib: bool = False


@dataclass(frozen=True)
class LoadedObject:
    """An object in the loader's view: where it was found and who caused it to load."""

    info: ElfInfo
    path: PurePosixPath  # inside the root, as found (symbolic links not resolved)
    origin: PurePosixPath  # what $ORIGIN expands to
    loader: LoadedObject | None = None


@dataclass(frozen=True)
class Library:
    """One object of a closure; paths are inside the root."""

    soname: str  # the name it was requested by (DT_NEEDED, or the file name)
    path_in_root: PurePosixPath  # where the loader finds it (may be a symlink)
    realpath_in_root: PurePosixPath  # the file itself, every symlink resolved in the root
    needed: tuple[str, ...]


@dataclass(frozen=True)
class Closure:
    """Everything a set of binaries loads, in load order (breadth first, like ld.so)."""

    interpreter: Library | None  # from PT_INTERP of the first binary that has one
    binaries: tuple[Library, ...]  # the binaries given, resolved
    libraries: tuple[Library, ...]  # the rest, without binaries and interpreter
    missing: tuple[str, ...]  # needed names (or an interpreter path) not found

    @property
    def objects(self) -> tuple[Library, ...]:
        """Interpreter, binaries and libraries together."""
        head = (self.interpreter,) if self.interpreter is not None else ()
        return head + self.binaries + self.libraries


# --- paths inside a root -------------------------------------------------------------


def host_path(root: Path, path: PurePath | str) -> Path:
    """The host path of ``path`` inside ``root`` (no symlink resolution)."""
    parts = PurePosixPath(path).parts
    if parts and parts[0] == "/":
        parts = parts[1:]
    return root.joinpath(*parts)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def realpath_in_root(root: Path, path: PurePath | str) -> PurePosixPath:
    """Resolve every symbolic link of ``path`` without leaving ``root``.

    An absolute link target restarts at the root; ``..`` never climbs above it. Missing
    components are kept as they are, so the result may not exist.
    """
    pending = list(PurePosixPath("/", path).parts[1:])
    resolved: list[str] = []
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = [*resolved, name]
        host = root.joinpath(*candidate)
        st = _lstat(host)
        if st is None or not stat.S_ISLNK(st.st_mode):
            resolved = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise ElfError(f"too many levels of symbolic links resolving {path} in {root}")
        target = os.readlink(host)
        if target.startswith("/"):
            resolved = []
        pending[:0] = PurePosixPath(target).parts[1 if target.startswith("/") else 0 :]
    return PurePosixPath("/", *resolved)


def _glob_in_root(root: Path, pattern: str) -> list[PurePosixPath]:
    """Expand a glob pattern (absolute, inside root) component by component, sorted."""
    current = [PurePosixPath("/")]
    for part in PurePosixPath(pattern).parts[1:]:
        if not any(c in part for c in "*?["):
            current = [p / part for p in current]
            continue
        matched: list[PurePosixPath] = []
        for base in current:
            try:
                names = os.listdir(host_path(root, realpath_in_root(root, base)))
            except OSError:
                continue
            for name in sorted(names):
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    matched.append(base / name)
        current = matched
    return [p for p in current if host_path(root, realpath_in_root(root, p)).exists()]


def ld_so_conf_dirs(root: Path, conf: str = "/etc/ld.so.conf") -> tuple[PurePosixPath, ...]:
    """The directories listed by ``ROOT/etc/ld.so.conf``, ``include`` lines followed.

    Relative include patterns are relative to the including file's directory, as in
    ldconfig; ``hwcap`` lines are ignored; an include cycle is read once.
    """
    dirs: list[PurePosixPath] = []
    seen: set[PurePosixPath] = set()

    def read(conf_path: PurePosixPath) -> None:
        real = realpath_in_root(root, conf_path)
        if real in seen:
            return
        seen.add(real)
        try:
            text = host_path(root, real).read_text(errors="replace")
        except OSError:
            return
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "include" and len(words) > 1:
                for pattern in words[1:]:
                    full = conf_path.parent / pattern
                    for match in _glob_in_root(root, str(full)):
                        read(match)
            elif words[0] == "hwcap":
                continue
            else:
                entry = line.split("=", 1)[0].strip()  # old "dir=TYPE" form
                if entry.startswith("/"):
                    dirs.append(PurePosixPath(entry))

    read(PurePosixPath(conf))
    return tuple(_unique(dirs))


def default_dirs(abi: ElfAbi) -> tuple[PurePosixPath, ...]:
    """The loader's built-in directories for this ABI, multiarch ones first."""
    dirs: list[str] = []
    if abi.triplet:
        dirs += [f"/lib/{abi.triplet}", f"/usr/lib/{abi.triplet}"]
    dirs += ["/lib64", "/usr/lib64"] if abi.elf_class == 64 else ["/lib32", "/usr/lib32"]
    dirs += ["/lib", "/usr/lib"]
    return tuple(PurePosixPath(d) for d in dirs)


def _unique(items: Iterable[PurePosixPath]) -> list[PurePosixPath]:
    seen: set[PurePosixPath] = set()
    out: list[PurePosixPath] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# --- reading ELF objects -------------------------------------------------------------


def read_abi(path: Path) -> ElfAbi | None:
    """The class, byte order and machine of the ELF file at host ``path``; None if not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != ELF_MAGIC or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    little = head[5] == 1
    machine = int.from_bytes(head[18:20], "little" if little else "big")
    return ElfAbi(elf_class=32 if head[4] == 1 else 64, little_endian=little, machine=machine)


# DT_* tags holding strings -> the attribute pyelftools decodes them into
_STRING_TAGS = {
    "DT_NEEDED": "needed",
    "DT_SONAME": "soname",
    "DT_RPATH": "rpath",
    "DT_RUNPATH": "runpath",
}


def read_elf(path: Path) -> ElfInfo:
    """Read what the loader needs from the ELF file at host ``path``."""
    abi = read_abi(path)
    if abi is None:
        raise NotElfError(f"{path} is not an ELF file")
    strings: dict[str, list[str]] = {tag: [] for tag in _STRING_TAGS}
    interpreter: str | None = None
    flags_1 = 0
    try:
        with open(path, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if isinstance(seg, InterpSegment):
                    interpreter = str(seg.get_interp_name())
                elif isinstance(seg, DynamicSegment):
                    for tag in seg.iter_tags():
                        name = tag.entry.d_tag
                        if name in _STRING_TAGS:
                            strings[name].append(str(getattr(tag, _STRING_TAGS[name])))
                        elif name == "DT_FLAGS_1":
                            flags_1 |= int(tag.entry.d_val)
    except (ELFError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise ElfError(f"cannot read ELF file {path}: {exc}") from exc

    def path_list(tag: str) -> tuple[str, ...]:
        return tuple(part for value in strings[tag] for part in value.split(":"))

    return ElfInfo(
        abi=abi,
        soname=strings["DT_SONAME"][0] if strings["DT_SONAME"] else None,
        needed=tuple(strings["DT_NEEDED"]),
        rpath=path_list("DT_RPATH"),
        runpath=path_list("DT_RUNPATH"),
        interpreter=interpreter,
        nodeflib=bool(flags_1 & DF_1_NODEFLIB),
    )


# --- the search ----------------------------------------------------------------------


def expand_origin(entry: str, origin: PurePosixPath) -> PurePosixPath | None:
    """Expand ``$ORIGIN``/``${ORIGIN}`` in one search-path entry; None if unusable."""
    value = entry.replace("${ORIGIN}", str(origin)).replace("$ORIGIN", str(origin))
    if not value.startswith("/") or "$" in value:
        return None
    return PurePosixPath(value)


def _expand_all(entries: Sequence[str], origin: PurePosixPath) -> list[PurePosixPath]:
    return [p for p in (expand_origin(e, origin) for e in entries) if p is not None]


def _rpath_dirs(obj: LoadedObject) -> list[PurePosixPath]:
    if obj.info.runpath:  # glibc drops DT_RPATH of an object that has DT_RUNPATH
        return []
    return _expand_all(obj.info.rpath, obj.origin)


def search_dirs(
    loader: LoadedObject,
    *,
    main: LoadedObject | None = None,
    library_path: Sequence[PurePosixPath] = (),
    system_dirs: Sequence[PurePosixPath] = (),
) -> tuple[PurePosixPath, ...]:
    """The directories searched for a name needed by ``loader``, in glibc's order.

    ``main`` is the executable (its RPATH also applies to objects it did not load itself,
    as for dlopen); ``system_dirs`` are the ld.so.conf plus default directories.
    """
    dirs: list[PurePosixPath] = []
    if not loader.info.runpath:
        did_main = False
        obj: LoadedObject | None = loader
        while obj is not None:
            dirs += _rpath_dirs(obj)
            did_main = did_main or obj is main
            obj = obj.loader
        if main is not None and not did_main:
            dirs += _rpath_dirs(main)
    dirs += library_path
    dirs += _expand_all(loader.info.runpath, loader.origin)
    if not loader.info.nodeflib:
        dirs += system_dirs
    return tuple(_unique(dirs))


@dataclass(frozen=True)
class _Found:
    path: PurePosixPath
    real: PurePosixPath


def _probe(root: Path, path: PurePosixPath, abi: ElfAbi | None) -> _Found | None:
    """The file at ``path`` in root, if it is a regular ELF file of a matching ABI."""
    real = realpath_in_root(root, path)
    host = host_path(root, real)
    st = _lstat(host)
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    found_abi = read_abi(host)
    if found_abi is None or (abi is not None and found_abi != abi):
        return None
    return _Found(path, real)


class _Resolver:
    """Breadth-first loading of the needed names of a set of objects."""

    def __init__(self, root: Path, library_path: Sequence[PurePosixPath]) -> None:
        self.root = root
        self.library_path = tuple(library_path)
        self.conf_dirs = ld_so_conf_dirs(root)
        self.by_name: dict[str, Library] = {}
        self.by_real: dict[PurePosixPath, Library] = {}
        self.loaded: dict[PurePosixPath, LoadedObject] = {}
        self.libraries: list[Library] = []
        self.missing: dict[str, list[PurePosixPath]] = {}
        self.infos: dict[PurePosixPath, ElfInfo] = {}

    def info(self, real: PurePosixPath) -> ElfInfo:
        if real not in self.infos:
            self.infos[real] = read_elf(host_path(self.root, real))
        return self.infos[real]

    def register(self, lib: Library, obj: LoadedObject) -> None:
        self.by_name.setdefault(lib.soname, lib)
        if obj.info.soname:
            self.by_name.setdefault(obj.info.soname, lib)
        self.by_real[lib.realpath_in_root] = lib
        self.loaded[lib.realpath_in_root] = obj

    def find(self, name: str, loader: LoadedObject, main: LoadedObject | None) -> _Found | None:
        abi = loader.info.abi
        if "/" in name:  # a DT_NEEDED with a slash is a path, not searched
            return _probe(self.root, PurePosixPath("/", name), abi)
        system = self.conf_dirs + default_dirs(abi)
        dirs = search_dirs(loader, main=main, library_path=self.library_path, system_dirs=system)
        for d in dirs:
            found = _probe(self.root, d / name, abi)
            if found is not None:
                return found
        return None

    def load_needed(self, start: Sequence[LoadedObject], main: LoadedObject | None) -> None:
        queue: deque[LoadedObject] = deque(start)
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if name in self.by_name:
                    continue
                found = self.find(name, obj, main)
                if found is None:
                    self.missing.setdefault(name, []).append(obj.path)
                    continue
                if found.real in self.by_real:  # the same file under another name
                    self.by_name.setdefault(name, self.by_real[found.real])
                    continue
                info = self.info(found.real)
                lib = Library(name, found.path, found.real, info.needed)
                new = LoadedObject(info, found.path, found.path.parent, obj)
                self.register(lib, new)
                self.libraries.append(lib)
                queue.append(new)


def resolve_closure(
    root: Path,
    binaries: Sequence[PurePath | str],
    *,
    library_path: Sequence[PurePath | str] = (),
    strict: bool = False,
) -> Closure:
    """Resolve the shared-library closure of ``binaries`` (paths inside ``root``).

    The binaries may mix one executable with objects it dlopens (extension modules); they
    must share one ABI. A name that cannot be found is listed in ``Closure.missing``, or
    raises :class:`MissingLibraryError` when ``strict`` is set.
    """
    root = Path(root)
    resolver = _Resolver(root, [PurePosixPath(p) for p in library_path])
    roots: list[LoadedObject] = []
    libs: list[Library] = []
    abi: ElfAbi | None = None
    for given in binaries:
        path = PurePosixPath("/", given)
        real = realpath_in_root(root, path)
        host = host_path(root, real)
        if not host.is_file():
            raise ElfError(f"{path} not found in {root}")
        info = resolver.info(real)
        if abi is None:
            abi = info.abi
        elif info.abi != abi:
            raise ElfError(f"{path} is built for another ABI than {binaries[0]}")
        origin = real.parent if info.interpreter else path.parent
        obj = LoadedObject(info, path, origin)
        lib = Library(path.name, path, real, info.needed)
        if real in resolver.by_real:
            continue
        resolver.register(lib, obj)
        roots.append(obj)
        libs.append(lib)

    main = next((o for o in roots if o.info.interpreter), None)
    interpreter = _load_interpreter(resolver, roots, abi)
    resolver.load_needed(roots, main)
    if interpreter is not None:
        interp_obj = resolver.loaded[interpreter.realpath_in_root]
        resolver.load_needed([interp_obj], main)

    missing = tuple(resolver.missing)
    if strict and missing:
        details = ", ".join(
            f"{name} (needed by {', '.join(str(p) for p in who)})"
            for name, who in resolver.missing.items()
        )
        raise MissingLibraryError(f"libraries not found in {root}: {details}")
    return Closure(
        interpreter=interpreter,
        binaries=tuple(libs),
        libraries=tuple(resolver.libraries),
        missing=missing,
    )


def _load_interpreter(
    resolver: _Resolver, roots: Sequence[LoadedObject], abi: ElfAbi | None
) -> Library | None:
    interps = _unique(PurePosixPath(o.info.interpreter) for o in roots if o.info.interpreter)
    if not interps:
        return None
    if len(interps) > 1:
        raise ElfError(f"binaries ask for different interpreters: {', '.join(map(str, interps))}")
    path = interps[0]
    found = _probe(resolver.root, path, abi)
    if found is None:
        resolver.missing.setdefault(str(path), []).extend(o.path for o in roots)
        return None
    if found.real in resolver.by_real:
        return resolver.by_real[found.real]
    info = resolver.info(found.real)
    lib = Library(path.name, path, found.real, info.needed)
    resolver.register(lib, LoadedObject(info, path, path.parent))
    return lib
