"""A reload request's JSON body → the flags of the module it names → a config.

The body uses the flags' long names (`{"module": "tls", "pid": 42, "libssl":
"/usr/lib/x86_64-linux-gnu/libssl.so.3", "hex": true}`), so the API takes
exactly what the command line takes, each module's own flags included, and a
bad value gets the same message naming the flag. Each key becomes
`--key=value` (`_` and `-` alike); `true` is a flag given, `false` and `null`
one left out.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ecapture.config import GlobalConfig
from ecapture.errors import ConfigError
from ecapture.modules.base import Module

from .controller import CAPTURE_FIELDS, keep_capture_fields

# Keys of the body that are not flags.
CONTROL_KEYS = frozenset({"module", "switch"})
# Flags a running capture cannot take over the API.
REFUSED_KEYS = frozenset({"help", "version", "listen", "api-token"})
# Flag name (as in the body) → the config field it sets, for the capture-wide fields.
CAPTURE_FLAGS = {"eventaddr": "eventaddr", "format": "output_format", "har": "har_file",
                 "tsize": "tsize", "hex": "hex", "color": "color", "logaddr": "logaddr",
                 "debug": "debug", "nice": "nice"}
assert set(CAPTURE_FLAGS.values()) == set(CAPTURE_FIELDS)
_KEY = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")

Parse = Callable[[Sequence[str]], tuple[type[Module], GlobalConfig]]


def body_to_argv(module: str, body: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(argv for `ecapture MODULE ...`, the flag names given)."""
    argv = [module]
    given: list[str] = []
    for key, value in body.items():
        if key in CONTROL_KEYS:
            continue
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError(f"{key!r} is not a flag name")
        flag = key.replace("_", "-")
        if flag in REFUSED_KEYS:
            raise ConfigError(f"{key} cannot be set by a reload")
        if value is None or value is False:
            continue
        given.append(flag)
        if value is True:
            argv.append(f"--{flag}")
        elif isinstance(value, int | float | str):
            argv.append(f"--{flag}={value}")
        else:
            raise ConfigError(f"{key}: expected a string, a number or a boolean, "
                              f"got {type(value).__name__}")
    return argv, given


def config_from_body(
    parse: Parse, module: str, body: Mapping[str, Any], running: GlobalConfig,
) -> tuple[type[Module], GlobalConfig]:
    """Validate a body as the command line would; keep the capture-wide fields."""
    argv, given = body_to_argv(module, body)
    try:
        cls, config = parse(argv)
    except SystemExit as error:  # argparse's own exits; help and version are refused above
        raise ConfigError(f"invalid flags: {' '.join(argv[1:])}") from error
    fields = [CAPTURE_FLAGS[flag] for flag in given if flag in CAPTURE_FLAGS]
    return cls, keep_capture_fields(running, config, fields)


def module_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser (aliases included), from the built command line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
