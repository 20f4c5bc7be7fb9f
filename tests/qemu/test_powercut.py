"""A root you can trust after power cuts: 20 cuts at random moments of a write-heavy workload.

The default busybox test image boots on a persistence partition; the guest runs a
seeded random mix of creates, whole replacements, appends, deletes, block writes into
large lower files (partial copy-ups), renames of lower directories and fsyncs, and
QEMU is killed (the power cut) after a random operation. After each cut the host
checks the partition (tests/qemu/powercut.py) and judges every object
(tests/qemu/powercut_model.py): one of its whole versions, none older than its last
fsync. The next boot is the check boot of this cut (it must reach the live root's
shell and read what the host read) and the workload boot of the next one.

``OVERLAYBOOT_POWERCUT_SEED`` replays a run (the seed is printed; the moment of each cut
is the same operation and delay, the guest's timing is not bit-exact);
``OVERLAYBOOT_POWERCUT_CUTS`` sets the number of cuts (default 20).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.harness import BootTimeout
from tests.qemu.media import ext4_image
from tests.qemu.powercut import (
    LABEL,
    UPPER_PARAM,
    Console,
    Medium,
    boot,
    build_medium,
    check_partition,
    loop_mount,
    ops_disk,
    run_workload,
)
from tests.qemu.powercut_model import (
    Observed,
    Round,
    Verdict,
    observe,
    plan,
    state_problems,
    verdict,
)

pytestmark = [pytest.mark.qemu, pytest.mark.powercut, pytest.mark.slow, pytest.mark.timeout(1800)]

CUTS = int(os.environ.get("OVERLAYBOOT_POWERCUT_CUTS", "20"))
OPS = 400  # per round: more than run before the latest cut
CUT_AFTER = (2, 100)  # the operation after which the power goes, drawn from this range
CUT_DELAY = 0.25  # at most this many seconds later


@dataclass
class Cut:
    """One cut and what the checks found (the next boot may add to ``problems``)."""

    k: int
    said: Console
    fsck: str
    problems: list[str]
    unflushed: list[str]  # not-fsynced data not on disk: zeros, or empty after a rename


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Medium:
    return build_medium(tmp_path_factory.mktemp("cut-medium"))


def _seed() -> int:
    given = os.environ.get("OVERLAYBOOT_POWERCUT_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 32)


def _one_boot(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Medium, rw: Path, rnd: Round,
    cut: tuple[int, float] | None,
) -> Console:  # fmt: skip
    """One boot on ``rw`` running ``rnd``: what the guest said."""
    ops = ops_disk(rw.with_name("ops.img"), rnd.script())
    with boot(kernel, initramfs, medium, UPPER_PARAM, rw=rw, ops=ops) as vm:
        return run_workload(vm, *(cut or (None, 0.0)))


RESULTS = Path(os.environ.get("OVERLAYBOOT_RESULTS", "build/results"))


def _summary(cuts: list[Cut], seed: int, started: float) -> str:
    clean = sum(1 for c in cuts if not c.problems)
    tails = sum(len(c.unflushed) for c in cuts)
    lines = [
        f"power cuts: {len(cuts)} cuts, {clean} clean (seed {seed}, "
        f"{time.monotonic() - started:.0f} s; {tails} not-fsynced writes seen as zeros or empty)"
    ]
    for c in cuts:
        what = (
            "clean"
            if not c.problems
            else f"{len(c.problems)} problems: " + "; ".join(c.problems[:6])
        )
        lines.append(
            f"  cut {c.k}: shell at {c.said.up_at:.0f} s, cut after op {c.said.last_op} "
            f"({c.said.ran_for:.1f} s of workload, {len(c.said.fsynced)} fsyncs reported), "
            f"fsck: {c.fsck}, {len(c.unflushed)} unflushed: {what}"
        )
    return "\n".join(lines)


def test_power_cuts_leave_every_fsynced_file_and_no_torn_one(
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    medium: Medium,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed, started = _seed(), time.monotonic()
    with capsys.disabled():
        print(f"\npower cuts: seed {seed} (OVERLAYBOOT_POWERCUT_SEED={seed} replays it)")
    rng = random.Random(seed)
    rw = ext4_image(tmp_path / "rw.img", size="128M", label=LABEL)
    cuts: list[Cut] = []
    seen: Observed = observe(medium.root)
    with loop_mount(medium.squashfs, tmp_path / "lower") as lower:
        for k in range(CUTS + 1):
            last = k == CUTS  # the last boot only checks the last cut, and powers off
            rnd = plan(seen, rng, 0 if last else OPS)
            cut = None if last else (rng.randrange(*CUT_AFTER), rng.uniform(0, CUT_DELAY))
            try:
                said = _one_boot(kernel, initramfs, medium, rw, rnd, cut)
            except BootTimeout as exc:
                if not cuts:
                    raise
                said_lines = f"the next boot failed: {exc}".splitlines()
                cuts[-1].problems.append(" / ".join(said_lines[:1] + said_lines[-8:]))
                break
            if cuts:
                cuts[-1].problems += state_problems(said.state, seen.wholes)
            if last:
                break
            check = check_partition(rw, lower, tmp_path)
            problems = [*check.problems, *(f"failed in the guest: {f}" for f in said.failed)]
            judged = verdict(rnd, check.seen, said.fsynced) if check.seen else Verdict([], [])
            cuts.append(Cut(k, said, check.fsck, problems + judged.problems, judged.unflushed))
            if check.seen is None:
                break  # nothing to plan the next round on
            seen = check.seen
    summary = _summary(cuts, seed, started)
    with capsys.disabled():
        print(summary)
    # under pytest-xdist a worker's output is not shown: .ci/run prints this file
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "powercut.txt").write_text(summary + "\n")
    assert len(cuts) == CUTS and all(not c.problems for c in cuts), summary
