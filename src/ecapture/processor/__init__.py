"""Per-connection parsing of captured plaintext into HTTP exchanges (sans-IO).

The names below are loaded on first use: importing one small part of the
package (processor.model, processor.interface) must not import the HTTP
parsers and the body decoders with it (see tests/unit/test_lazy_imports.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecapture.processor.bodies import decode_body
    from ecapture.processor.tracker import ConnectionTracker

__all__ = ["ConnectionTracker", "decode_body"]

_WHERE = {"ConnectionTracker": "ecapture.processor.tracker",
          "decode_body": "ecapture.processor.bodies"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)
