//! Undo Content-Encoding for display, never trusting the size a body claims
//! (src/ecapture/processor/bodies.py is the reference, decision for decision).
//!
//! Each decoder streams into a buffer that never grows past `limit + 1`
//! bytes: a decompression bomb of a few KiB that would expand to GiB stops
//! there and means "cannot decode" (`None`). Codings are listed in the
//! order they were applied (RFC 9110 §8.4), so they are undone from the
//! last to the first. The libraries do the decoding: flate2 on zlib-rs
//! (zlib's inflate: gzip headers and checks as Python's zlib module sees
//! them), brotli-decompressor (Google's decoder ported to Rust) and zstd
//! (libzstd itself, as python-zstandard uses it); what is written here is
//! only the calling pattern of the Python module, so that the same bodies
//! decode or fail alike.

use std::borrow::Cow;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::{Decompress, FlushDecompress, Status};

/// bodies.py DEFAULT_DECODED_LIMIT: more decoded bytes than this is "cannot decode".
pub const DEFAULT_DECODED_LIMIT: usize = 64 << 20;

/// Output grows in steps of at least this (and at most doubles), capped at `limit + 1`.
const MIN_STEP: usize = 16 << 10;
/// python-zstandard feeds its reader's source in reads of ZSTD_DStreamInSize() bytes.
const ZSTD_READ_SIZE: usize = 131_075;

/// Python's `str.isspace()` for the characters a latin-1 decoded header can hold.
fn is_space(byte: u8) -> bool {
    matches!(byte, b'\t'..=b'\r' | 0x1c..=0x20 | 0x85 | 0xa0)
}

/// Python's `str.strip()` on latin-1 text.
pub fn strip(mut text: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = text {
        if !is_space(*first) {
            break;
        }
        text = rest;
    }
    while let [rest @ .., last] = text {
        if !is_space(*last) {
            break;
        }
        text = rest;
    }
    text
}

/// A coding name as `coding.strip().lower()` compares it: no latin-1
/// character outside ASCII lowercases into ASCII, so an ASCII
/// case-insensitive test against the ASCII names is the same test.
fn is_identity(coding: &[u8]) -> bool {
    coding.is_empty() || coding.eq_ignore_ascii_case(b"identity")
}

/// view_body's test: does this Content-Encoding value ask for decoding at all?
pub fn wants_decoding(content_encoding: &[u8]) -> bool {
    !is_identity(strip(content_encoding))
}

/// The body with every content coding undone; `None` when it cannot be decoded.
///
/// `content_encoding` is the header value as bytes (latin-1 text, values of
/// repeated headers joined by ", "); an empty or identity-only value returns
/// the body as it is.
pub fn decode_body<'a>(
    body: &'a [u8],
    content_encoding: &[u8],
    limit: usize,
) -> Option<Cow<'a, [u8]>> {
    let mut data = Cow::Borrowed(body);
    if content_encoding.is_empty() {
        return Some(data);
    }
    for coding in content_encoding.rsplit(|&byte| byte == b',') {
        let name = strip(coding);
        if is_identity(name) {
            continue;
        }
        let decoded = if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip")
        {
            gunzip(&data, limit)
        } else if name.eq_ignore_ascii_case(b"deflate") {
            deflate(&data, limit)
        } else if name.eq_ignore_ascii_case(b"br") {
            unbrotli(&data, limit)
        } else if name.eq_ignore_ascii_case(b"zstd") {
            unzstd(&data, limit)
        } else {
            None // a coding we do not know
        };
        data = Cow::Owned(decoded?);
    }
    Some(data)
}

/// Room for more output in `out`'s spare capacity: it grows by at least
/// MIN_STEP (or `hint`, or doubling), never past `limit + 1` in all.
/// False when `out` already holds more than `limit`.
fn grow(out: &mut Vec<u8>, limit: usize, hint: usize) -> bool {
    let cap = limit.saturating_add(1);
    if out.len() >= cap {
        return false;
    }
    if out.capacity() == out.len() {
        let step = out.len().max(hint).max(MIN_STEP);
        out.reserve_exact(step.min(cap - out.len()));
    }
    true
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrap {
    Gzip,
    Zlib,
    Raw,
}

/// One zlib stream from `input` into `out`; the bytes after its end, or
/// `None` on an error, a stream cut short or more than `limit` in `out`
/// (Python's decompressobj(wbits).decompress(data, limit + 1 - len(out))
/// then its eof and unconsumed_tail tests).
fn inflate_stream<'i>(
    input: &'i [u8],
    wrap: Wrap,
    out: &mut Vec<u8>,
    limit: usize,
) -> Option<&'i [u8]> {
    let mut stream = match wrap {
        Wrap::Gzip => Decompress::new_gzip(15),
        Wrap::Zlib => Decompress::new_with_window_bits(true, 15),
        Wrap::Raw => Decompress::new_with_window_bits(false, 15),
    };
    let mut rest = input;
    loop {
        if !grow(out, limit, rest.len().saturating_mul(4)) {
            return None;
        }
        let before_in = stream.total_in();
        // Writes into the spare capacity only.
        let status = stream
            .decompress_vec(rest, out, FlushDecompress::Sync)
            .ok()?;
        let consumed = usize::try_from(stream.total_in() - before_in).ok()?;
        rest = rest.get(consumed..)?;
        if out.len() > limit {
            return None;
        }
        match status {
            Status::StreamEnd => return Some(rest),
            Status::Ok | Status::BufError => {
                let output_full = out.len() == out.capacity();
                if !output_full && (rest.is_empty() || consumed == 0) {
                    return None; // the stream did not end: cut short
                }
            }
        }
    }
}

/// zlib/gzip/raw deflate; gzip may hold several members (RFC 1952 §2.2),
/// and NUL bytes after the last one are padding.
fn inflate(body: &[u8], wrap: Wrap, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut data = body;
    loop {
        data = inflate_stream(data, wrap, &mut out, limit)?;
        if wrap != Wrap::Gzip || data.iter().all(|&byte| byte == 0) {
            return Some(out);
        }
    }
}

fn gunzip(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    inflate(body, Wrap::Gzip, limit)
}

/// "deflate" means zlib-wrapped (RFC 9110 §8.4.1.2), but some servers send
/// raw deflate: try both, as browsers do.
fn deflate(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    inflate(body, Wrap::Zlib, limit).or_else(|| inflate(body, Wrap::Raw, limit))
}

/// The whole brotli stream: it must end, with no bytes after it (the C
/// decoder's Python binding calls trailing bytes an error).
fn unbrotli(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    // new_strict: no "large window" streams (up to 1 GiB windows), as the C
    // decoder without BROTLI_DECODER_PARAM_LARGE_WINDOW.
    let mut state = BrotliState::new_strict(
        StandardAlloc::default(),
        StandardAlloc::default(),
        StandardAlloc::default(),
    );
    let mut out: Vec<u8> = Vec::new();
    let mut available_in = body.len();
    let mut input_offset = 0;
    let mut total_out = 0;
    loop {
        if !grow(&mut out, limit, body.len().saturating_mul(4)) {
            return None;
        }
        let start = out.len();
        out.resize(out.capacity(), 0); // this decoder writes into a slice
        let mut available_out = out.len() - start;
        let mut output_offset = start;
        let result = BrotliDecompressStream(
            &mut available_in,
            &mut input_offset,
            body,
            &mut available_out,
            &mut output_offset,
            &mut out,
            &mut total_out,
            &mut state,
        );
        out.truncate(output_offset);
        if out.len() > limit {
            return None;
        }
        match result {
            BrotliResult::ResultSuccess => return (available_in == 0).then_some(out),
            BrotliResult::NeedsMoreOutput => {}
            BrotliResult::NeedsMoreInput | BrotliResult::ResultFailure => return None,
        }
    }
}

/// python-zstandard's `stream_reader(BytesIO(body), read_across_frames=True)
/// .read(limit + 1)`: frames one after another, skippable frames skipped, and
/// a frame cut short yields what it decoded so far. Output of nothing from a
/// non-empty body only counts when the frame says its content is empty.
fn unzstd(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{get_frame_content_size, DCtx, InBuffer, OutBuffer};

    let mut context = DCtx::create();
    let mut out: Vec<u8> = Vec::new();
    for block in body.chunks(ZSTD_READ_SIZE) {
        let mut input = InBuffer::around(block);
        loop {
            if !grow(&mut out, limit, body.len().saturating_mul(4)) {
                return None;
            }
            let before_in = input.pos();
            let before_out = out.len();
            {
                // Writes into the spare capacity only, then sets the length.
                let mut output = OutBuffer::around_pos(&mut out, before_out);
                context.decompress_stream(&mut output, &mut input).ok()?;
            }
            if out.len() > limit {
                return None;
            }
            if out.len() == out.capacity() {
                continue; // the output was full: more may be waiting
            }
            if input.pos() >= block.len() {
                break; // this read is used up: the next one
            }
            if input.pos() == before_in && out.len() == before_out {
                return None; // no progress (libzstd always makes some): never spin
            }
        }
    }
    let empty_frame = matches!(get_frame_content_size(body), Ok(Some(0)));
    if !body.is_empty() && out.is_empty() && !empty_frame {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"hello hello hello hello, a body that compresses";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode(body: &[u8], coding: &str, limit: usize) -> Option<Vec<u8>> {
        decode_body(body, coding.as_bytes(), limit).map(Cow::into_owned)
    }

    #[test]
    fn identity_and_empty_codings_return_the_body() {
        assert_eq!(decode(b"as is", "", 100).unwrap(), b"as is");
        assert_eq!(decode(b"as is", " Identity , ", 100).unwrap(), b"as is");
        assert!(matches!(
            decode_body(b"x", b"identity", 10),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(decode(b"as is", "x-custom", 100), None);
    }

    #[test]
    fn gzip_members_and_padding() {
        let mut body = gzip(b"one ");
        body.extend(gzip(b"two"));
        assert_eq!(decode(&body, "gzip", 100).unwrap(), b"one two");
        body.extend([0, 0, 0]);
        assert_eq!(decode(&body, "x-gzip", 100).unwrap(), b"one two");
        body.push(1);
        assert_eq!(decode(&body, "gzip", 100), None); // junk after the padding
        let whole = gzip(TEXT);
        assert_eq!(decode(&whole[..whole.len() - 1], "gzip", 100), None); // cut short
        let mut corrupt = whole.clone();
        let last = corrupt.len() - 5;
        corrupt[last] ^= 1; // the CRC32
        assert_eq!(decode(&corrupt, "gzip", 100), None);
    }

    #[test]
    fn deflate_is_zlib_or_raw() {
        assert_eq!(decode(&zlib(TEXT), " DEFLATE ", 100).unwrap(), TEXT);
        assert_eq!(decode(&raw_deflate(TEXT), "deflate", 100).unwrap(), TEXT);
        let mut trailing = zlib(TEXT);
        trailing.extend(b"junk"); // ignored after a zlib stream, as Python does
        assert_eq!(decode(&trailing, "deflate", 100).unwrap(), TEXT);
    }

    #[test]
    fn stacked_codings_are_undone_last_first() {
        let twice = gzip(&zlib(TEXT));
        assert_eq!(decode(&twice, "deflate, gzip", 100).unwrap(), TEXT);
        assert_eq!(decode(&twice, "gzip, deflate", 100), None);
    }

    #[test]
    fn limits_stop_bombs() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 20_000);
        assert_eq!(decode(&bomb, "gzip", 1 << 20), None);
        assert_eq!(decode(&bomb, "gzip", 10 << 20).unwrap().len(), 10 << 20);
        assert_eq!(decode(&bomb, "gzip", (10 << 20) - 1), None);
        let zst = zstd::bulk::compress(&zeros, 3).unwrap();
        assert_eq!(decode(&zst, "zstd", 1 << 20), None);
        assert_eq!(decode(&zst, "zstd", 10 << 20).unwrap().len(), 10 << 20);
        assert_eq!(decode(&zst, "zstd", (10 << 20) - 1), None);
    }

    #[test]
    fn zstd_frames_and_cuts() {
        let mut body = zstd::bulk::compress(b"first ", 3).unwrap();
        body.extend(zstd::bulk::compress(b"second", 3).unwrap());
        assert_eq!(decode(&body, "zstd", 100).unwrap(), b"first second");
        let empty = zstd::bulk::compress(b"", 3).unwrap();
        assert_eq!(decode(&empty, "zstd", 100).unwrap(), b"");
        assert_eq!(decode(b"not zstd", "zstd", 100), None);
        let whole = zstd::bulk::compress(&[7u8; 1000], 3).unwrap();
        assert_eq!(decode(&whole[..whole.len() / 2], "zstd", 2000), None); // nothing decoded yet
    }

    #[test]
    fn strip_is_pythons_for_latin1() {
        assert_eq!(strip(b"\x85\xa0\t gzip\x1c\x0b"), b"gzip");
        assert_eq!(strip(b"\xa1gzip"), b"\xa1gzip");
        assert!(!wants_decoding(b" \x85IDENTITY\xa0"));
        assert!(wants_decoding(b"identity, gzip"));
    }
}
