"""HTTP/2 traffic made by the h2 library in memory, recorded as the wire saw it.

Two h2 connections, a client and a server, hand each other their bytes;
every hand-over is recorded as one chunk in the client's view ("send" is
client → server).
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

from .factories import RECV, SEND, Chunks

Headers = list[tuple[str, str]]


class H2Pair:
    def __init__(self, *, server_first: bool = False) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.chunks: list[tuple[object, bytes]] = []
        self.server_events: list[h2.events.Event] = []
        self.client_events: list[h2.events.Event] = []
        if server_first:  # e.g. nginx writes its SETTINGS before reading the preface
            self.server.initiate_connection()
            self.client.initiate_connection()
            self._server_to_client()
        else:
            self.client.initiate_connection()
            self.server.initiate_connection()
        self.pump()

    def _server_to_client(self) -> bool:
        data = self.server.data_to_send()
        if not data:
            return False
        self.chunks.append((RECV, data))
        self.client_events += self.client.receive_data(data)
        return True

    def pump(self) -> None:
        """Deliver bytes both ways until both ends are quiet."""
        while True:
            moved = False
            data = self.client.data_to_send()
            if data:
                self.chunks.append((SEND, data))
                self.server_events += self.server.receive_data(data)
                moved = True
            moved = self._server_to_client() or moved
            if not moved:
                return

    def recorded(self) -> Chunks:
        return [(direction, data) for direction, data in self.chunks]  # type: ignore[misc]


def request_headers(path: str, method: str = "GET", extra: Headers | None = None) -> Headers:
    return [(":method", method), (":authority", "example.test"), (":scheme", "https"),
            (":path", path), *(extra or [])]
