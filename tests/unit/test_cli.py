"""Command-line parsing (no root: nothing is run)."""

from __future__ import annotations

import pytest

from ecapture.cli import build_parser, main, parse_config
from ecapture.config import CaptureModel, OutputFormat, ProbePlacement
from ecapture.modules.openssl import OpensslModule, TlsConfig


def parse(*argv: str) -> TlsConfig:
    parsed = parse_config(build_parser(), list(argv))
    assert parsed is not None
    cls, config = parsed
    assert cls is OpensslModule
    assert isinstance(config, TlsConfig)
    return config


def test_global_flags_before_and_after_the_command() -> None:
    before = parse("-p", "42", "--format", "json", "tls", "-u", "1000")
    after = parse("tls", "-p", "42", "-u", "1000", "--format", "json")
    assert before == after
    assert before.pid == 42 and before.uid == 1000
    assert before.output_format is OutputFormat.JSON


def test_openssl_is_an_alias_of_tls() -> None:
    assert parse("openssl", "--libssl", "/lib/libssl.so.3").libssl == "/lib/libssl.so.3"


def test_every_flag_reaches_the_config() -> None:
    config = parse(
        "tls", "--hex", "-t", "64", "--mapsize", "8192", "-b", "1", "--btf-file", "/b",
        "-d", "-l", "/tmp/log", "--eventaddr", "/tmp/ev", "--har", "/tmp/h.har",
        "--color", "never", "--probe-placement", "exported", "--kernel-call-limit", "65536",
        "-m", "text", "--nice", "0",
    )
    assert config.hex and config.tsize == 64 and config.mapsize_kib == 8192
    assert config.btf == 1 and config.btf_file == "/b" and config.debug
    assert config.logaddr == "/tmp/log" and config.eventaddr == "/tmp/ev"
    assert config.har_file == "/tmp/h.har" and config.color is False
    assert config.probe_placement is ProbePlacement.EXPORTED
    assert config.kernel_call_limit == 65536
    assert config.nice == 0
    assert parse("tls").nice == 10  # the default gives the CPU to the traced programs


def test_keylog_and_pcap_flags_and_trailing_filter_words() -> None:
    keylog = parse("tls", "-m", "key", "-k", "/tmp/keys.log")
    assert keylog.model is CaptureModel.KEYLOG and keylog.keylog_file == "/tmp/keys.log"
    pcap = parse("tls", "-m", "pcap", "-w", "/tmp/x.pcapng", "-i", "lo", "tcp", "port", "443",
                 "and", "not", "host", "10.0.0.1", "--hex")
    assert pcap.model is CaptureModel.PCAP and pcap.pcap_file == "/tmp/x.pcapng"
    assert pcap.interface == "lo" and pcap.hex
    assert pcap.pcap_filter == "tcp port 443 and not host 10.0.0.1"
    assert pcap.snaplen == 262144  # tcpdump's default
    assert parse("tls", "-m", "pcap", "-w", "f", "-i", "lo", "-s", "0").snaplen == 262144
    assert parse("tls", "-m", "pcap", "-w", "f", "-i", "lo", "-s", "96").snaplen == 96


def test_a_mode_is_its_own_module_class() -> None:
    from ecapture.modules.tls_modes import TlsKeylogModule, TlsPcapModule

    assert type(OpensslModule(parse("tls"))) is OpensslModule
    assert type(OpensslModule(parse("tls", "-m", "keylog", "-k", "k"))) is TlsKeylogModule
    assert type(OpensslModule(parse("tls", "-m", "pcap", "-w", "f", "-i", "lo"))) \
        is TlsPcapModule


def test_help_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["tls", "--help"], ["openssl", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--libssl" in out and "--pid" in out and "--probe-placement" in out
    assert "--drain-timeout" in out and "ecapture 0." in out


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ecapture: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tls", "-p", "abc"], "argument -p/--pid: invalid int value: 'abc' "
         "(see 'ecapture tls --help')"),
        (["-p", "abc", "tls"], "argument -p/--pid: invalid int value: 'abc' "
         "(see 'ecapture --help')"),
        (["tls", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["nosuchmodule"], "argument COMMAND: invalid choice: 'nosuchmodule'"),
        (["tls", "--bogus"], "unrecognized arguments: --bogus"),
        (["tls", "-p"], "argument -p/--pid: expected one argument"),
        (["tls", "--mapsize", "big"], "argument --mapsize: invalid int value: 'big'"),
        (["tls", "-b", "7"], "argument -b/--btf: invalid choice: 7"),
        (["tls", "--drain-timeout", "soon"], "argument --drain-timeout: invalid float value"),
        (["tls", "--probe-placement", "x"], "argument --probe-placement: invalid choice: 'x'"),
    ],
)
def test_malformed_flags_are_one_error_line(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in one_error_line(captured.err)
    assert "usage:" not in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tls", "-m", "keylog"], "ecapture: error: -m keylog needs -k/--keylogfile FILE"),
        (["tls", "-m", "pcap", "-w", "x.pcapng"], "ecapture: error: -m pcap needs -i/--ifname"),
        (["tls", "tcp", "port", "443"], "ecapture: error: a packet filter ('tcp port 443') is "
         "for -m pcap"),
        (["tls", "--mapsize", "3000"], "ecapture: error: --mapsize must be a power of two"),
        (["tls", "-p", "-4"], "ecapture: error: -p/--pid must be >= 0"),
        (["tls", "--nice", "20"], "ecapture: error: --nice must be in -20..19"),
        (["tls", "--drain-timeout", "0"],
         "ecapture: error: --drain-timeout must be in (0, 3600] seconds, got 0"),
        (["tls", "--drain-timeout", "nan"], "ecapture: error: --drain-timeout must be in"),
    ],
)
def test_invalid_values_give_one_line(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert one_error_line(capsys.readouterr().err).startswith(message)


def test_the_help_documents_files_stopping_and_exit_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "a symbolic link (dangling or not), a FIFO, a device or a directory is refused" in out
    assert "mode 0600 or narrower; it is then truncated" in out
    assert "its mode left as it is" in out
    assert "--drain-timeout" in out and 'counted as lost (reason "stopped")' in out
    assert "A second signal stops at once" in out
    assert "2 for a bad flag or value" in out


def test_drain_timeout_reaches_the_config() -> None:
    assert parse("tls").drain_timeout_s == 5.0
    assert parse("--drain-timeout", "1.5", "tls").drain_timeout_s == 1.5


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: ecapture" in capsys.readouterr().err
