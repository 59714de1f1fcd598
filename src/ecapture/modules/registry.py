"""Module name → class. A module registers itself with @register("name")."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from ecapture.errors import RegistryError

if TYPE_CHECKING:
    from ecapture.modules.base import Module

# Capture modules of other packages: an entry point in this group names a
# Python module that registers its classes with @register when imported.
ENTRY_POINT_GROUP = "ecapture.modules"
MODULES: dict[str, type[Module]] = {}
ALIASES: dict[str, str] = {}


def register(name: str, *aliases: str) -> Callable[[type[Module]], type[Module]]:
    """Class decorator; a second module of the same name is refused loudly."""

    def add(cls: type[Module]) -> type[Module]:
        for key in (name, *aliases):
            if key in MODULES or key in ALIASES:
                raise RegistryError(f"capture module {key!r} is registered twice")
        MODULES[name] = cls
        for alias in aliases:
            ALIASES[alias] = name
        cls.name = name
        return cls

    return add


def load_all() -> dict[str, type[Module]]:
    """Import every module file of this package once, so each registers itself,
    then every module of the ENTRY_POINT_GROUP entry points.

    Adding a module is one BPF program and one file here: nothing else lists it.
    Done once per process (the entry point scan reads every installed
    distribution's metadata, ~10 ms); a later call returns MODULES as it is.
    """
    _import_every_module()
    return MODULES


@functools.cache
def _import_every_module() -> None:
    import ecapture.modules as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "registry", "parts"}:
            importlib.import_module(f"{package.__name__}.{info.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except (ImportError, AttributeError) as error:
            raise RegistryError(
                f"capture module {entry.name!r} ({entry.value}) cannot be loaded: {error}"
            ) from error


def module_class(name: str) -> type[Module]:
    load_all()
    name = ALIASES.get(name, name)
    try:
        return MODULES[name]
    except KeyError:
        known = ", ".join(sorted(MODULES))
        raise RegistryError(f"unknown capture module {name!r}; known: {known}") from None
