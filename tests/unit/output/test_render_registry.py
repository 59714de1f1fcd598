"""Writers dispatch by registration: a new item type needs no writer change (no root)."""

from __future__ import annotations

import logging
from typing import Literal

import msgspec
import pytest

from ecapture.errors import EcaptureError, RegistryError
from ecapture.modules.base import Module
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.render import (
    JSON_RENDERERS,
    TEXT_RENDERERS,
    json_renderer,
    missing_renderers,
    text_renderer,
)
from ecapture.output.text import TextWriter
from ecapture.processor.model import Unparsed

from .conftest import MemorySink


class Ping(msgspec.Struct, frozen=True):
    timestamp_ns: int
    word: str


class LoudPing(Ping, frozen=True):
    """A subclass finds its base's renderers."""


class Unshown(msgspec.Struct, frozen=True):
    value: int


class PingEvent(msgspec.Struct):
    type: Literal["ping"]
    module: str
    word: str


@json_renderer(Ping)
def _ping_json(writer: JsonLinesWriter, item: Ping) -> PingEvent:
    return PingEvent("ping", writer.module, item.word)


@text_renderer(Ping)
def _ping_text(writer: TextWriter, item: Ping) -> str:
    return f"ping {item.word}\n"


def test_a_registered_type_is_written_by_both_writers(sink: MemorySink) -> None:
    writer = JsonLinesWriter("demo", sink)
    writer.write(Ping(1, "a"))
    writer.write(LoudPing(2, "b"))
    writer.close()
    assert bytes(sink.data) == (b'{"type":"ping","module":"demo","word":"a"}\n'
                                b'{"type":"ping","module":"demo","word":"b"}\n')
    text_sink = MemorySink()
    text = TextWriter("demo", text_sink)
    text.write(Ping(1, "a"))
    text.close()
    assert bytes(text_sink.data) == b"ping a\n"


def test_an_unregistered_type_is_said_once_and_skipped(
    sink: MemorySink, caplog: pytest.LogCaptureFixture
) -> None:
    writer = JsonLinesWriter("demo", sink)
    with caplog.at_level(logging.ERROR):
        writer.write(Unshown(1))
        writer.write(Unshown(2))
        writer.write(Ping(3, "still written"))
    writer.close()
    assert bytes(sink.data) == b'{"type":"ping","module":"demo","word":"still written"}\n'
    said = [record for record in caplog.records if "Unshown" in record.getMessage()]
    assert len(said) == 1


def test_a_second_renderer_for_a_type_is_refused() -> None:
    with pytest.raises(RegistryError, match="two json renderers"):
        json_renderer(Ping)(_ping_json)


def test_missing_renderers_are_named() -> None:
    assert missing_renderers((Ping, Unshown)) == ["Unshown (json)", "Unshown (text)"]
    assert Unparsed in JSON_RENDERERS and Unparsed in TEXT_RENDERERS  # the TLS types too


class UnshowableModule(Module):
    event_types = (Unshown,)

    def prepare(self) -> None:
        raise AssertionError("init must refuse the module before preparing it")


def test_a_module_whose_items_cannot_be_shown_is_refused_at_init() -> None:
    from ecapture.config import GlobalConfig

    UnshowableModule.name = "unshowable"
    with pytest.raises(EcaptureError, match=r"no renderer for Unshown \(json\), Unshown"):
        UnshowableModule(GlobalConfig()).init([])
