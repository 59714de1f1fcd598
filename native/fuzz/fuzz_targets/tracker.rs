//! The tracker on arbitrary bytes over a few connections: chunks of both
//! directions, lost records, read faults, truncated calls, closes, SSL*
//! reuse and evictions from a small max_connections; it never panics and
//! never holds more connections than its bound.
//!
//! Input: a first byte of settings, then operations, each a header byte and
//! (for a chunk) its bytes, as read below.
#![no_main]

use ecapture_native::model::{Chunk, Close, CloseCause, Direction, Fault, Item};
use ecapture_native::tracker::{Tracker, TrackerOptions};
use libfuzzer_sys::fuzz_target;

const STARTS: [&[u8]; 6] = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"",
];

fuzz_target!(|input: &[u8]| {
    let Some((&settings, mut rest)) = input.split_first() else {
        return;
    };
    let options = TrackerOptions {
        max_connections: [1, 2, 3, 16384][usize::from(settings & 3)],
        max_body_bytes: [0, 64, 8 << 20, 3][usize::from(settings >> 2 & 3)],
        parse_http: settings & 16 == 0,
    };
    let mut tracker = Tracker::new(options, None);
    let mut out: Vec<Item> = Vec::new();
    let mut timestamp_ns = 0;
    while let Some((&header, tail)) = rest.split_first() {
        rest = tail;
        timestamp_ns += 1;
        let conn_id = u64::from(header & 3) + 1;
        let ssl = if header & 4 != 0 { 0x10 } else { 0 };
        match header >> 3 {
            0 => {
                let close = Close {
                    timestamp_ns,
                    pid: 7,
                    tid: Some(7),
                    uid: 0,
                    comm: "fuzz",
                    conn_id,
                    fd: 3,
                    lost_records: 0,
                    lost_bytes: 0,
                    ssl,
                    socket_cookie: None,
                    cause: CloseCause::Tcp,
                    deferred: false,
                };
                tracker.close(&close, &mut out);
            }
            1 => {
                let fault = Fault {
                    timestamp_ns,
                    pid: 7,
                    tid: 7,
                    uid: 0,
                    comm: "fuzz",
                    conn_id,
                    fd: 3,
                    direction: Direction::from_raw(header >> 2),
                    call_id: 0,
                    call_len: 0,
                    offset: 0,
                    bytes: 0,
                    ssl,
                    socket_cookie: None,
                };
                tracker.fault(&fault);
            }
            2 => tracker.flush(&mut out),
            code => {
                let start = STARTS[usize::from(code) % STARTS.len()];
                let length = usize::from(code) * 4;
                let (bytes, after) = rest.split_at(length.min(rest.len()));
                rest = after;
                let data = if code % 5 == 0 {
                    [start, bytes].concat()
                } else {
                    bytes.to_vec()
                };
                let chunk = Chunk {
                    timestamp_ns,
                    pid: 7,
                    tid: 7,
                    uid: 0,
                    comm: "fuzz",
                    conn_id: conn_id + u64::from(code % 7 == 0) * 100,
                    fd: if code % 11 == 0 { -1 } else { 3 },
                    direction: Direction::from_raw(code),
                    call_id: timestamp_ns,
                    call_len: data.len() as u64,
                    offset: 0,
                    data: &data,
                    last_chunk: true,
                    truncated: code % 13 == 0,
                    local: None,
                    remote: None,
                    lost_records: u32::from(code % 9 == 0),
                    lost_bytes: 0,
                    ssl,
                    socket_cookie: None,
                };
                tracker.feed(&chunk, &mut out);
            }
        }
        assert!(tracker.len() <= options.max_connections);
        out.clear();
    }
    tracker.flush(&mut out);
    assert!(tracker.is_empty());
});
