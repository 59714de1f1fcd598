"""Writers format items (text, JSON lines, HAR); sinks deliver the bytes.

Each writer is loaded when a configuration asks for it (or on first use of
its name here): `--format json` does not pay for the text and HAR writers,
and importing one part of this package (output.render, by every module
file) loads no writer at all.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from ecapture.config import GlobalConfig, OutputFormat
from ecapture.output.base import CutCount, OutputItem, Sink, Writer

if TYPE_CHECKING:
    from ecapture.output.har import HarWriter
    from ecapture.output.jsonl import JsonLinesWriter
    from ecapture.output.sinks import open_sink
    from ecapture.output.text import TextWriter

__all__ = [
    "CutCount",
    "HarWriter",
    "JsonLinesWriter",
    "OutputItem",
    "Sink",
    "TextWriter",
    "Writer",
    "make_writers",
    "open_sink",
    "use_color",
]


_LAZY = {"HarWriter": "ecapture.output.har", "JsonLinesWriter": "ecapture.output.jsonl",
         "TextWriter": "ecapture.output.text", "open_sink": "ecapture.output.sinks"}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)


def use_color(config: GlobalConfig) -> bool:
    """--color wins; otherwise colour only a terminal on stdout, and only
    when NO_COLOR is unset or empty (https://no-color.org)."""
    if config.color is not None:
        return config.color
    to_stdout = config.eventaddr is None or config.eventaddr == "-"
    return to_stdout and sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def make_writers(config: GlobalConfig, module: str, sink: Sink) -> list[Writer]:
    """The writers the configuration asks for; `sink` stays the caller's to close."""
    writers: list[Writer] = []
    if config.output_format is OutputFormat.JSON:
        from ecapture.output.jsonl import JsonLinesWriter

        writers.append(JsonLinesWriter(module, sink, tsize=config.tsize))
    else:
        from ecapture.output.text import TextWriter

        writers.append(
            TextWriter(module, sink, tsize=config.tsize, hex_dump=config.hex,
                       color=use_color(config))
        )
    if config.har_file is not None:
        from ecapture.output.har import HarWriter

        writers.append(HarWriter(config.har_file, module))
    return writers
