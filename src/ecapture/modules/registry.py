"""Module name → class. A module registers itself with @register("name")."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import os
import pkgutil
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    Done once per process (the entry point scan lists every installed
    distribution); a later call returns MODULES as it is.
    """
    _import_every_module()
    return MODULES


@functools.cache
def _import_every_module() -> None:
    import ecapture.modules as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "registry", "parts"}:
            importlib.import_module(f"{package.__name__}.{info.name}")
    for name, value in entry_points(ENTRY_POINT_GROUP):
        try:
            load_entry_point(value)
        except (ImportError, AttributeError) as error:
            raise RegistryError(
                f"capture module {name!r} ({value}) cannot be loaded: {error}"
            ) from error


# -- entry points, as importlib.metadata finds them ----------------------------------
#
# importlib.metadata costs ~25 ms and ~1.7 MB here at every start (it imports
# email, zipfile, csv... and builds an object per distribution) to read a few
# entry_points.txt files. These functions read them the way it does (Python
# 3.11: FastPath/Lookup, PathDistribution._normalized_name, Sectioned,
# EntryPoint.load), and hand over to it for what they do not read: a zip
# archive or an egg on sys.path, another finder that lists distributions,
# an unusual file name or line. tests/unit/test_registry_entry_points.py
# compares both on this machine's distributions and on made-up ones.

# EntryPoint.pattern: "module", "module:attribute.attribute", optional [extras]
ENTRY_POINT_VALUE = re.compile(
    r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
)
_METADATA_SUFFIXES = (".dist-info", ".egg-info")


class _Unread(Exception):
    """Something importlib.metadata reads and entry_points() does not."""


def entry_points(group: str) -> list[tuple[str, str]]:
    """(name, value) of the entry points of `group` of every distribution on
    sys.path, in importlib.metadata.entry_points(group=group)'s order: sys.path
    order, the first distribution of a (normalised) name only."""
    try:
        return _read_entry_points(group)
    except _Unread:
        import importlib.metadata

        return [(entry.name, entry.value)
                for entry in importlib.metadata.entry_points(group=group)]


def _read_entry_points(group: str) -> list[tuple[str, str]]:
    if any(finder is not importlib.machinery.PathFinder
           and getattr(finder, "find_distributions", None) is not None
           for finder in sys.meta_path):
        raise _Unread("another finder lists distributions")
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for root in sys.path:
        try:
            children = os.listdir(root or ".")
        except OSError:
            if os.path.isfile(root):
                raise _Unread(f"{root} is a file (a zip archive)") from None
            continue  # a directory that does not exist: nothing there
        if os.path.basename(root).lower().endswith(".egg"):
            raise _Unread(f"{root} is an egg")
        infos: dict[str, list[str]] = {}  # by normalised name, in listing order
        for child in children:
            if child.lower().endswith(_METADATA_SUFFIXES):
                if not child.endswith(_METADATA_SUFFIXES):
                    raise _Unread(f"{child}: a suffix in capitals")
                stem = child.rpartition(".")[0].partition("-")[0]
                infos.setdefault(_normalize(stem), []).append(child)
        for name, named in infos.items():
            if name in seen:
                continue  # an earlier sys.path entry has this distribution
            seen.add(name)
            found += _group_entries(os.path.join(root or ".", named[0]), group)
    return found


def _normalize(name: str) -> str:
    """importlib.metadata Prepared.normalize: PEP 503, then dashes as underscores."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _group_entries(info: str, group: str) -> list[tuple[str, str]]:
    """The `group` entries of one distribution's entry_points.txt (none without one)."""
    try:
        with open(os.path.join(info, "entry_points.txt"), encoding="utf-8") as file:
            text = file.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return []
    entries: list[tuple[str, str]] = []
    section = None
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group:
            if "=" not in line:
                raise _Unread(f"{info}/entry_points.txt: {line!r} has no '='")
            name, value = line.split("=", 1)
            entries.append((name.strip(), value.strip()))
    return entries


def load_entry_point(value: str) -> Any:
    """What an entry point's value names: the module, or an attribute of it."""
    match = ENTRY_POINT_VALUE.match(value)
    if match is None:
        raise AttributeError(f"{value!r} is not 'module' or 'module:attribute'")
    module = importlib.import_module(match.group("module"))
    return functools.reduce(getattr, filter(None, (match.group("attr") or "").split(".")),
                            module)


def module_class(name: str) -> type[Module]:
    load_all()
    name = ALIASES.get(name, name)
    try:
        return MODULES[name]
    except KeyError:
        known = ", ".join(sorted(MODULES))
        raise RegistryError(f"unknown capture module {name!r}; known: {known}") from None
