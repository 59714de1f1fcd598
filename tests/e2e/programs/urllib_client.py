"""Python urllib over TLS: `urllib_client.py [--header 'K: V']... URL...`.

Each URL is fetched on its own connection with an unverified context; the
bodies go to stdout, one line per response to stderr:
`status=200 fd=5 len=123 url=...` (fd: the socket the TLS calls used).
"""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--data")
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    headers = dict(header.split(": ", 1) for header in args.header)
    context = ssl._create_unverified_context()
    for url in args.urls:
        data = args.data.encode() if args.data is not None else None
        request = urllib.request.Request(url, data=data, headers=headers)
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            # http.client keeps the socket in response.fp (a SocketIO over it).
            fd = response.fp.raw._sock.fileno()
            body = response.read()
            sys.stdout.buffer.write(body)
            sys.stderr.write(f"status={response.status} fd={fd} len={len(body)} url={url}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
