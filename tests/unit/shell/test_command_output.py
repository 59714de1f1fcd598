"""How a `command` is shown: the JSON contract and one text line per command."""

from __future__ import annotations

import datetime
import json

import pytest

from ecapture.modules import shell  # registers the Command renderers
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.text import TextWriter
from ecapture.processor.shell import Command

TS = 1_700_000_000_123_456_789


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
UTC = datetime.UTC


def command(line: bytes, retval: int | None, **extra: object) -> Command:
    fields: dict[str, object] = {
        "timestamp_ns": TS, "pid": 42, "tid": 42, "uid": 0, "comm": "bash", "tty": "pts/3",
        "shell": "bash", "line": line, "retval": retval, **extra}
    return Command(**fields)  # type: ignore[arg-type]


def test_json_keys_and_values() -> None:
    sink = MemorySink()
    writer = JsonLinesWriter("bash", sink)
    writer.write(command(b"for i in 1 2; do\necho $i; done", 0, lines=2))
    writer.write(command(b"exit", None))
    writer.close()
    first, second = (json.loads(line) for line in bytes(sink.data).splitlines())
    assert first == {
        "type": "command", "module": "bash", "ts": TS, "pid": 42, "tid": 42, "comm": "bash",
        "uid": 0, "tty": "pts/3", "shell": "bash", "line": "for i in 1 2; do\necho $i; done",
        "retval": 0, "lines": 2, "truncated": False,
    }
    assert second["retval"] is None


def test_text_is_one_escaped_line_per_command() -> None:
    sink = MemorySink()
    writer = TextWriter("bash", sink, timezone=UTC)
    writer.write(command(b"echo M1", 0))
    writer.write(command(b"for i in 1 2; do\necho $i; done", 0, lines=2))
    writer.write(command(b"false \x1b[31m", 1))
    writer.write(command(b"exit", None, tty=None, uid=4_000_000))
    writer.close()
    assert bytes(sink.data).decode().splitlines() == [
        "22:13:20.123456 root pid 42 pts/3 bash status 0: echo M1",
        "22:13:20.123456 root pid 42 pts/3 bash status 0: for i in 1 2; do\\necho $i; done",
        "22:13:20.123456 root pid 42 pts/3 bash status 1: false \\x1b[31m",
        "22:13:20.123456 4000000 pid 42 bash status ?: exit",
    ]
    assert shell.user_name(0) == "root"


def test_cli_flags_of_the_shell_modules() -> None:
    from ecapture.cli import build_parser, parse_config
    from ecapture.modules.bash import BashConfig, BashModule
    from ecapture.modules.zsh import ZshConfig, ZshModule

    parsed = parse_config(build_parser(), ["bash", "-e", "1", "--bash", "/bin/bash",
                                           "--readlineso", "/lib/libreadline.so.8"])
    assert parsed is not None
    cls, config = parsed
    assert cls is BashModule and isinstance(config, BashConfig)
    assert (config.errnumber, config.bash, config.readlineso) == (
        1, "/bin/bash", "/lib/libreadline.so.8")
    assert config.mapsize_kib == 1024  # a small ring unless --mapsize says otherwise
    parsed = parse_config(build_parser(), ["--mapsize", "8192", "zsh", "--errnumber", "0",
                                           "--zsh", "/bin/zsh"])
    assert parsed is not None
    cls, config = parsed
    assert cls is ZshModule and isinstance(config, ZshConfig)
    assert (config.errnumber, config.zsh, config.mapsize_kib) == (0, "/bin/zsh", 8192)


def test_help_lists_the_shell_commands_and_their_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ecapture.cli import main

    for argv in (["--help"], ["bash", "--help"], ["zsh", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "capture bash commands" in out and "capture zsh commands" in out
    assert "--errnumber" in out and "--readlineso" in out and "--zsh" in out and "--bash" in out
