"""The /usr of the network boot bench's root: Debian's python3.11 with the libraries it loads
and its standard library (compiled, so a run writes nothing), and ``/bin/netbench``, the
guest side of a measurement: ``find /usr`` and a program start, cold and then warm.

The tiny busybox root of the network boot tests (tests/net/clients.py) gets this added
before it is packed, so every lower (CD, NFS tree, NFS image, HTTP whole and lazy) serves
the same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

from mkimage.elf import resolve_closure
from overlayboot.run import run

PYTHON = PurePosixPath("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
SKIP = ("dist-packages", "site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip")
PROGRAM = "import json, email.parser, http.client, xml.dom.minidom, argparse, decimal, asyncio"

NETBENCH = f"""#!/bin/sh
# the guest side of bench/netboot.py: uptime stamps around find /usr and a program start
t() {{ cut -d' ' -f1 /proc/uptime; }}
a=$(t); n=$(find /usr | wc -l); b=$(t)
{PYTHON} -S -B -c '{PROGRAM}'; c=$(t)
{PYTHON} -S -B -c '{PROGRAM}'; d=$(t)
n2=$(find /usr | wc -l); e=$(t)
echo "NETBENCH $a $b $c $d $e $n"
"""


def _copy_closure(root: Path) -> None:
    closure = resolve_closure(Path("/"), [PYTHON], strict=True)
    for lib in closure.objects:
        dest = root / lib.path_in_root.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f"/{lib.realpath_in_root.relative_to('/')}", dest)


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP or n == "__pycache__"}


def add_usr(root: Path) -> Path:
    """``root`` with /usr/bin/python3.11, its libraries, its stdlib and /bin/netbench."""
    _copy_closure(root)
    lib = root / STDLIB.relative_to("/")
    shutil.copytree(STDLIB, lib, ignore=_ignore, symlinks=True)
    run([str(PYTHON), "-m", "compileall", "-q", "-j0", "-d", str(STDLIB), str(lib)], check=False)
    script = root / "bin" / "netbench"
    script.write_text(NETBENCH)
    script.chmod(0o755)
    return root
