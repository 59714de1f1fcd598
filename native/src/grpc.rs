//! gRPC messages inside an HTTP/2 body (src/ecapture/processor/grpc.py),
//! and the content decodings they may need (processor/bodies.py).
//!
//! Each message is a Length-Prefixed-Message: a 1-byte compressed flag, a
//! 4-byte big-endian length, then the message (gRPC's PROTOCOL-HTTP2.md).
//! The decoders are crates (flate2, brotli-decompressor, zstd); what is ours
//! is bodies.py's rules around them: a cap on the output (a bomb of a few
//! KiB can expand to GiB: more than `limit` means "cannot decode"), gzip
//! members in a row, "deflate" tried zlib-wrapped then raw, codings undone
//! from the last applied to the first.

use std::io::Read;

use crate::model::{GrpcMessage, Headers};

const PREFIX: usize = 5;
/// bodies.py DEFAULT_DECODED_LIMIT.
pub const DEFAULT_DECODED_LIMIT: usize = 64 << 20;

/// application/grpc, application/grpc+proto, application/grpc-web, ...
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.is_some_and(|value| {
        value.len() >= GRPC.len() && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
    })
}

/// The first field named `name` (lower case), names compared ASCII case-insensitively.
pub fn header_value<'h>(headers: &'h Headers, name: &[u8]) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_slice())
}

/// The complete messages of `body`; a cut-off last message is left out.
/// `encoding` is the grpc-encoding header ("gzip", "deflate", "identity").
pub fn split_grpc_messages(body: &[u8], encoding: Option<&[u8]>) -> Vec<GrpcMessage> {
    let mut messages = Vec::new();
    let coding: Option<String> = match encoding {
        Some(value) if !value.is_empty() => Some(latin1(value)),
        _ => None,
    };
    let mut pos = 0usize;
    while body.len() - pos >= PREFIX {
        let compressed = body[pos] & 1 == 1;
        let length =
            u32::from_be_bytes([body[pos + 1], body[pos + 2], body[pos + 3], body[pos + 4]]);
        let start = pos + PREFIX;
        let Ok(length) = usize::try_from(length) else {
            break;
        };
        if body.len() - start < length {
            break;
        }
        let data = body[start..start + length].to_vec();
        pos = start + length;
        let decoded = if !compressed {
            Some(data.clone())
        } else {
            match coding.as_deref() {
                None | Some("identity") => None,
                Some(coding) => decode_body(&data, coding, DEFAULT_DECODED_LIMIT),
            }
        };
        messages.push(GrpcMessage {
            compressed,
            data,
            decoded,
        });
    }
    messages
}

/// Bytes as Python's `decode("latin-1")`.
pub fn latin1(value: &[u8]) -> String {
    if value.is_ascii() {
        if let Ok(text) = std::str::from_utf8(value) {
            return text.to_owned(); // the common case: one copy
        }
    }
    value.iter().map(|&byte| char::from(byte)).collect()
}

/// The body with every content coding of `content_encoding` undone (the
/// header value, "gzip" or "deflate, br"...); None when it cannot be
/// decoded, or decodes to more than `limit` bytes (bodies.decode_body).
pub fn decode_body(body: &[u8], content_encoding: &str, limit: usize) -> Option<Vec<u8>> {
    let mut data = body.to_vec();
    if content_encoding.is_empty() {
        return Some(data);
    }
    for coding in content_encoding.rsplit(',') {
        let name = py_strip(coding).to_lowercase();
        data = match name.as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => gunzip(&data, limit)?,
            "deflate" => inflate_zlib(&data, limit).or_else(|| inflate_raw(&data, limit))?,
            "br" => unbrotli(&data, limit)?,
            "zstd" => unzstd(&data, limit)?,
            _ => return None,
        };
    }
    Some(data)
}

/// Python's str.strip(): Unicode whitespace (here from latin-1 text:
/// ASCII whitespace, \x1c-\x1f, \x85 and \xa0).
fn py_strip(value: &str) -> &str {
    value.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

/// Read `reader` to its end, at most `limit` bytes: None beyond, or on error.
fn read_capped(reader: impl Read, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).ok()?;
    if out.len() > limit {
        return None;
    }
    Some(out)
}

/// gzip, maybe several members (RFC 1952 §2.2); NULs may pad the end.
fn gunzip(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        if rest.is_empty() {
            return None; // zlib: a stream that never ended
        }
        let mut decoder = flate2::bufread::GzDecoder::new(rest);
        let member = read_capped(&mut decoder, limit - out.len())?;
        out.extend_from_slice(&member);
        rest = decoder.into_inner(); // what follows the member
        if rest.iter().all(|&byte| byte == 0) {
            return Some(out);
        }
    }
}

fn inflate_zlib(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    if body.is_empty() {
        return None;
    }
    read_capped(flate2::bufread::ZlibDecoder::new(body), limit)
}

fn inflate_raw(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    if body.is_empty() {
        return None;
    }
    read_capped(flate2::bufread::DeflateDecoder::new(body), limit)
}

/// Brotli through the streaming API: Python's brotli refuses bytes after
/// the end of the stream, which the `Read` adapter would skip.
fn unbrotli(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
    let mut state = BrotliState::new(
        StandardAlloc::default(),
        StandardAlloc::default(),
        StandardAlloc::default(),
    );
    let mut out = Vec::new();
    let mut buffer = vec![0u8; 16 << 10];
    let (mut available_in, mut input_offset, mut total_out) = (body.len(), 0usize, 0usize);
    loop {
        let (mut available_out, mut output_offset) = (buffer.len(), 0usize);
        let result = BrotliDecompressStream(
            &mut available_in,
            &mut input_offset,
            body,
            &mut available_out,
            &mut output_offset,
            &mut buffer,
            &mut total_out,
            &mut state,
        );
        out.extend_from_slice(buffer.get(..output_offset)?);
        if out.len() > limit {
            return None;
        }
        match result {
            BrotliResult::NeedsMoreOutput => {}
            BrotliResult::ResultSuccess => return (available_in == 0).then_some(out),
            BrotliResult::NeedsMoreInput | BrotliResult::ResultFailure => return None,
        }
    }
}

fn unzstd(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    let decoder = zstd::stream::read::Decoder::with_buffer(body).ok()?;
    read_capped(decoder, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn messages_are_split_and_decoded() {
        let compressed = gzip(b"\x08\x01");
        let mut body = vec![1];
        body.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        body.extend_from_slice(&compressed);
        body.extend_from_slice(b"\x00\x00\x00\x00\x02\x08\x02");
        body.extend_from_slice(b"\x00\x00\x00\x00\x09cut"); // cut off: left out
        let messages = split_grpc_messages(&body, Some(b"gzip"));
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].decoded.as_deref(), Some(&b"\x08\x01"[..]));
        assert!(messages[0].compressed && !messages[1].compressed);
        assert_eq!(messages[1].decoded.as_deref(), Some(&b"\x08\x02"[..]));
        // compressed without an encoding, or "identity": not decoded
        assert_eq!(split_grpc_messages(&body, None)[0].decoded, None);
        assert_eq!(
            split_grpc_messages(&body, Some(b"identity"))[0].decoded,
            None
        );
        assert_eq!(split_grpc_messages(&body, Some(b"snappy"))[0].decoded, None);
    }

    #[test]
    fn decodings_follow_bodies_py() {
        let two = [gzip(b"ab"), gzip(b"cd"), vec![0, 0]].concat();
        assert_eq!(decode_body(&two, "gzip", 100), Some(b"abcd".to_vec()));
        assert_eq!(
            decode_body(&[gzip(b"ab"), b"xx".to_vec()].concat(), "gzip", 100),
            None
        );
        assert_eq!(decode_body(&gzip(&[7; 1000]), "gzip", 999), None); // above the limit
        assert_eq!(
            decode_body(&gzip(&[7; 1000]), " GZIP ", 1000),
            Some(vec![7; 1000])
        );
        let cut = gzip(b"hello world");
        assert_eq!(decode_body(&cut[..cut.len() - 3], "gzip", 100), None);
        assert_eq!(decode_body(b"", "gzip", 100), None);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(b"zz").unwrap();
        let zlib = zlib.finish().unwrap();
        assert_eq!(decode_body(&zlib, "deflate", 100), Some(b"zz".to_vec()));
        let raw = &zlib[2..zlib.len() - 4];
        assert_eq!(decode_body(raw, "deflate", 100), Some(b"zz".to_vec()));
        let zstd = zstd::encode_all(&b"zstd!"[..], 3).unwrap();
        assert_eq!(decode_body(&zstd, "zstd", 100), Some(b"zstd!".to_vec()));
        assert_eq!(
            decode_body(b"plain", "identity", 100),
            Some(b"plain".to_vec())
        );
        assert_eq!(decode_body(b"plain", "compress", 100), None);
        assert_eq!(
            decode_body(&gzip(&zstd), "zstd, gzip", 100),
            Some(b"zstd!".to_vec())
        );
    }

    #[test]
    fn latin1_as_python_decodes_it() {
        assert_eq!(latin1(b"GET"), "GET");
        assert_eq!(latin1(b"caf\xe9\xff"), "caf\u{e9}\u{ff}");
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"Application/GRPC+proto")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(None));
    }
}
