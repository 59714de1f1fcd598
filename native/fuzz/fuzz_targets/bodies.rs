//! bodies.rs decode_body and the JSON writer's body handling on any bytes:
//! never a panic, never more than `limit` decoded bytes (a decompression
//! bomb stops there), and every line the writer makes is one line of UTF-8.
//!
//! Input: byte 0 picks one to three codings (2 bits each: gzip, deflate, br,
//! zstd; the top 2 bits how many), byte 1 whether an identity or unknown one
//! is added, byte 2 the limit (2^0 .. 2^23 bytes), byte 3 -t/--tsize, the
//! rest is the body.
#![no_main]

use std::sync::Arc;

use ecapture_native::bodies::decode_body;
use ecapture_native::jsonl::JsonWriter;
use ecapture_native::model::{ConnInfo, HttpExchange, HttpResponse};
use libfuzzer_sys::fuzz_target;

const NAMES: [&[u8]; 4] = [b"gzip", b"deflate", b"br", b"zstd"];

fuzz_target!(|input: &[u8]| {
    let [pick, extra, limit, tsize, body @ ..] = input else {
        return;
    };
    let mut codings: Vec<&[u8]> = (0..usize::from(pick >> 6) % 3 + 1)
        .map(|index| NAMES[usize::from(pick >> (2 * index)) & 3])
        .collect();
    match extra % 8 {
        1 => codings.push(b" Identity "),
        2 => codings.insert(0, b"x-unknown"),
        3 => codings.insert(0, b"\xa0X-GZIP\x85"), // latin-1 spaces around it

        _ => {}
    }
    let encoding = codings.join(&b", "[..]);
    let limit = 1usize << (limit % 24);
    if let Some(decoded) = decode_body(body, &encoding, limit) {
        assert!(
            decoded.len() <= limit,
            "{} bytes past the limit {limit}",
            decoded.len()
        );
    }

    // The same body as an HTTP response through the writer.
    let response = HttpResponse {
        status: 200,
        reason: "OK".into(),
        version: "HTTP/1.1".into(),
        headers: Arc::new(vec![(b"Content-Encoding".to_vec(), encoding)]),
        body: body.to_vec(),
        trailers: vec![(body.iter().take(8).copied().collect(), body.to_vec())],
        body_truncated: false,
        informational: Vec::new(),
    };
    let exchange = HttpExchange {
        connection: Arc::new(ConnInfo {
            pid: 1,
            comm: Arc::from(String::from_utf8_lossy(body.get(..16).unwrap_or(body)).as_ref()),
            uid: 0,
            fd: 3,
            conn_id: 1,
            client: None,
            server: None,
        }),
        request: None,
        response: Some(response),
        started_ns: 0,
        finished_ns: 0,
        stream_id: None,
        grpc_request: Vec::new(),
        grpc_response: Vec::new(),
        complete: true,
    };
    let mut writer = JsonWriter::new("tls", usize::from(*tsize));
    writer.set_decoded_limit(limit);
    writer.exchange(&exchange);
    let line = writer.buffer();
    assert!(
        std::str::from_utf8(line).is_ok(),
        "a line that is not UTF-8"
    );
    assert_eq!(line.iter().filter(|&&byte| byte == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
});
