//! The HTTP/1 parser on arbitrary bytes, cut into chunks of both directions:
//! it never panics, and what it holds stays bounded (its buffers within
//! MAX_HEAD_BYTES a side, its exchanges within MAX_UNANSWERED + 1).
//!
//! Input: a first byte of settings (body limit, joined mid-way or not), then
//! chunks, each a header byte (bit 0: from the client, bit 1: the call was
//! truncated, bit 2: a gap before it, bits 3-7: its length in units of 8
//! bytes, 31 meaning 4096) and its bytes.
#![no_main]

use std::sync::Arc;

use ecapture_native::http1::{Http1Parser, MAX_HEAD_BYTES, MAX_UNANSWERED};
use ecapture_native::model::{Chunk, ConnInfo, ConnectionParser, Direction, Item};
use libfuzzer_sys::fuzz_target;

fn chunk(data: &[u8], timestamp_ns: u64, truncated: bool) -> Chunk<'_> {
    Chunk {
        timestamp_ns,
        pid: 1,
        tid: 1,
        uid: 0,
        comm: "fuzz",
        conn_id: 1,
        fd: 3,
        direction: Direction::Send,
        call_id: timestamp_ns,
        call_len: data.len() as u64,
        offset: 0,
        data,
        last_chunk: true,
        truncated,
        local: None,
        remote: None,
        lost_records: 0,
        lost_bytes: 0,
        ssl: 0,
        socket_cookie: None,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&settings, mut rest)) = input.split_first() else {
        return;
    };
    let limit = [0, 3, 64, 8 << 20][usize::from(settings & 3)];
    let info = Arc::new(ConnInfo {
        pid: 1,
        comm: Arc::from("fuzz"),
        uid: 0,
        fd: 3,
        conn_id: 1,
        client: None,
        server: None,
    });
    let mut parser = Http1Parser::new(info, limit, settings & 4 != 0);
    let mut out: Vec<Item> = Vec::new();
    let mut timestamp_ns = 0;
    while let Some((&header, tail)) = rest.split_first() {
        // lengths up to 248 bytes, and now and then a long run
        let length = if header >> 3 == 31 {
            4096
        } else {
            usize::from(header >> 3) * 8
        };
        let (data, after) = tail.split_at(length.min(tail.len()));
        rest = after;
        timestamp_ns += 1;
        let piece = chunk(data, timestamp_ns, header & 2 != 0);
        if header & 4 != 0 {
            parser.gap(&piece, &mut out);
        }
        parser.feed(&piece, header & 1 != 0, &mut out);
        assert!(parser.buffered() <= 2 * MAX_HEAD_BYTES);
        assert!(parser.in_flight() <= MAX_UNANSWERED + 1);
        out.clear();
    }
    parser.finish(timestamp_ns + 1, settings & 8 != 0, &mut out);
});
