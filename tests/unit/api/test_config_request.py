"""A reload body → the module's flags → its config, as the command line does it."""

from __future__ import annotations

import pytest

from ecapture.api.config_request import body_to_argv, config_from_body
from ecapture.cli import build_parser, parse_config
from ecapture.config import OutputFormat
from ecapture.errors import ConfigError
from ecapture.modules.openssl import TlsConfig


def parse(argv: list[str]) -> object:
    parsed = parse_config(build_parser(), argv)
    assert parsed is not None
    return parsed


def test_keys_become_long_flags() -> None:
    argv, given = body_to_argv("tls", {"module": "tls", "switch": True, "pid": 42, "hex": True,
                                       "debug": False, "libssl": "-odd", "kernel_call_limit": 9,
                                       "uid": None})
    assert argv == ["tls", "--pid=42", "--hex", "--libssl=-odd", "--kernel-call-limit=9"]
    assert given == ["pid", "hex", "libssl", "kernel-call-limit"]


@pytest.mark.parametrize(("body", "message"), [
    ({"pid": [1]}, "pid: expected a string, a number or a boolean, got list"),
    ({"Pid": 1}, "'Pid' is not a flag name"),
    ({"help": True}, "help cannot be set by a reload"),
    ({"api_token": "x"}, "api_token cannot be set by a reload"),
])
def test_bad_keys_are_refused(body: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        body_to_argv("tls", body)


def test_the_tls_flags_through_the_real_parser() -> None:
    running = TlsConfig(eventaddr="/tmp/events.jsonl", output_format=OutputFormat.JSON)
    cls, config = config_from_body(parse, "tls",  # type: ignore[arg-type]
                                   {"pid": 7, "probe_placement": "exported"}, running)
    assert cls.name == "tls" and isinstance(config, TlsConfig)
    assert config.pid == 7 and config.probe_placement.value == "exported"
    assert config.eventaddr == "/tmp/events.jsonl" and config.output_format is OutputFormat.JSON
    with pytest.raises(ConfigError, match="-p/--pid must be >= 0"):
        config_from_body(parse, "tls", {"pid": -1}, running)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid choice: 'sideways'"):
        config_from_body(parse, "tls", {"probe-placement": "sideways"},  # type: ignore[arg-type]
                         running)
    with pytest.raises(ConfigError, match="output_format is"):
        config_from_body(parse, "tls", {"format": "text"}, running)  # type: ignore[arg-type]
