"""Network boot figures (issue 13): clients booted at once from one server, per lower.

``python -m bench.netboot [--storm 2,4,8] [--storm-lowers http-lazy,nfs-image] [--reps 1]
[--lock FILE]``
(``make bench-net``; root: it makes a network namespace, runs dnsmasq, nginx and
nfs-ganesha there and boots QEMU clients on taps of it, as tests/qemu/test_netboot.py does;
nothing leaves the namespace).

The root served is the tests' tiny busybox root with a 24 MiB file never read, plus Debian's
python3.11 and its standard library under /usr (bench/netpayload.py). Every lower serves
the same image: a local CD (no network: the baseline), an NFS tree, the image on NFS, the
image over HTTP fetched whole, and read lazily with range requests. Per client: boot time
(QEMU start to the root's first line), bytes the servers sent it by then (its tap's
counter), then ``/bin/netbench`` in the guest (``find /usr`` and a Python start importing a
dozen modules, cold then warm) and the bytes that took. Per group: the CPU seconds nginx and
nfs-ganesha used. Clients are 1 vCPU, TCG: booting N at once on a 2-core host shares the
host's CPUs N ways, so a storm's boot times measure the host, its bytes and server CPU
measure the server. Results: a table on stdout, all samples in bench/results/net-TIME.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from bench.netpayload import add_usr
from mkimage.cpio import Compression
from mkimage.initramfs import BuiltInitramfs, InitramfsSpec, build_initramfs
from mkimage.kernel import Kernel, fetch_kernel
from tests.net.clients import Served, client_config, fleet, make_served
from tests.net.netns import SERVER, SUBNET, Netns, netns
from tests.net.servers import Ganesha, Nginx, dnsmasq, ganesha, nginx
from tests.qemu.harness import BootTimeout, VmConfig
from tests.qemu.media import plain_iso

HERE = Path(__file__).resolve().parent
MEMORY_MIB = 384
# every wait of the boot (DHCP above all): N emulated CPUs on 2 host cores are slow
PATIENCE = ("overlayboot.timeout=120", "overlayboot.onerror=poweroff")
LOWERS: dict[str, tuple[str, ...]] = {
    "cd": (),
    "nfs-tree": (f"overlayboot.lower=nfs://{SERVER}/srv/tree",),
    "nfs-image": (f"overlayboot.lower=nfs://{SERVER}/srv/docroot/image.squashfs",),
    "http-whole": (f"overlayboot.lower=http://{SERVER}/image.squashfs",),
    "http-lazy": (f"overlayboot.lower=http://{SERVER}/image.squashfs", "overlayboot.lower.lazy"),
}


@dataclass(frozen=True)
class Sample:
    """One client of one group."""

    lower: str
    clients: int  # booted at once
    boot_s: float
    sent_boot: int  # bytes the servers sent it up to its root's first line
    sent_bench: int  # bytes sent during netbench
    find_cold_s: float
    prog_cold_s: float
    prog_warm_s: float
    find_warm_s: float
    usr_entries: int


@dataclass(frozen=True)
class Group:
    lower: str
    clients: int
    server_cpu_s: float  # nginx + nfs-ganesha, the whole group (boot and netbench)
    samples: tuple[Sample, ...]


@dataclass
class Lab:
    ns: Netns
    served: Served
    http: Nginx
    nfs: Ganesha
    iso: Path
    kernel: Kernel
    initramfs: BuiltInitramfs
    index: int = 0  # the next client's number (its MAC and tap)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (nginx: master and workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / tick


def server_cpu(lab: Lab) -> float:
    procs = [p for p in (lab.http.proc, lab.nfs.proc) if p is not None]
    return sum(cpu_seconds(p.pid) for p in procs)


@contextmanager
def lab(base: Path) -> Iterator[Lab]:
    """The servers in a namespace of their own, the image, its CD, a kernel and initramfs."""
    kernel = fetch_kernel()
    initramfs = build_initramfs(
        InitramfsSpec(kernel=kernel, compression=Compression.ZSTD), base / "initramfs.img"
    )
    served = make_served(base, fill=add_usr)
    (base / "iso" / "live").mkdir(parents=True)
    os.link(served.image, base / "iso" / "live" / "filesystem.squashfs")
    iso = plain_iso(base / "iso", base / "cd.iso")
    with (
        netns() as ns,
        dnsmasq(base / "dnsmasq", ns.name, SUBNET, SERVER),
        nginx(served.docroot, SERVER, 80, base / "nginx", ns.name) as http,
        ganesha(base, "/srv", SERVER, base / "ganesha", ns.name) as nfs,
    ):
        yield Lab(ns, served, http, nfs, iso, kernel, initramfs)


def config(lab: Lab, lower: str) -> VmConfig:
    lab.index += 1
    if lower == "cd":
        drive = ("-drive", f"file={lab.iso},media=cdrom,readonly=on,if=ide")
        return VmConfig(
            kernel=lab.kernel.image,
            initrd=lab.initramfs.path,
            append=PATIENCE,
            memory_mib=MEMORY_MIB,
            extra=drive,
        )
    return client_config(
        lab.kernel,
        lab.initramfs,
        lab.ns,
        lab.index,
        *PATIENCE,
        *LOWERS[lower],
        memory_mib=MEMORY_MIB,
    )


def sent(lab: Lab, taps: Sequence[str]) -> list[int]:
    return [lab.ns.sent_to(t) for t in taps] if taps else []


def group(lab: Lab, lower: str, n: int) -> Group:
    """``n`` clients of ``lower`` booted at once, then netbench on all at once."""
    configs = [config(lab, lower) for _ in range(n)]
    taps = lab.ns.taps[-n:] if lower != "cd" else []
    cpu0 = server_cpu(lab)
    with fleet(configs, timeout=180 + 60 * n) as guests:
        at_boot = sent(lab, taps) or [0] * n
        for g in guests:
            g.vm.send("netbench\n")
        lines = [g.vm.wait_for(r"^NETBENCH ", timeout=300 + 60 * n).text for g in guests]
        after = sent(lab, taps) or [0] * n
    samples = []
    for g, line, b0, b1 in zip(guests, lines, at_boot, after, strict=True):
        a, b, c, d, e, entries = (float(w) for w in line.split()[1:])
        samples.append(
            Sample(lower, n, g.first.at, b0, b1 - b0, b - a, c - b, d - c, e - d, int(entries))
        )
    return Group(lower, n, server_cpu(lab) - cpu0, tuple(samples))


def _med(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def table(groups: Sequence[Group]) -> str:
    rows = [
        "| lower | clients at once | boot to root, s | MB sent per client at boot | "
        "find /usr cold / warm, s | python start cold / warm, s | MB sent for those | "
        "server CPU s per client |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        s = g.samples
        mb = statistics.median(x.sent_boot for x in s) / 1e6
        bench_mb = statistics.median(x.sent_bench for x in s) / 1e6
        find = f"{_med([x.find_cold_s for x in s])} / {_med([x.find_warm_s for x in s])}"
        prog = f"{_med([x.prog_cold_s for x in s])} / {_med([x.prog_warm_s for x in s])}"
        rows.append(
            f"| {g.lower} | {g.clients} | {_med([x.boot_s for x in s])} | {mb:.2f} | {find} | "
            f"{prog} | {bench_mb:.2f} | {g.server_cpu_s / g.clients:.2f} |"
        )
    return "\n".join(rows)


def plan(
    lowers: Sequence[str], storm: Sequence[int], storm_lowers: Sequence[str], reps: int
) -> list[tuple[str, int]]:
    """(lower, clients) in the order run: singles, repeated, then the storms, smallest first."""
    singles = [(lower, 1) for _ in range(reps) for lower in lowers]
    storms = [(lower, n) for n in storm for lower in storm_lowers]
    return singles + storms


@contextmanager
def held(lock: Path | None) -> Iterator[None]:
    """``lock`` flocked (a machine shared with other QEMU runs), if given."""
    if lock is None:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def save(groups: Sequence[Group], failed: Sequence[str], path: Path, seconds: float) -> None:
    """Every sample so far (rewritten after each group: an interrupted run keeps them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "when": path.stem.removeprefix("net-"),
        "seconds": round(seconds),
        "memory_mib": MEMORY_MIB,
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "groups": [asdict(g) for g in groups],
        "failed": list(failed),
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--lowers", default=",".join(LOWERS), show_default=True, help="Single boots.")
@click.option("--storm", default="2,4,8", show_default=True, help="Clients booted at once.")
@click.option("--storm-lowers", default="http-lazy,nfs-image", show_default=True)
@click.option("--reps", type=int, default=1, show_default=True, help="Single boots per lower.")
@click.option("--dir", "base", type=click.Path(path_type=Path), default="/var/tmp/ob-netbench")
@click.option("--results", type=click.Path(path_type=Path), default=HERE / "results")
@click.option("--lock", type=click.Path(path_type=Path), help="flock this file around each group.")
def main(
    lowers: str, storm: str, storm_lowers: str, reps: int, base: Path, results: Path, lock: Path
) -> None:
    """Boot time, bytes sent and server CPU of network boot clients, per lower."""
    if os.geteuid() != 0:
        sys.exit("bench.netboot: must run as root (netns, servers, taps)")
    chosen, stormers = _csv(lowers), _csv(storm_lowers)
    unknown = sorted(set(chosen + stormers) - set(LOWERS))
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {list(LOWERS)}")
    sizes = [int(n) for n in _csv(storm)]
    start = time.monotonic()
    path = results / f"net-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    groups: list[Group] = []
    failed: list[str] = []
    with ExitStack() as stack:
        if base.exists():
            shutil.rmtree(base)
        the_lab = stack.enter_context(lab(base))
        for lower, n in plan(chosen, sizes, stormers, reps):
            print(f"bench.netboot: {n} x {lower} ...", file=sys.stderr, flush=True)
            try:
                with held(lock):
                    groups.append(group(the_lab, lower, n))
            except BootTimeout as exc:  # one client did not come up: said, and the run goes on
                lines = str(exc).splitlines()
                why = next((x for x in lines if "ERROR:" in x), lines[-1]).strip()
                failed.append(f"{n} x {lower}: {why}")
                print(f"bench.netboot: FAILED {failed[-1]}", file=sys.stderr, flush=True)
            else:
                print(table(groups[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            save(groups, failed, path, time.monotonic() - start)
    print(table(groups))
    print("".join(f"\nfailed: {f}" for f in failed))
    print(f"\nall samples: {path}")


if __name__ == "__main__":
    main()
