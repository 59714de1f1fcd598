"""TLS secrets decoded from struct keylog_event (bpf/events.h, bpf/keylog.bpf.c).

tests/unit/test_secrets_layout.py checks the format below against the BTF of
the built keylog.bpf.o. A record the kernel flagged (a secret longer than the
record holds, a client random it could not read) decodes to a `KeylogFailure`
so it is counted and reported, never written as a key.
"""

from __future__ import annotations

import struct

import msgspec

from ecapture.errors import DecodeError
from ecapture.events import Clock

RECORD_KEYLOG_SECRET = 56  # bpf/events.h
KEYLOG_LABEL_SIZE = 48
KEYLOG_RANDOM_SIZE = 32
KEYLOG_SECRET_SIZE = 64
FLAG_SECRET_TOO_LONG = 1 << 0
FLAG_RANDOM_TOO_LONG = 1 << 1
FLAG_READ_FAULT = 1 << 2
# struct record_header (kind, pid, tid, uid, timestamp_ns, conn_id, ssl, socket_cookie,
# comm[16]), then
# label_len, random_len, secret_len, flags, label[48], random[32], secret[64]
KEYLOG_EVENT = struct.Struct(
    f"<4IQQQQ16s4I{KEYLOG_LABEL_SIZE}s{KEYLOG_RANDOM_SIZE}s{KEYLOG_SECRET_SIZE}s"
)
KEYLOG_STAT_RECORDS = 0  # indexes of the per-CPU keylog_stats array
KEYLOG_STAT_RING_FULL = 1


class KeylogSecret(msgspec.Struct, frozen=True):
    """One line of the NSS key log, and who derived it."""

    label: str
    client_random: bytes
    secret: bytes
    pid: int
    tid: int
    uid: int
    comm: str
    timestamp_ns: int  # ns since the epoch with a clock given to decode_keylog, else monotonic
    ssl: int  # the SSL* of the handshake

    def line(self) -> str:
        """`LABEL <client random hex> <secret hex>` (NSS key log format)."""
        return f"{self.label} {self.client_random.hex()} {self.secret.hex()}"


class KeylogFailure(msgspec.Struct, frozen=True):
    """A secret the probe saw but could not copy whole: counted, never written."""

    reason: str
    label: str
    pid: int
    comm: str
    ssl: int


def _reason(flags: int, random_len: int, secret_len: int) -> str:
    reasons = []
    if flags & FLAG_SECRET_TOO_LONG:
        reasons.append(f"secret of {secret_len} bytes > {KEYLOG_SECRET_SIZE}")
    if flags & FLAG_RANDOM_TOO_LONG:
        reasons.append(f"client random of {random_len} bytes > {KEYLOG_RANDOM_SIZE}")
    if flags & FLAG_READ_FAULT:
        reasons.append("reading the library's memory faulted")
    return "; ".join(reasons) or f"unknown flags {flags:#x}"


def decode_keylog(data: bytes, clock: Clock | None = None) -> KeylogSecret | KeylogFailure:
    if len(data) < KEYLOG_EVENT.size:
        raise DecodeError(f"keylog record of {len(data)} bytes; expected {KEYLOG_EVENT.size}")
    (
        kind, pid, tid, uid, timestamp_ns, _conn_id, ssl, _cookie, comm_raw,
        label_len, random_len, secret_len, flags, label_raw, random, secret,
    ) = KEYLOG_EVENT.unpack_from(data)
    if kind != RECORD_KEYLOG_SECRET:
        raise DecodeError(f"record kind {kind} is not a keylog record")
    comm = comm_raw.split(b"\0", 1)[0].decode(errors="replace")
    label = label_raw[: min(label_len, KEYLOG_LABEL_SIZE)].split(b"\0", 1)[0]
    label_text = label.decode("ascii", errors="replace")
    if flags == 0 and (not label or not label.isascii() or b" " in label):
        flags = FLAG_READ_FAULT  # an NSS label is one ASCII word: anything else is a bad read
    if flags:
        return KeylogFailure(
            _reason(flags, random_len, secret_len), label_text, pid, comm, ssl
        )
    return KeylogSecret(
        label=label_text,
        client_random=random[:random_len],
        secret=secret[:secret_len],
        pid=pid,
        tid=tid,
        uid=uid,
        comm=comm,
        timestamp_ns=timestamp_ns if clock is None else clock.to_epoch(timestamp_ns),
        ssl=ssl,
    )
