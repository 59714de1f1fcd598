"""RingPositions reads what a real ring buffer still holds without consuming it
(the wrapper's test object: a uprobe that submits N records of SIZE bytes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ecapture.bpf.ringpos import HEADER_SIZE, RingPositions

from .test_bpf_wrapper import Traced, open_spec, read_until, run_traced, traced_program

pytestmark = pytest.mark.e2e
__all__ = ["run_traced", "traced_program"]  # fixtures, used by name


def test_the_backlog_is_counted_from_the_headers_and_nothing_is_consumed(
    run_traced: Callable[..., Traced], traced_program: Path
) -> None:
    count, size, header = 1000, 64, 16
    traced = run_traced("burst", count, size)
    with open_spec(magic=21).load() as loaded:
        loaded.attach_uprobe("on_burst", traced_program, symbol="burst")
        ring_map = loaded.map("events")
        ring = RingPositions(ring_map.fd, ring_map.max_entries)
        try:
            reader = loaded.ring_reader("events", max_batch=400)
            traced.release()
            backlog = ring.backlog(header_size=header)
            assert (backlog.records, backlog.payload, backlog.exact) == (
                count, count * (size - header), True)
            assert backlog.ring_bytes == ring.backlog_bytes() == count * (size + HEADER_SIZE)
            assert ring.backlog(header_size=header) == backlog  # reading consumed nothing
            assert len(reader.poll(0)) == 400
            assert ring.backlog(header_size=header).records == count - 400
            assert len(read_until(reader, count - 400)) == count - 400
            assert ring.backlog(header_size=header).records == 0
            assert ring.backlog_bytes() == 0
        finally:
            ring.close()


def test_a_walk_out_of_time_extrapolates(
    run_traced: Callable[..., Traced], traced_program: Path
) -> None:
    count, size = 20_000, 64
    traced = run_traced("burst", count, size)
    with open_spec(magic=22, ring_bytes=1 << 22).load() as loaded:
        loaded.attach_uprobe("on_burst", traced_program, symbol="burst")
        ring_map = loaded.map("events")
        ring = RingPositions(ring_map.fd, ring_map.max_entries)
        try:
            traced.release()
            backlog = ring.backlog(header_size=0, time_limit_s=0.0)
        finally:
            ring.close()
    # Cut after the first 4096 records; all records have one size: exact all the same.
    assert not backlog.exact
    assert (backlog.records, backlog.payload) == (count, count * size)
