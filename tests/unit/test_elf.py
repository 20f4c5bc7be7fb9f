"""ELF closure resolution: against fake sysroots built here, and against the host's loader."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from mkimage.elf import (
    Closure,
    ElfAbi,
    ElfError,
    ElfInfo,
    Library,
    LoadedObject,
    MissingLibraryError,
    NotElfError,
    default_dirs,
    ld_so_conf_dirs,
    read_abi,
    read_elf,
    realpath_in_root,
    resolve_closure,
    search_dirs,
)
from overlayboot.run import run

P = PurePosixPath
PYTHON = Path("/usr/bin/python3.11")
HOST_LD_SO = Path("/lib64/ld-linux-x86-64.so.2")
TRIPLET_DIR = P("/usr/lib/x86_64-linux-gnu")
X86_64 = ElfAbi(elf_class=64, little_endian=True, machine=62)

pytestmark = pytest.mark.skipif(
    not (PYTHON.exists() and HOST_LD_SO.exists() and os.uname().machine == "x86_64"),
    reason="needs Debian's /usr/bin/python3.11 on x86-64",
)


def loader_trace(argv: list[str]) -> dict[str, str | None]:
    """What the host's dynamic loader loads for argv: name -> path (None: not found)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["LD_TRACE_LOADED_OBJECTS"] = "1"
    out = run(argv, env=env, check=False).stdout.decode()
    objects: dict[str, str | None] = {}
    for line in out.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"(\S+) => not found", line):
            objects[m[1]] = None
        elif m := re.fullmatch(r"(\S+) => (\S+) \(0x[0-9a-f]+\)", line):
            objects[m[1]] = m[2]
        elif (m := re.fullmatch(r"(\S+) \(0x[0-9a-f]+\)", line)) and "vdso" not in m[1]:
            objects[m[1]] = m[1]
    assert objects, f"no loader trace for {argv}: {out!r}"
    return objects


def traced_realpaths(trace: dict[str, str | None]) -> set[str]:
    return {os.path.realpath(p) for p in trace.values() if p is not None}


def closure_realpaths(closure: Closure) -> set[str]:
    return {str(o.realpath_in_root) for o in closure.objects}


@pytest.fixture(scope="module")
def python_libs() -> dict[str, str]:
    """The host files python3.11 loads, by name (from the real loader)."""
    trace = loader_trace([str(PYTHON)])
    assert None not in trace.values()
    return {name: os.path.realpath(str(path)) for name, path in trace.items()}


def put(root: Path, path: str, source: str | Path) -> Path:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def link(root: Path, path: str, target: str) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(target)


def write(root: Path, path: str, text: str) -> Path:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


@pytest.fixture
def sysroot(tmp_path: Path, python_libs: dict[str, str]) -> Iterator[Path]:
    """A merged-/usr root: libc and libm in the multiarch dir, libz and libexpat in
    directories only ld.so.conf (through nested includes) names, python3.11 in /usr/bin."""
    root = tmp_path / "root"
    root.mkdir()
    link(root, "/lib", "usr/lib")
    link(root, "/lib64", "/usr/lib64")  # absolute: means ROOT/usr/lib64
    link(root, "/bin", "usr/bin")
    put(root, "/usr/bin/python3.11", PYTHON)
    for name in ("libc.so.6", "libm.so.6"):
        put(root, f"{TRIPLET_DIR}/{name}", python_libs[name])
    ld_so = python_libs[str(HOST_LD_SO)]
    put(root, f"{TRIPLET_DIR}/ld-linux-x86-64.so.2", ld_so)
    link(root, "/usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    put(root, "/opt/zlib/lib/libz.so.1.2.99", python_libs["libz.so.1"])
    link(root, "/opt/zlib/lib/libz.so.1", "libz.so.1.2.99")
    put(root, "/opt/expat/libexpat.so.1", python_libs["libexpat.so.1"])
    write(root, "/etc/ld.so.conf", "# top\ninclude ld.so.conf.d/*.conf\nhwcap 0 nosegneg\n")
    write(root, "/etc/ld.so.conf.d/zlib.conf", "/opt/zlib/lib  # trailing comment\n")
    write(root, "/etc/ld.so.conf.d/more.conf", "include /etc/extra/*.conf\n")
    write(root, "/etc/ld.so.conf.d/README", "/opt/not-a-conf-file\n")
    write(root, "/etc/extra/expat.conf", "/opt/expat\ninclude ../ld.so.conf\n")  # a cycle
    yield root


def lib(soname: str, path: str, real: str | None = None) -> tuple[str, P, P]:
    return (soname, P(path), P(real or path))


def summary(libs: tuple[Library, ...]) -> list[tuple[str, P, P]]:
    return [(x.soname, x.path_in_root, x.realpath_in_root) for x in libs]


def test_sysroot_closure_is_exact(sysroot: Path, python_libs: dict[str, str]) -> None:
    closure = resolve_closure(sysroot, [P("/bin/python3.11")])
    assert closure.missing == ()
    assert closure.interpreter is not None
    interp = closure.interpreter
    assert (interp.soname, interp.path_in_root, interp.realpath_in_root) == lib(
        "ld-linux-x86-64.so.2",
        "/lib64/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    )
    assert summary(closure.binaries) == [
        lib("python3.11", "/bin/python3.11", "/usr/bin/python3.11")
    ]
    assert summary(closure.libraries) == [
        lib("libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"),
        lib("libz.so.1", "/opt/zlib/lib/libz.so.1", "/opt/zlib/lib/libz.so.1.2.99"),
        lib("libexpat.so.1", "/opt/expat/libexpat.so.1"),
        lib("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    ]
    # libc's DT_NEEDED on the loader is the interpreter, not a second copy
    assert "ld-linux-x86-64.so.2" in closure.libraries[-1].needed
    assert len(closure.objects) == 6


def test_ld_so_conf_includes(sysroot: Path) -> None:
    assert ld_so_conf_dirs(sysroot) == (P("/opt/expat"), P("/opt/zlib/lib"))
    assert ld_so_conf_dirs(sysroot / "nowhere") == ()


def test_missing_library_is_reported_not_taken_from_host(sysroot: Path) -> None:
    (sysroot / "etc/ld.so.conf.d/zlib.conf").unlink()  # the host has libz; the root no more
    closure = resolve_closure(sysroot, ["/usr/bin/python3.11"])
    assert closure.missing == ("libz.so.1",)
    assert [x.soname for x in closure.libraries] == ["libm.so.6", "libexpat.so.1", "libc.so.6"]
    with pytest.raises(
        MissingLibraryError, match=r"libz\.so\.1 \(needed by /usr/bin/python3\.11\)"
    ):
        resolve_closure(sysroot, ["/usr/bin/python3.11"], strict=True)


def patched(source: Path, dest: Path, offset: int, value: bytes) -> None:
    data = bytearray(source.read_bytes())
    data[offset : offset + len(value)] = value
    dest.write_bytes(bytes(data))


def test_other_abi_and_non_elf_candidates_are_skipped(sysroot: Path) -> None:
    libm = sysroot / "usr/lib/x86_64-linux-gnu/libm.so.6"
    patched(libm, sysroot / "opt/expat/libm.so.6", 4, b"\x01")  # ELFCLASS32
    patched(libm, sysroot / "opt/zlib/lib/libm.so.6", 18, (183).to_bytes(2, "little"))  # aarch64
    write(sysroot, "/lib/libm.so.6", "/* GNU ld script */\n")
    assert read_abi(sysroot / "opt/expat/libm.so.6") == ElfAbi(32, True, 62)
    assert read_abi(sysroot / "opt/zlib/lib/libm.so.6") == ElfAbi(64, True, 183)
    closure = resolve_closure(sysroot, ["/usr/bin/python3.11"])
    libm_found = next(x for x in closure.libraries if x.soname == "libm.so.6")
    assert libm_found.path_in_root == P("/lib/x86_64-linux-gnu/libm.so.6")
    libm.unlink()  # now only wrong candidates remain
    assert resolve_closure(sysroot, ["/usr/bin/python3.11"]).missing == ("libm.so.6",)


def test_not_elf_and_absent_binaries(sysroot: Path) -> None:
    write(sysroot, "/usr/bin/script", "#!/bin/sh\n")
    with pytest.raises(NotElfError, match="is not an ELF file"):
        resolve_closure(sysroot, ["/usr/bin/script"])
    with pytest.raises(ElfError, match="not found"):
        resolve_closure(sysroot, ["/usr/bin/absent"])


def test_read_elf_matches_readelf() -> None:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    out = run(["readelf", "-d", "-l", PYTHON]).stdout.decode()
    needed = tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out))
    interp = re.search(r"Requesting program interpreter: (.+?)\]", out)
    info = read_elf(PYTHON)
    assert info.needed == needed and len(needed) >= 4
    assert interp is not None and info.interpreter == interp[1]
    assert info.abi == X86_64
    assert (info.soname, info.rpath, info.runpath, info.nodeflib) == (None, (), (), False)


def test_realpath_in_root(tmp_path: Path) -> None:
    root = tmp_path
    link(root, "/lib", "usr/lib")
    link(root, "/usr/lib/abs", "/etc/target")
    link(root, "/usr/lib/up", "../../../../etc")  # cannot climb above the root
    link(root, "/loop1", "loop2")
    link(root, "/loop2", "/loop1")
    write(root, "/etc/target", "x")
    assert realpath_in_root(root, "/lib/abs") == P("/etc/target")
    assert realpath_in_root(root, "/lib/up/target") == P("/etc/target")
    assert realpath_in_root(root, "/lib/../lib/./x") == P("/usr/lib/x")
    assert realpath_in_root(root, "/usr/lib/missing/y") == P("/usr/lib/missing/y")
    with pytest.raises(ElfError, match="too many levels"):
        realpath_in_root(root, "/loop1/x")


def test_default_dirs() -> None:
    assert default_dirs(X86_64) == tuple(
        P(d)
        for d in (
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        )
    )
    assert default_dirs(ElfAbi(64, True, 183))[:2] == (
        P("/lib/aarch64-linux-gnu"),
        P("/usr/lib/aarch64-linux-gnu"),
    )
    assert default_dirs(ElfAbi(32, True, 3))[2:4] == (P("/lib32"), P("/usr/lib32"))


def test_search_order_rpath_runpath_inheritance() -> None:
    system = (P("/sys"),)
    llp = (P("/llp"),)
    main = LoadedObject(ElfInfo(X86_64, rpath=("/m", "$ORIGIN/x")), P("/bin/exe"), P("/bin"))
    a = LoadedObject(
        ElfInfo(X86_64, rpath=("${ORIGIN}/r", "rel", "$LIB/x")), P("/a/liba"), P("/a"), main
    )
    b = LoadedObject(
        ElfInfo(X86_64, rpath=("/ignored",), runpath=("/rb",)), P("/b/libb"), P("/b"), a
    )
    c = LoadedObject(ElfInfo(X86_64), P("/c/libc"), P("/c"), b)
    d = LoadedObject(ElfInfo(X86_64, nodeflib=True), P("/d/libd"), P("/d"))  # dlopened

    def dirs(obj: LoadedObject) -> list[str]:
        return [str(x) for x in search_dirs(obj, main=main, library_path=llp, system_dirs=system)]

    # RPATH of the requester, then up the chain; relative and $LIB entries are dropped
    assert dirs(a) == ["/a/r", "/m", "/bin/x", "/llp", "/sys"]
    # RUNPATH: no RPATH at all (neither its own nor inherited), only after LD_LIBRARY_PATH
    assert dirs(b) == ["/llp", "/rb", "/sys"]
    # below an object with RUNPATH: its RPATH is dropped, the others' still apply
    assert dirs(c) == ["/a/r", "/m", "/bin/x", "/llp", "/sys"]
    # a dlopened object gets the executable's RPATH; nodeflib drops the system dirs
    assert dirs(d) == ["/m", "/bin/x", "/llp"]
    assert dirs(main) == ["/m", "/bin/x", "/llp", "/sys"]


# --- against the real loader on the host ------------------------------------------------


def test_host_python_closure_equals_loader() -> None:
    closure = resolve_closure(Path("/"), [PYTHON])
    assert closure.missing == ()
    assert closure_realpaths(closure) - {str(PYTHON)} == traced_realpaths(
        loader_trace([str(PYTHON)])
    )


def test_host_python_with_extension_modules() -> None:
    dynload = Path("/usr/lib/python3.11/lib-dynload")
    exts = sorted(dynload.glob("_ssl.*.so")) + sorted(dynload.glob("_lzma.*.so"))
    if len(exts) != 2:
        pytest.skip("python3.11 lib-dynload _ssl/_lzma not installed")
    closure = resolve_closure(Path("/"), [PYTHON, *exts])
    expected = traced_realpaths(loader_trace([str(PYTHON)]))
    for ext in exts:
        expected |= traced_realpaths(loader_trace([str(HOST_LD_SO), "--list", str(ext)]))
    expected.discard(str(PYTHON))
    assert closure.missing == ()
    assert closure_realpaths(closure) - {str(PYTHON), *map(str, exts)} == expected
    assert {"libssl.so.3", "libcrypto.so.3", "liblzma.so.5"} <= {
        x.soname for x in closure.libraries
    }


# --- $ORIGIN, RPATH and RUNPATH with binaries compiled here -----------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """app/lib/{libfoo.so.1 -> libbar.so.1}; app/bin/rpath (RPATH $ORIGIN/../lib) and
    app/bin/runpath (RUNPATH ${ORIGIN}/../lib), both needing libfoo; a symlink to rpath."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    top = tmp_path_factory.mktemp("app")
    src, lib_dir, bin_dir = top / "src", top / "app/lib", top / "app/bin"
    for d in (src, lib_dir, bin_dir, top / "elsewhere"):
        d.mkdir(parents=True)
    (src / "bar.c").write_text("int bar(void) { return 1; }\n")
    (src / "foo.c").write_text("int bar(void);\nint foo(void) { return bar(); }\n")
    (src / "main.c").write_text("int foo(void);\nint main(void) { return foo() - 1; }\n")
    shared: list[str | Path] = ["gcc", "-shared", "-fPIC"]
    run([*shared, "-Wl,-soname,libbar.so.1", "-o", lib_dir / "libbar.so.1", src / "bar.c"])
    foo: list[str | Path] = [
        "-Wl,-soname,libfoo.so.1",
        "-o",
        lib_dir / "libfoo.so.1",
        src / "foo.c",
    ]
    run([*shared, *foo, f"-L{lib_dir}", "-l:libbar.so.1"])
    for name, flags in (
        ("rpath", ["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/../lib"]),
        ("runpath", ["-Wl,--enable-new-dtags", "-Wl,-rpath,${ORIGIN}/../lib"]),
    ):
        out = bin_dir / name
        run(["gcc", "-o", out, src / "main.c", f"-L{lib_dir}", "-l:libfoo.so.1", *flags])
    (top / "elsewhere/prog").symlink_to("../app/bin/rpath")
    return top


def test_compiled_dynamic_tags(app: Path) -> None:
    rpath = read_elf(app / "app/bin/rpath")
    assert (rpath.rpath, rpath.runpath, rpath.needed[0]) == (("$ORIGIN/../lib",), (), "libfoo.so.1")
    runpath = read_elf(app / "app/bin/runpath")
    assert runpath.runpath == ("${ORIGIN}/../lib",)
    assert read_elf(app / "app/lib/libfoo.so.1").soname == "libfoo.so.1"


@pytest.mark.parametrize("prog", ["app/bin/rpath", "app/bin/runpath", "elsewhere/prog"])
def test_compiled_closure_equals_loader(app: Path, prog: str) -> None:
    path = app / prog
    closure = resolve_closure(Path("/"), [path])
    trace = loader_trace([str(path)])
    assert closure_realpaths(closure) - {str(path.resolve())} == traced_realpaths(trace)
    assert closure.missing == tuple(name for name, p in trace.items() if p is None)
    sonames = [x.soname for x in closure.libraries]
    if prog.endswith("runpath"):  # RUNPATH is not inherited: libfoo cannot find libbar
        assert closure.missing == ("libbar.so.1",) and "libfoo.so.1" in sonames
    else:  # RPATH is; $ORIGIN of an executable is its resolved directory
        assert closure.missing == () and {"libfoo.so.1", "libbar.so.1"} <= set(sonames)
        foo = next(x for x in closure.libraries if x.soname == "libfoo.so.1")
        assert foo.path_in_root == P(app / "app/bin/../lib/libfoo.so.1")


def test_compiled_origin_inside_sysroot(app: Path, sysroot: Path) -> None:
    shutil.copytree(app / "app", sysroot / "app", symlinks=True)
    link(sysroot, "/usr/local/bin/prog", "/app/bin/rpath")  # absolute, inside the root
    closure = resolve_closure(sysroot, ["/usr/local/bin/prog"])
    assert closure.missing == ()
    assert summary(closure.libraries) == [
        lib("libfoo.so.1", "/app/bin/../lib/libfoo.so.1", "/app/lib/libfoo.so.1"),
        lib("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        lib("libbar.so.1", "/app/bin/../lib/libbar.so.1", "/app/lib/libbar.so.1"),
    ]
