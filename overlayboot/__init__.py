"""overlayboot: a writable live system over read-only media.

The package holds the FUSE overlay daemon (``overlayboot.fs``), the command
line (``overlayboot.cli``) and what both share (errors, the subprocess gate).
"""

__version__ = "0.1.0"
