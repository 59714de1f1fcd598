"""What the writers share about HTTP messages: header text, URLs, bodies.

Header bytes are decoded as latin-1 (RFC 9110 §5.5: field values are
octets; latin-1 maps each to one code point, so nothing is lost).
"""

from __future__ import annotations

from dataclasses import dataclass

from ecapture.processor.bodies import decode_body
from ecapture.processor.model import Headers, HttpRequest, HttpResponse

# Only TLS modules produce HTTP exchanges, so an HTTP/1 request (which
# carries no scheme) was made over https.
DEFAULT_SCHEME = "https"


def header_pairs(headers: Headers) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of header `name` (lower-case), in order."""
    return [value for key, value in headers if key.lower() == name]


def header_value(headers: Headers, name: bytes) -> str | None:
    """The values of `name` joined by ", " (RFC 9110 §5.3), or None."""
    values = header_values(headers, name)
    return ", ".join(value.decode("latin-1") for value in values) if values else None


def exchange_url(request: HttpRequest) -> str:
    """scheme://authority/target when the authority is known, else the target."""
    target = request.target
    if target.startswith(("http://", "https://")):  # absolute-form (RFC 9112 §3.2.2)
        return target
    if request.authority is None or request.method == "CONNECT" or not target.startswith("/"):
        return target  # authority-form, asterisk-form, or unknown authority
    return f"{request.scheme or DEFAULT_SCHEME}://{request.authority}{target}"


@dataclass(frozen=True, slots=True)
class BodyView:
    """A body as a writer shows it."""

    shown: bytes  # decoded when possible, then cut to -t/--tsize
    decoded: bool  # a content coding was undone
    full_len: int  # length of the body before the -t cut (decoded when `decoded`)
    cut_bytes: int  # bytes left out by -t/--tsize


def view_body(message: HttpRequest | HttpResponse, tsize: int = 0) -> BodyView:
    """Undo Content-Encoding (when it can be undone), then apply -t/--tsize."""
    body = message.body
    decoded = False
    encoding = header_value(message.headers, b"content-encoding")
    if body and encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # A body cut short by the parser cannot decode; it is shown as captured.
        plain = None if message.body_truncated else decode_body(body, encoding)
        if plain is not None:
            body = plain
            decoded = True
    full_len = len(body)
    if tsize and full_len > tsize:
        return BodyView(body[:tsize], decoded, full_len, full_len - tsize)
    return BodyView(body, decoded, full_len, 0)
