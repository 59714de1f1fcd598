"""Filter expressions compiled by libpcap and run on frames."""

from __future__ import annotations

import ctypes.util

import pytest

from ecapture.errors import ConfigError
from ecapture.pcap_filter import PacketFilter

from .test_output_pcapng import frame

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("pcap") is None, reason="libpcap is not installed (libpcap0.8)"
)


def test_tcp_port_keeps_only_that_port() -> None:
    with PacketFilter("tcp port 8443") as only:
        assert only.instructions > 0
        to_port = frame(40000, 8443, 1, 1, b"hello")
        from_port = frame(8443, 40000, 1, 1, b"hello")
        other = frame(40000, 8444, 1, 1, b"hello")
        assert only.matches(to_port, len(to_port))
        assert only.matches(from_port, len(from_port))
        assert not only.matches(other, len(other))


def test_a_snapped_frame_is_judged_on_its_headers() -> None:
    packet = frame(40000, 8443, 1, 1, b"x" * 1000)
    with PacketFilter("tcp port 8443 and host 127.0.0.1") as both:
        assert both.matches(packet[:96], len(packet))
    with PacketFilter("greater 2000") as large:
        assert not large.matches(packet[:96], len(packet))
        assert large.matches(packet[:96], 3000)  # libpcap uses the wire length


def test_a_bad_expression_names_the_flag_and_libpcap_reason() -> None:
    with pytest.raises(ConfigError, match=r"^pcap filter 'tcp prot 80': .*syntax error"):
        PacketFilter("tcp prot 80", flag="pcap filter")


def test_a_closed_filter_refuses_to_run() -> None:
    closed = PacketFilter("tcp")
    closed.close()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        closed.matches(b"", 0)
