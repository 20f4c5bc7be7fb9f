"""The power-cut judge itself, without a VM: the guest workload run on the host (busybox sh,
chrooted into a copy of the test image's tree) must do what the plan says, and the
verdict must catch a torn block, an unknown file and a lost fsync."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from overlayboot.run import run
from tests.qemu.powercut import build_root
from tests.qemu.powercut_model import (
    ABSENT,
    Observed,
    Op,
    Round,
    Verdict,
    md5,
    observe,
    plan,
    small_pattern,
    verdict,
    zero_extended,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


def _run_round(root: Path, script: bytes) -> dict[int, str]:
    (root / "ops").write_bytes(script)
    out = run(["chroot", root, "/bin/sh", "/bin/ob-workload", "/ops"]).stdout.decode()
    assert "FAILED" not in out, out
    return {int(m[1]): m[2] for m in re.finditer(r"^FSYNCED (\d+) (.*)$", out, re.M)}


def _torn(seen: Observed, key: str) -> Observed:
    return Observed({**seen.values, key: "0" * 32}, seen.files, seen.wholes)


def test_workload_does_what_the_plan_says_and_the_verdict_catches_damage(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_root(root)
    rng = random.Random(7)
    seen = observe(root)
    for _ in range(2):  # the second round plans on the first one's result
        rnd = plan(seen, rng, 300)
        fsynced = _run_round(root, rnd.script())
        assert len(fsynced) > 20
        seen = observe(root)
        assert verdict(rnd, seen, fsynced) == Verdict([], [])
    kinds = {op.line.split()[0] for op in rnd.ops}
    assert kinds == {"put", "rep", "app", "rm", "blk", "mv", "sync"}
    # a torn block, a file from nowhere, and a fsynced file lost
    block = next(k for k in seen.values if k.startswith("b:"))
    assert any(block in p for p in verdict(rnd, _torn(seen, block), fsynced).problems)
    stray = Observed({**seen.values, "f:/new/stray": "1" * 32}, seen.files, seen.wholes)
    assert any("f:/new/stray" in p for p in verdict(rnd, stray, fsynced).problems)
    # a fsynced version lost: the object back at its baseline (not among its later versions)
    lost = [
        (key, base)
        for op in rnd.ops
        if op.idx in fsynced
        for key in op.syncs[:1]
        if key.startswith("f:")
        and (base := rnd.baseline.values.get(key, ABSENT)) != op.expect
        and all(v != base for o in rnd.ops[op.idx :] for k, v in o.steps if k == key)
    ]
    assert lost
    key, base = lost[0]
    old = Observed({**seen.values, key: base}, seen.files, seen.wholes)
    assert any(key in p and "fsynced at op" in p for p in verdict(rnd, old, fsynced).problems)


def test_a_zero_tail_is_only_a_growth_without_its_data() -> None:
    old, new = b"a" * 100, b"a" * 100 + b"r" * 64
    versions = {md5(old): old, md5(new): new}
    allowed = list(versions)
    assert zero_extended(old + b"\0" * 64, allowed, versions)
    assert not zero_extended(b"a" * 90 + b"\0" * 74, allowed, versions)  # old data lost
    assert not zero_extended(old + b"r" * 32 + b"\0" * 32, allowed, versions)  # torn
    assert not zero_extended(old + b"\0" * 64, [md5(new)], versions)  # old is before a fsync


def test_a_file_renamed_into_place_may_read_empty_until_fsynced() -> None:
    """CI's cut: ``cat > n8.tmp && mv n8.tmp n8`` onto a new name, cut before writeback:
    ext4 committed the rename, not the delayed data. Accepted and counted, unless the file
    was fsynced after the rename; an empty file nothing renamed stays a problem."""
    data, key = small_pattern(3), "f:/new/n8"
    steps: tuple[tuple[str, str], ...] = ((key + ".tmp", md5(b"")), (key + ".tmp", md5(data)))
    steps = (*steps, (key, md5(data)))
    steps = (*steps, (key + ".tmp", ABSENT))
    rep = Op(0, "rep 0 /new/n8 s3", steps, renamed=(key,))
    sync = Op(1, "sync 1 /new/n8", (), (key,), md5(data))
    empty = Observed({key: md5(b"")}, {"/new/n8": b""}, {})
    rnd = Round(Observed({}, {}, {}), (rep,), {md5(data): data, md5(b""): b""})
    assert verdict(rnd, empty, {}) == Verdict([], [key])
    zeros = Observed({key: md5(bytes(len(data)))}, {"/new/n8": bytes(len(data))}, {})
    assert verdict(rnd, zeros, {}) == Verdict([], [key])
    synced = Round(rnd.baseline, (rep, sync), rnd.contents)
    assert verdict(synced, empty, {1: md5(data)}).problems
    plain = Round(rnd.baseline, (Op(0, "x", ((key, md5(data)),)),), rnd.contents)
    assert verdict(plain, empty, {}).problems
