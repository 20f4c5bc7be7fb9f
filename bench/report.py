"""Summaries of the samples: medians, spreads, ratios; the printed table and the JSON record."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.workloads import Kind, Metric

OURS = "overlayboot"
COMPARED = ("kernel", "fuse-overlayfs", "raw")
SHORT = {"kernel": "kernel", "fuse-overlayfs": "fuse-ovl", "raw": "raw", "overlayboot": "ovlboot"}


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the repetitions were."""
        return (self.high - self.low) / self.median if self.median else 0.0

    def as_json(self) -> dict[str, float | int]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "spread": self.spread,
            "n": self.n,
        }


def summarize(values: list[float]) -> Summary | None:
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), len(values))


def speed_ratio(metric: Metric, ours: Summary | None, other: Summary | None) -> float | None:
    """overlayboot's speed relative to ``other`` (1.0 = same, 0.5 = takes twice as long)."""
    if ours is None or other is None or metric.kind is Kind.SIZE:
        return None
    if not ours.median or not other.median:
        return None
    if metric.kind is Kind.RATE:
        return ours.median / other.median
    return other.median / ours.median


def fmt_value(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_cell(s: Summary | None) -> str:
    if s is None:
        return "-"
    return f"{fmt_value(s.median)} ±{s.spread * 100:.0f}%"


def table(
    metrics: list[Metric],
    summaries: dict[str, dict[str, Summary | None]],
    systems: list[str],
    header: list[str],
) -> str:
    """The printed table: medians per system, then overlayboot's speed ratios."""
    compared = [c for c in COMPARED if c in systems and OURS in systems]
    cols = ["workload", "unit", *systems] + [f"ob/{SHORT[c]}" for c in compared]
    rows: list[list[str]] = []
    for m in metrics:
        row = [m.title, m.kind.value]
        row += [fmt_cell(summaries[m.key].get(s)) for s in systems]
        for c in compared:
            r = speed_ratio(m, summaries[m.key].get(OURS), summaries[m.key].get(c))
            row.append(f"{r:.2f}" if r is not None else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [*header, "", line(cols), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def partial_copy_up_notes(summaries: dict[str, dict[str, Summary | None]]) -> list[str]:
    """The partial copy-up targets: copy-ups >= 100x faster than kernel overlayfs' whole
    copy, the upper growing by at most a chunk, reads of a partly copied-up file within
    1.2x of an untouched one."""
    out: list[str] = []

    def med(key: str, system: str) -> float | None:
        s = summaries.get(key, {}).get(system)
        return s.median if s is not None else None

    for key, what in (("copyup", "append 1 B"), ("rewrite4k", "rewrite 4 KiB")):
        ours, kernel = med(key, OURS), med(key, "kernel")
        grew = med(f"{key}_grew", OURS)
        if ours and kernel and grew is not None:
            out.append(
                f"partial copy-up, {what}: {kernel / ours:.0f}x faster than kernel overlayfs "
                f"(target >= 100x); upper grew {grew * 1024:.0f} KiB (target <= 64 KiB + map)"
            )
    for label in ("cold", "warm"):
        part, whole = med(f"seqread_partial_{label}", OURS), med(f"seqread_{label}", OURS)
        if part and whole:
            out.append(
                f"partial copy-up, seq read {label}: the 1/16-rewritten file at "
                f"{part / whole:.2f}x the speed of the untouched one (target >= 0.83, "
                "i.e. within 1.2x)"
            )
    return out
