"""Record real HTTP traffic as the processor tests replay it.

Each scenario runs a real client against a real server on 127.0.0.1 through
a recording TCP proxy; the proxy writes every recv() it made, in order, as
(direction, bytes), from the client's point of view: "send" is client →
server, as if the traced process were the client. Output: one JSON file per
scenario beside this script.

    .venv/bin/python tests/data/processor/record_streams.py [--only NAME]

Servers/clients: Python http.server + http.client (and curl sending control
bytes in a header, answered with an ESC in one), a raw pipelining socket,
the h2 library on both ends (3 concurrent streams, gRPC unary), and, when
installed, curl against nginx (HTTP/1.1) and nghttp against nginx (HTTP/2 prior
knowledge).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import http.client
import http.server
import json
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 10.0


class RecordingProxy:
    """Forwards loopback TCP connections and records each read, in order."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[list[tuple[str, bytes]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, None)
        open_sockets = 0
        while not self._stop.is_set() or open_sockets:
            for key, _ in selector.select(timeout=0.05):
                if key.data is None:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    chunks: list[tuple[str, bytes]] = []
                    self.connections.append(chunks)
                    selector.register(client, selectors.EVENT_READ, (upstream, "send", chunks))
                    selector.register(upstream, selectors.EVENT_READ, (client, "recv", chunks))
                    open_sockets += 2
                    continue
                peer, direction, chunks = key.data
                source = key.fileobj
                assert isinstance(source, socket.socket)
                data = source.recv(65536)
                if data:
                    chunks.append((direction, data))
                    peer.sendall(data)
                    continue
                selector.unregister(source)
                open_sockets -= 1
                with contextlib.suppress(OSError):
                    peer.shutdown(socket.SHUT_WR)
            # close pairs once both ends reached EOF
            for key in list(selector.get_map().values()):
                sock = key.fileobj
                if key.data is not None and isinstance(sock, socket.socket) and sock.fileno() < 0:
                    selector.unregister(sock)
        selector.close()
        self.listener.close()

    def stop(self) -> list[list[tuple[str, bytes]]]:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        return self.connections


# -- HTTP/1.1 with http.server -------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length) if length else b""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "23")
        self.end_headers()

    def do_POST(self) -> None:
        body = self._body()
        reply = b"got " + str(len(body)).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:
        if self.path == "/chunked-gzip":
            payload = gzip.compress(b"chunked and gzipped " * 50)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            for start in range(0, len(payload), 100):
                piece = payload[start : start + 100]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Checksum: abc123\r\n\r\n")
            return
        if self.path == "/esc":
            # control bytes in values, both ways: http.server sends what it is
            # given (latin-1), and echoes what the client sent
            reply = b"escaped\n"
            self.send_response(200)
            self.send_header("X-Esc", "\x1b[31mred\x1b[0m")
            self.send_header("X-Echo-Ctl", self.headers.get("X-Ctl", ""))
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        if self.path == "/no-content":
            self.send_response(204)
            self.end_headers()
            return
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.end_headers()
            return
        reply = b"hello from " + self.path.encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        self.wfile.write(reply)


def with_http_server(client: Callable[[int], None]) -> list[list[tuple[str, bytes]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy = RecordingProxy(server.server_address[1])
    try:
        client(proxy.port)
        time.sleep(0.2)  # let the proxy drain the last bytes
    finally:
        server.shutdown()
        server.server_close()
    return proxy.stop()


def h1_keepalive(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    requests = (("GET", "/a", None), ("POST", "/b", b"x=1&y=2"), ("GET", "/c", None))
    for method, path, body in requests:
        connection.request(method, path, body=body, headers={"User-Agent": "recorder"})
        connection.getresponse().read()
    connection.close()


def h1_chunked_gzip(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    connection.request("GET", "/chunked-gzip", headers={"Accept-Encoding": "gzip"})
    connection.getresponse().read()
    connection.close()


def h1_head_then_get(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    connection.request("HEAD", "/file")
    connection.getresponse().read()
    connection.request("GET", "/file")
    connection.getresponse().read()
    connection.close()


def h1_status_codes(port: int) -> None:
    """100 Continue before a 201, then 204 and 304 (bodiless by status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    connection.request("POST", "/upload", body=b"0123456789", headers={"Expect": "100-continue"})
    connection.getresponse().read()
    connection.request("GET", "/no-content")
    connection.getresponse().read()
    connection.request("GET", "/etag", headers={"If-None-Match": '"v1"'})
    connection.getresponse().read()
    connection.close()


def h1_pipelined(port: int) -> None:
    """Three requests in one write; http.server answers them in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(
            b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"HEAD /two HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        while sock.recv(65536):
            pass


# -- HTTP/2 with the h2 library on both ends -------------------------------------

def h2_server(listener: socket.socket, grpc: bool) -> None:
    sock, _ = listener.accept()
    sock.settimeout(TIMEOUT_S)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    bodies: dict[int, bytes] = {}
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream_id = event.stream_id
                if grpc:
                    message = gzip.compress(b"\x0a\x0bHello world")
                    frame = b"\x01" + len(message).to_bytes(4, "big") + message
                    connection.send_headers(stream_id, [
                        (":status", "200"), ("content-type", "application/grpc"),
                        ("grpc-encoding", "gzip"),
                    ])
                    connection.send_data(stream_id, frame)
                    connection.send_headers(
                        stream_id, [("grpc-status", "0"), ("grpc-message", "")], end_stream=True
                    )
                else:
                    reply = b"stream %d says hi\n" % stream_id
                    connection.send_headers(stream_id, [
                        (":status", "200"), ("content-type", "text/plain"),
                        ("content-length", str(len(reply))), ("x-served-by", "h2-recorder"),
                    ])
                    connection.send_data(stream_id, reply, end_stream=True)
        sock.sendall(connection.data_to_send())
    sock.close()


def h2_client(port: int, grpc: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    # a larger table for the server's encoder: the decoder of the other
    # direction must accept its size update
    connection.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 8192})
    pseudo = [(":authority", "127.0.0.1"), (":scheme", "http")]
    common = [("user-agent", "h2-recorder/1.0"), ("x-trace-id", "5f1e0c2a9b")]
    if grpc:
        message = gzip.compress(b"\x0a\x05world")
        frame = b"\x01" + len(message).to_bytes(4, "big") + message
        connection.send_headers(1, [(":method", "POST"), *pseudo,
                                    (":path", "/helloworld.Greeter/SayHello"), *common,
                                    ("content-type", "application/grpc"), ("te", "trailers"),
                                    ("grpc-encoding", "gzip")])
        connection.send_data(1, frame, end_stream=True)
        wanted = {1}
    else:
        # the three HEADERS go out before any answer: concurrent streams,
        # and the later ones reuse HPACK dynamic-table entries of the first
        for stream_id, path in ((1, "/one"), (3, "/two"), (5, "/three")):
            headers = [(":method", "GET"), *pseudo, (":path", path), *common]
            connection.send_headers(stream_id, headers, end_stream=True)
        wanted = {1, 3, 5}
    sock.sendall(connection.data_to_send())
    while wanted:
        data = sock.recv(65536)
        if not data:
            break
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.StreamEnded):
                wanted.discard(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
        sock.sendall(connection.data_to_send())
    connection.close_connection()
    sock.sendall(connection.data_to_send())
    sock.close()


def with_h2(grpc: bool) -> list[list[tuple[str, bytes]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=h2_server, args=(listener, grpc), daemon=True)
    thread.start()
    proxy = RecordingProxy(listener.getsockname()[1])
    h2_client(proxy.port, grpc)
    thread.join(TIMEOUT_S)
    listener.close()
    time.sleep(0.2)
    return proxy.stop()


# -- curl against nginx ----------------------------------------------------------

NGINX_CONF = """
daemon off; master_process off; worker_processes 1; pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {root}; proxy_temp_path {root};
  fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};
  gzip on; gzip_min_length 1; gzip_types text/plain;
  server {{ listen 127.0.0.1:{port1}; root {root}/www; }}
  server {{ listen 127.0.0.1:{port2} http2; root {root}/www; }}
}}
"""


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def with_nginx(
    client_args: Callable[[int], list[str]], http2: bool
) -> list[list[tuple[str, bytes]]]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or not shutil.which("curl") or not shutil.which("nghttp"):
        raise SystemExit("nginx, curl and nghttp are needed for the nginx scenarios")
    with tempfile.TemporaryDirectory() as root:
        www = Path(root, "www")
        www.mkdir()
        (www / "index.html").write_text("<html>nginx index</html>\n")
        (www / "big.txt").write_text("all work and no play makes jack a dull boy\n" * 200)
        (www / "small.txt").write_text("small\n")
        port1, port2 = free_port(), free_port()
        Path(root, "nginx.conf").write_text(NGINX_CONF.format(root=root, port1=port1, port2=port2))
        server = subprocess.Popen([nginx, "-p", root, "-c", f"{root}/nginx.conf"])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port2 if http2 else port1), 1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            proxy = RecordingProxy(port2 if http2 else port1)
            subprocess.run(client_args(proxy.port), check=True, timeout=TIMEOUT_S,
                           stdout=subprocess.DEVNULL)
            time.sleep(0.2)
            return proxy.stop()
        finally:
            server.terminate()
            server.wait(TIMEOUT_S)


def curl_h1(port: int) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    # -I then --next: HEAD and the GETs reuse one connection (keep-alive)
    return ["curl", "-s", "-I", f"{base}/small.txt", "--next", "--compressed", "-o", "/dev/null",
            f"{base}/big.txt", "--next", "-o", "/dev/null", f"{base}/index.html"]


def nghttp_h2(port: int) -> list[str]:
    # nghttp (nghttp2's client) sends all three requests at once on one
    # connection, HTTP/2 with prior knowledge; curl 7.88 fails on reuse here
    base = f"http://127.0.0.1:{port}"
    return ["nghttp", "-n", f"{base}/small.txt", f"{base}/index.html", f"{base}/big.txt"]


def curl_hostile(port: int) -> None:
    """curl sends control bytes in a request header as given (-H); --next
    reuses the connection, so the second exchange shows the parser in sync."""
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for h1_hostile_headers")
    base = f"http://127.0.0.1:{port}"
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "X-Ctl: a\x01b\x7f\x1b[0m",
                    f"{base}/esc", "--next", "-o", "/dev/null", f"{base}/after"],
                   check=True, timeout=TIMEOUT_S)


SCENARIOS: dict[str, Callable[[], list[list[tuple[str, bytes]]]]] = {
    "h1_keepalive": lambda: with_http_server(h1_keepalive),
    "h1_chunked_gzip": lambda: with_http_server(h1_chunked_gzip),
    "h1_head_then_get": lambda: with_http_server(h1_head_then_get),
    "h1_status_codes": lambda: with_http_server(h1_status_codes),
    "h1_pipelined": lambda: with_http_server(h1_pipelined),
    "h1_hostile_headers": lambda: with_http_server(curl_hostile),
    "h2_three_streams": lambda: with_h2(grpc=False),
    "h2_grpc_unary": lambda: with_h2(grpc=True),
    "curl_nginx_h1": lambda: with_nginx(curl_h1, http2=False),
    "nghttp_nginx_h2": lambda: with_nginx(nghttp_h2, http2=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    for name, scenario in SCENARIOS.items():
        if args.only and name != args.only:
            continue
        connections = scenario()
        chunks = [c for c in connections if c]
        if len(chunks) != 1:
            sys.exit(f"{name}: expected one connection, recorded {len(chunks)}")
        document = {
            "scenario": name,
            "recorded_by": "tests/data/processor/record_streams.py",
            "chunks": [
                [direction, base64.b64encode(data).decode()] for direction, data in chunks[0]
            ],
        }
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(document, indent=1) + "\n")
        print(f"{path.name}: {len(chunks[0])} chunks, {sum(len(d) for _, d in chunks[0])} bytes")


if __name__ == "__main__":
    main()
