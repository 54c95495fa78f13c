"""What a kernel's version is hashed from (`KernelSpec.version`): the code that decides what the
kernel does, found by following names from its class, each piece normalized through `ast` so
that comments, docstrings and formatting change nothing."""
from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
from typing import Any

from search_spaces.base import LazyTorch

_CONTRACT = LazyTorch.__module__  # search_spaces/base.py, wherever the package is imported from
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN = (int, float, str, bytes, bool, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return isinstance(value, _PLAIN)


def normalized_source(text: str) -> str:
    """Python source as its syntax tree prints it back: comments, docstrings, blank lines and
    formatting gone, so that only an edit of what the code does changes it (and the version
    hashed from it). The printing is `ast.unparse`'s, stable within a Python minor version."""
    tree = ast.parse(textwrap.dedent(text))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def kernel_source(cls: type) -> str:
    """The code a kernel class stands for, normalized (`normalized_source`): its own class and its
    bases outside the contract module (search_spaces/base.py), then, transitively, every function, class and @triton.jit
    function that code names (a jit function by its Python source) in any module of the kernel's
    package (search_spaces/ for the built-ins: a tile model shared through search_spaces/lora.py
    or gemm.py counts for each kernel that calls it), and the plain constants it names (by repr).
    What another kernel alone uses is left out, so editing it changes nothing here; names are
    looked up in the module that holds the code naming them."""
    package = cls.__module__.partition(".")[0]

    def ours(obj: Any) -> bool:
        module = getattr(obj, "__module__", None) or ""
        # the contract's own classes (KernelSpec and its helpers) are the service's code, not a kernel's
        return module.partition(".")[0] == package and not (inspect.isclass(obj) and module == _CONTRACT)

    def source(obj: Any) -> tuple[str, dict] | None:
        if isinstance(obj, LazyTorch):  # asking it for .fn would import torch
            return None
        fn = getattr(obj, "fn", None)  # a JITFunction (or the interpreter's) wraps the Python function
        target = fn if callable(fn) and not inspect.isclass(obj) else obj
        if (inspect.isfunction(target) or inspect.isclass(target)) and ours(target):
            namespace = vars(sys.modules[target.__module__]) if target.__module__ in sys.modules else {}
            try:
                return normalized_source(inspect.getsource(target)), namespace
            except (OSError, TypeError, SyntaxError):
                return target.__qualname__, namespace
        return None

    own = [c for c in reversed(cls.__mro__) if ours(c)]
    todo = [source(c) or (c.__qualname__, {}) for c in own]
    parts = [text for text, _ in todo]
    seen, emitted = {(c.__module__, c.__name__) for c in own}, set(parts)
    while todo:
        text, names = todo.pop(0)
        for name in sorted(set(_NAME.findall(text))):
            # a dunder (a module's __name__, a type's) names where code lives, not what it does
            if name not in names or name.startswith("__") or (names.get("__name__"), name) in seen:
                continue
            seen.add((names.get("__name__"), name))
            found = source(names[name])
            if found is not None:
                if found[0] in emitted:  # the same code reached through another module's name
                    continue
                emitted.add(found[0])
                parts.append(found[0])
                todo.append(found)
            elif _plain(names[name]):
                parts.append(f"{name} = {names[name]!r}")
    return "\n".join(parts)
