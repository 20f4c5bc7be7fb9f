"""Domain exceptions: raised inside the package, turned into exit codes only by the CLI."""

from __future__ import annotations


class OverlaybootError(Exception):
    """A user-facing failure: one line saying what is wrong, and optionally what to do.

    ``exit_code`` is what the CLI exits with; subclasses pick their own.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The single line shown to the user."""
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(OverlaybootError):
    """Bad arguments or options."""

    exit_code = 2


class ConfigError(OverlaybootError):
    """The layers given cannot form an overlay (missing dirs, overlap, unsupported fs)."""

    exit_code = 3


class MountError(OverlaybootError):
    """Mounting or unmounting failed (busy mount point, no /dev/fuse, ...)."""

    exit_code = 4


class ToolError(OverlaybootError):
    """An external tool is missing or failed.

    ``stderr`` is the tool's whole error output (empty if it was not captured); the
    message shows only its last line.
    """

    exit_code = 5

    def __init__(self, message: str, hint: str | None = None, *, stderr: str = "") -> None:
        super().__init__(message, hint)
        self.stderr = stderr


class UpperError(OverlaybootError):
    """An upper layer holds partial copy-ups that cannot be read or made whole."""

    exit_code = 6


class BlockError(OverlaybootError):
    """A block store that cannot be used: not a store, made for another base, in use, full."""

    exit_code = 7
