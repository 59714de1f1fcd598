"""`--listen` values, checked before anything starts (no aiohttp import here)."""

from __future__ import annotations

import ipaddress

from ecapture.errors import ConfigError


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `PORT` (then 127.0.0.1)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--listen {value}: expected HOST:PORT or PORT") from None
    if not 0 < port < 65536:
        raise ConfigError(f"--listen {value}: port must be in 1..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(value: str, token: str | None) -> tuple[str, int]:
    """Refuse, at start, an API reachable from other hosts without a token."""
    host, port = parse_listen(value)
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--listen {value} is not a loopback address: it needs --api-token TOKEN "
            "(or ECAPTURE_API_TOKEN), or listen on 127.0.0.1"
        )
    return host, port
