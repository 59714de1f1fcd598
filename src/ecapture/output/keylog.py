"""The NSS key log file: `LABEL <client random hex> <secret hex>`, one line per secret.

Format: draft-ietf-tls-keylogfile (the SSLKEYLOGFILE format NSS, OpenSSL,
BoringSSL, curl and Wireshark share). Lines are appended (a file a client
writes its own key log to may be shared) and written with one write(2) each
as they come, so a reader such as `tshark -o tls.keylog_file:` or a
concurrent capture sees every complete line at once. A secret already written
(same label and client random) is not written again: a probe sees it each
time the library logs it, and resumed or retried handshakes log the same one.
"""

from __future__ import annotations

import os

from ecapture.files import open_private_file
from ecapture.output.sinks import write_all
from ecapture.secrets import KeylogSecret

# Keys remembered for de-duplication; beyond this the oldest half is dropped
# (a repeat of a forgotten key is then written twice: harmless to every reader).
MAX_REMEMBERED = 1 << 20


class KeylogWriter:
    """Appends each new secret to `path` (files.py: 0600, never through a symlink)."""

    def __init__(self, path: str, *, flag: str = "--keylogfile") -> None:
        self.path = path
        self._fd: int | None = open_private_file(path, flag, append=True)
        self._seen: dict[tuple[str, bytes], None] = {}
        self.written = 0
        self.duplicates = 0

    def write(self, secret: KeylogSecret) -> bool:
        """Write the line of `secret` unless it was written before; True when written."""
        key = (secret.label, secret.client_random)
        if key in self._seen:
            self.duplicates += 1
            return False
        if self._fd is None:
            raise ValueError(f"key log {self.path} is closed")
        write_all(self._fd, (secret.line() + "\n").encode("ascii"))
        self._seen[key] = None
        if len(self._seen) > MAX_REMEMBERED:
            for old in list(self._seen)[: MAX_REMEMBERED // 2]:
                del self._seen[old]
        self.written += 1
        return True

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> KeylogWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
