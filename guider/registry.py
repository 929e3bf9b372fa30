"""Name -> (class, config schema) registries for backbones and denoisers.

Adding a model means one new module that calls ``register`` and one yaml in ``conf/``; nothing
else needs to know about it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


def import_all(package: str, path: list[str]) -> None:
    """Import every module and subpackage of ``package`` (their ``register`` calls fill the
    registry), in name order so the registration order never depends on the file system."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    cls: type[T]
    schema: type


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, schema: type) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, cls, schema)
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} '{name}'. Available: {', '.join(self.names())}. "
                f"Choose one with {self.kind}=<name>, or add a module that registers it "
                f"and conf/{self.kind}/{name}.yaml."
            )
        return self._entries[name]

    def validate(self, node: DictConfig | dict) -> Any:
        """Merge a config node onto the registered schema: unknown keys and wrong types fail here,
        before any work starts, with the offending key named; then the schema's own ``check()``
        (values: ranges and choices). Returns a typed dataclass instance."""
        name = node["name"]
        entry = self.get(name)
        if isinstance(node, DictConfig):  # interpolations (denoise.teacher_lr: ${train.lr}) first
            node = OmegaConf.to_container(node, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(entry.schema), node)
        config = OmegaConf.to_object(merged)
        check = getattr(config, "check", None)
        if callable(check):  # value checks (ranges, choices): before any data are loaded
            check()
        return config
