"""The lazy kernel registry: names map to "module:Class" strings, imported on first use.

Sources, later ones overriding nothing that is already named:
  1. the built-in kernels below;
  2. the entry-point group ``tuner.kernels`` (installed packages);
  3. modules named in ``TUNER_KERNEL_MODULES`` (comma-separated import paths); every
     KernelSpec subclass with a ``name`` defined there is registered when the module is imported.
A worker executes only kernels found here: a message names a kernel, never carries code.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from search_spaces.base import KernelSpec, SpecError

BUILTIN: dict[str, str] = {
    "matmul": "search_spaces.matmul:Matmul",
    "softmax": "search_spaces.softmax:Softmax",
}

_instances: dict[str, KernelSpec] = {}
_paths: dict[str, str] | None = None
_loaded_modules: tuple[str, ...] | None = None


def _module_kernels(module_name: str) -> dict[str, str]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import kernel module {module_name!r} from TUNER_KERNEL_MODULES: {exc}") from None
    found = {}
    for attr, obj in vars(module).items():
        if (isinstance(obj, type) and issubclass(obj, KernelSpec) and obj is not KernelSpec
                and obj.__module__ == module.__name__ and getattr(obj, "name", None)):
            found[obj.name] = f"{module.__name__}:{attr}"
    return found


def _all_paths(extra_modules: tuple[str, ...]) -> dict[str, str]:
    global _paths, _loaded_modules
    if _paths is None or _loaded_modules != extra_modules:
        paths = dict(BUILTIN)
        for ep in entry_points(group="tuner.kernels"):
            paths.setdefault(ep.name, ep.value)
        for module_name in extra_modules:
            for name, path in _module_kernels(module_name).items():
                paths.setdefault(name, path)
        _paths, _loaded_modules = paths, extra_modules
    return _paths


def _extra_modules(modules: str | None) -> tuple[str, ...]:
    raw = os.environ.get("TUNER_KERNEL_MODULES", "") if modules is None else modules
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def names(modules: str | None = None) -> list[str]:
    return sorted(_all_paths(_extra_modules(modules)))


def get(name: str, modules: str | None = None) -> KernelSpec:
    """The kernel registered as name; SpecError (with the known names) when there is none."""
    if name in _instances:
        return _instances[name]
    paths = _all_paths(_extra_modules(modules))
    if name not in paths:
        raise SpecError(f"unknown kernel {name!r}; known kernels: {', '.join(sorted(paths))} "
                        "(register your own with TUNER_KERNEL_MODULES=your.module)")
    module_name, _, attr = paths[name].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    _instances[name] = cls()
    return _instances[name]
