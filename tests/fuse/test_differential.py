"""Differential test: overlayboot against kernel overlayfs, operation by operation.

Both overlays are mounted over the same two lower layers (tests/fuse/difftree.py).
Each operation runs on both; its outcome (value or errno) and the whole visible
tree must then be the same. At the end both are unmounted, their upper layers
compared, and the subject's upper is mounted with kernel overlayfs, which must
show the same tree (interoperability of the upper-layer format).

Tolerated, each with its reason where it is done (difftree.py): copy-ups that change
nothing, whiteouts' owner and mode, overlayboot's own xattrs and work subdir, and the two
hard-link differences that README.md lists under "Known differences".

The subject is overlayboot twice: with its default options (small files: whole copy-ups)
and as ``overlayboot-chunked`` (every copy-up partial, 4 KiB chunks), whose upper is sealed
(``overlayboot upper seal``'s code, after checking every map) before it is compared.
OVERLAYBOOT_DIFF_SUBJECT=kernel|fuse-overlayfs|overlayboot-... runs the same checks against
one implementation (kernel against kernel checks the machinery itself);
OVERLAYBOOT_DIFF_EXAMPLES and OVERLAYBOOT_DIFF_STEPS set the number and length of the random
runs; OVERLAYBOOT_DIFF_IGNORE=field,... (fields of difftree.Entry) is for triage.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests.fuse.difftree import (
    BASE_NS,
    NEW_PATHS,
    PATHS,
    SYMLINK_TARGETS,
    DiffSession,
    Fill,
    Op,
    build_lowers,
)
from tests.mounts import KINDS, OVERLAYBOOT_KINDS, have_fuse, have_kernel_overlay

# overlayboot with its default options, then with every copy-up partial (4 KiB chunks)
SUBJECTS = (
    [os.environ["OVERLAYBOOT_DIFF_SUBJECT"]]
    if "OVERLAYBOOT_DIFF_SUBJECT" in os.environ
    else ["overlayboot", "overlayboot-chunked"]
)
EXAMPLES = int(os.environ.get("OVERLAYBOOT_DIFF_EXAMPLES", "45"))  # per subject
STEPS = int(os.environ.get("OVERLAYBOOT_DIFF_STEPS", "30"))

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.kernel,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
    pytest.mark.skipif(not have_kernel_overlay(), reason="needs kernel overlayfs"),
]


@pytest.fixture(scope="module")
def lowers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    for subject in SUBJECTS:
        known = sorted({*KINDS, *OVERLAYBOOT_KINDS})
        assert subject in known, f"OVERLAYBOOT_DIFF_SUBJECT={subject!r} is not one of {known}"
    return build_lowers(tmp_path_factory.mktemp("difflowers"))


@pytest.fixture(autouse=True)
def fixed_umask() -> object:
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- the random runs ----------------------------------------------------------

paths = st.sampled_from(PATHS)
# Where something is created: half the time a name that no layer has.
new_paths = st.one_of(st.sampled_from(NEW_PATHS), paths)
# Short data, a repeated byte: shrinks and prints readably.
data = st.builds(Fill, st.sampled_from(b"ab\x00z"), st.sampled_from([0, 1, 7, 300, 5000]))
offsets = st.sampled_from([0, 1, 9, 4095, 4096, 70_000, 400_000])
sizes = st.sampled_from([0, 1, 5, 4096, 6000, 300_001])
modes = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o4755, 0o2750, 0o1777, 0o000])
owners = st.sampled_from([(0, 0), (1000, 1000), (65534, 100), (-1, 1000)])
times = st.sampled_from([BASE_NS + 123_456_789, BASE_NS + 10**9 * 86400 * 365])
xattr_names = st.sampled_from(["user.color", "user.empty", "user.new", "user.tag"])
xattr_values = st.sampled_from([b"", b"red", b"x" * 40])
rename_flags = st.sampled_from(["plain", "plain", "noreplace", "exchange"])


class OverlayPair(RuleBasedStateMachine):
    """Applies every rule to both mounts through a DiffSession."""

    def __init__(self, subject: str, lowers: list[Path], base: Path) -> None:
        super().__init__()
        self.session = DiffSession(subject, lowers, base).start()

    def do(self, name: str, *args: object) -> None:
        self.session.step(Op(name, args))

    @rule(path=new_paths, how=st.sampled_from(["trunc", "excl", "keep"]), data=data)
    def create_write(self, path: str, how: str, data: Fill) -> None:
        self.do("create_write", path, how, data)

    @rule(path=paths, offset=offsets, data=data)
    def write_at(self, path: str, offset: int, data: Fill) -> None:
        self.do("write_at", path, offset, data)

    @rule(path=paths, data=data)
    def append(self, path: str, data: Fill) -> None:
        self.do("append", path, data)

    @rule(path=paths, size=sizes, via_fd=st.booleans())
    def truncate(self, path: str, size: int, via_fd: bool) -> None:
        self.do("ftruncate" if via_fd else "truncate", path, size)

    @rule(src=paths, dst=new_paths, flags=rename_flags)
    def rename(self, src: str, dst: str, flags: str) -> None:
        self.do("rename", src, dst, flags)

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.do("unlink", path)

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.do("rmdir", path)

    @rule(path=new_paths, mode=st.sampled_from([0o755, 0o700, 0o1777]))
    def mkdir(self, path: str, mode: int) -> None:
        self.do("mkdir", path, mode)

    @rule(src=paths, dst=new_paths)
    def link(self, src: str, dst: str) -> None:
        self.do("link", src, dst)

    @rule(dest=st.sampled_from(SYMLINK_TARGETS), path=new_paths)
    def symlink(self, dest: str, path: str) -> None:
        self.do("symlink", dest, path)

    @rule(path=paths, mode=modes)
    def chmod(self, path: str, mode: int) -> None:
        self.do("chmod", path, mode)

    @rule(path=paths, owner=owners)
    def chown(self, path: str, owner: tuple[int, int]) -> None:
        self.do("chown", path, *owner)

    @rule(path=paths, atime=times, mtime=times)
    def utime(self, path: str, atime: int, mtime: int) -> None:
        self.do("utime", path, atime, mtime)

    @rule(path=paths, name=xattr_names, value=xattr_values, flags=st.sampled_from([0, 1, 2]))
    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        self.do("setxattr", path, name, value, flags)

    @rule(path=paths, name=xattr_names)
    def removexattr(self, path: str, name: str) -> None:
        self.do("removexattr", path, name)

    @rule(path=new_paths)
    def mkfifo(self, path: str) -> None:
        self.do("mkfifo", path, 0o640)

    @rule(path=paths)
    def read(self, path: str) -> None:
        self.do("read", path)

    def teardown(self) -> None:
        self.session.finish()


@pytest.mark.timeout(1800)  # a failing run spends minutes shrinking, mounting each time
@pytest.mark.parametrize("subject", SUBJECTS)
def test_random_operations_match_kernel(lowers: list[Path], tmp_path: Path, subject: str) -> None:
    counter = itertools.count()

    class Pair(OverlayPair):
        def __init__(self) -> None:
            super().__init__(subject, lowers, tmp_path / f"run{next(counter)}")

    run_state_machine_as_test(
        Pair,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# -- a fixed sequence ---------------------------------------------------------

SMOKE: list[tuple[str, tuple[object, ...]]] = [
    ("write_at", ("small.txt", 3, b"XY")),  # copy-up of a lower file
    ("append", ("dir/a/b/c.txt", b"more")),  # copy-up of its parents too
    ("truncate", ("big.bin", 6000)),
    ("write_at", ("sparse.bin", 200_000, b"mid")),
    ("chmod", ("suid.bin", 0o755)),
    ("chown", ("owned.txt", 0, 0)),
    ("setxattr", ("xattr.txt", "user.color", b"green", 0)),
    ("removexattr", ("xattr.txt", "user.empty")),
    ("utime", ("medium.bin", BASE_NS + 5, BASE_NS + 7)),
    ("unlink", ("merged/b_only.txt",)),  # whiteout over a bottom-only file
    ("unlink", ("merged/shared.txt",)),  # in both lowers
    ("rmdir", ("merged/bdir",)),  # not empty
    ("unlink", ("merged/bdir/x.txt",)),
    ("rmdir", ("merged/bdir",)),
    ("mkdir", ("merged/bdir", 0o700)),  # over a whiteout: opaque
    ("rename", ("merged/sub", "dir/moved", "plain")),  # a merged dir: redirect
    ("rename", ("hl_a", "n1", "plain")),  # one name of a hard-linked pair
    ("write_at", ("dir/hl_b", 0, b"H")),
    ("link", ("small.txt", "merged/n3")),
    ("create_write", ("clash", "excl", b"x")),  # EEXIST
    ("create_write", ("gone.txt", "excl", b"back\n")),  # over a lower whiteout
    ("rename", ("small.txt", "xattr.txt", "exchange")),
    ("rename", ("bfile.txt", "medium.bin", "noreplace")),  # EEXIST
    ("symlink", ("nowhere", "n2")),
    ("mkfifo", ("empty/n7", 0o600)),
    ("rmdir", ("opq",)),  # ENOTEMPTY
    ("unlink", ("opq/new.txt",)),
    ("rmdir", ("opq",)),
    ("rename", ("clash", "bonly", "exchange")),  # file <-> lower dir
]


# ... and once with every read and write through the daemon (no FUSE passthrough)
@pytest.mark.parametrize("subject", [*SUBJECTS, "overlayboot-nopassthrough"])
def test_fixed_sequence_matches_kernel(lowers: list[Path], tmp_path: Path, subject: str) -> None:
    session = DiffSession(subject, lowers, tmp_path / "smoke").start()
    try:
        outcomes = [session.step(Op(name, args)) for name, args in SMOKE]
    finally:
        session.finish()
    # The sequence checks the reference too: the expected errors did happen.
    assert outcomes[11] == "ENOTEMPTY" and outcomes[19] == "EEXIST", session.history


# -- cases the random runs found, replayed --------------------------------------

FOUND: dict[str, list[tuple[str, tuple[object, ...]]]] = {
    # a hard-linked lower file's other name, under a renamed directory and cached by the
    # kernel, was not linked to the copy-up that unlinking the first name made: ENOENT
    "hardlink-under-renamed-dir": [
        ("mkfifo", ("n1", 0o600)),
        ("rename", ("dir", "n1", "exchange")),
        ("read", ("n1/hl_b",)),
        ("unlink", ("hl_a",)),
        ("read", ("n1/hl_b",)),
    ],
}


@pytest.mark.parametrize("case", sorted(FOUND))
@pytest.mark.parametrize("subject", SUBJECTS)
def test_found_cases_match_kernel(
    lowers: list[Path], tmp_path: Path, subject: str, case: str
) -> None:
    session = DiffSession(subject, lowers, tmp_path / "found").start()
    try:
        for name, args in FOUND[case]:
            session.step(Op(name, args))
    finally:
        session.finish()
