"""Timed build steps: ``[2/6] squashfs ... 1.2 s``, with a running clock on a terminal.

On a terminal a ticker thread rewrites the step's line every second while it runs (tools
that draw their own progress bar, mksquashfs, xorriso, get the terminal to themselves:
``ticker=False``); elsewhere one line per finished step.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Steps:
    """A numbered sequence of timed steps; ``times`` keeps (name, seconds)."""

    total: int
    out: TextIO = field(default_factory=lambda: sys.stdout)
    times: list[tuple[str, float]] = field(default_factory=list)

    @property
    def tty(self) -> bool:
        return self.out.isatty()

    @contextmanager
    def step(self, name: str, *, ticker: bool = True) -> Iterator[None]:
        """Time the block as the next step; print its line when it ends."""
        n = len(self.times) + 1
        head = f"[{n}/{self.total}] {name}"
        started = time.monotonic()
        stop = threading.Event()
        thread = None
        if self.tty:
            if ticker:
                thread = threading.Thread(target=self._tick, args=(head, started, stop))
                thread.daemon = True
                thread.start()
            else:
                print(f"{head} ...", file=self.out, flush=True)
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            seconds = time.monotonic() - started
            self.times.append((name, seconds))
            end = "\r\x1b[K" if self.tty and ticker else ""
            print(f"{end}{head}: {seconds:.1f} s", file=self.out, flush=True)

    def _tick(self, head: str, started: float, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            line = f"\r\x1b[K{head} ... {time.monotonic() - started:.0f} s"
            print(line, end="", file=self.out, flush=True)

    def summary(self) -> str:
        total = sum(s for _, s in self.times)
        parts = ", ".join(f"{name} {s:.1f}" for name, s in self.times)
        return f"total {total:.1f} s ({parts})"
