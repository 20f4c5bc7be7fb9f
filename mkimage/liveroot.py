"""What every image's root carries for the live system, added at build time (pseudo files
of mksquashfs; the tree on disk is not touched):

- ``/usr/sbin/overlayboot``: a script that runs the boot's own runtime
  (``/run/overlayboot/runtime/overlayboot``): ``overlayboot status`` and friends on the
  live root's PATH;
- ``/var/log/overlayboot``: a symlink to ``/run/overlayboot`` (the boot's ``boot.log``,
  the daemon's ``daemon.log``, ``state``).

Each only where the tree has nothing at that path (a root with the overlayboot package
installed keeps its own), and only under real directories (a missing one is added; a
parent that is a symlink is left alone). Made here, they are part of the lower layer: the
boot no longer writes them into the upper, where a persistence would keep them across
image upgrades (hooks/55-liveroot.sh still does, for an image built elsewhere).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

RUN_DIR = "/run/overlayboot"
COMMAND = PurePosixPath("usr/sbin/overlayboot")
LOG_LINK = PurePosixPath("var/log/overlayboot")
# no single quote in it: it is single-quoted for the sh that runs mksquashfs' pseudo command
SCRIPT = (
    "#!/bin/sh\\n# overlayboot: the command of the boot runtime (added to the image by mkimage)\\n"
    f'exec {RUN_DIR}/runtime/overlayboot "$@"\\n'
)


def _parents(root: Path, path: PurePosixPath) -> list[str] | None:
    """Pseudo definitions of the missing parent directories of ``path``; None when a
    parent is not a real directory."""
    defs: list[str] = []
    for parent in reversed(path.parents[:-1]):
        host = root / parent
        if host.is_symlink() or (host.exists() and not host.is_dir()):
            return None
        if not host.exists():
            defs.append(f"/{parent} d 755 0 0")
    return defs


def _absent(root: Path, path: PurePosixPath) -> bool:
    host = root / path
    return not host.exists() and not host.is_symlink()


def pseudo_argv(root: Path) -> list[str]:
    """mksquashfs ``-p`` options adding the command and the log link where they fit."""
    defs: list[str] = []
    made: set[str] = set()
    for path, entry in (
        (COMMAND, f"/{COMMAND} f 755 0 0 printf '{SCRIPT}'"),
        (LOG_LINK, f"/{LOG_LINK} s 777 0 0 {RUN_DIR}"),
    ):
        parents = _parents(root, path)
        if parents is None or not _absent(root, path):
            continue
        defs += [d for d in parents if d not in made] + [entry]
        made.update(parents)
    return [arg for d in defs for arg in ("-p", d)]
