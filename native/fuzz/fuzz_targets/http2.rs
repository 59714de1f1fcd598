//! The HTTP/2 parser on arbitrary bytes, cut into chunks of both directions:
//! it must never panic and its memory must stay bounded (libFuzzer's
//! -rss_limit_mb and -malloc_limit_mb say when it does not).
//!
//! Input: one byte of options, then records of a 2-byte header and data.
//! Options: bit 0 puts a real client preface + SETTINGS first, bit 1 a
//! server SETTINGS, bits 2-3 choose the body limit. Each record's header:
//! bit 0 the direction (1: from the client), bit 1 a gap before it, bit 2
//! truncated, bit 3 finish() after it, bits 4-7 and the second byte the
//! chunk's length (12 bits).
#![no_main]

use std::sync::Arc;

use ecapture_native::http2::{Http2Parser, PREFACE};
use ecapture_native::model::{Chunk, ConnInfo, ConnectionParser, Direction};
use libfuzzer_sys::fuzz_target;

const SETTINGS: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
const LIMITS: [usize; 4] = [0, 16, 4096, 1 << 20];

fn chunk(data: &[u8], timestamp_ns: u64, from_client: bool, truncated: bool) -> Chunk<'_> {
    Chunk {
        timestamp_ns,
        pid: 1,
        tid: 1,
        uid: 0,
        comm: "fuzz",
        conn_id: 1,
        fd: 3,
        direction: if from_client {
            Direction::Send
        } else {
            Direction::Recv
        },
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
    let Some((&options, mut rest)) = input.split_first() else {
        return;
    };
    let info = Arc::new(ConnInfo {
        pid: 1,
        comm: Arc::from("fuzz"),
        uid: 0,
        fd: 3,
        conn_id: 1,
        client: None,
        server: None,
    });
    let mut parser = Http2Parser::new(info, LIMITS[usize::from(options >> 2) & 3]);
    let mut out = Vec::new();
    let mut now = 0u64;
    if options & 1 != 0 {
        let hello = [PREFACE, SETTINGS].concat();
        parser.feed(&chunk(&hello, now, true, false), true, &mut out);
    }
    if options & 2 != 0 {
        parser.feed(&chunk(SETTINGS, now, false, false), false, &mut out);
    }
    while let [flags, low, tail @ ..] = rest {
        now += 1;
        let length = (usize::from(flags >> 4) << 8 | usize::from(*low)).min(tail.len());
        let (data, next) = tail.split_at(length);
        rest = next;
        let from_client = flags & 1 != 0;
        let event = chunk(data, now, from_client, flags & 4 != 0);
        if flags & 2 != 0 {
            parser.gap(&event, &mut out);
        }
        parser.feed(&event, from_client, &mut out);
        if flags & 8 != 0 {
            parser.finish(now, false, &mut out);
        }
        out.clear(); // items are not kept: only the parser's own memory counts
    }
    parser.finish(now + 1, true, &mut out);
});
