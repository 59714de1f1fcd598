"""Time the tracker alone on a wrk-against-nginx-like HTTP/1.1 keep-alive stream.

Not a test; run it by hand:

    .venv/bin/python -m bench.micro_tracker

Every figure is CPU time of this process per event, best of a few rounds,
beside a baseline measured in the same run: h11 reading the same stream
(docs/architecture.md#dependencies: h11 is the correct-but-slow reference). wrk repeats its request
and nginx its response head (but for Date) byte for byte, which the parser
exploits (parsed heads are memoised); the "every head distinct" line times
the same stream without that help.
"""

from __future__ import annotations

import time

import h11

from ecapture.events import Direction, Endpoint, TlsData
from ecapture.processor.tracker import ConnectionTracker

SEND = Direction.SEND
RECV = Direction.RECV

# what wrk sends and nginx `return 200 "ok"` answers (docs/performance.md#judging-workload)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 08:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
EVENTS = 200_000
CONNECTIONS = 8
ROUNDS = 5


def tls_data(data: bytes, direction: Direction, *, conn_id: int, timestamp_ns: int = 0
             ) -> TlsData:
    return TlsData(
        timestamp_ns=timestamp_ns, pid=4242, tid=4242, uid=33, comm="wrk", conn_id=conn_id,
        fd=5, direction=direction, call_id=timestamp_ns, call_len=len(data), offset=0,
        data=data, last_chunk=True, truncated=False, local=Endpoint("127.0.0.1", 51234),
        remote=Endpoint("127.0.0.1", 8443), lost_records=0, lost_bytes=0,
    )


def keepalive_events(count: int, *, distinct_heads: bool = False) -> list[TlsData]:
    """wrk's stream; `distinct_heads` makes every head differ (a new target
    and Date each time), so that no parsed head can be reused."""
    events = []
    for index in range(count // 2):
        conn_id = index % CONNECTIONS
        request, response = REQUEST, RESPONSE
        if distinct_heads:
            request = REQUEST.replace(b"GET / ", b"GET /%d " % index)
            response = RESPONSE.replace(b"08:00:00", b"%08d" % index)
        events.append(tls_data(request, SEND, conn_id=conn_id, timestamp_ns=2 * index))
        events.append(tls_data(response, RECV, conn_id=conn_id, timestamp_ns=2 * index + 1))
    return events


def best_of(rounds: int, work: object) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        work()  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return best


def tracker_http1(events: list[TlsData]) -> float:
    def work() -> None:
        tracker = ConnectionTracker()
        for event in events:
            tracker.feed(event)
    return best_of(ROUNDS, work) / len(events)


def tracker_not_http(events: list[TlsData]) -> float:
    tracker = ConnectionTracker()
    for conn_id in range(CONNECTIONS):  # use up the mid-stream scan budget
        for _ in range(20):
            tracker.feed(tls_data(b"\0" * 60000, SEND, conn_id=conn_id))

    def work() -> None:
        for event in events:
            tracker.feed(event)
    return best_of(ROUNDS, work) / len(events)


def h11_http1(count: int) -> float:
    def work() -> None:
        server, client = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
        for _ in range(count // 2):
            server.receive_data(REQUEST)
            while not isinstance(server.next_event(), h11.EndOfMessage):
                pass
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
            client.send(h11.EndOfMessage())
            client.receive_data(RESPONSE)
            while not isinstance(client.next_event(), h11.EndOfMessage):
                pass
            server.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
            server.send(h11.Data(data=b"ok"))
            server.send(h11.EndOfMessage())
            server.start_next_cycle()
            client.start_next_cycle()
    return best_of(3, work) / count


def main() -> None:
    events = keepalive_events(EVENTS)
    ours = tracker_http1(events)
    distinct = tracker_http1(keepalive_events(EVENTS, distinct_heads=True))
    binary = [tls_data(b"\x17\x03" * 32, SEND, conn_id=i % CONNECTIONS) for i in range(EVENTS)]
    raw = tracker_not_http(binary)
    oracle = h11_http1(EVENTS // 4)
    print(f"tracker, HTTP/1.1 keep-alive: {ours * 1e6:.2f} us/event "
          f"({1 / ours:,.0f} events/s)")
    print(f"tracker, HTTP/1.1 keep-alive, every head distinct: {distinct * 1e6:.2f} us/event")
    print(f"tracker, not-HTTP pass-through: {raw * 1e6:.2f} us/event")
    print(f"h11 on the same stream (baseline): {oracle * 1e6:.2f} us/event "
          f"-> tracker is {oracle / ours:.1f}x faster")


if __name__ == "__main__":
    main()
