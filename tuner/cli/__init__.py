"""The `tuner` command line. Thin: it parses, calls the module that owns the work, and prints.

One module per kind of command (tuning, results, reports, service), sharing the apps, options
and printers of common.py. Every error a user can cause ends here as one line on stderr and exit
status 2.
"""
from __future__ import annotations

import importlib
import sys

from tuner import settings as settings_mod
from tuner.cli.common import app, err
from tuner.errors import UserError

__all__ = ["app", "main"]

for _module in ("tuning", "results", "reports", "service"):  # each registers its commands, in `--help`'s order
    importlib.import_module(f"tuner.cli.{_module}")


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Abort) of every click that typer may raise from: typer 0.2x vendors its
    own as typer._click, older releases use click's; catching only one let a bad option value
    through as a traceback."""
    import importlib

    def named(attr: str, modules: tuple[str, ...]) -> tuple[type, ...]:
        found = []
        for name in modules:
            try:
                found.append(getattr(importlib.import_module(name), attr))
            except (ImportError, AttributeError):
                continue
        return tuple(found)

    return (named("ClickException", ("typer._click.exceptions", "click.exceptions")),
            named("Abort", ("typer.exceptions", "typer._click.exceptions", "click.exceptions")))


def _usage_error(exc) -> None:
    """A parse error (bad option value, missing argument, unknown command) as one line, exit 2;
    a bare `tuner` or `tuner db` prints its help instead."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        sys.exit(2)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err.print(f"error: {' '.join(exc.format_message().split())}{hint}", markup=False, highlight=False,
              soft_wrap=True)
    sys.exit(2)


def main() -> None:
    from db.session import DatabaseError
    from keys import SpecError

    try:
        settings_mod.configure_plugins(settings_mod.get())
        code = app(standalone_mode=False)  # a command's `raise typer.Exit(n)` comes back as n
    except (UserError, SpecError, DatabaseError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        usage, abort = _click_exceptions()
        if isinstance(exc, usage):
            _usage_error(exc)
        if isinstance(exc, abort):
            sys.exit(1)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
