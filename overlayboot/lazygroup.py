"""A click group whose subcommands are imported only when they are used.

The table maps a command name to ``"module:attribute"``; the module is imported when
the command runs or when ``--help`` lists it. So starting the daemon (``overlayboot
mount``) imports none of the image builder. A runtime built without a command's
module (the initramfs has no ``mkimage``) leaves the command out of ``--help`` and
says so in one line when it is called.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any

import click


def _module_present(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is absent
        return False


class LazyGroup(click.Group):
    """A :class:`click.Group` with more commands in ``lazy``: name -> "module:attribute"."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def _present(self, name: str) -> bool:
        return _module_present(self.lazy[name].partition(":")[0])

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in self.lazy if self._present(name)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        if not self._present(cmd_name):
            module = self.lazy[cmd_name].partition(":")[0]
            raise click.UsageError(
                f"{cmd_name!r} is not part of this installation (no module {module})", ctx
            )
        module, _, attr = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command
