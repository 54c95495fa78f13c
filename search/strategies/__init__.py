"""Search strategies as plug-ins: one module per strategy (the contract is in base.py), one registry
that the CLI, the request validation, the batch message and the replay all read.

Adding a strategy is one module with a `Strategy` subclass and, for a built-in, one line in
BUILTIN; a user's lives in a module named by TUNER_STRATEGY_MODULES (or the entry-point group
`tuner.strategies`). Listing names imports no strategy module (and so not optuna) for the built-ins.
"""
from __future__ import annotations

from typing import Iterable

from search_spaces.registry import Registry

BUILTIN = {  # the default first
    "auto": "search.strategies.auto:Auto",
    "tpe": "search.strategies.tpe:Tpe",
    "random": "search.strategies.random_search:RandomSearch",
    "grid": "search.strategies.grid:Grid",
}
DEFAULT = "auto"


def _base() -> type:
    from search.strategies.base import Strategy
    return Strategy


class _Strategies(Registry):
    """The strategy registry; its base class is imported only when a user module is scanned."""

    def __init__(self) -> None:
        super().__init__("strategy", object, BUILTIN, "tuner.strategies", "TUNER_STRATEGY_MODULES")

    def _module_classes(self, module_name: str) -> dict[str, str]:
        self.base = _base()
        return super()._module_classes(module_name)


STRATEGIES = _Strategies()


def configure(modules: str | Iterable[str]) -> None:
    """The strategy modules to load beside the built-ins (TUNER_STRATEGY_MODULES, read by tuner/settings.py)."""
    STRATEGIES.configure(modules)


def names() -> list[str]:
    return STRATEGIES.names()


def make(name: str, seed: int | None = None):
    """A strategy instance (see base.Strategy); SpecError names the known ones when name is not one."""
    return STRATEGIES.load(name)(seed)
