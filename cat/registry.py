"""The one Registry class behind every extension point (estimators, rewards, path schemes).

Decorator-registered, duplicates refused, lookups of unknown names answered with the known ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from cat.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, check: Callable[[str, T], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._check = check

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; ``check`` (the registry's contract) runs
        first. ``replace``: a new definition takes the name over (a notebook cell run again)."""
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj and not replace:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            if self._check is not None:
                self._check(name, obj)
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'; registered: {sorted(self._items)}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def import_plugin(spec: str) -> None:
    """Import a user module (dotted name or path to a .py file) so its registrations run. Any
    failure (a missing module, an error in it, a registration refused) is a ConfigError naming
    the plugin; a module that failed is forgotten, so a corrected one imports on the next try."""
    path = Path(spec)
    name = f"cat_plugin_{path.stem}" if spec.endswith(".py") else spec
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise ConfigError(f"plugin file not found: {spec}")
            if name in sys.modules:
                return
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raised, named
        sys.modules.pop(name, None)
        kind = "cannot import" if isinstance(exc, ImportError) else "error while importing"
        raise ConfigError(f"{kind} plugin '{spec}': {type(exc).__name__}: {exc}") from None
