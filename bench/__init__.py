"""The benchmark suite: overlayboot against the raw squashfs, kernel overlayfs and fuse-overlayfs.

Run as root with ``make bench`` (or ``python -m bench --help``); see bench/README.md.
"""
