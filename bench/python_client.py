"""A keep-alive HTTPS client loop in Python (`ssl` calls only SSL_read_ex/SSL_write_ex).

Usage: python -m bench.python_client PORT SECONDS → prints `{"requests": N, "seconds": S}`.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import time


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    requests = 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        requests += 1
    elapsed = time.monotonic() - start
    connection.close()
    print(json.dumps({"requests": requests, "seconds": elapsed}))


if __name__ == "__main__":
    main()
