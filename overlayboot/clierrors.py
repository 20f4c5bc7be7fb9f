"""Domain errors at the command line: one line on stderr and the error's exit code.

Every command of ``overlayboot`` (its own and the image builder's in
``mkimage/commands.py``) is wrapped in :func:`domain_errors`; nothing below the CLI
exits or prints an error itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import NoReturn, ParamSpec, TypeVar

import click

from overlayboot.errors import OverlaybootError

P = ParamSpec("P")
T = TypeVar("T")


def fail(exc: OverlaybootError) -> NoReturn:
    """Show ``exc`` as one line and exit with its code."""
    click.echo(f"overlayboot: error: {exc.line()}", err=True)
    sys.exit(exc.exit_code)


def domain_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn :class:`OverlaybootError` into a one-line message and its exit code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except OverlaybootError as exc:
            fail(exc)
        except KeyboardInterrupt:
            click.echo("overlayboot: interrupted", err=True)
            sys.exit(130)

    return wrapper
