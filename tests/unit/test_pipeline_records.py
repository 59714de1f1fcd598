"""The pipeline with a module's own decoders and processor (shell records, no root)."""

from __future__ import annotations

from ecapture.events import Clock, LossReason, Lost
from ecapture.modules.parts import dispatch_decoder
from ecapture.output.base import CutCount
from ecapture.pipeline import Pipeline
from ecapture.processor.shell import Command, CommandAssembler
from ecapture.shell_events import (
    DECODERS,
    LineSource,
    ShellLine,
    ShellStatus,
    encode_line,
    encode_status,
)

CLOCK = Clock(0)


class Recording:
    def __init__(self) -> None:
        self.cut = CutCount()
        self.items: list[object] = []

    def write(self, item: object) -> None:
        self.items.append(item)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def raw_line(text: bytes, ts: int, continuation: bool = False) -> bytes:
    return encode_line(ShellLine(ts, 7, 7, 0, "bash", None, LineSource.BASH, text,
                                 continuation, True, False), CLOCK)


def raw_status(value: int, ts: int) -> bytes:
    return encode_status(ShellStatus(ts, 7, 7, 0, "bash", LineSource.BASH, value), CLOCK)


def test_records_go_through_the_processor_in_any_batch_split() -> None:
    raws = [raw_line(b"for i in 1 2; do", 1), raw_line(b"echo $i; done", 2, True),
            raw_status(0, 3), raw_line(b"false", 4), raw_status(1, 5), raw_line(b"exit", 6)]
    for split in range(len(raws) + 1):
        writer = Recording()
        pipeline = Pipeline([writer], processor=CommandAssembler(),
                            decoder=dispatch_decoder(DECODERS), clock=CLOCK)
        pipeline.handle_batch(raws[:split])
        pipeline.handle_batch(raws[split:])
        pipeline.finish()
        assert [(item.line, item.retval) for item in writer.items
                if isinstance(item, Command)] == [
            (b"for i in 1 2; do\necho $i; done", 0), (b"false", 1), (b"exit", None)]
        assert pipeline.counters.records == 6
        assert pipeline.counters.items == {"Command": 3}


def test_without_a_processor_records_are_written_as_they_are() -> None:
    writer = Recording()
    pipeline = Pipeline([writer], decoder=dispatch_decoder(DECODERS), clock=CLOCK)
    pipeline.handle_batch([raw_status(3, 9)])
    assert writer.items == [ShellStatus(9, 7, 7, 0, "bash", LineSource.BASH, 3)]


def test_an_unknown_kind_is_a_counted_decode_loss() -> None:
    writer = Recording()
    pipeline = Pipeline([writer], processor=CommandAssembler(),
                        decoder=dispatch_decoder(DECODERS), clock=CLOCK)
    pipeline.handle_batch([b"\x63\x00\x00\x00" + bytes(40)])
    assert [(item.reason, item.records) for item in writer.items
            if isinstance(item, Lost)] == [(LossReason.DECODE, 1)]
