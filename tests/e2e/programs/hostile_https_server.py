"""An https server whose answers carry control bytes: `hostile_https_server.py PORT CERT KEY`.

Python's http.server (HTTP/1.1, keep-alive) over ssl. GET /esc/<marker>
answers with `X-Esc: ESC[31m<marker>ESC[0m` and echoes the request's X-Ctl
header as X-Echo-Ctl; any other GET answers "plain:<path>". http.server
writes header values as given (latin-1) and reads request fields with the
email parser, which keeps control bytes: both ends of a hostile exchange.
"""

from __future__ import annotations

import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/esc/"):
            marker = self.path.removeprefix("/esc/")
            body = f"esc:{marker}\n".encode()
            self.send_response(200)
            self.send_header("X-Esc", f"\x1b[31m{marker}\x1b[0m")
            self.send_header("X-Echo-Ctl", self.headers.get("X-Ctl", ""))
        else:
            body = f"plain:{self.path}\n".encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("request: " + format % args + "\n")


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
