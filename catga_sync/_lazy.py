"""Modules imported on first use: ``requests`` (with urllib3, charset_normalizer and idna,
about 5 MiB of a node's memory) serves only rare paths of a node — admin calls, forwarded
Flask requests, the workers' relay — and a node that never takes them never loads it.

Use it as ``if TYPE_CHECKING: import requests`` / ``else: from .._lazy import requests``, so
type checkers see the real module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["requests"]


class LazyModule:
    """Stands for module ``name`` and imports it at the first attribute read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


requests = LazyModule("requests")
