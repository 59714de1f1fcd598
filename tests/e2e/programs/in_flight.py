"""Blocking Python TLS peers for the in-flight test: `in_flight.py ROLE ...`.

server PORT CERT KEY: accepts one connection, finishes the handshake, prints
    `reading fd=N`, then blocks in ssl_socket.recv() (SSL_read_ex, a blocking
    socket: no timeout, so CPython calls it without polling first) and answers
    `HTTP/1.1 200` with the body `in flight answered: <request line>`.
writer PORT CERT KEY SIZE: accepts one connection, finishes the handshake,
    prints `writing fd=N`, then sends SIZE bytes in one ssl_socket.sendall()
    (one SSL_write_ex, blocked in write() while the client reads nothing),
    then `written <SIZE>` in a second call, and closes.
client PORT: connects and finishes the handshake, prints `connected`, waits
    for a line on stdin (blocked reading a pipe, outside any SSL call), then
    sends `GET /in-flight/<that line>` and writes the response to stdout.
reader PORT: connects, prints `connected`, waits for a line on stdin, then
    reads until the server closes and prints `<bytes received> <last 40 bytes>`.
idle: does a TLS exchange with itself over a socketpair (SSL_write_ex and
    SSL_read_ex on this thread's stack), closes it, prints `idle`, then blocks
    in recv() on a plain socket: in socket I/O, not inside an SSL call.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading

HOST = "127.0.0.1"
SMALL_BUFFER = 16 << 10


def server(port: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.create_server((HOST, port)) as listener:
        print("listening", flush=True)
        connection, _ = listener.accept()
    with context.wrap_socket(connection, server_side=True) as tls:
        print(f"reading fd={tls.fileno()}", flush=True)
        request = tls.recv(65536)
        body = b"in flight answered: " + request.split(b"\r\n", 1)[0] + b"\n"
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(body) + body)


def writer(port: int, cert: str, key: str, size: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.create_server((HOST, port)) as listener:
        print("listening", flush=True)
        connection, _ = listener.accept()
    # Small buffers on both ends: the write blocks after ~100 KiB, not megabytes.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    with context.wrap_socket(connection, server_side=True) as tls:
        print(f"writing fd={tls.fileno()}", flush=True)
        tls.sendall(bytes(size))
        tls.sendall(b"written %d" % size)


def reader(port: int) -> None:
    """Like client, but reads what the server sends without asking."""
    context = ssl._create_unverified_context()
    plain = socket.socket()
    plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # before the SYN
    plain.connect((HOST, port))
    with context.wrap_socket(plain) as tls:
        print("connected", flush=True)
        sys.stdin.readline()
        received, tail = 0, b""
        while chunk := tls.recv(1 << 16):
            received += len(chunk)
            tail = (tail + chunk)[-40:]
    sys.stdout.buffer.write(b"%d %s" % (received, tail))


def client(port: int) -> None:
    context = ssl._create_unverified_context()
    with context.wrap_socket(socket.create_connection((HOST, port))) as tls:
        print("connected", flush=True)
        nonce = sys.stdin.readline().strip()
        tls.sendall(f"GET /in-flight/{nonce} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    sys.stdout.buffer.write(response)


def idle(cert: str, key: str) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    near, far = socket.socketpair()

    def answer() -> None:
        with server_context.wrap_socket(far, server_side=True) as tls:
            tls.sendall(tls.recv(100))

    peer = threading.Thread(target=answer)
    peer.start()
    with ssl._create_unverified_context().wrap_socket(near) as tls:
        tls.sendall(b"ping")
        assert tls.recv(100) == b"ping"
    peer.join()
    plain, _other_end = socket.socketpair()
    print("idle", flush=True)
    plain.recv(1)  # blocks until killed


def main() -> None:
    role, *args = sys.argv[1:]
    if role == "server":
        server(int(args[0]), args[1], args[2])
    elif role == "writer":
        writer(int(args[0]), args[1], args[2], int(args[3]))
    elif role == "reader":
        reader(int(args[0]))
    elif role == "client":
        client(int(args[0]))
    elif role == "idle":
        idle(args[0], args[1])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
