"""How every registry finds what declares itself into it: its built-in modules, the modules an installed package
declares under an entry-point group, and those a user names in an environment variable (comma-separated).
Importing a module is what registers its entries (their `@register` decorators run)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

from .errors import ConfigError


def import_declared(builtin: Iterable[str], what: str, env: str, group: str | None = None) -> None:
    """Import `builtin`, the modules of entry-point `group` and those named in $`env`; a module that cannot be
    imported is one ConfigError naming it, `what` it should declare and where it was named."""
    from_group: list[str] = []
    if group is not None:
        from importlib.metadata import entry_points

        from_group = [ep.value for ep in entry_points(group=group)]
    where = f"${env}" + (" or the package that declares it" if group is not None else "")
    for module in [*builtin, *from_group, *filter(None, os.environ.get(env, "").split(","))]:
        try:
            importlib.import_module(module.strip())
        except ImportError as e:
            raise ConfigError(f"cannot import {what} module {module!r} ({e}); check {where}") from None
