"""Detaching a helper of the boot (the lazy HTTP reader, the NBD client) once it is ready:
the shell hook that started it waits for its exit status, which says ready (0) or not (1);
the helper logs to a file of its own."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path


def detach() -> int:
    """Fork; the parent waits for the child's ``1`` on a pipe (ready) and exits 0, or 1 if
    the child ends first. Returns the pipe's write end, in the detached child."""
    rfd, wfd = os.pipe()
    if os.fork() > 0:
        os.close(wfd)
        ok = os.read(rfd, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return wfd


def ready(wfd: int | None) -> None:
    """Tell the waiting parent (of :func:`detach`) that the child is ready."""
    if wfd is not None:
        with contextlib.suppress(OSError):
            os.write(wfd, b"1")
            os.close(wfd)


def log_to(log_file: Path | None) -> None:
    """Log INFO and up to ``log_file`` (stderr if None), one timestamped line each."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def helper_parser(prog: str, target: str, target_type: type = str) -> argparse.ArgumentParser:
    """The arguments every boot helper takes: the URL, where it puts the result
    (``target``), the source address and patience, the log, the pid file, --foreground."""
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("url")
    ap.add_argument(target, type=target_type)
    ap.add_argument("--address", default="")
    ap.add_argument("--patience", type=float, default=30)
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--pid-file", type=Path, default=None)
    ap.add_argument("--foreground", action="store_true")
    return ap
