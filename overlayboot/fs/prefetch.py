"""Reading ahead in the lower file of a partial copy-up, beside the request loop.

A sequential read of a partial file reaches the daemon as 1 MiB READs, each answered from
the lower file (then the upper's runs). Squashfs reads its blocks synchronously, even in
readahead, so without help every request waits for the disk while the reader waits for
the daemon. A thread of its own asks the kernel (``POSIX_FADV_WILLNEED``) for the next
window of the lower file while the loop answers the current request: the next READ then
finds the lower's bytes in the page cache.

Advice only: a window asked for a file closed meanwhile (its fd number reused) costs some
I/O, never a wrong byte.
"""

from __future__ import annotations

import os
import queue
import threading

WINDOW = 4 << 20  # bytes kept asked for ahead of a sequential reader
STEP = 2 << 20  # asked for in pieces of this size


class Prefetcher:
    """One thread issuing ``posix_fadvise(WILLNEED)`` for the windows it is given."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def ahead(self, fd: int, off: int, length: int) -> None:
        """Have bytes [off, off + length) of ``fd`` read into the page cache, soon."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
            self._thread.start()
        self._queue.put((fd, off, length))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            fd, off, length = job
            try:
                os.posix_fadvise(fd, off, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # closed meanwhile, or a file that takes no advice

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class Sequential:
    """Where one open file's reader is: when it reads on from where it stopped, the next
    window is asked for."""

    __slots__ = ("asked", "next_off")

    def __init__(self) -> None:
        self.next_off = 0
        self.asked = 0  # asked for up to here

    def after_read(self, off: int, end: int, limit: int) -> tuple[int, int] | None:
        """The window to ask for after a read of [off, end) (None: not sequential, or
        asked already); ``limit``: the end of the lower's bytes."""
        sequential = off == self.next_off
        self.next_off = end
        if not sequential:
            self.asked = end
            return None
        start = max(self.asked, end)
        if start - end >= WINDOW - STEP or start >= limit:
            return None
        stop = min(limit, start + STEP)
        self.asked = stop
        return start, stop - start
