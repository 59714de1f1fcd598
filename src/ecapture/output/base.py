"""The two output interfaces: a Writer formats items, a Sink delivers bytes.

A writer is told each item once, `flush()` once per reader batch and
`close()` once at the end (HAR writes its whole document there). Writers
never close the sink they were given: whoever opened it closes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from ecapture.events import ConnClose, Lost, TlsData
from ecapture.processor.model import HttpExchange, Unparsed

# The TLS module's items; a writer takes any item that has a renderer
# registered for its format (output/render.py).
OutputItem = TlsData | ConnClose | Lost | HttpExchange | Unparsed

log = logging.getLogger(__name__)
_UNRENDERABLE_LOGGED: set[tuple[str, type]] = set()


@dataclass(slots=True)
class CutCount:
    """What -t/--tsize kept out of the output: the caller sums it at exit
    and reports it as a `Lost` with reason TSIZE."""

    records: int = 0
    bytes: int = 0

    def add(self, cut_bytes: int) -> None:
        self.records += 1
        self.bytes += cut_bytes


class Writer(Protocol):
    cut: CutCount

    def write(self, item: object) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def unrenderable(writer: object, item: object) -> None:
    """An item with no renderer for this writer: a module's bug (the module
    checks its event types at init), said once per type and writer kind."""
    key = (type(writer).__name__, type(item))
    if key not in _UNRENDERABLE_LOGGED:
        _UNRENDERABLE_LOGGED.add(key)
        log.error("%s has no renderer for %s items; they are not shown",
                  key[0], type(item).__name__)
