"""Which function renders an item type, per output format: writers look it up.

A module that brings a new event type registers how JSON and text show it
(in its own file), so no writer lists the types it knows:

    @json_renderer(Command)
    def _command_json(writer: JsonLinesWriter, item: Command) -> CommandEvent: ...

    @text_renderer(Command)
    def _command_text(writer: TextWriter, item: Command) -> str: ...

A JSON renderer returns a msgspec Struct (or None: nothing to write), a text
renderer the text (or "" for nothing). A type is looked up along its MRO; a
second renderer for one type and format is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ecapture.errors import RegistryError

F = TypeVar("F", bound=Callable[..., Any])


class Renderers:
    """item type → renderer, for one output format."""

    def __init__(self, format_name: str) -> None:
        self.format_name = format_name
        self._table: dict[type, Callable[..., Any]] = {}

    def register(self, item_type: type) -> Callable[[F], F]:
        def add(function: F) -> F:
            if item_type in self._table:
                raise RegistryError(
                    f"{item_type.__name__} has two {self.format_name} renderers"
                )
            self._table[item_type] = function
            return function

        return add

    def find(self, item_type: type) -> Callable[..., Any] | None:
        for base in item_type.__mro__:
            function = self._table.get(base)
            if function is not None:
                return function
        return None

    def __contains__(self, item_type: type) -> bool:
        return self.find(item_type) is not None


JSON_RENDERERS = Renderers("json")
TEXT_RENDERERS = Renderers("text")


def json_renderer(item_type: type) -> Callable[[F], F]:
    return JSON_RENDERERS.register(item_type)


def text_renderer(item_type: type) -> Callable[[F], F]:
    return TEXT_RENDERERS.register(item_type)


def missing_renderers(item_types: tuple[type, ...]) -> list[str]:
    """'Type (format)' for every type that a writer could not render."""
    return [
        f"{item_type.__name__} ({renderers.format_name})"
        for item_type in item_types
        for renderers in (JSON_RENDERERS, TEXT_RENDERERS)
        if item_type not in renderers
    ]
