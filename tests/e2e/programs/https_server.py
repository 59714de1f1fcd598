"""A Python https server (http.server + ssl): `https_server.py PORT CERT KEY ROOT`.

GET serves files under ROOT; /echo/<anything> answers "echo:<path>"; POST
answers with the request body. CPython's ssl module calls only
SSL_read_ex/SSL_write_ex of the system libssl.so.3.
"""

from __future__ import annotations

import http.server
import ssl
import sys
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = Path(".")

    def do_GET(self) -> None:
        if self.path.startswith("/echo/"):
            self._answer(b"echo:" + self.path.encode() + b"\n")
            return
        target = (self.root / self.path.lstrip("/")).resolve()
        if self.root not in target.parents or not target.is_file():
            self.send_error(404)
            return
        self._answer(target.read_bytes())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("request: " + format % args + "\n")


def main() -> None:
    port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    Handler.root = Path(root).resolve()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
