"""`ecapture gnutls -m pcap` without root: its flags, refusals and what it would load."""

from __future__ import annotations

import re

import pytest

from ecapture.cli import build_parser, parse_config
from ecapture.config import CaptureModel
from ecapture.errors import ConfigError
from ecapture.modules.gnutls import GnutlsConfig, GnutlsModule, GnutlsPcapModule
from ecapture.modules.parts import ProbeSpec, SectionAttach, TcFilterAttach
from ecapture.modules.tls_modes import KEYLOG_OBJECT, TC_OBJECT, KeyFiles


def parse(*argv: str) -> GnutlsConfig:
    parsed = parse_config(build_parser(), ["gnutls", *argv])
    assert parsed is not None
    cls, config = parsed
    assert cls is GnutlsModule and isinstance(config, GnutlsConfig)
    return config


def test_every_pcap_flag_reaches_the_config() -> None:
    config = parse("-m", "pcap", "-w", "/tmp/g.pcapng", "-i", "lo", "-k", "/tmp/k",
                   "-s", "96", "tcp", "port", "443", "and", "not", "host", "10.0.0.1")
    assert config.model is CaptureModel.PCAP
    assert (config.pcap_file, config.interface, config.keylog_file) == (
        "/tmp/g.pcapng", "lo", "/tmp/k")
    assert config.pcap_filter == "tcp port 443 and not host 10.0.0.1"
    assert config.snaplen == 96
    assert parse("-m", "pcap", "-w", "f", "-i", "lo", "-s", "0").snaplen == 262144


@pytest.mark.parametrize(("argv", "message"), [
    (("-m", "pcap"), "-m pcap needs -w/--pcapfile FILE"),
    (("-m", "pcap", "-w", "f"), "-m pcap needs -i/--ifname INTERFACE"),
    (("-w", "f"), "-w/--pcapfile is for -m pcap"),
    (("-m", "keylog", "-k", "k", "-i", "lo"), "-i/--ifname is for -m pcap"),
    (("tcp", "port", "443"), "a packet filter ('tcp port 443') is for -m pcap"),
    (("-k", "k"), "-k/--keylogfile is for -m keylog (or -m pcap)"),
    (("-m", "pcap", "-w", "f", "-i", "lo", "-s", "262145"), "-s/--snapshot-length"),
])
def test_a_flag_of_another_mode_is_refused_never_ignored(
    argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"gnutls: {message}")):
        parse(*argv)


def test_pcap_is_its_own_class_with_the_key_hook_and_tc() -> None:
    config = parse("-m", "pcap", "-w", "/tmp/g.pcapng", "-i", "lo", "tcp", "port", "443")
    module = GnutlsModule(config)
    assert type(module) is GnutlsPcapModule
    assert module.key_files() == KeyFiles(None, "/tmp/g.pcapng", "lo", "tcp port 443", 262144)
    assert [o.name for o in module.bpf_objects()] == [KEYLOG_OBJECT, TC_OBJECT]
    # No call_limit (text mode's tls.bpf.o constant): neither object has it.
    assert module.constants() == {"target_pid": 0, "target_uid": 0, "filter_uid": 0,
                                  "snaplen": 262144}
    steps = module.attach_steps()  # before prepare(): no key hook yet, only TC's steps
    assert not [step for step in steps if isinstance(step, ProbeSpec)]
    assert {step.program for step in steps if isinstance(step, SectionAttach)} == {
        "owner_on_send", "owner_on_recv", "owner_on_connect"}
    assert {(step.direction, step.interface) for step in steps
            if isinstance(step, TcFilterAttach)} == {("egress", "lo"), ("ingress", "lo")}
    assert module.make_tracker() is None
