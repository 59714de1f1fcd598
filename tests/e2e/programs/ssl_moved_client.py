"""One TLS connection whose SSL* moves to another socket half-way:
`ssl_moved_client.py CERT KEY`.

A forked server and this client talk TLS over a socketpair. After the first
exchange the client's fd is pointed at a new socketpair with dup2 (the SSL*
keeps using the same fd number, now another socket), and a relay thread
carries the bytes between the new socket and the old one, so the TLS stream
goes on unbroken. stdout: both responses; stderr: `server=PID fd=FD`.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def read_head(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            raise SystemExit("connection closed early")
        data += chunk
    return data


def serve(sock: socket.socket, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with context.wrap_socket(sock, server_side=True) as tls:
        for _ in range(2):
            read_head(tls)
            tls.sendall(RESPONSE)
        tls.recv(1)  # until the client goes


def relay(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
        target.shutdown(socket.SHUT_WR)
    except OSError:  # the other end went away at exit
        pass


def exchange(tls: ssl.SSLSocket, path: str) -> bytes:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: moved.test\r\n\r\n".encode())
    answer = read_head(tls)
    while not answer.endswith(b"ok"):
        answer += tls.recv(4096)
    return answer


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    ours, theirs = socket.socketpair()
    server = os.fork()
    if server == 0:
        ours.close()
        serve(theirs, cert, key)
        os._exit(0)
    theirs.close()
    context = ssl._create_unverified_context()
    with context.wrap_socket(ours) as tls:
        first = exchange(tls, "/before-the-move")
        old = socket.socket(fileno=os.dup(tls.fileno()))  # the first socket, kept open
        new, far = socket.socketpair()
        os.dup2(new.fileno(), tls.fileno())  # the SSL* now reads and writes `new`
        new.close()
        for source, target in ((far, old), (old, far)):
            threading.Thread(target=relay, args=(source, target), daemon=True).start()
        second = exchange(tls, "/after-the-move")
        sys.stderr.write(f"server={server} fd={tls.fileno()}\n")
    os.waitpid(server, 0)
    sys.stdout.buffer.write(first + second)


if __name__ == "__main__":
    main()
