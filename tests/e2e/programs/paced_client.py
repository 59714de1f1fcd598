"""A Python HTTPS client that fetches on command: `paced_client.py NAME BASE_URL`.

Each line N read from stdin fetches BASE_URL/NAME-N on a new connection
(unverified context: the test's own certificate) and prints `ok N STATUS`,
so a test decides which requests happen before and after a reload."""

from __future__ import annotations

import ssl
import sys
import urllib.request


def main() -> None:
    name, base = sys.argv[1], sys.argv[2]
    context = ssl._create_unverified_context()
    for line in sys.stdin:
        number = line.strip()
        if not number:
            continue
        with urllib.request.urlopen(f"{base}/{name}-{number}", context=context,
                                    timeout=15) as response:
            response.read()
            print(f"ok {number} {response.status}", flush=True)


if __name__ == "__main__":
    main()
