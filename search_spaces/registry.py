"""Named plug-ins, loaded lazily: the kernels here, and the search strategies (search/strategies/).

Sources, later ones overriding nothing that is already named:
  1. the built-ins, as "module:Class" strings imported on first use;
  2. an entry-point group of installed packages (``tuner.kernels``, ``tuner.strategies``);
  3. the modules the settings name (``TUNER_KERNEL_MODULES``, ``TUNER_STRATEGY_MODULES``), handed
     over by whoever read the settings (`configure`): every subclass of the plug-in's base with a
     ``name`` defined in such a module is registered when the module is imported.
A built-in is found without importing any user module, so a broken user module never stops a
built-in kernel. A worker executes only kernels found here: a message names a kernel, never
carries code.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Generic, Iterable, TypeVar

from keys import SpecError
from search_spaces.base import KernelSpec

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-in classes of one kind (subclasses of `base` with a `name`), by name."""

    def __init__(self, kind: str, base: type, builtin: dict[str, str], group: str, setting: str):
        self.kind, self.base, self.builtin, self.group, self.setting = kind, base, dict(builtin), group, setting
        self._modules: tuple[str, ...] = ()
        self._paths: dict[str, str] | None = None
        self._classes: dict[str, type[T]] = {}

    def configure(self, modules: str | Iterable[str]) -> None:
        """The extra modules to load (a comma-separated string, as the setting is written)."""
        parts = modules.split(",") if isinstance(modules, str) else list(modules)
        wanted = tuple(m.strip() for m in parts if m and m.strip())
        if wanted != self._modules:
            self._modules, self._paths = wanted, None

    @property
    def modules(self) -> tuple[str, ...]:
        return self._modules

    def _module_classes(self, module_name: str) -> dict[str, str]:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a SyntaxError or a raise at import is the module's, not ours
            text = str(exc).strip().splitlines()
            raise SpecError(f"cannot import {self.kind} module {module_name[:80]!r} from {self.setting}: "
                            f"{type(exc).__name__}: {text[0][:200] if text else ''}") from None
        return {obj.name: f"{module.__name__}:{attr}" for attr, obj in vars(module).items()
                if isinstance(obj, type) and issubclass(obj, self.base) and obj is not self.base
                and obj.__module__ == module.__name__ and isinstance(getattr(obj, "name", None), str)}

    def _entry_points(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def paths(self) -> dict[str, str]:
        """name -> "module:Class" of every plug-in; imports the configured modules."""
        if self._paths is None:
            paths = dict(self.builtin)
            for name, path in self._entry_points().items():
                paths.setdefault(name, path)
            for module_name in self._modules:
                for name, path in self._module_classes(module_name).items():
                    paths.setdefault(name, path)
            self._paths = paths
        return self._paths

    def names(self) -> list[str]:
        """The built-ins in their order, then the others sorted."""
        return list(self.builtin) + sorted(n for n in self.paths() if n not in self.builtin)

    def load(self, name: str) -> type[T]:
        """The class registered as name; SpecError (with the known names) when there is none."""
        if name in self._classes:
            return self._classes[name]
        path = self.builtin.get(name) or self._entry_points().get(name)
        if path is None:
            path = self.paths().get(name)
        if path is None:
            raise SpecError(f"unknown {self.kind} {str(name)[:80]!r}; known {self.kind}s: "
                            f"{', '.join(self.names())} (register your own with {self.setting}=your.module)")
        module_name, _, attr = path.partition(":")
        self._classes[name] = getattr(importlib.import_module(module_name), attr)
        return self._classes[name]


KERNELS: Registry[KernelSpec] = Registry("kernel", KernelSpec, {
    "matmul": "search_spaces.matmul:Matmul",
    "softmax": "search_spaces.softmax:Softmax",
    "fused_moe": "search_spaces.fused_moe:FusedMoe",
    "fused_moe_quant": "search_spaces.fused_moe_quant:FusedMoeQuant",
    "lora_shrink": "search_spaces.lora_shrink:LoraShrink",
    "lora_expand": "search_spaces.lora_expand:LoraExpand",
    "flash_attention": "search_spaces.flash_attention:FlashAttention",
}, "tuner.kernels", "TUNER_KERNEL_MODULES")
_instances: dict[str, KernelSpec] = {}


def configure(modules: str | Iterable[str]) -> None:
    """The kernel modules to load beside the built-ins (TUNER_KERNEL_MODULES, read by tuner/settings.py)."""
    KERNELS.configure(modules)


def add(cls: type[KernelSpec]) -> None:
    """Register a kernel class made in this process (a drop-in @autotune kernel): found by name
    here without TUNER_KERNEL_MODULES; a class of the same name made again replaces it."""
    KERNELS._classes[cls.name] = cls
    _instances.pop(cls.name, None)


def names() -> list[str]:
    return sorted(KERNELS.names())


def get(name: str) -> KernelSpec:
    """The kernel registered as name (one instance per process); SpecError when there is none."""
    if name not in _instances:
        _instances[name] = KERNELS.load(name)()
    return _instances[name]
