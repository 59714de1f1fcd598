//! Where HTTP messages start, from content alone (src/ecapture/processor/sniff.py).
//!
//! We observe from outside and may see either end of a connection, so the
//! client→server direction is the one whose bytes open with a request line
//! (RFC 9112 §3) or the HTTP/2 connection preface (RFC 9113 §3.4); a status
//! line (RFC 9112 §4) marks server→client.
//!
//! The Python side says what a start line is with three regular expressions;
//! they are small and fixed, so they are matched here by hand (no regex crate:
//! a search anchored on each "HTTP/1." that memchr finds is what keeps body
//! bytes cheap, and the rules read as the patterns do):
//!
//! ```text
//! request  (?m)(?:^[A-Z][A-Z0-9_-]{0,31}|(?<![A-Z])(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT))
//!          ␠[^\x00-\x20\x7f]{1,65536}␠HTTP/1\.[01]\r?\n
//! status   HTTP/1\.[01]␠[0-9]{3}(?:␠[^\r\n]{0,1024})?\r?\n
//! ```
//! Any token may open a line; the common methods also match right after other
//! bytes, because after a gap the next message often follows the unseen tail
//! of a body on the same "line". A line may end in a bare LF (RFC 9112 §2.2).

use std::sync::LazyLock;

use memchr::memmem;

pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Every HTTP/1 start line contains this; finding it first lets most body
/// bytes pass without any further look.
pub const START_MARKER: &[u8] = b"HTTP/1.";

pub const MAX_START_LINE: usize = 8192; // a longer partial line is not waited for
pub const START_TAIL: usize = 2048; // bytes kept from a long line while scanning: a status line fits

const MAX_TARGET: usize = 65536;
const MAX_METHOD: usize = 32;
const MAX_REASON: usize = 1024;
/// The methods that also match after other bytes on a line.
const COMMON_METHODS: [&[u8]; 8] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
];

static MARKER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(START_MARKER));

/// What the first bytes of one direction of a connection are (sniff_start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Request,
    Response,
    Http2,
    NeedMore, // could still become a message start
    No,       // these bytes do not open a message
}

/// Which start lines a search looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Request,
    Response,
    Any,
}

/// The kind of a start line found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    Request,
    Response,
}

/// The memchr finder of START_MARKER, for `contains`-style checks elsewhere.
pub fn has_marker(data: &[u8]) -> bool {
    MARKER.find(data).is_some()
}

/// An HTTP/2 server may send SETTINGS (RFC 9113 §3.4) before the client's
/// preface is captured: a frame header of type 4 on stream 0.
fn is_settings_frame_start(data: &[u8]) -> bool {
    match data {
        [a, b, c, 4, _, 0, 0, 0, 0, ..] => {
            (u32::from(*a) << 16 | u32::from(*b) << 8 | u32::from(*c)) % 6 == 0
        }
        _ => false,
    }
}

/// What the first bytes of one direction of a connection are.
pub fn sniff_start(data: &[u8]) -> Sniffed {
    let prefix = data.len().min(HTTP2_PREFACE.len());
    if data[..prefix] == HTTP2_PREFACE[..prefix] {
        return if data.len() >= HTTP2_PREFACE.len() {
            Sniffed::Http2
        } else {
            Sniffed::NeedMore
        };
    }
    if is_settings_frame_start(data) {
        return Sniffed::NeedMore; // wait for the other direction's preface
    }
    let Some(end) = memchr::memchr(b'\n', data) else {
        let head = &data[..data.len().min(64)];
        let upper = head.first().is_some_and(u8::is_ascii_uppercase);
        if data.len() < MAX_START_LINE
            && upper
            && head.is_ascii()
            && !head.iter().any(|&byte| byte < 0x20 && byte != 0x0D)
        {
            return Sniffed::NeedMore;
        }
        return Sniffed::No;
    };
    let line = &data[..=end];
    if request_line_at(line, 0) {
        Sniffed::Request
    } else if status_line_at(line, 0) {
        Sniffed::Response
    } else {
        Sniffed::No
    }
}

fn is_method_byte(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
}

fn is_target_byte(byte: u8) -> bool {
    byte > 0x20 && byte != 0x7f
}

/// `\r?\n` at `pos`: the index after it.
fn line_end_at(data: &[u8], pos: usize) -> Option<usize> {
    match data.get(pos..) {
        Some([b'\n', ..]) => Some(pos + 1),
        Some([b'\r', b'\n', ..]) => Some(pos + 2),
        _ => None,
    }
}

/// `␠TARGET␠HTTP/1.[01]\r?\n` from `pos` (right after a method).
fn request_rest_at(data: &[u8], pos: usize) -> bool {
    if data.get(pos) != Some(&b' ') {
        return false;
    }
    let start = pos + 1;
    let tail = data.get(start..).unwrap_or_default();
    let run = tail
        .iter()
        .take(MAX_TARGET + 1)
        .take_while(|&&byte| is_target_byte(byte))
        .count();
    if run == 0 || run > MAX_TARGET {
        return false;
    }
    let after = start + run;
    match data.get(after..after + 9) {
        Some([b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1']) => {
            line_end_at(data, after + 9).is_some()
        }
        _ => false,
    }
}

/// The request pattern matches at `pos`.
fn request_line_at(data: &[u8], pos: usize) -> bool {
    let line_start = pos == 0 || data.get(pos - 1) == Some(&b'\n');
    if line_start {
        // ^[A-Z][A-Z0-9_-]{0,31}: the run must end where its space is
        let tail = data.get(pos..).unwrap_or_default();
        if tail.first().is_some_and(u8::is_ascii_uppercase) {
            let run = tail
                .iter()
                .take(MAX_METHOD + 1)
                .take_while(|&&byte| is_method_byte(byte))
                .count();
            if run <= MAX_METHOD && request_rest_at(data, pos + run) {
                return true;
            }
        }
        // a common method at a line start is a token too: nothing more to try
        return false;
    }
    if data.get(pos - 1).is_some_and(u8::is_ascii_uppercase) {
        return false; // (?<![A-Z])
    }
    let tail = data.get(pos..).unwrap_or_default();
    COMMON_METHODS
        .iter()
        .any(|method| tail.starts_with(method) && request_rest_at(data, pos + method.len()))
}

/// The status pattern matches at `pos`.
fn status_line_at(data: &[u8], pos: usize) -> bool {
    let Some([b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1', b' ', d1, d2, d3]) =
        data.get(pos..pos + 12)
    else {
        return false;
    };
    if !(d1.is_ascii_digit() && d2.is_ascii_digit() && d3.is_ascii_digit()) {
        return false;
    }
    let after = pos + 12;
    if line_end_at(data, after).is_some() {
        return true;
    }
    if data.get(after) != Some(&b' ') {
        return false;
    }
    let tail = data.get(after + 1..).unwrap_or_default();
    let run = tail
        .iter()
        .take_while(|&&byte| byte != b'\r' && byte != b'\n')
        .count();
    run <= MAX_REASON && line_end_at(data, after + 1 + run).is_some()
}

/// Where a request line ending its target just before `marker` (the
/// "HTTP/1." at that index) would start, if one does.
fn request_before_marker(data: &[u8], marker: usize) -> Option<usize> {
    // ␠HTTP/1.[01]\r?\n around the marker
    if marker == 0 || data.get(marker - 1) != Some(&b' ') {
        return None;
    }
    match data.get(marker + 7) {
        Some(b'0' | b'1') => {}
        _ => return None,
    }
    line_end_at(data, marker + 8)?;
    // the target: the run of target bytes before that space, after another space
    let before = data.get(..marker - 1)?;
    let run = before
        .iter()
        .rev()
        .take(MAX_TARGET + 1)
        .take_while(|&&byte| is_target_byte(byte))
        .count();
    if run == 0 || run > MAX_TARGET {
        return None;
    }
    let space = before.len() - run; // index of the byte before the target, + 1
    if space == 0 || data.get(space - 1) != Some(&b' ') {
        return None;
    }
    let method_end = space - 1;
    let method_run = data[..method_end]
        .iter()
        .rev()
        .take(MAX_METHOD + 8)
        .take_while(|&&byte| is_method_byte(byte))
        .count();
    let first = method_end - method_run;
    // the leftmost start wins: a whole token at a line start first
    if method_run > 0 && request_line_at(data, first) {
        return Some(first);
    }
    COMMON_METHODS.iter().find_map(|method| {
        let start = method_end.checked_sub(method.len())?;
        (start > first && request_line_at(data, start)).then_some(start)
    })
}

/// The leftmost start line of the kind wanted in `data`, as Python's
/// `pattern.search(data)` finds it: its index and kind.
pub fn find_start(data: &[u8], want: Want) -> Option<(usize, StartKind)> {
    let mut best: Option<(usize, StartKind)> = None;
    // a request line's start lies at most this far before its marker
    let reach = MAX_TARGET + MAX_METHOD + 3;
    for marker in MARKER.find_iter(data) {
        if let Some((found, _)) = best {
            if marker > found + reach {
                break;
            }
        }
        let mut consider = |start: usize, kind: StartKind| {
            if best.is_none_or(|(found, _)| start < found) {
                best = Some((start, kind));
            }
        };
        if want != Want::Request && status_line_at(data, marker) {
            consider(marker, StartKind::Response);
        }
        if want != Want::Response {
            if let Some(start) = request_before_marker(data, marker) {
                consider(start, StartKind::Request);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_as_python_does() {
        assert_eq!(sniff_start(b""), Sniffed::NeedMore);
        assert_eq!(sniff_start(b"PRI * HTTP/2.0\r\n"), Sniffed::NeedMore);
        assert_eq!(sniff_start(HTTP2_PREFACE), Sniffed::Http2);
        assert_eq!(sniff_start(b"\0\0\0\x04\0\0\0\0\0"), Sniffed::NeedMore);
        assert_eq!(sniff_start(b"\0\0\x07\x04\0\0\0\0\0"), Sniffed::No);
        assert_eq!(sniff_start(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff_start(b"ge"), Sniffed::No);
        assert_eq!(sniff_start(b"G\x01"), Sniffed::No);
        assert_eq!(sniff_start(b"G\r"), Sniffed::NeedMore);
        assert_eq!(sniff_start(b"GET / HTTP/1.1\r\n"), Sniffed::Request);
        assert_eq!(sniff_start(b"M-SEARCH * HTTP/1.1\n"), Sniffed::Request);
        assert_eq!(sniff_start(b"GET / HTTP/1.2\r\n"), Sniffed::No);
        assert_eq!(sniff_start(b"GET  / HTTP/1.1\r\n"), Sniffed::No);
        assert_eq!(sniff_start(b"HTTP/1.1 200 OK\r\n"), Sniffed::Response);
        assert_eq!(sniff_start(b"HTTP/1.1 200\n"), Sniffed::Response);
        assert_eq!(sniff_start(b"HTTP/1.1 200 O\rK\r\n"), Sniffed::No);
        assert_eq!(sniff_start(b"HTTP/1.0 20 OK\r\n"), Sniffed::No);
        assert_eq!(sniff_start(b"hello\nworld"), Sniffed::No);
    }

    #[test]
    fn finds_the_leftmost_start() {
        let data = b"body tail GET /x HTTP/1.1\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(find_start(data, Want::Any), Some((10, StartKind::Request)));
        assert_eq!(
            find_start(data, Want::Response),
            Some((27, StartKind::Response))
        );
        // a token opening a line, and a common method after other bytes
        assert_eq!(
            find_start(b"x\nFOO / HTTP/1.0\n", Want::Request),
            Some((2, StartKind::Request))
        );
        assert_eq!(find_start(b"xFOO / HTTP/1.0\n", Want::Request), None);
        assert_eq!(
            find_start(b"abcGET / HTTP/1.0\n", Want::Request),
            Some((3, StartKind::Request))
        );
        assert_eq!(find_start(b"xABCGET / HTTP/1.0\n", Want::Request), None);
        assert_eq!(
            find_start(b"ABCGET / HTTP/1.0\n", Want::Request),
            Some((0, StartKind::Request))
        );
        // a status line anywhere on a line
        assert_eq!(
            find_start(b"xxHTTP/1.0 404 Nope\n", Want::Any),
            Some((2, StartKind::Response))
        );
        assert_eq!(find_start(b"GET / HTTP/1.1", Want::Any), None);
        let long = [b"GET /".as_slice(), &[b'a'; MAX_TARGET], b" HTTP/1.1\n"].concat();
        assert_eq!(find_start(&long, Want::Any), None);
        let fits = [b"GET ".as_slice(), &[b'a'; MAX_TARGET], b" HTTP/1.1\n"].concat();
        assert_eq!(find_start(&fits, Want::Any), Some((0, StartKind::Request)));
    }
}
