"""`ecapture`: argument parsing only → a typed config → run the module.

eCapture's global flags are accepted before and after the subcommand
(`ecapture -p 42 tls` and `ecapture tls -p 42`). Every subcommand comes from
the module registry: a new module brings its own flags.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ecapture import __version__
from ecapture.api.listen import check_listen
from ecapture.config import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_MAPSIZE_KIB,
    BtfMode,
    DataPath,
    GlobalConfig,
    OutputFormat,
)
from ecapture.errors import ConfigError, EcaptureError
from ecapture.files import EXISTING_FILE_RULES
from ecapture.logs import setup_logging
from ecapture.modules.registry import ALIASES, load_all, module_class

if TYPE_CHECKING:
    from ecapture.modules.base import Module

log = logging.getLogger("ecapture")

_FILE_RULES = EXISTING_FILE_RULES[0].upper() + EXISTING_FILE_RULES[1:]
EXAMPLES = f"""\
examples:
  ecapture tls                              plaintext of every OpenSSL program, as text
  ecapture tls --format json > events.jsonl one JSON object per line
  ecapture tls -p 1234 --har flows.har      one process; HTTP exchanges also to a HAR file
  ecapture tls --libssl /usr/lib/x86_64-linux-gnu/android/libssl.so.0   BoringSSL
  ecapture tls -m keylog -k keys.log        every TLS secret (tshark -o tls.keylog_file:keys.log)
  ecapture tls -m pcap -w tls.pcapng -i eth0 tcp port 443   packets + secrets: tshark -r decrypts
  ecapture bash -e 1                        bash commands (and psql/sqlite3 input) that returned 1
  ecapture zsh --format json                zsh commands with their exit status, as JSON

files (--eventaddr, --har, --logaddr; tls -k, -w):
  created new with mode 0600; a symbolic link (dangling or not), a FIFO, a
  device or a directory is refused, never followed or written to. {_FILE_RULES};
  it is then truncated (--logaddr, -k: appended to) and its mode left as it is.

stopping:
  the first SIGINT/SIGTERM detaches the probes, then writes out what the ring
  buffer still holds for at most --drain-timeout seconds (progress is logged
  each second); what is left then is counted as lost (reason "stopped"), in
  the event stream and the exit summary. A second signal stops at once,
  counting what is left the same way. (A tcp:// collector that stops reading
  can hold one send for up to 30 s, then the capture fails.)

exit status: 0 after a stop by signal; 1 when the capture failed (e.g. the
events could not be delivered); 2 for a bad flag or value.
"""

# Global flag → default; the defaults are applied after parsing so that a
# flag given before the subcommand is not overwritten by the subcommand's.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "pid": 0, "uid": None, "hex": False, "tsize": 0, "mapsize": DEFAULT_MAPSIZE_KIB,
    "btf": 0, "btf_file": None, "debug": False, "logaddr": None, "eventaddr": None,
    "format": "text", "har": None, "color": "auto", "nice": 10,
    "drain_timeout": DEFAULT_DRAIN_TIMEOUT_S, "data_path": "auto", "listen": None,
    "api_token": None,
}
API_TOKEN_VARIABLE = "ECAPTURE_API_TOKEN"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a malformed flag is one `ecapture: error:` line (main()
    prints it), not the whole usage block: the usage is one `--help` away."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # argparse's messages are one line; make sure
        raise ConfigError(f"{text} (see '{self.prog} --help')")


def _add_global_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("global flags (before or after the command)")
    add = group.add_argument
    suppress = argparse.SUPPRESS
    add("-p", "--pid", type=int, default=suppress, metavar="PID",
        help="capture this process only (default: every process)")
    add("-u", "--uid", type=int, default=suppress, metavar="UID",
        help="capture this user's processes only (default: every user)")
    add("--hex", action="store_true", default=suppress,
        help="show payloads as a hex dump (text format)")
    add("-t", "--tsize", type=int, default=suppress, metavar="BYTES",
        help="show at most BYTES of each payload; cut ones are flagged and counted "
        "(default 0 = all)")
    add("--mapsize", type=int, default=suppress, metavar="KIB",
        help=f"ring buffer size in KiB, a power of two (default {DEFAULT_MAPSIZE_KIB})")
    add("-b", "--btf", type=int, default=suppress, choices=[m.value for m in BtfMode],
        help="BTF mode: 0 auto (default), 1 CO-RE; 2 (non-CO-RE) is not supported")
    add("--btf-file", default=suppress, metavar="PATH",
        help="kernel BTF to use instead of /sys/kernel/btf/vmlinux")
    add("-d", "--debug", action="store_true", default=suppress,
        help="debug logs, libbpf's included")
    add("-l", "--logaddr", default=suppress, metavar="ADDR",
        help="send logs to a file or tcp://host:port instead of stderr")
    add("--eventaddr", default=suppress, metavar="ADDR",
        help="send events to a file (created 0600) or tcp://host:port instead of stdout")
    add("--format", default=suppress, choices=[f.value for f in OutputFormat],
        help="text: readable blocks (default); json: one JSON object per line")
    add("--har", default=suppress, metavar="FILE",
        help="also write every HTTP exchange to a HAR 1.2 file (created 0600)")
    add("--color", default=suppress, choices=["auto", "always", "never"],
        help="colour text output (default auto: on a terminal, unless NO_COLOR is set)")
    add("--nice", type=int, default=suppress, metavar="N",
        help="scheduling niceness of ecapture itself, -20..19 (default 10: the traced "
        "programs get the CPU first; the ring buffer holds the backlog; 0 = normal)")
    add("--drain-timeout", type=float, default=suppress, metavar="SECONDS",
        help="at stop, write out what the ring still holds for at most this long; "
        f"the rest is counted as lost (default {DEFAULT_DRAIN_TIMEOUT_S:g})")
    add("--data-path", default=suppress, choices=[d.value for d in DataPath],
        help="who handles each record of a TLS capture written as JSON: native (the "
        "Rust core reads the ring itself), python (the reference pipeline); default "
        "auto: native whenever the output is JSON lines only")
    add("--listen", default=suppress, metavar="HOST:PORT",
        help="serve the HTTP API (status, reload, events, live page) here; a port alone "
        "means 127.0.0.1 (default: off)")
    add("--api-token", default=suppress, metavar="TOKEN",
        help=f"every API request needs 'Authorization: Bearer TOKEN' (or set "
        f"{API_TOKEN_VARIABLE}); required to listen on anything but loopback")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="ecapture",
        description="Capture what Linux programs send and receive over TLS, as plaintext, "
        "with eBPF uprobes: no CA certificate, no change to the program. Needs root.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ecapture {__version__}")
    _add_global_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    aliases_of: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases_of.setdefault(name, []).append(alias)
    for name, cls in sorted(load_all().items()):
        sub = commands.add_parser(
            name, aliases=aliases_of.get(name, []), help=cls.summary,
            description=(cls.__doc__ or cls.summary).strip(),
        )
        _add_global_flags(sub)
        cls.add_arguments(sub)
    return parser


def _common_config(args: argparse.Namespace) -> dict[str, Any]:
    values = {key: getattr(args, key, default) for key, default in GLOBAL_DEFAULTS.items()}
    color = values["color"]
    return {
        "pid": values["pid"], "uid": values["uid"], "hex": values["hex"],
        "tsize": values["tsize"], "mapsize_kib": values["mapsize"], "btf": BtfMode(values["btf"]),
        "btf_file": values["btf_file"], "debug": values["debug"], "logaddr": values["logaddr"],
        "eventaddr": values["eventaddr"], "output_format": OutputFormat(values["format"]),
        "har_file": values["har"], "color": None if color == "auto" else color == "always",
        "nice": values["nice"], "drain_timeout_s": values["drain_timeout"],
        "data_path": DataPath(values["data_path"]),
    }


def run(
    cls: type[Module], config: GlobalConfig, *, listen: str | None = None,
    token: str | None = None, parser: argparse.ArgumentParser | None = None,
) -> int:
    """The lifecycle, owned by the controller: init → start → run until
    SIGINT/SIGTERM (reloading on API requests) → close."""
    from ecapture.api.controller import Controller

    address = None if listen is None else check_listen(listen, token)
    _set_niceness(config.nice)
    _return_big_blocks()
    controller = Controller(cls, config)
    if address is None:
        return controller.run_alone()  # no API, no reloads: no event loop either
    import asyncio

    from ecapture.api.server import ApiServer

    api_parser = parser or build_parser()
    host, port = address

    async def serve(running: Controller) -> ApiServer:
        def parse(argv: Sequence[str]) -> tuple[type[Module], GlobalConfig]:
            parsed = parse_config(api_parser, argv)
            if parsed is None:
                raise ConfigError("no module given")
            return parsed

        return await ApiServer(running, api_parser, parse, host=host, port=port,
                               token=token).start()

    return asyncio.run(controller.run(serve))


def _set_niceness(nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as error:  # e.g. a negative value without CAP_SYS_NICE
        log.warning("cannot set niceness %d: %s", nice, error.strerror)


# mallopt(3) M_MMAP_THRESHOLD (glibc malloc/malloc.h): blocks of at least this many
# bytes get their own mapping, unmapped when freed.
M_MMAP_THRESHOLD = -3
BIG_BLOCK_BYTES = 1 << 20


def _return_big_blocks() -> None:
    """Give a burst's buffers back to the system when it is over.

    glibc raises its mmap threshold to the size of each mapped block freed
    (up to 32 MiB): after the first poll of a backlog (a few MiB of JSON
    lines, built in Rust, then copied into a bytes object), such buffers
    come from the capture thread's heap, and freeing them keeps the pages.
    Under wrk that left 4-10 MB resident for good (RSS without the ring's
    pages 40 MB idle, 44-50 MB after); with a fixed threshold (which turns
    the adjustment off) it is 40 MB after, as idle. Not glibc: nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not mallopt(M_MMAP_THRESHOLD, BIG_BLOCK_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused: freed buffers may stay resident")


def parse_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None,
) -> tuple[type[Module], GlobalConfig] | None:
    """Flags → (module class, validated config); None when no command was given.

    A malformed flag, and a value that parses but is invalid, raise
    ConfigError naming the flag (--help and --version exit 0 here)."""
    args = parser.parse_args(argv)
    if args.command is None:
        return None
    cls = module_class(args.command)
    return cls, cls.config_from_args(args, _common_config(args))


def api_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None,
) -> tuple[str | None, str | None]:
    """--listen and the API token (--api-token, else $ECAPTURE_API_TOKEN)."""
    args = parser.parse_args(argv)
    listen = getattr(args, "listen", None)
    token = getattr(args, "api_token", None) or os.environ.get(API_TOKEN_VARIABLE) or None
    if token is not None and not token.strip():
        raise ConfigError("--api-token must not be empty")
    return listen, token


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        parsed = parse_config(parser, argv)
        if parsed is None:
            parser.print_help(sys.stderr)
            return 2
        cls, config = parsed
        listen, token = api_settings(parser, argv)
        if listen is not None:
            check_listen(listen, token)  # refused before anything starts
        setup_logging(debug=config.debug, logaddr=config.logaddr)
        return run(cls, config, listen=listen, token=token, parser=parser)
    except ConfigError as error:
        print(f"ecapture: error: {error}", file=sys.stderr)
        return 2
    except EcaptureError as error:
        print(f"ecapture: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0  # the reader of our stdout went away (e.g. `| head`)


if __name__ == "__main__":
    sys.exit(main())
