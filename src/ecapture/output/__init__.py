"""Writers format items (text, JSON lines, HAR); sinks deliver the bytes."""

from __future__ import annotations

import os
import sys

from ecapture.config import GlobalConfig, OutputFormat
from ecapture.output.base import CutCount, OutputItem, Sink, Writer
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
        writers.append(JsonLinesWriter(module, sink, tsize=config.tsize))
    else:
        writers.append(
            TextWriter(module, sink, tsize=config.tsize, hex_dump=config.hex,
                       color=use_color(config))
        )
    if config.har_file is not None:
        writers.append(HarWriter(config.har_file, module))
    return writers
