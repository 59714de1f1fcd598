"""Configs: validation names the flag; JSON round-trips (no root)."""

from __future__ import annotations

import pytest

from ecapture.config import CaptureModel, GlobalConfig, OutputFormat, ProbePlacement
from ecapture.errors import ConfigError
from ecapture.modules.openssl import TlsConfig


def test_defaults() -> None:
    config = TlsConfig()
    assert config.pid == 0 and config.uid is None
    assert config.mapsize_kib == 64 * 1024  # docs/kernel.md#ring-size: >= 64 MiB holds bursts
    assert config.model is CaptureModel.TEXT
    assert config.probe_placement is ProbePlacement.AUTO
    assert config.drain_timeout_s == 5.0  # a stop waits at most this long for the ring


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pid": -1}, "-p/--pid must be >= 0, got -1"),
        ({"uid": -5}, "-u/--uid must be >= 0"),
        ({"tsize": -1}, "-t/--tsize must be >= 0"),
        ({"mapsize_kib": 1000}, "--mapsize must be a power of two"),
        ({"mapsize_kib": 2}, "--mapsize must be a power of two >= 4"),
        ({"btf": 2}, "non-CO-RE"),
        ({"model": CaptureModel.KEYLOG}, "-m keylog needs -k/--keylogfile FILE"),
        ({"model": CaptureModel.PCAP, "interface": "lo"}, "-m pcap needs -w/--pcapfile FILE"),
        ({"model": CaptureModel.PCAP, "pcap_file": "x"}, "-m pcap needs -i/--ifname"),
        ({"keylog_file": "k"}, "-k/--keylogfile is for -m keylog"),
        ({"pcap_file": "x"}, "-w/--pcapfile is for -m pcap"),
        ({"model": CaptureModel.KEYLOG, "keylog_file": "k", "interface": "lo"},
         "-i/--ifname is for -m pcap"),
        ({"model": CaptureModel.KEYLOG, "keylog_file": "k", "pcap_filter": "tcp"},
         "a packet filter .'tcp'. is for -m pcap"),
        ({"model": CaptureModel.PCAP, "pcap_file": "x", "interface": "lo", "snaplen": 0},
         "-s/--snapshot-length must be in 1..262144"),
        ({"kernel_call_limit": 0}, "--kernel-call-limit must be in"),
        ({"drain_timeout_s": 0.0}, r"--drain-timeout must be in \(0, 3600\] seconds, got 0"),
        ({"drain_timeout_s": -1.0}, "--drain-timeout must be in"),
        ({"drain_timeout_s": float("inf")}, "--drain-timeout must be in"),
    ],
)
def test_invalid_values_name_the_flag(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TlsConfig(**kwargs)  # type: ignore[arg-type]


def test_pcap_config_round_trips_with_its_filter() -> None:
    config = TlsConfig(model=CaptureModel.PCAP, pcap_file="/tmp/x.pcapng", interface="lo",
                       pcap_filter="tcp port 443", snaplen=96, keylog_file="/tmp/k")
    assert TlsConfig.from_json(config.to_json()) == config


def test_json_round_trip() -> None:
    config = TlsConfig(pid=7, uid=1000, tsize=100, output_format=OutputFormat.JSON,
                       drain_timeout_s=2.5,
                       libssl="/x/libssl.so.3", probe_placement=ProbePlacement.EXPORTED)
    assert TlsConfig.from_json(config.to_json()) == config


def test_json_for_another_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="configuration is for GlobalConfig, not TlsConfig"):
        TlsConfig.from_json(GlobalConfig().to_json())


def test_json_validation_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid configuration"):
        TlsConfig.from_json(b'{"kind": "TlsConfig", "pid": "many"}')
    with pytest.raises(ConfigError, match="-p/--pid"):
        TlsConfig.from_json(b'{"kind": "TlsConfig", "pid": -3}')
