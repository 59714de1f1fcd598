"""h11 as the oracle for HTTP/1 heads and bodies.

h11 is a strict, well-tested HTTP/1.1 implementation (30-70x slower than
ours, docs/architecture.md#dependencies); here it reads the same recorded bytes as the two peers
would: a server-role connection reads the client's bytes, a client-role
connection reads the server's, and each is told what its peer sent so that
it knows the framing (HEAD, 1xx, pipelining one cycle at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from .factories import SEND, Chunks


@dataclass(frozen=True)
class OracleExchange:
    method: str
    target: str
    request_headers: tuple[tuple[bytes, bytes], ...]
    request_body: bytes
    status: int
    reason: str
    response_headers: tuple[tuple[bytes, bytes], ...]
    response_body: bytes
    trailers: tuple[tuple[bytes, bytes], ...]
    informational: tuple[int, ...]


def _until_end(connection: h11.Connection) -> list[object]:
    events: list[object] = []
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            raise AssertionError(f"h11 stopped early ({event!r}) after {events!r}")
        events.append(event)
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return events


def h11_exchanges(chunks: Chunks) -> list[OracleExchange]:
    server_side = h11.Connection(h11.SERVER)  # reads what the client sent
    client_side = h11.Connection(h11.CLIENT)  # reads what the server sent
    server_side.receive_data(b"".join(data for direction, data in chunks if direction is SEND))
    client_side.receive_data(b"".join(data for direction, data in chunks if direction is not SEND))
    # each recording ends with the connection closed
    server_side.receive_data(b"")
    client_side.receive_data(b"")
    results = []
    while True:
        event = server_side.next_event()
        if isinstance(event, h11.ConnectionClosed):
            break
        assert isinstance(event, h11.Request), event
        request = event
        request_events = _until_end(server_side)
        request_body = b"".join(bytes(e.data) for e in request_events if isinstance(e, h11.Data))
        client_side.send(h11.Request(method=request.method, target=request.target,
                                     headers=request.headers))
        if request_body:
            client_side.send(h11.Data(data=request_body))
        client_side.send(h11.EndOfMessage())
        informational = []
        while True:
            response = client_side.next_event()
            if isinstance(response, h11.InformationalResponse):
                informational.append(response.status_code)
                server_side.send(response)
                continue
            assert isinstance(response, h11.Response), response
            break
        response_events = _until_end(client_side)
        response_body = b"".join(bytes(e.data) for e in response_events if isinstance(e, h11.Data))
        end = response_events[-1]
        trailers = tuple(end.headers) if isinstance(end, h11.EndOfMessage) else ()
        results.append(OracleExchange(
            method=request.method.decode(), target=request.target.decode(),
            request_headers=tuple(request.headers), request_body=request_body,
            status=response.status_code, reason=response.reason.decode(),
            response_headers=tuple(response.headers), response_body=response_body,
            trailers=trailers, informational=tuple(informational),
        ))
        server_side.send(response)
        if response_body and request.method != b"HEAD":
            server_side.send(h11.Data(data=response_body))
        server_side.send(h11.EndOfMessage())
        if server_side.our_state is h11.MUST_CLOSE or client_side.their_state is h11.MUST_CLOSE:
            break
        server_side.start_next_cycle()
        client_side.start_next_cycle()
    return results
