"""One HTTP/2 connection, used, left idle, used again (the h2 library over ssl):
`h2_idle_client.py PORT GAP_SECONDS PATH MARKER`.

Both requests carry `x-marker: MARKER`; h2's HPACK encoder puts it in the
dynamic table with the first request, so the second one sends only its index
and only a decoder that kept the connection's table can read it. stdout: the
two response bodies; stderr: `stream=N status=S` per response.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

TIMEOUT_S = 15.0


def exchange(sock: ssl.SSLSocket, connection: h2.connection.H2Connection,
             headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    stream = connection.get_next_available_stream_id()
    connection.send_headers(stream, headers, end_stream=True)
    sock.sendall(connection.data_to_send())
    status, body = 0, bytearray()
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the server closed the connection")
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
                connection.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                sock.sendall(connection.data_to_send())
                sys.stderr.write(f"stream={stream} status={status}\n")
                return status, bytes(body)
        sock.sendall(connection.data_to_send())
    raise SystemExit(f"no answer on stream {stream} in {TIMEOUT_S} s")


def main() -> None:
    port, gap, path, marker = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = ssl._create_unverified_context()
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        sock.sendall(connection.data_to_send())
        headers = [(":method", "GET"), (":authority", f"127.0.0.1:{port}"),
                   (":scheme", "https"), (":path", path), ("x-marker", marker)]
        for number in (1, 2):
            if number == 2:
                time.sleep(gap)  # idle: no byte either way
            _, body = exchange(sock, connection, headers)
            sys.stdout.buffer.write(body)
        connection.close_connection()
        sock.sendall(connection.data_to_send())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
