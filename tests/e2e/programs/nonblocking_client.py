"""A TLS write retried before the handshake ends: `nonblocking_client.py PORT REQUEST_HEX`.

The socket is non-blocking and the handshake is not done on connect, so the
first `send` runs the handshake inside SSL_write_ex and fails with
SSLWantRead/WantWrite until the server answered: it is retried until it
succeeds. Then the response is read to EOF. stderr gets
`retries=N fd=N sent=N`; stdout the response.

On loopback the server's whole first flight can arrive before the client's
first read (the server may run in between), so the client connects through a
plain-TCP relay thread in this process that holds the ClientHello back for
RELAY_DELAY_S: the first attempts then must fail with SSLWantRead.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
import threading
import time

DEADLINE_S = 15.0
RELAY_DELAY_S = 0.1


def pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    first = True
    try:
        while chunk := source.recv(65536):
            if first:
                time.sleep(delay)
                first = False
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (sink, source):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def start_relay(port: int) -> int:
    """A one-connection TCP relay to 127.0.0.1:port; returns its own port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        client, _ = listener.accept()
        listener.close()
        server = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        server.settimeout(None)
        client.settimeout(None)
        threading.Thread(target=pump, args=(server, client, 0.0), daemon=True).start()
        pump(client, server, RELAY_DELAY_S)

    threading.Thread(target=serve, daemon=True).start()
    relay_port: int = listener.getsockname()[1]
    return relay_port


def wait(sock: ssl.SSLSocket, error: ssl.SSLError) -> None:
    readable = [sock] if isinstance(error, ssl.SSLWantReadError) else []
    writable = [sock] if isinstance(error, ssl.SSLWantWriteError) else []
    select.select(readable, writable, [], 1.0)


def main() -> None:
    port, request = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
    deadline = time.monotonic() + DEADLINE_S
    context = ssl._create_unverified_context()
    relay_port = start_relay(port)
    raw = socket.create_connection(("127.0.0.1", relay_port), timeout=DEADLINE_S)
    raw.setblocking(False)
    sock = context.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="localhost")
    retries = 0
    sent = 0
    while sent == 0:
        if time.monotonic() > deadline:
            sys.exit("send never succeeded")
        try:
            sent = sock.send(request)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as error:
            retries += 1
            wait(sock, error)
    # SSL_write_ex with partial writes off sends all or nothing.
    assert sent == len(request), (sent, len(request))
    response = bytearray()
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as error:
            wait(sock, error)
            continue
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        response += chunk
    sys.stderr.write(f"retries={retries} fd={sock.fileno()} sent={sent}\n")
    sys.stdout.buffer.write(response)
    sock.close()


if __name__ == "__main__":
    main()
