"""A model test of clones: random clones and changes against a model where each clone is
a real ``cp -a`` made at its moment.

Two lower layers with merged directories (a fixed tree plus random entries); hypothesis
picks clones (of lower, upper and
merged directories and files, into the clones themselves, clones of clones) and changes
on both sides (writes, truncates, new files and directories, hard links, unlinks,
renames in a directory, chmod), with remounts among them. After every step the whole overlay must
equal the model (type, mode, content); at the end after a remount, and after ``upper
seal`` under kernel overlayfs too. OVERLAYBOOT_CLONE_EXAMPLES / _STEPS size the run,
OVERLAYBOOT_CLONE_RANDOM=1 explores, OVERLAYBOOT_CLONE_NOSHRINK=1 skips shrinking.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from overlayboot.clonecmd import CloneError
from tests.fuse.clonetree import clone
from tests.fuse.helpers import seal_upper
from tests.mounts import have_fuse, have_kernel_overlay, overlay_mount

EXAMPLES = int(os.environ.get("OVERLAYBOOT_CLONE_EXAMPLES", "10"))
STEPS = int(os.environ.get("OVERLAYBOOT_CLONE_STEPS", "25"))

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.clone,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

Entry = tuple[object, ...]  # ("d", mode) | ("f", mode, data) | ("l", target)
NAMES = ["n0", "n1", "n2"]


def _files(root: Path, spec: dict[str, bytes | None]) -> None:
    for rel, data in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(data)


@pytest.fixture(scope="module")
def lowers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("clonelowers")
    l1, l2 = base / "l1", base / "l2"
    _files(l1, {"t/a": b"a1", "t/s/b": b"b1", "t/s/big": bytes(range(256)) * 1200, "u/x": b"x"})
    _files(l2, {"t/a": b"hidden", "t/c": b"c2", "t/s/d": b"d2", "t/e": None, "v/y": b"y"})
    os.symlink("a", l1 / "t/ln")
    return [l1, l2]


def read_tree(root: Path) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            mode = stat.S_IMODE(st_.st_mode)
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("d", mode)
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(path))
            else:
                with open(path, "rb") as f:
                    out[rel] = ("f", mode, f.read())
    return out


def kernel_view(lowers: list[Path], upper: Path, base: Path) -> dict[str, Entry]:
    kmnt, kwork = base / "kmnt", base / "kwork"
    kmnt.mkdir(exist_ok=True)
    kwork.mkdir(exist_ok=True)
    lowerdir = ":".join(str(p) for p in lowers)
    opts = f"lowerdir={lowerdir},upperdir={upper},workdir={kwork},redirect_dir=on,index=off"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(kmnt)], check=True)
    try:
        return read_tree(kmnt)
    finally:
        subprocess.run(["umount", str(kmnt)], check=True)


index = st.integers(min_value=0, max_value=10**6)
names = st.sampled_from(NAMES)
data = st.sampled_from([b"", b"z", b"new data\n", b"\x01" * 5000])
offsets = st.sampled_from([0, 3, 4096, 70_000])


# extra lower entries of one run: (layer, path, is a directory)
extra_entries = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),
        st.lists(st.sampled_from(["t", "p", "q", "s"]), min_size=1, max_size=3).map("/".join),
        st.booleans(),
    ),
    max_size=8,
)


def add_entries(lowers: list[Path], entries: list[tuple[int, str, bool]]) -> None:
    """Random entries added to a run's own copy of the lower layers (where they fit)."""
    for n, (layer, rel, is_dir) in enumerate(entries):
        path = lowers[layer] / rel
        if any(p.exists() and not p.is_dir() for p in path.parents) or path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            path.mkdir()
        else:
            path.write_bytes(b"extra %d\n" % n)


class CloneModel(RuleBasedStateMachine):
    def __init__(self, lowers: list[Path], base: Path) -> None:
        super().__init__()
        self.base = base
        base.mkdir(parents=True)
        self.lowers = [base / "l1", base / "l2"]
        for src, dst in zip(lowers, self.lowers, strict=True):
            subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)
        self.upper, self.work, self.mnt = base / "upper", base / "work", base / "mnt"
        self.stack: contextlib.ExitStack | None = None
        self.model: dict[str, Entry] = {}
        self.links: dict[str, int] = {}  # path -> its hard link group (linked files only)
        self.groups = itertools.count()

    @initialize(entries=extra_entries)
    def start(self, entries: list[tuple[int, str, bool]]) -> None:
        """A random lower tree (the fixed one plus random entries), mounted."""
        add_entries(self.lowers, entries)
        self.mount()
        self.model = read_tree(self.mnt)

    # -- mounting ------------------------------------------------------------
    def mount(self) -> None:
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(
            overlay_mount("overlayboot", self.lowers, self.upper, self.work, self.mnt)
        )

    def umount(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            stack.close()

    # -- picking -------------------------------------------------------------
    def pick(self, i: int, kind: str | None = None) -> str | None:
        keys = sorted(k for k, v in self.model.items() if kind is None or v[0] == kind)
        return keys[i % len(keys)] if keys else None

    def pick_dir(self, i: int) -> str:
        keys = [".", *sorted(k for k, v in self.model.items() if v[0] == "d")]
        return keys[i % len(keys)]

    def m(self, rel: str) -> str:
        return os.path.join(self.mnt, rel)

    def new_path(self, d: int, name: str) -> str:
        parent = self.pick_dir(d)
        return name if parent == "." else f"{parent}/{name}"

    def names_of(self, path: str) -> list[str]:
        """``path`` and its hard links."""
        group = self.links.get(path)
        return [path] if group is None else [k for k, g in self.links.items() if g == group]

    def set_file(self, path: str, entry: Entry) -> None:
        for name in self.names_of(path):
            self.model[name] = entry

    # -- rules ---------------------------------------------------------------
    @rule(src=index, d=index, name=names)
    def clone(self, src: int, d: int, name: str) -> None:
        s = self.pick(src)
        if s is None:
            return
        dst = self.new_path(d, name)
        if dst in self.model:
            with pytest.raises(CloneError, match="exists"):
                clone(self.m(s), self.m(dst))
            return
        clone(self.m(s), self.m(dst))
        prefix = s + "/"
        copied = {dst: self.model[s]}
        for k, v in self.model.items():
            if k.startswith(prefix):
                copied[dst + "/" + k[len(prefix) :]] = v
        self.model.update(copied)
        # cp -a keeps hard links among what it copies, as new groups of their own
        renumber: dict[int, int] = {}
        for k in [s, *(k for k in list(self.links) if k.startswith(prefix))]:
            if k in self.links:
                group = renumber.setdefault(self.links[k], next(self.groups))
                self.links[dst + k[len(s) :]] = group

    @rule(f=index, offset=offsets, buf=data)
    def write(self, f: int, offset: int, buf: bytes) -> None:
        path = self.pick(f, "f")
        if path is None:
            return
        fd = os.open(self.m(path), os.O_WRONLY)
        try:
            os.pwrite(fd, buf, offset)
        finally:
            os.close(fd)
        _, mode, old = self.model[path]
        assert isinstance(old, bytes)
        if buf:
            old = old.ljust(offset, b"\0")
            old = old[:offset] + buf + old[offset + len(buf) :]
        self.set_file(path, ("f", mode, old))

    @rule(f=index, size=st.sampled_from([0, 1, 100, 9000]))
    def truncate(self, f: int, size: int) -> None:
        path = self.pick(f, "f")
        if path is None:
            return
        os.truncate(self.m(path), size)
        _, mode, old = self.model[path]
        assert isinstance(old, bytes)
        self.set_file(path, ("f", mode, old[:size].ljust(size, b"\0")))

    @rule(d=index, name=names, buf=data)
    def create(self, d: int, name: str, buf: bytes) -> None:
        path = self.new_path(d, name)
        if path in self.model:
            return
        with open(self.m(path), "wb") as f:
            f.write(buf)
        self.model[path] = ("f", 0o644, buf)

    @rule(d=index, name=names)
    def mkdir(self, d: int, name: str) -> None:
        path = self.new_path(d, name)
        if path in self.model:
            return
        os.mkdir(self.m(path))
        self.model[path] = ("d", 0o755)

    @rule(f=index)
    def unlink(self, f: int) -> None:
        path = self.pick(f, "f")
        if path is None:
            return
        os.unlink(self.m(path))
        del self.model[path]
        self.links.pop(path, None)

    @rule(f=index, d=index, name=names)
    def link(self, f: int, d: int, name: str) -> None:
        path = self.pick(f, "f")
        if path is None:
            return
        new = self.new_path(d, name)
        if new in self.model:
            return
        try:
            os.link(self.m(path), self.m(new))
        except OSError as exc:
            assert exc.errno == errno.EXDEV  # into or out of a clone
            return
        self.links[new] = self.links.setdefault(path, next(self.groups))
        self.model[new] = self.model[path]

    @rule(f=index, name=names)
    def rename_in_dir(self, f: int, name: str) -> None:
        path = self.pick(f)
        if path is None:
            return
        parent = os.path.dirname(path)
        new = os.path.join(parent, name) if parent else name
        if new in self.model or new == path:
            return
        try:
            os.rename(self.m(path), self.m(new))
        except OSError as exc:
            assert exc.errno == errno.EXDEV  # a clone root moved out of its parent's clone
            return
        moved = {}
        for k in list(self.model):
            if k == path or k.startswith(path + "/"):
                moved[new + k[len(path) :]] = self.model.pop(k)
                if k in self.links:
                    self.links[new + k[len(path) :]] = self.links.pop(k)
        self.model.update(moved)

    @rule(f=index, mode=st.sampled_from([0o600, 0o755, 0o640]))
    def chmod(self, f: int, mode: int) -> None:
        path = self.pick(f, "f")
        if path is None:
            return
        os.chmod(self.m(path), mode)
        _, _, old = self.model[path]
        self.set_file(path, ("f", mode, old))

    @rule()
    def remount(self) -> None:
        if self.stack is None:
            return
        self.umount()
        self.mount()

    @invariant()
    def same_as_model(self) -> None:
        if self.stack is not None:
            assert read_tree(self.mnt) == self.model
            self.same_links(self.mnt)

    def same_links(self, root: Path) -> None:
        """Each hard link group is one file, and two groups are two files."""
        inos: dict[int, set[int]] = {}
        for path, group in self.links.items():
            inos.setdefault(group, set()).add(os.lstat(root / path).st_ino)
        assert all(len(v) == 1 for v in inos.values()), inos
        assert len({min(v) for v in inos.values()}) == len(inos), inos

    def teardown(self) -> None:
        try:
            self.umount()
            self.mount()
            assert read_tree(self.mnt) == self.model
            self.umount()
            seal_upper(self.upper)
            if have_kernel_overlay():
                assert kernel_view(self.lowers, self.upper, self.base) == self.model
            self.same_links(self.upper)
        finally:
            self.umount()


@pytest.mark.timeout(1800)
def test_clones_behave_as_copies(lowers: list[Path], tmp_path: Path) -> None:
    counter = itertools.count()

    class Run(CloneModel):
        def __init__(self) -> None:
            super().__init__(lowers, tmp_path / f"run{next(counter)}")

    run_state_machine_as_test(
        Run,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            # The same examples in every run: the cases random runs found are replayed
            # below as regressions, and a new random one must not turn CI red unseen;
            # OVERLAYBOOT_CLONE_RANDOM=1 explores (for development).
            derandomize=os.environ.get("OVERLAYBOOT_CLONE_RANDOM") != "1",
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            # OVERLAYBOOT_CLONE_NOSHRINK=1: report a failing example as found (fast)
            phases=[Phase.explicit, Phase.reuse, Phase.generate]
            if os.environ.get("OVERLAYBOOT_CLONE_NOSHRINK") == "1"
            else list(Phase),
        ),
    )


# Cases random runs found, replayed step by step as regressions (each failed before its fix):
# - seal-estale (2026-12-07 CI): after clones into clones of merged directories, `upper
#   seal` left an upper kernel overlayfs read with ESTALE (kmnt/p/n1/n0/n0): a clone made
#   inside a clone, under an opaque directory, kept its redirect to a lower directory
#   that kernel overlayfs also showed at its own place (cloneseal now finds nested roots);
# - upper-symlink (2026-12-07 CI): a clone of an upper symlink (lower t/ln renamed to
#   t/n0) opened the link and failed with ELOOP;
# - hardlink-unshared (random run, 2026-12-07): a hard link (t/s/n0) made to a shared
#   upper file (q/n0, shared with its clone s/n2/n0) gave that name a copy of its own,
#   and a listing of t/s then showed the new name with another inode number than q/n0
#   (the copy's upper inode; the node kept the shared one's). cow now keeps the number;
# - number-reused (random run, 2026-12-07, after that fix): the source's name of a shared
#   file got a copy at a hard link (s/s/t/n2 -> s/s/n1), the clone's name was unlinked
#   later, and a new file (t/s/n2) got the freed upper inode, so its number, and showed the
#   first file's node. The old number now leads to a new node once its name moved on.
Start = tuple[int, str, bool]
START: list[Start] = [
    (0, "s", True),
    (0, "t", True),
    (0, "p/t", True),
    (0, "q", False),
    (0, "q/t/t", False),
    (0, "p/p", True),
]
FOUND: dict[str, list[tuple[str, dict[str, object]]]] = {
    "seal-estale": [
        ("remount", dict()),
        ("mkdir", dict(d=4208, name="n0")),
        ("remount", dict()),
        ("mkdir", dict(d=768200, name="n0")),
        ("unlink", dict(f=262145)),
        ("clone", dict(d=2667, name="n1", src=87905)),
        ("create", dict(buf=b"", d=3641, name="n1")),
        ("clone", dict(d=721, name="n1", src=194)),
        ("clone", dict(d=17186, name="n1", src=5392)),
        ("create", dict(buf=b"", d=61, name="n0")),
        ("clone", dict(d=511, name="n1", src=453)),
        ("chmod", dict(f=36554, mode=384)),
        ("mkdir", dict(d=42245, name="n1")),
        ("chmod", dict(f=362879, mode=493)),
        ("clone", dict(d=6799, name="n0", src=46)),
        ("remount", dict()),
        ("remount", dict()),
        ("chmod", dict(f=223, mode=384)),
        ("unlink", dict(f=56)),
        ("clone", dict(d=3377, name="n0", src=35455)),
        ("write", dict(buf=b"z", f=65537, offset=0)),
        ("unlink", dict(f=10249)),
        ("create", dict(buf=b"new data\n", d=1926, name="n1")),
        ("clone", dict(d=523, name="n0", src=306226)),
    ],
    "upper-symlink": [
        ("remount", dict()),
        ("mkdir", dict(d=4208, name="n0")),
        ("remount", dict()),
        ("mkdir", dict(d=768200, name="n0")),
        ("rename_in_dir", dict(f=290, name="n0")),
        ("remount", dict()),
        ("remount", dict()),
        ("create", dict(buf=b"", d=8666, name="n0")),
        ("create", dict(buf=b"", d=0, name="n0")),
        ("chmod", dict(f=0, mode=384)),
        ("remount", dict()),
        ("remount", dict()),
        ("create", dict(buf=b"", d=139, name="n0")),
        ("remount", dict()),
        ("remount", dict()),
        ("remount", dict()),
        ("clone", dict(d=0, name="n1", src=0)),
        ("chmod", dict(f=0, mode=384)),
        ("clone", dict(d=0, name="n2", src=11150)),
    ],
    "hardlink-unshared": [
        ("chmod", dict(f=19692, mode=384)),
        ("create", dict(buf=b"", d=375, name="n0")),
        ("create", dict(buf=b"", d=1000000, name="n2")),
        ("remount", dict()),
        ("remount", dict()),
        ("chmod", dict(f=17701, mode=384)),
        ("chmod", dict(f=122465, mode=384)),
        ("link", dict(d=1226, f=0, name="n2")),
        ("rename_in_dir", dict(f=125798, name="n2")),
        ("create", dict(buf=b"", d=238765, name="n0")),
        ("create", dict(buf=b"", d=365, name="n1")),
        ("create", dict(buf=b"", d=758, name="n0")),
        ("unlink", dict(f=31086)),
        ("truncate", dict(f=2331, size=100)),
        ("rename_in_dir", dict(f=905, name="n0")),
        ("remount", dict()),
        ("clone", dict(d=511, name="n0", src=156029)),
        ("create", dict(buf=b"", d=186, name="n2")),
        ("unlink", dict(f=112)),
        ("chmod", dict(f=10930, mode=384)),
        ("chmod", dict(f=282813, mode=384)),
        ("rename_in_dir", dict(f=77739, name="n2")),
        ("unlink", dict(f=3466)),
        ("chmod", dict(f=651, mode=384)),
        ("truncate", dict(f=708, size=9000)),
        ("unlink", dict(f=2447)),
        ("remount", dict()),
        ("remount", dict()),
        ("truncate", dict(f=91609, size=1)),
        ("remount", dict()),
        ("rename_in_dir", dict(f=5646, name="n1")),
        ("link", dict(d=257, f=570449, name="n0")),
        ("truncate", dict(f=310, size=1)),
        ("link", dict(d=257, f=570449, name="n0")),
        ("clone", dict(d=1000000, name="n0", src=1643)),
        ("clone", dict(d=53273, name="n2", src=169314)),
        ("remount", dict()),
        ("remount", dict()),
        ("clone", dict(d=313, name="n2", src=22)),
        ("unlink", dict(f=758)),
        ("rename_in_dir", dict(f=7211, name="n0")),
        ("truncate", dict(f=242, size=1)),
        ("rename_in_dir", dict(f=22560, name="n1")),
        ("chmod", dict(f=775324, mode=384)),
        ("rename_in_dir", dict(f=129, name="n0")),
        ("link", dict(d=38524, f=358, name="n0")),
    ],
    "number-reused": [
        ("clone", dict(d=1532, name="n1", src=1533)),
        ("truncate", dict(f=357, size=9000)),
        ("remount", dict()),
        ("link", dict(d=2048, f=70929, name="n1")),
        ("remount", dict()),
        ("link", dict(d=174, f=10486, name="n1")),
        ("truncate", dict(f=164452, size=9000)),
        ("chmod", dict(f=654, mode=416)),
        ("clone", dict(d=866156, name="n2", src=8102)),
        ("write", dict(buf=b"\x01" * 5000, f=611, offset=0)),
        ("rename_in_dir", dict(f=1184, name="n0")),
        ("unlink", dict(f=99)),
        ("unlink", dict(f=7150)),
        ("create", dict(buf=b"", d=344, name="n2")),
        ("clone", dict(d=1052, name="n1", src=928)),
        ("create", dict(buf=b"z", d=754, name="n2")),
        ("chmod", dict(f=426, mode=416)),
        ("clone", dict(d=646890, name="n2", src=17932)),
        ("unlink", dict(f=446)),
        ("link", dict(d=6170, f=99, name="n1")),
        ("rename_in_dir", dict(f=4096, name="n0")),
        ("write", dict(buf=b"z", f=788, offset=4096)),
        ("mkdir", dict(d=7113, name="n0")),
        ("write", dict(buf=b"", f=1024, offset=0)),
        ("create", dict(buf=b"new data\n", d=728613, name="n1")),
        ("write", dict(buf=b"z", f=23524, offset=3)),
        ("chmod", dict(f=69724, mode=493)),
        ("write", dict(buf=b"z", f=24676, offset=0)),
        ("write", dict(buf=b"\x01" * 5000, f=181, offset=4096)),
        ("write", dict(buf=b"\x01" * 5000, f=1, offset=3)),
        ("create", dict(buf=b"new data\n", d=242703, name="n1")),
        ("link", dict(d=82997, f=327, name="n1")),
        ("clone", dict(d=112984, name="n1", src=375)),
        ("chmod", dict(f=164591, mode=493)),
        ("unlink", dict(f=17369)),
        ("link", dict(d=9795, f=2578, name="n1")),
        ("link", dict(d=88, f=55018, name="n2")),
        ("link", dict(d=369, f=97861, name="n1")),
        ("unlink", dict(f=4063)),
        ("create", dict(buf=b"", d=13, name="n2")),
    ],
}
# the lower entries a case starts with, where not START
STARTS = {
    "number-reused": [(1, "s/s/t", True), (0, "s", True), (0, "q/t/p", True)],
    "hardlink-unshared": [(0, "s/t/t", False), (0, "t", False), (0, "q/t/t", True), (0, "p", True)],
}


def _replay(
    machine: CloneModel, steps: list[tuple[str, dict[str, object]]], start: list[Start]
) -> None:
    machine.start(entries=start)
    machine.same_as_model()
    for rule_name, kwargs in steps:
        getattr(machine, rule_name)(**kwargs)
        machine.same_as_model()
    machine.teardown()


@pytest.mark.parametrize("case", sorted(FOUND))
def test_found_cases_now_pass(case: str, lowers: list[Path], tmp_path: Path) -> None:
    machine = CloneModel(lowers, tmp_path / "run")
    try:
        _replay(machine, FOUND[case], STARTS.get(case, START))
    finally:
        machine.umount()
