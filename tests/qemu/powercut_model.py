"""What a power cut may leave behind: the workload's plan and the verdict on what survived.

Pure logic, no VM: the host plans each round's operations (a seeded random mix of
creates, whole replacements through a temporary name, appends, deletes, block writes
into large lower files, renames of lower directories, fsyncs), knows every version
each *object* goes through, and judges what it finds after the cut.

An object is one thing that must change atomically: a small file's whole content
(``f:PATH``), one 4 KiB block of a large file (``b:PATH:N``), or where a renamed lower
directory is and what it holds (``d:K``). Its history in a round starts with what the
host observed before the round (the baseline) and adds one value per step of an
operation. After the cut each object must hold one of its versions (nothing torn, no
mix of two), and none older than the last one the guest reported fsynced.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

BLOCK = 4096
BIG_SIZE = 2 * 1024 * 1024  # > 1 MiB: the daemon copies these up chunk by chunk
BIG_FILES = ("/big/b0", "/big/b1", "/big/b2")
DATA_FILES = tuple(f"/data/f{i}" for i in range(12))
NEW_FILES = tuple(f"/new/n{i}" for i in range(10))
TREE_DIRS = 4
SMALL_PATTERNS = 16  # /pat/sN: whole contents of small files
RECORDS = 16  # /pat/rN: appended records
BLOCK_PATTERNS = 8  # /pat/kN: 64 KiB, 16 distinct 4 KiB blocks each
ABSENT = "absent"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _fill(text: str, size: int) -> bytes:
    return (text * (size // len(text) + 1)).encode()[:size]


def small_pattern(n: int) -> bytes:
    return _fill(f"small pattern {n} ", 97 + 211 * n)


def record(n: int) -> bytes:
    return _fill(f"record {n} ", 63) + b"\n"


def block_pattern(n: int) -> bytes:
    return b"".join(_fill(f"k{n}.{j} ", BLOCK) for j in range(16))


def big_lower(i: int) -> bytes:
    return b"".join(_fill(f"lower b{i} block {j} ", BLOCK) for j in range(BIG_SIZE // BLOCK))


def data_lower(i: int) -> bytes:
    return f"old-{i}\n".encode() * 1000


def tree_files(k: int) -> dict[str, bytes]:
    """The files of lower directory /tree/dK, relative to it."""
    return {"id": f"{k}\n".encode(), "a": _fill(f"a{k} ", 300), "sub/c": _fill(f"c{k} ", 5000)}


def tree_digest(files: Mapping[str, bytes]) -> str:
    return md5("".join(f"{p}={md5(files[p])};" for p in sorted(files)).encode())


def tree_value(names: Iterable[tuple[str, str]]) -> str:
    """The value of a ``d:K`` object: every (name, content digest) it shows up under."""
    return ";".join(f"{n}={d}" for n, d in sorted(names))


@dataclass(frozen=True)
class Observed:
    """The tracked part of a merged tree: object values and every file's bytes."""

    values: Mapping[str, str]
    files: Mapping[str, bytes]  # every file of /data /new /big (to plan the next round on)
    wholes: Mapping[str, str]  # md5 of every regular file, by path (compared with the guest)


@dataclass(frozen=True)
class Op:
    """One line of the guest workload and what it does to the objects, in order."""

    idx: int
    line: str
    steps: tuple[tuple[str, str], ...]
    syncs: tuple[str, ...] = ()  # objects durable once the guest reports this op
    expect: str = ""  # what the guest must report after an fsync (its view, live)
    renamed: tuple[str, ...] = ()  # objects given a new inode by a rename (its data unsynced)


@dataclass(frozen=True)
class Round:
    baseline: Observed
    ops: tuple[Op, ...]
    contents: Mapping[str, bytes]  # every small file's version, by its md5

    def script(self) -> bytes:
        """The guest's input: one operation a line, then ``end``."""
        return "".join(f"{op.line}\n" for op in self.ops).encode() + b"end\n"


TREE_DIGESTS = tuple(tree_digest(tree_files(k)) for k in range(TREE_DIRS))


def lower_files() -> dict[str, bytes]:
    """Every tracked file of the lower tree, by path (the test image holds them)."""
    files = {p: data_lower(i) for i, p in enumerate(DATA_FILES)}
    files |= {p: big_lower(i) for i, p in enumerate(BIG_FILES)}
    for k in range(TREE_DIRS):
        files |= {f"/tree/d{k}/{rel}": data for rel, data in tree_files(k).items()}
    return files


def pattern_files() -> dict[str, bytes]:
    """The patterns every write copies from (/pat in the image): one write each."""
    files = {f"/pat/s{n}": small_pattern(n) for n in range(SMALL_PATTERNS)}
    files |= {f"/pat/r{n}": record(n) for n in range(RECORDS)}
    return files | {f"/pat/k{n}": block_pattern(n) for n in range(BLOCK_PATTERNS)}


class _Planner:
    """Plans one round from the baseline; mutable while planning, the result is a Round."""

    def __init__(self, rng: random.Random, seen: Observed) -> None:
        self.rng = rng
        self.small: dict[str, bytes | None] = {
            p: data for p, data in seen.files.items() if not p.startswith("/big/")
        }
        self.contents = {md5(data): data for data in self.small.values() if data is not None}
        self.big = {p: bytearray(seen.files.get(p, b"")) for p in BIG_FILES}
        self.tree: dict[int, str] = {}
        for k in range(TREE_DIRS):
            names = [n.partition("=")[0] for n in seen.values.get(f"d:{k}", "").split(";")]
            self.tree[k] = names[0] if names and names[0] else f"d{k}"
        self.ops: list[Op] = []

    def add(
        self, verb: str, args: str, steps: list[tuple[str, str]], renamed: tuple[str, ...] = ()
    ) -> None:
        idx = len(self.ops)
        self.ops.append(Op(idx, f"{verb} {idx} {args}", tuple(steps), renamed=renamed))

    def set_small(self, path: str, data: bytes | None) -> tuple[str, str]:
        self.small[path] = data
        if data is None:
            return (f"f:{path}", ABSENT)
        self.contents[md5(data)] = data
        return (f"f:{path}", md5(data))

    def small_path(self) -> str:
        return self.rng.choice(DATA_FILES + NEW_FILES)

    def put(self) -> None:
        path, n = self.small_path(), self.rng.randrange(SMALL_PATTERNS)
        steps = [self.set_small(path, b""), self.set_small(path, small_pattern(n))]
        self.add("put", f"{path} s{n}", steps)

    def replace(self) -> None:
        """A new content under a temporary name, then renamed over the file."""
        path, n = self.small_path(), self.rng.randrange(SMALL_PATTERNS)
        tmp, data = path + ".tmp", small_pattern(n)
        steps = [self.set_small(tmp, b""), self.set_small(tmp, data)]
        steps += [self.set_small(path, data), self.set_small(tmp, None)]
        self.add("rep", f"{path} s{n}", steps, renamed=(f"f:{path}",))

    def append(self) -> None:
        path, n = self.small_path(), self.rng.randrange(RECORDS)
        old = self.small.get(path)
        steps = [] if old is not None else [self.set_small(path, b"")]
        steps.append(self.set_small(path, (old or b"") + record(n)))
        self.add("app", f"{path} r{n}", steps)

    def delete(self) -> None:
        path = self.small_path()
        self.add("rm", path, [self.set_small(path, None)])

    def blocks(self) -> None:
        """4 KiB or 64 KiB of a pattern into a large lower file: a partial copy-up."""
        path, n = self.rng.choice(BIG_FILES), self.rng.randrange(BLOCK_PATTERNS)
        count = self.rng.choice((1, 1, 16))
        start = self.rng.randrange(BIG_SIZE // BLOCK - count + 1)
        pattern, steps = block_pattern(n), []
        for j in range(count):
            data = pattern[j * BLOCK : (j + 1) * BLOCK]
            self.big[path][(start + j) * BLOCK : (start + j + 1) * BLOCK] = data
            steps.append((f"b:{path}:{start + j}", md5(data)))
        self.add("blk", f"{path} k{n} {count} {start}", steps)

    def rename(self) -> None:
        """A lower directory (or one renamed before) under a new name in /tree."""
        k = self.rng.randrange(TREE_DIRS)
        old, new = self.tree[k], f"d{k}.{len(self.ops)}"
        if new == old:  # renamed by the same op of an earlier round
            new += "x"
        self.tree[k] = new
        self.add(
            "mv", f"/tree/{old} /tree/{new}", [(f"d:{k}", tree_value([(new, TREE_DIGESTS[k])]))]
        )

    def sync(self) -> None:
        """fsync a file (or /tree) and its directory; the guest then reports what it saw."""
        kind, idx = self.rng.choice(("small", "small", "big", "tree")), len(self.ops)
        syncs: tuple[str, ...]
        if kind == "small":
            path = self.small_path()
            data = self.small.get(path)
            expect, syncs = ABSENT if data is None else md5(data), (f"f:{path}",)
        elif kind == "big":
            path = self.rng.choice(BIG_FILES)
            expect = md5(bytes(self.big[path]))
            syncs = tuple(f"b:{path}:{i}" for i in range(BIG_SIZE // BLOCK))
        else:
            path, expect = "/tree", " ".join(sorted(self.tree.values()))
            syncs = tuple(f"d:{k}" for k in range(TREE_DIRS))
        self.ops.append(Op(idx, f"sync {idx} {path}", (), syncs, expect))


WEIGHTS = {"put": 14, "replace": 10, "append": 20, "delete": 8, "blocks": 25, "rename": 7,
           "sync": 16}  # fmt: skip


def plan(seen: Observed, rng: random.Random, n_ops: int) -> Round:
    """A round of ``n_ops`` random operations on the tree ``seen``."""
    planner = _Planner(rng, seen)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    for kind in rng.choices(kinds, weights, k=n_ops):
        getattr(planner, kind)()
    return Round(seen, tuple(planner.ops), planner.contents)


def _histories(rnd: Round) -> dict[str, list[tuple[int, str]]]:
    hist: dict[str, list[tuple[int, str]]] = {k: [(-1, v)] for k, v in rnd.baseline.values.items()}
    for op in rnd.ops:
        for key, value in op.steps:
            hist.setdefault(key, [(-1, ABSENT)]).append((op.idx, value))
    return hist


def _durable(rnd: Round, fsynced: Mapping[int, str]) -> dict[str, int]:
    """Each object's last op that the guest reported fsynced."""
    durable: dict[str, int] = {}
    for idx in sorted(fsynced):
        for key in rnd.ops[idx].syncs:
            durable[key] = idx
    return durable


@dataclass(frozen=True)
class Verdict:
    problems: list[str]  # a report that differed from the plan, a torn or unknown version,
    # a version older than the last fsync
    unflushed: list[str]  # not-fsynced data that did not reach the disk: zeros where a file
    # grew, or a file renamed into place that reads empty (or as zeros)


def zero_extended(got: bytes, allowed: Iterable[str], contents: Mapping[str, bytes]) -> bool:
    """``got`` is a version whose growth reached the disk but not its data: the length of
    one allowed version, an earlier allowed version (a prefix of it) then zeros.

    ext4's data=ordered orders the data of newly allocated blocks only: a write that
    extends a file inside its last, already allocated block commits the new size without
    waiting for the data. That is the upper filesystem's ordering, not the daemon's."""
    versions = [contents[v] for v in allowed if v in contents]
    for new in versions:
        if len(new) != len(got):
            continue
        for old in versions:
            k = len(old)
            if k < len(new) and new[:k] == old == got[:k] and not got[k:].strip(b"\0"):
                return True
    return False


def unflushed_rename(got: bytes, allowed: Iterable[str], contents: Mapping[str, bytes]) -> bool:
    """``got`` is a file renamed into place whose data never reached the disk: empty, or
    zeros to the length of an allowed version.

    ext4 allocates a new file's blocks at writeback (delayed allocation); a rename
    commits at once, and flushes the renamed file's data first only when it replaces an
    existing name (auto_da_alloc). A rename to a new name can reach the disk before the
    data written under the temporary name, the same under kernel overlayfs; a program
    that needs the data makes it durable with fsync."""
    if got.strip(b"\0"):
        return False
    return not got or any(len(contents[v]) == len(got) for v in allowed if v in contents)


def verdict(rnd: Round, seen: Observed, fsynced: Mapping[int, str]) -> Verdict:
    """What is wrong after a cut, and which files showed unflushed data."""
    problems = [
        f"op {idx} ({rnd.ops[idx].line}): the guest saw {got}, planned {rnd.ops[idx].expect}"
        for idx, got in sorted(fsynced.items())
        if got != rnd.ops[idx].expect
    ]
    unflushed: list[str] = []
    hist, durable = _histories(rnd), _durable(rnd, fsynced)
    for key in sorted(hist.keys() | seen.values.keys()):
        versions = hist.get(key, [(-1, ABSENT)])
        got = seen.values.get(key, ABSENT)
        last_sync = durable.get(key, -1)
        start = max(i for i, (idx, _) in enumerate(versions) if idx <= last_sync)
        allowed = [v for _, v in versions[start:]]
        if got in allowed:
            continue
        data = seen.files.get(key[2:]) if key.startswith("f:") else None
        renamed = any(op.idx > last_sync and key in op.renamed for op in rnd.ops)
        if data is not None and (
            zero_extended(data, allowed, rnd.contents)
            or (renamed and unflushed_rename(data, allowed, rnd.contents))
        ):
            unflushed.append(key)
            continue
        why = f"fsynced at op {last_sync}" if last_sync >= 0 else "none fsynced"
        problems.append(f"{key}: {got} is none of its versions {allowed} ({why})")
    return Verdict(problems, unflushed)


def _small_and_big(root: Path, values: dict[str, str], files: dict[str, bytes]) -> None:
    for top in ("data", "new", "big"):
        for entry in sorted((root / top).iterdir()):
            path = f"/{top}/{entry.name}"
            if entry.is_symlink() or not entry.is_file():
                values[f"f:{path}"] = "not a regular file"
                continue
            data = files[path] = entry.read_bytes()
            if top != "big":
                values[f"f:{path}"] = md5(data)
                continue
            values[f"s:{path}"] = str(len(data))
            for i in range(0, len(data), BLOCK):
                values[f"b:{path}:{i // BLOCK}"] = md5(data[i : i + BLOCK])


def observe(root: Path) -> Observed:
    """The tracked objects of the tree at ``root`` (the image's tree, or a merged mount)."""
    values: dict[str, str] = {}
    files: dict[str, bytes] = {}
    _small_and_big(root, values, files)
    wholes = {path: md5(data) for path, data in files.items()}
    found: dict[str, list[tuple[str, str]]] = {}
    for entry in sorted((root / "tree").iterdir()):
        tree = {str(f.relative_to(entry)): f.read_bytes() for f in entry.rglob("*") if f.is_file()}
        wholes |= {f"/tree/{entry.name}/{rel}": md5(data) for rel, data in tree.items()}
        k = tree.get("id", b"?").decode(errors="replace").strip()
        found.setdefault(f"d:{k}", []).append((entry.name, tree_digest(tree)))
    values |= {key: tree_value(names) for key, names in found.items()}
    return Observed(values, files, wholes)


def state_problems(guest: Mapping[str, str], host: Mapping[str, str]) -> list[str]:
    """Where what the next boot read (md5 by path) differs from what the host read."""
    return [
        f"{p}: the next boot read {guest.get(p, 'no file')}, the host {host.get(p, 'no file')}"
        for p in sorted(guest.keys() | host.keys())
        if guest.get(p) != host.get(p)
    ]
