"""struct keylog_event: its decoder, and the format against the BTF of keylog.bpf.o."""

from __future__ import annotations

from typing import Any

import pytest
from btf_layout import btf_structs as btf_structs_of

from ecapture import secrets
from ecapture.errors import DecodeError
from ecapture.events import Clock
from ecapture.secrets import KEYLOG_EVENT, KeylogFailure, KeylogSecret, decode_keylog

RANDOM = bytes(range(32))
SECRET = bytes(range(100, 148))


def record(
    label: bytes = b"CLIENT_HANDSHAKE_TRAFFIC_SECRET", *, random: bytes = RANDOM,
    secret: bytes = SECRET, flags: int = 0, kind: int = secrets.RECORD_KEYLOG_SECRET,
    random_len: int | None = None, secret_len: int | None = None,
) -> bytes:
    return KEYLOG_EVENT.pack(
        kind, 42, 43, 1000, 5_000, 0, 0x5566, 0, b"curl", len(label),
        len(random) if random_len is None else random_len,
        len(secret) if secret_len is None else secret_len, flags,
        label, random, secret,
    )


def test_decodes_label_random_and_secret_to_their_lengths() -> None:
    decoded = decode_keylog(record())
    assert isinstance(decoded, KeylogSecret)
    assert decoded.label == "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
    assert decoded.client_random == RANDOM and decoded.secret == SECRET
    assert (decoded.pid, decoded.tid, decoded.uid, decoded.comm, decoded.ssl) == (
        42, 43, 1000, "curl", 0x5566)
    assert decoded.timestamp_ns == 5_000
    assert decode_keylog(record(), Clock(10**18)).timestamp_ns == 10**18 + 5_000  # type: ignore[union-attr]
    assert decoded.line() == f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {RANDOM.hex()} {SECRET.hex()}"


def test_rsa_label_keeps_its_eight_byte_tag() -> None:
    decoded = decode_keylog(record(b"RSA", random=RANDOM[:8], secret=SECRET))
    assert isinstance(decoded, KeylogSecret)
    assert decoded.line().split()[1] == RANDOM[:8].hex()


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (secrets.FLAG_SECRET_TOO_LONG, "secret of 80 bytes > 64"),
        (secrets.FLAG_RANDOM_TOO_LONG, "client random of 32 bytes > 32"),
        (secrets.FLAG_READ_FAULT, "faulted"),
    ],
)
def test_flagged_records_are_failures_not_keys(flags: int, reason: str) -> None:
    decoded = decode_keylog(record(flags=flags, secret_len=80))
    assert isinstance(decoded, KeylogFailure)
    assert reason in decoded.reason and decoded.label == "CLIENT_HANDSHAKE_TRAFFIC_SECRET"


@pytest.mark.parametrize("label", [b"", b"TWO WORDS", "CLIENT_RANDOM\u00e9".encode()])
def test_a_label_that_is_not_one_ascii_word_is_a_failure(label: bytes) -> None:
    assert isinstance(decode_keylog(record(label)), KeylogFailure)


def test_short_or_foreign_records_are_refused() -> None:
    with pytest.raises(DecodeError, match="expected"):
        decode_keylog(record()[:-1])
    with pytest.raises(DecodeError, match="not a keylog record"):
        decode_keylog(record(kind=1))


@pytest.fixture(scope="module")
def btf_structs() -> dict[str, dict[str, Any]]:
    return btf_structs_of("keylog.bpf.o")


def test_keylog_event_layout_matches_btf(btf_structs: dict[str, dict[str, Any]]) -> None:
    event = btf_structs["keylog_event"]
    assert event["size"] == KEYLOG_EVENT.size
    fields = {m["name"]: m["bits_offset"] // 8 for m in event["members"]}
    header = 64
    assert fields == {
        "header": 0, "label_len": header, "random_len": header + 4, "secret_len": header + 8,
        "flags": header + 12, "label": header + 16, "random": header + 16 + 48,
        "secret": header + 16 + 48 + 32,
    }
    assert btf_structs["record_header"]["size"] == header
