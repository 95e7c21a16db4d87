"""Packages whose public names are imported on first use (so that importing the package costs no torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Give a package's ``__getattr__``, ``__dir__`` and ``__all__``: each name of ``exports[module]`` (names
    separated by spaces) is imported from ``package.module`` on first use and kept in ``namespace``.

    The table is the one list of a package's public names: type checkers and editors resolve them through
    ``__getattr__``'s module (tests/test_architecture.py checks that every name exists there).
    """
    module_of = {name: module for module, names in exports.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
