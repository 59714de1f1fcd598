//! HTTP/1.x observed from outside (src/ecapture/processor/http1.py, the
//! reference): heads read as captured, framing by us.
//!
//! A head is read by httparse when it can (the common, well-formed case);
//! a head httparse rejects — a control byte in a value, any byte in a name,
//! an obs-fold, whitespace before a colon: real peers send and accept these —
//! is read by the lenient reader below, every field byte kept as captured.
//! What still cannot be framed is skipped to the next start line and counted
//! as a parser `Lost` on its connection. The body framing is ours because it
//! depends on the request a response answers (RFC 9112 §6.3): a response to
//! HEAD, a 1xx/204/304 and a 2xx to CONNECT have no body. Requests and
//! responses pair in order (pipelining included). A message ends by its
//! framing or by the connection's close, never by a timer.
//!
//! Python reads heads with httptools (llhttp, strict) first and its own
//! lenient reader for what llhttp rejects, and the two read alike wherever
//! both accept; so a head reads here as the lenient reader reads it, with
//! httparse as the fast path (where httparse accepts, it reads what the
//! lenient reader reads: tests/unit/native/test_http1_diff.py compares them
//! with Python's on many heads). Where the three part:
//! - httparse rejects, llhttp accepts: several spaces between the parts of
//!   a request line, control bytes in a reason phrase, more header fields
//!   than httparse is given slots for — read by the lenient reader, as Python
//!   does — and start lines that neither httparse nor the lenient reader
//!   take: an HTTP/0.9 request line (no version; its field lines still
//!   follow), the versions 0.9 and 2.0, RTSP/ICE protocol names (reported
//!   as HTTP/x.y, the protocol dropped) and CR or LF bytes before a start
//!   line. For those `llhttp_only` models llhttp's strict grammar (its
//!   method list, URL parser, CRLF line ends, Content-Length and
//!   Transfer-Encoding rules), so that Python's exchange is made here too;
//! - httparse accepts, llhttp rejects: bare LF line ends, any token as a
//!   method, a target of any visible (or UTF-8) bytes where llhttp's URL
//!   parser refuses some (`a:b`, `?x`, `|` in an authority, 8-bit bytes), a
//!   repeated or listed Content-Length, Transfer-Encoding with
//!   Content-Length, an empty Transfer-Encoding, a coding after chunked in a
//!   request: Python then reads them with its lenient reader, which is what
//!   this reads them with too (the framing rules of RFC 9112 §6.3 are ours);
//! - neither: control bytes in values, any byte in a name, whitespace before
//!   a colon, a line without a colon, an obs-fold (joined with one SP, as h11
//!   does), 8-bit reason phrases (httparse returns "" for them: taken from
//!   the line): the lenient reader, every field byte kept as captured.
//!
//! This runs for every captured chunk, so the keep-alive path is short: a
//! head seen before is not read again (the last one of each direction is
//! compared byte for byte, then a bounded cache shared by all connections),
//! and a chunk with nothing carried over is parsed where it is.

use std::borrow::{Borrow, Cow};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use hashlink::LruCache;
use memchr::{memchr, memmem};

use crate::model::{
    Chunk, ConnInfo, ConnectionParser, Headers, HttpExchange, HttpRequest, HttpResponse, Item,
};
use crate::sniff::{self, Want, MAX_START_LINE, START_TAIL};

pub const MAX_HEAD_BYTES: usize = 64 << 10; // a longer head is treated as a desync, not buffered
pub const MAX_UNANSWERED: usize = 32; // requests kept waiting for responses
pub const MAX_CHUNK_LINE: usize = 4096; // chunk-size line with extensions (RFC 9112 §7.1.1)
/// Heads of at most this size are cached, this many per direction.
pub const HEAD_CACHE_SIZE: usize = 256;
pub const MAX_CACHED_HEAD: usize = 4096;
/// 1xx statuses kept before a final response. Python keeps every one (an
/// endless run of `100 Continue` grows its tuple without bound); here the
/// first ones are kept and the rest are not, so memory stays bounded.
pub const MAX_INFORMATIONAL: usize = 64;
/// Header slots httparse fills; a head with more is read by the lenient reader.
const HEADER_SLOTS: usize = 64;

// -- heads --------------------------------------------------------------------

/// A parsed head: a pure function of its bytes and direction, so a head seen
/// before is shared (`Arc`) rather than read again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String, // "" for a response
    pub target: String,
    pub authority: Option<String>,
    pub status: u16, // 0 for a request
    pub reason: String,
    pub version: String,
    pub headers: Arc<Headers>,
    pub transfer_encoding: Option<Vec<u8>>,
    // what framing needs, worked out once per distinct head
    pub chunked: bool,
    pub content_length: Option<u64>, // None when absent (or invalid: see bad_length)
    /// RFC 9112 §6.3 item 5: differing or non-numeric Content-Length values.
    pub bad_length: bool,
    pub size: usize, // bytes of the head, its blank line included
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&byte| char::from(byte)).collect()
}

fn strip_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Python's `bytes.strip()`: ASCII whitespace both ends.
fn strip_ascii_space(mut value: &[u8]) -> &[u8] {
    const SPACE: &[u8] = b" \t\n\r\x0b\x0c";
    while let [first, rest @ ..] = value {
        if !SPACE.contains(first) {
            break;
        }
        value = rest;
    }
    while let [rest @ .., last] = value {
        if !SPACE.contains(last) {
            break;
        }
        value = rest;
    }
    value
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// chunked must be the final transfer coding (RFC 9112 §6.1).
fn transfer_chunked(value: &[u8]) -> bool {
    let last = match memchr::memrchr(b',', value) {
        Some(comma) => &value[comma + 1..],
        None => value,
    };
    strip_ascii_space(last).eq_ignore_ascii_case(b"chunked")
}

/// Digits as a number; a number too large for u64 saturates (Python's int
/// has no bound; no body reaches 2^64 bytes, so the framing is the same).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// (length, invalid) of a message's Content-Length fields.
///
/// RFC 9112 §6.3 item 5 and RFC 9110 §8.6: repeated fields or a list are one
/// length when every element is the same number; otherwise (differing
/// numbers, anything but digits, no number at all) the framing is invalid.
/// Elements are compared as bytes, as Python's set of them is.
fn content_length(values: &[&[u8]]) -> (Option<u64>, bool) {
    if values.is_empty() {
        return (None, false);
    }
    let mut number: Option<&[u8]> = None;
    for value in values {
        for element in value.split(|&byte| byte == b',') {
            let element = strip_ows(element);
            if element.is_empty() {
                continue; // empty list elements are ignored (RFC 9110 §5.6.1)
            }
            match number {
                None => number = Some(element),
                Some(seen) if seen == element => {}
                Some(_) => return (None, true),
            }
        }
    }
    match number.and_then(decimal) {
        Some(length) => (Some(length), false),
        None => (None, true),
    }
}

/// What a head's fields say about framing, read as the lenient reader does.
struct Framing {
    authority: Option<String>,
    transfer_encoding: Option<Vec<u8>>,
    chunked: bool,
    content_length: Option<u64>,
    bad_length: bool,
}

fn framing(headers: &Headers) -> Framing {
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut encoding: Option<Vec<u8>> = None;
    let mut host: Option<&[u8]> = None;
    for (name, value) in headers {
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => lengths.push(value),
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => match &mut encoding {
                // several fields form one list (RFC 9110 §5.3)
                Some(joined) => {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(value);
                }
                None => encoding = Some(value.clone()),
            },
            4 if name.eq_ignore_ascii_case(b"host") => host = Some(value),
            _ => {}
        }
    }
    let (content_length, bad_length) = content_length(&lengths);
    Framing {
        authority: host.map(latin1),
        chunked: encoding.as_deref().is_some_and(transfer_chunked),
        transfer_encoding: encoding,
        content_length,
        bad_length,
    }
}

struct StartLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    status: u16,
    reason: &'a [u8],
    version: String,
}

fn build(start: StartLine<'_>, headers: Headers, size: usize) -> Head {
    let framing = framing(&headers);
    Head {
        method: latin1(start.method),
        target: latin1(start.target),
        authority: framing.authority,
        status: start.status,
        reason: latin1(start.reason),
        version: start.version,
        headers: Arc::new(headers),
        transfer_encoding: framing.transfer_encoding,
        chunked: framing.chunked,
        content_length: framing.content_length,
        bad_length: framing.bad_length,
        size,
    }
}

/// A head in the form httparse reads (it then reads it as the lenient reader
/// does, which tests/unit/native/test_http1_diff.py checks).
fn httparse_head(head: &[u8], is_request: bool) -> Option<Head> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let (start, size, fields) = if is_request {
        let mut request = httparse::Request::new(&mut slots);
        let httparse::Status::Complete(size) = request.parse(head).ok()? else {
            return None;
        };
        let version = match request.version? {
            0 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let start = StartLine {
            method: request.method?.as_bytes(),
            target: request.path?.as_bytes(),
            status: 0,
            reason: b"",
            version: version.to_owned(),
        };
        (start, size, &*request.headers)
    } else {
        let mut response = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(size) = response.parse(head).ok()? else {
            return None;
        };
        let version = match response.version? {
            0 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        // httparse gives "" for a reason with 8-bit bytes: take it from the line
        let line_end = memchr(b'\n', head)?;
        let line = head[..line_end]
            .strip_suffix(b"\r")
            .unwrap_or(&head[..line_end]);
        let start = StartLine {
            method: b"",
            target: b"",
            status: response.code?,
            reason: line.get(13..).unwrap_or_default(),
            version: version.to_owned(),
        };
        (start, size, &*response.headers)
    };
    let headers = fields
        .iter()
        .map(|field| {
            (
                field.name.as_bytes().to_vec(),
                strip_ows(field.value).to_vec(),
            )
        })
        .collect();
    Some(build(start, headers, size))
}

/// The lines of the head `data` opens and the head's size; None when it has
/// no blank line. A line ends at LF, one CR before it is dropped (RFC 9112
/// §2.2); any other byte, a lone CR included, stays in the line.
fn head_lines(data: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    let mut lines = Vec::new();
    let mut pos = 0;
    loop {
        let newline = pos + memchr(b'\n', &data[pos..])?;
        let line = &data[pos..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = newline + 1;
        if line.is_empty() {
            return Some((lines, pos));
        }
        lines.push(line);
    }
}

/// Field lines as (name, value), every byte kept but the syntax around them.
///
/// An obs-fold becomes one SP after what the line before kept (RFC 9112
/// §5.2; what h11 does); a value loses its surrounding SP/HTAB (RFC 9110
/// §5.5). A name keeps whatever precedes its colon; a line without a colon
/// is a name with an empty value, as nginx reads one.
fn fields(lines: &[&[u8]]) -> Headers {
    let mut joined: Vec<Cow<'_, [u8]>> = Vec::with_capacity(lines.len());
    for &line in lines {
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        match joined.last_mut() {
            Some(previous) if folded => {
                let previous = previous.to_mut();
                previous.push(b' ');
                let start = line
                    .iter()
                    .position(|&byte| byte != b' ' && byte != b'\t')
                    .unwrap_or(line.len());
                previous.extend_from_slice(&line[start..]);
            }
            _ => joined.push(Cow::Borrowed(line)),
        }
    }
    joined
        .iter()
        .map(|line| match memchr(b':', line) {
            Some(colon) => (
                line[..colon].to_vec(),
                strip_ows(&line[colon + 1..]).to_vec(),
            ),
            None => (line.to_vec(), Vec::new()),
        })
        .collect()
}

/// `([tchar]+) +(.*?) +HTTP/(1\.[01])`, matched as Python's fullmatch does.
fn lenient_request_line(line: &[u8]) -> Option<StartLine<'_>> {
    let method_end = line.iter().position(|&byte| !is_tchar(byte))?;
    if method_end == 0 || line[method_end] != b' ' {
        return None;
    }
    let target_start = method_end
        + line[method_end..]
            .iter()
            .take_while(|&&byte| byte == b' ')
            .count();
    let version = line.len().checked_sub(8)?;
    let minor = match &line[version..] {
        b"HTTP/1.0" => "HTTP/1.0",
        b"HTTP/1.1" => "HTTP/1.1",
        _ => return None,
    };
    // the shortest target: up to the run of spaces before the version
    let spaces = line[..version]
        .iter()
        .rev()
        .take_while(|&&byte| byte == b' ')
        .count();
    let target_end = version - spaces;
    if spaces == 0 || target_end <= target_start {
        return None; // no space before the version, or an empty target
    }
    Some(StartLine {
        method: &line[..method_end],
        target: &line[target_start..target_end],
        status: 0,
        reason: b"",
        version: minor.to_owned(),
    })
}

/// `HTTP/(1\.[01]) ([0-9]{3})(?: (.*))?`, fullmatch.
fn lenient_status_line(line: &[u8]) -> Option<StartLine<'_>> {
    let version = match line.get(..9)? {
        b"HTTP/1.0 " => "HTTP/1.0",
        b"HTTP/1.1 " => "HTTP/1.1",
        _ => return None,
    };
    let status = three_digits(line.get(9..12)?)?;
    let reason: &[u8] = match line.get(12..) {
        Some([]) | None => b"",
        Some([b' ', reason @ ..]) => reason,
        Some(_) => return None,
    };
    Some(StartLine {
        method: b"",
        target: b"",
        status,
        reason,
        version: version.to_owned(),
    })
}

fn three_digits(digits: &[u8]) -> Option<u16> {
    match digits {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Read a head httparse rejected; None when its start line is not HTTP/1.
fn lenient_head(head: &[u8], is_request: bool) -> Option<Head> {
    let (lines, size) = head_lines(head)?;
    let (&first, rest) = lines.split_first()?;
    let start = if is_request {
        lenient_request_line(first)?
    } else {
        lenient_status_line(first)?
    };
    Some(build(start, fields(rest), size))
}

// llhttp's strict mode (as httptools 0.9 builds it), for the start lines
// only it accepts (see the top). Its grammar, from llhttp's http.ts and
// url.ts, checked against httptools by tests/unit/native/test_http1_diff.py.
const LLHTTP_HTTP_METHODS: [&[u8]; 35] = [
    b"DELETE",
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PATCH",
    b"PURGE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
    b"QUERY",
];
const LLHTTP_RTSP_METHODS: [&[u8]; 14] = [
    b"GET",
    b"POST",
    b"OPTIONS",
    b"DESCRIBE",
    b"ANNOUNCE",
    b"SETUP",
    b"PLAY",
    b"PAUSE",
    b"TEARDOWN",
    b"GET_PARAMETER",
    b"SET_PARAMETER",
    b"REDIRECT",
    b"RECORD",
    b"FLUSH",
];

/// Any method llhttp knows (an HTTP/0.9 request line names no protocol to
/// check it against; PRI is one too).
fn llhttp_method(method: &[u8]) -> bool {
    LLHTTP_HTTP_METHODS.contains(&method)
        || LLHTTP_RTSP_METHODS.contains(&method)
        || method == b"PRI"
}

/// `PROTO/x.y` at the start of `text` as llhttp reads it: (protocol,
/// "x.y", its length).
fn llhttp_version(text: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let protocol = [b"HTTP".as_slice(), b"RTSP", b"ICE"]
        .into_iter()
        .find(|protocol| text.starts_with(protocol))?;
    let number = text.get(protocol.len() + 1..protocol.len() + 4)?;
    if text.get(protocol.len()) != Some(&b'/')
        || !matches!(number, b"0.9" | b"1.0" | b"1.1" | b"2.0")
    {
        return None;
    }
    Some((protocol, number, protocol.len() + 4))
}

fn llhttp_version_label(number: &[u8]) -> String {
    match number {
        b"1.0" => "HTTP/1.0".to_owned(),
        b"1.1" => "HTTP/1.1".to_owned(),
        _ => ["HTTP/", &latin1(number)].concat(),
    }
}

/// Where the URL starting at `start` ends (at a SP, CR or LF), as llhttp's
/// loose URL parser reads one; None when it refuses a byte.
fn llhttp_url_end(head: &[u8], start: usize, connect: bool) -> Option<usize> {
    let visible_from = |from: usize| {
        let end = from
            + head[from..]
                .iter()
                .take_while(|byte| (0x21..=0x7e).contains(*byte))
                .count();
        matches!(head.get(end), Some(b' ' | b'\r' | b'\n')).then_some(end)
    };
    let mut at = start;
    if !connect {
        match head.get(at) {
            Some(b'/' | b'*') => return visible_from(at), // path, query, fragment
            Some(byte) if byte.is_ascii_alphabetic() => {
                at += head[at..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphabetic())
                    .count();
                if !head[at..].starts_with(b"://") {
                    return None;
                }
                at += 3;
            }
            _ => return None,
        }
    }
    // the authority: userinfo characters, brackets, `@`
    at += head[at..]
        .iter()
        .take_while(|byte| byte.is_ascii_alphanumeric() || b"-_.!~*'()%;:&=+$,[]@".contains(byte))
        .count();
    match head.get(at) {
        Some(b'/' | b'?') => visible_from(at),
        Some(b' ' | b'\r' | b'\n') => Some(at),
        _ => None,
    }
}

/// A request line; the start line and where the field lines begin.
fn llhttp_request_line(head: &[u8]) -> Option<(StartLine<'_>, usize)> {
    let method_end = memchr(b' ', head)?;
    let method = &head[..method_end];
    if !llhttp_method(method) {
        return None;
    }
    let url_start = method_end
        + head[method_end..]
            .iter()
            .take_while(|&&b| b == b' ')
            .count();
    let url_end = llhttp_url_end(head, url_start, method == b"CONNECT")?;
    let url = &head[url_start..url_end];
    let line = |version: &[u8]| StartLine {
        method,
        target: url,
        status: 0,
        reason: b"",
        version: llhttp_version_label(version),
    };
    match head.get(url_end..) {
        // no protocol: an HTTP/0.9 request line (its field lines still follow)
        Some([b'\n', ..]) => Some((line(b"0.9"), url_end + 1)),
        Some([b'\r', b'\n', ..]) => Some((line(b"0.9"), url_end + 2)),
        Some([b' ', ..]) => {
            let at = url_end + head[url_end..].iter().take_while(|&&b| b == b' ').count();
            let (protocol, number, size) = llhttp_version(&head[at..])?;
            let known = match protocol {
                b"HTTP" => LLHTTP_HTTP_METHODS.contains(&method),
                b"RTSP" => LLHTTP_RTSP_METHODS.contains(&method),
                _ => method == b"SOURCE",
            };
            if !known || !head[at + size..].starts_with(b"\r\n") {
                return None;
            }
            Some((line(number), at + size + 2))
        }
        _ => None,
    }
}

/// A status line; the start line and where the field lines begin.
fn llhttp_status_line(head: &[u8]) -> Option<(StartLine<'_>, usize)> {
    let (_, number, size) = llhttp_version(head)?;
    if head.get(size) != Some(&b' ') {
        return None;
    }
    let status = three_digits(head.get(size + 1..size + 4)?)?;
    let after = size + 4;
    let (reason, fields_at): (&[u8], usize) = match head.get(after..) {
        Some([b'\r', b'\n', ..]) => (b"", after + 2),
        Some([b' ', rest @ ..]) => {
            let length = rest
                .iter()
                .take_while(|&&b| b != b'\r' && b != b'\n')
                .count();
            if !rest[length..].starts_with(b"\r\n") {
                return None;
            }
            (&rest[..length], after + 1 + length + 2)
        }
        _ => return None,
    };
    let start = StartLine {
        method: b"",
        target: b"",
        status,
        reason,
        version: llhttp_version_label(number),
    };
    Some((start, fields_at))
}

/// A head as llhttp's strict mode reads it, for the start lines only llhttp
/// accepts: field lines end in CRLF, names are tokens, values visible bytes,
/// no obs-fold, one Content-Length of digits and not with
/// Transfer-Encoding, and in a request no transfer coding after chunked.
/// Its size is all of `head`, as Python takes it (even when llhttp's head
/// ended earlier, which only an HTTP/0.9 line ending in a bare LF allows).
fn llhttp_only(head: &[u8], is_request: bool) -> Option<Head> {
    let (start, fields_at) = if is_request {
        llhttp_request_line(head)?
    } else {
        llhttp_status_line(head)?
    };
    let rest = &head[fields_at..];
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let httparse::Status::Complete((used, parsed)) =
        httparse::parse_headers(rest, &mut slots).ok()?
    else {
        return None;
    };
    // httparse takes a bare LF where llhttp wants CRLF
    let bare_lf = memchr::memchr_iter(b'\n', &rest[..used])
        .any(|newline| newline == 0 || rest[newline - 1] != b'\r');
    if bare_lf {
        return None;
    }
    let headers: Headers = parsed
        .iter()
        .map(|field| {
            (
                field.name.as_bytes().to_vec(),
                strip_ows(field.value).to_vec(),
            )
        })
        .collect();
    let mut length: Option<&[u8]> = None;
    let mut codings: Vec<&[u8]> = Vec::new();
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            let fits = value.iter().try_fold(0u64, |number, digit| {
                number
                    .checked_mul(10)?
                    .checked_add(u64::from(digit.wrapping_sub(b'0')))
            });
            if length.is_some() || decimal(value).is_none() || fits.is_none() {
                return None; // a duplicate, not digits, or an overflow
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if value.is_empty() {
                return None;
            }
            codings.extend(value.split(|&byte| byte == b','));
        }
    }
    if length.is_some() && !codings.is_empty() {
        return None;
    }
    if is_request {
        let chunked_before_last = codings
            .iter()
            .rev()
            .skip(1)
            .any(|coding| strip_ows(coding).eq_ignore_ascii_case(b"chunked"));
        if chunked_before_last {
            return None;
        }
    }
    // one length, digits: what Python's strict path takes as it is
    let length = length.and_then(decimal);
    let mut parsed = build(start, headers, head.len());
    parsed.content_length = length;
    parsed.bad_length = false;
    Some(parsed)
}

static BLANK: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));

/// Parse one head (its bytes up to and with the blank line that ends it);
/// None when it is not a valid head.
pub fn parse_head(head: &[u8], is_request: bool) -> Option<Head> {
    let lead = head
        .iter()
        .take_while(|&&byte| byte == b'\r' || byte == b'\n')
        .count();
    if lead > 0 {
        // llhttp skips these; the lenient reader would not see a start line
        let mut parsed = llhttp_only(&head[lead..], is_request)?;
        parsed.size = head.len();
        return Some(parsed);
    }
    httparse_head(head, is_request)
        .or_else(|| lenient_head(head, is_request))
        .or_else(|| llhttp_only(head, is_request))
}

/// A cached parse with the bytes it was read from.
#[derive(Debug)]
struct CachedHead {
    raw: Box<[u8]>,
    head: Arc<Head>,
    /// `raw` ends at its first CRLF CRLF: bytes that start with `raw` hold
    /// this head whatever follows (no search for its end is needed)
    ends_at_blank: bool,
}

impl CachedHead {
    fn new(raw: &[u8], head: Head) -> CachedHead {
        CachedHead {
            raw: raw.into(),
            head: Arc::new(head),
            ends_at_blank: BLANK.find(raw).is_some_and(|found| found + 4 == raw.len()),
        }
    }
}

/// The cache's key: the head's bytes, held once by the entry itself.
struct HeadKey(Arc<CachedHead>);

impl PartialEq for HeadKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.raw == other.0.raw
    }
}

impl Eq for HeadKey {}

impl Hash for HeadKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.raw[..].hash(state); // as [u8] hashes: lookups borrow the key as one
    }
}

impl Borrow<[u8]> for HeadKey {
    fn borrow(&self) -> &[u8] {
        &self.0.raw
    }
}

struct HeadCache {
    by_direction: [LruCache<HeadKey, Arc<CachedHead>>; 2], // requests, responses
}

thread_local! {
    // Shared by every connection of the thread (the tracker runs on one);
    // only a cache: a head parses the same on any thread.
    static HEAD_CACHE: RefCell<HeadCache> = RefCell::new(HeadCache {
        by_direction: [LruCache::new(HEAD_CACHE_SIZE), LruCache::new(HEAD_CACHE_SIZE)],
    });
}

/// The number of heads cached for each direction (requests, responses).
pub fn head_cache_len() -> (usize, usize) {
    HEAD_CACHE.with_borrow(|cache| (cache.by_direction[0].len(), cache.by_direction[1].len()))
}

/// Empty the head cache of this thread (tests compare cold and warm parses).
pub fn clear_head_cache() {
    HEAD_CACHE.with_borrow_mut(|cache| cache.by_direction.iter_mut().for_each(LruCache::clear));
}

fn cached_head(head: &[u8], is_request: bool) -> Option<Arc<CachedHead>> {
    let index = usize::from(!is_request);
    let found = HEAD_CACHE.with_borrow_mut(|cache| {
        let lru = &mut cache.by_direction[index];
        lru.get(head).cloned()
    });
    if found.is_some() {
        return found;
    }
    let entry = Arc::new(CachedHead::new(head, parse_head(head, is_request)?));
    HEAD_CACHE.with_borrow_mut(|cache| {
        cache.by_direction[index].insert(HeadKey(entry.clone()), entry.clone());
    });
    Some(entry)
}

// -- the parser ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Head,
    Length,
    ChunkSize,
    ChunkData,
    ChunkEnd, // the CRLF after a chunk's data
    Trailers,
    UntilClose,
    Resync, // skipping to the next start line
    Tunnel, // after CONNECT 2xx or 101: no longer HTTP
}

/// One request or response being read: its head and its body, kept up to the
/// body limit (the rest only counted).
struct Message {
    head: Arc<Head>,
    trailers: Headers,
    body: Vec<u8>,
    dropped: u64,
}

impl Message {
    fn new(head: Arc<Head>) -> Message {
        Message {
            head,
            trailers: Vec::new(),
            body: Vec::new(),
            dropped: 0,
        }
    }

    fn add(&mut self, piece: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.body.len());
        let keep = piece.len().min(room);
        self.body.extend_from_slice(&piece[..keep]);
        self.dropped += (piece.len() - keep) as u64;
    }
}

struct Exchange {
    id: u64, // names its request and its response for the sides reading them
    started_ns: u64,
    request: Option<Message>,
    response: Option<Message>,
    request_done: bool,
    response_done: bool,
    informational: Vec<u16>, // 1xx statuses
    unframed: bool,          // a body whose length could not be known: never complete
}

/// One direction: its buffer, framing state and the message it reads.
struct Side {
    is_client: bool,
    buffer: Vec<u8>,
    mode: Mode,
    remaining: u64,
    message: Option<u64>, // the id of the exchange whose message this side reads
    // bytes skipped while resynchronising; `counting` when they are the
    // parser's loss (not a mid-stream start or a gap, reported as such)
    counting: bool,
    skipped: i64,
    last_head: Option<Arc<CachedHead>>, // the head read last: keep-alive repeats it
}

impl Side {
    fn new(is_client: bool) -> Side {
        Side {
            is_client,
            buffer: Vec::new(),
            mode: Mode::Head,
            remaining: 0,
            message: None,
            counting: false,
            skipped: 0,
            last_head: None,
        }
    }

    fn resync(&mut self, counting: bool) {
        self.mode = Mode::Resync;
        self.buffer.clear();
        self.message = None;
        self.remaining = 0;
        self.counting = counting;
        self.skipped = 0;
    }

    /// The head read last, when `buffer` starts with it (keep-alive).
    fn repeated_head(&self, buffer: &[u8]) -> Option<Arc<Head>> {
        let last = self.last_head.as_ref()?;
        (last.ends_at_blank && buffer.starts_with(&last.raw)).then(|| last.head.clone())
    }

    fn read_head(&mut self, head: &[u8]) -> Option<Arc<Head>> {
        if head.len() > MAX_CACHED_HEAD {
            return parse_head(head, self.is_client).map(Arc::new);
        }
        if let Some(last) = &self.last_head {
            if *last.raw == *head {
                return Some(last.head.clone());
            }
        }
        let entry = cached_head(head, self.is_client)?;
        let parsed = entry.head.clone();
        self.last_head = Some(entry);
        Some(parsed)
    }
}

fn skip_empty_lines(buffer: &[u8], mut pos: usize) -> usize {
    loop {
        match buffer.get(pos..) {
            Some([b'\r', b'\n', ..]) => pos += 2,
            Some([b'\n', ..]) => pos += 1,
            _ => return pos,
        }
    }
}

/// The end of the head starting at `pos`: after its CRLF CRLF or, failing
/// that, its first blank line ending in a bare LF (`\n\r?\n`).
fn head_end(buffer: &[u8], pos: usize) -> Option<usize> {
    let tail = &buffer[pos..];
    if let Some(found) = BLANK.find(tail) {
        return Some(pos + found + 4);
    }
    for newline in memchr::memchr_iter(b'\n', tail) {
        match tail.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(pos + newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(pos + newline + 3),
            _ => {}
        }
    }
    None
}

/// `[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n` at `pos`: the end of
/// the chunk-size line and the size.
fn chunk_size_line(buffer: &[u8], pos: usize) -> Option<(usize, u64)> {
    let line = &buffer[pos..];
    let blanks = |from: usize| {
        line.get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&byte| byte == b' ' || byte == b'\t')
            .count()
    };
    let digits_start = blanks(0);
    let digits = line[digits_start..]
        .iter()
        .take(17)
        .take_while(|byte| byte.is_ascii_hexdigit())
        .count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let size = line[digits_start..digits_start + digits]
        .iter()
        .fold(0u64, |value, &digit| {
            let nibble = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => digit - b'A' + 10,
            };
            value << 4 | u64::from(nibble)
        });
    let mut at = digits_start + digits;
    at += blanks(at);
    if line.get(at) == Some(&b';') {
        at += line[at..]
            .iter()
            .take_while(|&&byte| byte != b'\r' && byte != b'\n')
            .count();
    }
    match line.get(at..) {
        Some([b'\n', ..]) => Some((pos + at + 1, size)),
        Some([b'\r', b'\n', ..]) => Some((pos + at + 2, size)),
        _ => None,
    }
}

/// How a parse of one side's bytes ended.
enum Flow {
    /// Consumed up to this index; the rest waits for more bytes.
    Done(usize),
    /// Framing broke: the side resynchronises on what it kept in its buffer.
    Desync,
    /// The connection became a tunnel: the rest is not HTTP.
    Tunnel,
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// Both directions of one HTTP/1.x connection, paired into exchanges.
pub struct Http1Parser {
    info: Arc<ConnInfo>,
    max_body: usize,
    sides: [Side; 2], // CLIENT, SERVER
    // exchanges not yet emitted, in request order; the last `unanswered` of
    // them wait for their responses (the response side answers the first)
    exchanges: VecDeque<Exchange>,
    unanswered: usize,
    next_id: u64,
}

impl Http1Parser {
    /// `resync`: the connection was joined mid-way, so both sides first look
    /// for a start line (Python's `resync_reason="mid-stream"`).
    pub fn new(info: Arc<ConnInfo>, max_body_bytes: usize, resync: bool) -> Http1Parser {
        let mut parser = Http1Parser {
            info,
            max_body: max_body_bytes,
            sides: [Side::new(true), Side::new(false)],
            exchanges: VecDeque::new(),
            unanswered: 0,
            next_id: 0,
        };
        if resync {
            parser.sides.iter_mut().for_each(|side| side.resync(false));
        }
        parser
    }

    /// Bytes held in both sides' buffers (each stays within MAX_HEAD_BYTES).
    pub fn buffered(&self) -> usize {
        self.sides.iter().map(|side| side.buffer.len()).sum()
    }

    /// Exchanges held, not yet emitted (at most MAX_UNANSWERED + 1).
    pub fn in_flight(&self) -> usize {
        self.exchanges.len()
    }

    /// Hand over the partial line a mid-stream scan held for one side.
    pub fn prime(&mut self, from_client: bool, partial_line: &[u8]) {
        let side = &mut self.sides[if from_client { CLIENT } else { SERVER }];
        if side.mode == Mode::Resync {
            side.buffer.extend_from_slice(partial_line);
        }
    }

    /// Parse one direction's bytes; false when they were not parsed to the
    /// end (a tunnel, or still looking for a start line).
    fn feed_side(&mut self, s: usize, data: &[u8], timestamp_ns: u64, out: &mut Vec<Item>) -> bool {
        let mode = self.sides[s].mode;
        if mode == Mode::Tunnel {
            return false;
        }
        let mut from_buffer = true;
        if mode == Mode::Resync {
            if !self.resync(s, data, timestamp_ns, out) {
                return false;
            }
        } else if !self.sides[s].buffer.is_empty() {
            self.sides[s].buffer.extend_from_slice(data);
        } else {
            // nothing carried over (the usual case): parse the chunk where it
            // is; only what it leaves unparsed is copied to the buffer
            from_buffer = false;
        }
        loop {
            let flow = if from_buffer {
                let buffer = std::mem::take(&mut self.sides[s].buffer);
                let flow = self.parse(s, &buffer, timestamp_ns, out);
                if let Flow::Done(pos) = flow {
                    let mut buffer = buffer;
                    buffer.drain(..pos);
                    self.sides[s].buffer = buffer;
                }
                flow
            } else {
                let flow = self.parse(s, data, timestamp_ns, out);
                if let Flow::Done(pos) = flow {
                    self.sides[s].buffer.extend_from_slice(&data[pos..]);
                }
                flow
            };
            match flow {
                // bytes after the point of desync may hold the next message
                Flow::Desync if self.resync(s, b"", timestamp_ns, out) => from_buffer = true,
                _ => return true,
            }
        }
    }

    fn gap_at(&mut self, timestamp_ns: u64, out: &mut Vec<Item>) {
        self.flush_all(timestamp_ns, out);
        if self.sides[CLIENT].mode != Mode::Tunnel {
            for s in [CLIENT, SERVER] {
                self.report_skipped(s, timestamp_ns, out);
                self.sides[s].resync(false);
            }
        }
    }

    /// The bytes a desync made the parser skip, as one Lost item.
    fn report_skipped(&mut self, s: usize, timestamp_ns: u64, out: &mut Vec<Item>) {
        let side = &mut self.sides[s];
        if side.counting && side.skipped > 0 {
            out.push(Item::Lost(
                self.info.parser_lost(timestamp_ns, side.skipped as u64),
            ));
        }
        side.counting = false;
        side.skipped = 0;
    }

    // -- parsing -----------------------------------------------------------------

    /// Skip to the next start line; true when the side is in sync again.
    /// The side's buffer holds the last partial line of earlier bytes, so a
    /// start line split across chunks is still found.
    fn resync(&mut self, s: usize, data: &[u8], timestamp_ns: u64, out: &mut Vec<Item>) -> bool {
        let side = &mut self.sides[s];
        side.buffer.extend_from_slice(data);
        side.skipped += data.len() as i64;
        let want = if side.is_client {
            Want::Request
        } else {
            Want::Response
        };
        let Some((start, _)) = sniff::find_start(&side.buffer, want) else {
            let keep_from = memchr::memrchr(b'\n', &side.buffer).map_or(0, |newline| newline + 1);
            side.buffer.drain(..keep_from);
            if side.buffer.len() > MAX_START_LINE {
                // no line end for long: keep what a start may begin with
                let cut = side.buffer.len() - START_TAIL;
                side.buffer.drain(..cut);
            }
            return false;
        };
        side.skipped -= (side.buffer.len() - start) as i64; // these are parsed again
        self.report_skipped(s, timestamp_ns, out);
        let side = &mut self.sides[s];
        side.buffer.drain(..start);
        side.mode = Mode::Head;
        true
    }

    /// Consume what the side's framing allows of `buffer`.
    fn parse(&mut self, s: usize, buffer: &[u8], timestamp_ns: u64, out: &mut Vec<Item>) -> Flow {
        let mut pos = 0;
        let size = buffer.len();
        while pos < size {
            match self.sides[s].mode {
                Mode::Head => {
                    if buffer[pos] <= 0x0D {
                        // RFC 9112 §2.2: skip empty lines before a start
                        pos = skip_empty_lines(buffer, pos);
                    }
                    let head = match self.sides[s].repeated_head(&buffer[pos..]) {
                        Some(head) => head,
                        None => {
                            let Some(end) = head_end(buffer, pos) else {
                                if size - pos > MAX_HEAD_BYTES {
                                    return self.desync(s, buffer, pos, timestamp_ns, out);
                                }
                                break;
                            };
                            let Some(head) = self.sides[s].read_head(&buffer[pos..end]) else {
                                return self.desync(s, buffer, pos, timestamp_ns, out);
                            };
                            head
                        }
                    };
                    pos += head.size;
                    let framed = if self.sides[s].is_client {
                        self.request_head(s, head, timestamp_ns, out)
                    } else {
                        self.response_head(s, head, timestamp_ns, out)
                    };
                    if !framed {
                        return self.unframed(s, buffer, pos);
                    }
                }
                Mode::Length | Mode::ChunkData => {
                    let side = &self.sides[s];
                    let take = side.remaining.min((size - pos) as u64) as usize;
                    self.body(s, &buffer[pos..pos + take]);
                    pos += take;
                    let side = &mut self.sides[s];
                    side.remaining -= take as u64;
                    if side.remaining == 0 {
                        if side.mode == Mode::ChunkData {
                            side.mode = Mode::ChunkEnd;
                        } else {
                            self.message_done(s, timestamp_ns, out);
                        }
                    }
                }
                Mode::ChunkSize => {
                    let Some((end, chunk_size)) = chunk_size_line(buffer, pos) else {
                        let line_end = memchr(b'\n', &buffer[pos..]);
                        if line_end.is_some() || size - pos > MAX_CHUNK_LINE {
                            return self.desync(s, buffer, pos, timestamp_ns, out);
                        }
                        break;
                    };
                    pos = end;
                    let side = &mut self.sides[s];
                    if chunk_size == 0 {
                        side.mode = Mode::Trailers;
                    } else {
                        side.mode = Mode::ChunkData;
                        side.remaining = chunk_size;
                    }
                }
                Mode::ChunkEnd => {
                    if size - pos < 2 {
                        if buffer[pos] != b'\r' {
                            return self.desync(s, buffer, pos, timestamp_ns, out);
                        }
                        break;
                    }
                    if &buffer[pos..pos + 2] != b"\r\n" {
                        return self.desync(s, buffer, pos, timestamp_ns, out);
                    }
                    pos += 2;
                    self.sides[s].mode = Mode::ChunkSize;
                }
                Mode::Trailers => {
                    if buffer[pos..].starts_with(b"\r\n") {
                        pos += 2;
                    } else if buffer[pos] == b'\n' {
                        pos += 1; // a bare LF (RFC 9112 §2.2)
                    } else if size - pos < 2 {
                        break;
                    } else {
                        // trailer fields have the syntax of header fields (RFC 9112 §7.1.2)
                        let window = &buffer[pos..size.min(pos + MAX_HEAD_BYTES)];
                        let Some((lines, length)) = head_lines(window) else {
                            if size - pos > MAX_HEAD_BYTES {
                                return self.desync(s, buffer, pos, timestamp_ns, out);
                            }
                            break;
                        };
                        let trailers = fields(&lines);
                        if let Some(message) = self.message_mut(s) {
                            message.trailers = trailers;
                        }
                        pos += length;
                    }
                    self.message_done(s, timestamp_ns, out);
                }
                Mode::UntilClose => {
                    self.body(s, &buffer[pos..]);
                    pos = size;
                }
                Mode::Resync | Mode::Tunnel => {
                    // the head just parsed switched protocols
                    self.sides[s].buffer.clear();
                    return Flow::Tunnel;
                }
            }
        }
        Flow::Done(pos)
    }

    /// The message the side reads, when it is still held.
    fn message_mut(&mut self, s: usize) -> Option<&mut Message> {
        let id = self.sides[s].message?;
        if s == CLIENT {
            // the request being read is almost always the newest exchange
            let exchange = self.exchanges.iter_mut().rev().find(|e| e.id == id)?;
            exchange.request.as_mut()
        } else {
            let exchange = self.exchanges.iter_mut().find(|e| e.id == id)?;
            exchange.response.as_mut()
        }
    }

    fn body(&mut self, s: usize, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        let limit = self.max_body;
        if let Some(message) = self.message_mut(s) {
            message.add(piece, limit);
        }
    }

    /// Bytes at `pos` of `buffer` break framing: give up on what is in flight
    /// and keep the bytes after that line for the resync scan.
    fn desync(
        &mut self,
        s: usize,
        buffer: &[u8],
        pos: usize,
        timestamp_ns: u64,
        out: &mut Vec<Item>,
    ) -> Flow {
        self.flush_all(timestamp_ns, out);
        let rest = match memchr(b'\n', &buffer[pos..]) {
            Some(newline) => &buffer[pos + newline + 1..],
            None => b"",
        };
        let side = &mut self.sides[s];
        side.resync(true);
        side.skipped = (buffer.len() - pos) as i64; // the bad line and what follows, until a start
        side.buffer.extend_from_slice(rest);
        Flow::Desync
    }

    /// The head before `pos` was read but its body cannot be framed (RFC 9112
    /// §6.3 items 4-5): its exchange was kept (pairing holds: the peer answers
    /// or closes); the bytes from `pos` to the next start are lost.
    fn unframed(&mut self, s: usize, buffer: &[u8], pos: usize) -> Flow {
        let rest = &buffer[pos..];
        let side = &mut self.sides[s];
        side.resync(true);
        side.skipped = rest.len() as i64;
        side.buffer.extend_from_slice(rest);
        Flow::Desync
    }

    fn new_exchange(&mut self, timestamp_ns: u64, request: Option<Message>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.exchanges.push_back(Exchange {
            id,
            started_ns: timestamp_ns,
            request_done: request.is_none(),
            request,
            response: None,
            response_done: false,
            informational: Vec::new(),
            unframed: false,
        });
        self.unanswered += 1;
        id
    }

    fn exchange_mut(&mut self, id: u64) -> Option<&mut Exchange> {
        self.exchanges
            .iter_mut()
            .rev()
            .find(|exchange| exchange.id == id)
    }

    fn request_head(
        &mut self,
        s: usize,
        head: Arc<Head>,
        timestamp_ns: u64,
        out: &mut Vec<Item>,
    ) -> bool {
        if self.exchanges.len() >= MAX_UNANSWERED {
            self.emit_oldest_unanswered(timestamp_ns, out);
        }
        let id = self.new_exchange(timestamp_ns, Some(Message::new(head.clone())));
        let side = &mut self.sides[s];
        side.message = Some(id);
        if head.transfer_encoding.is_some() {
            if !head.chunked {
                // RFC 9112 §6.3 item 4: a request's length cannot be known
                return self.no_framing(s, id, timestamp_ns, out);
            }
            side.mode = Mode::ChunkSize;
        } else if head.bad_length {
            return self.no_framing(s, id, timestamp_ns, out); // RFC 9112 §6.3 item 5
        } else if let Some(length) = head.content_length.filter(|&length| length > 0) {
            side.mode = Mode::Length;
            side.remaining = length;
        } else {
            // no body (RFC 9112 §6.3 item 7)
            side.message = None;
            if let Some(exchange) = self.exchanges.back_mut() {
                exchange.request_done = true;
            }
            self.emit_ready(timestamp_ns, out);
        }
        true
    }

    fn response_head(
        &mut self,
        s: usize,
        head: Arc<Head>,
        timestamp_ns: u64,
        out: &mut Vec<Item>,
    ) -> bool {
        if self.unanswered == 0 {
            // joined mid-way or after a gap: a response without its request
            self.new_exchange(timestamp_ns, None);
        }
        let index = self.exchanges.len().saturating_sub(self.unanswered);
        let Some(exchange) = self.exchanges.get_mut(index) else {
            return true; // unreachable: `unanswered` counts exchanges held
        };
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // interim: the final one follows
            if exchange.informational.len() < MAX_INFORMATIONAL {
                exchange.informational.push(status);
            }
            return true;
        }
        let id = exchange.id;
        let connect = exchange
            .request
            .as_ref()
            .map_or("", |request| request.head.method.as_str());
        let head_request = connect == "HEAD";
        let tunnel = status == 101 || (connect == "CONNECT" && (200..300).contains(&status));
        exchange.response = Some(Message::new(head.clone()));
        self.sides[s].message = Some(id);
        // RFC 9112 §6.3 items 1-2: these responses have no body
        if head_request || status == 204 || status == 304 || tunnel {
            self.message_done(s, timestamp_ns, out);
            if tunnel {
                self.sides[CLIENT].mode = Mode::Tunnel;
                self.sides[SERVER].mode = Mode::Tunnel;
                self.sides[CLIENT].buffer.clear();
            }
            return true;
        }
        let side = &mut self.sides[s];
        let plain = head.transfer_encoding.is_none();
        if head.chunked {
            side.mode = Mode::ChunkSize;
        } else if let (true, Some(length)) = (plain, head.content_length) {
            side.remaining = length;
            if length == 0 {
                self.message_done(s, timestamp_ns, out);
            } else {
                side.mode = Mode::Length;
            }
        } else if plain && head.bad_length {
            return self.no_framing(s, id, timestamp_ns, out); // RFC 9112 §6.3 item 5
        } else {
            side.mode = Mode::UntilClose; // RFC 9112 §6.3 item 8
        }
        true
    }

    /// The message just read has a head but no knowable body: it ends here,
    /// its exchange is marked incomplete; false for the caller.
    fn no_framing(&mut self, s: usize, id: u64, timestamp_ns: u64, out: &mut Vec<Item>) -> bool {
        if let Some(exchange) = self.exchange_mut(id) {
            exchange.unframed = true;
        }
        self.message_done(s, timestamp_ns, out);
        false
    }

    // -- pairing -------------------------------------------------------------------

    fn message_done(&mut self, s: usize, timestamp_ns: u64, out: &mut Vec<Item>) {
        let side = &mut self.sides[s];
        let message = side.message.take();
        if side.mode != Mode::Tunnel {
            side.mode = Mode::Head;
        }
        let Some(id) = message else {
            return;
        };
        if s == CLIENT {
            if let Some(exchange) = self.exchange_mut(id) {
                exchange.request_done = true;
            }
        } else {
            self.answered(id);
        }
        self.emit_ready(timestamp_ns, out);
    }

    /// The response of exchange `id` ended: it leaves the unanswered ones.
    fn answered(&mut self, id: u64) {
        if self.unanswered == 0 {
            return;
        }
        let index = self.exchanges.len().saturating_sub(self.unanswered);
        if let Some(exchange) = self.exchanges.get_mut(index) {
            if exchange.id == id && exchange.response.is_some() {
                exchange.response_done = true;
                self.unanswered -= 1;
            }
        }
    }

    fn response_done(&mut self, id: u64, timestamp_ns: u64, out: &mut Vec<Item>) {
        self.answered(id);
        self.sides[SERVER].message = None;
        self.emit_ready(timestamp_ns, out);
    }

    fn emit_ready(&mut self, timestamp_ns: u64, out: &mut Vec<Item>) {
        while let Some(exchange) = self.exchanges.front() {
            if !(exchange.request_done && exchange.response_done) {
                return;
            }
            if let Some(exchange) = self.exchanges.pop_front() {
                let complete = exchange.request.is_some() && !exchange.unframed;
                self.emit(exchange, timestamp_ns, complete, out);
            }
        }
    }

    /// Bound memory when responses never come: give the oldest up. Its
    /// response, if it still comes, pairs with the next request: an observer
    /// cannot tell, so pairing is resynchronised as after a gap.
    fn emit_oldest_unanswered(&mut self, timestamp_ns: u64, out: &mut Vec<Item>) {
        let held = self.exchanges.len();
        let Some(exchange) = self.exchanges.pop_front() else {
            return;
        };
        if self.unanswered == held {
            self.unanswered -= 1; // it was the first unanswered one
        }
        let server = &mut self.sides[SERVER];
        if server.message == Some(exchange.id) && exchange.response.is_some() {
            server.message = None;
        }
        self.emit(exchange, timestamp_ns, false, out);
    }

    /// Emit every exchange in flight as incomplete.
    fn flush_all(&mut self, timestamp_ns: u64, out: &mut Vec<Item>) {
        while let Some(exchange) = self.exchanges.pop_front() {
            self.emit(exchange, timestamp_ns, false, out);
        }
        self.unanswered = 0;
        // a side in the middle of a body keeps its framing but no longer
        // keeps the bytes: they belong to an exchange already emitted
        self.sides[CLIENT].message = None;
        self.sides[SERVER].message = None;
    }

    fn emit(&self, exchange: Exchange, timestamp_ns: u64, complete: bool, out: &mut Vec<Item>) {
        let Exchange {
            started_ns,
            request,
            response,
            informational,
            ..
        } = exchange;
        let dropped = [
            request.as_ref().map_or(0, |message| message.dropped),
            response.as_ref().map_or(0, |message| message.dropped),
        ];
        let request = request.map(|message| {
            let head = &message.head;
            HttpRequest {
                method: head.method.clone(),
                target: head.target.clone(),
                authority: head.authority.clone(),
                scheme: None,
                version: head.version.clone(),
                headers: head.headers.clone(),
                body: message.body,
                trailers: message.trailers,
                body_truncated: message.dropped > 0,
            }
        });
        let response = response.map(|message| {
            let head = &message.head;
            HttpResponse {
                status: head.status,
                reason: head.reason.clone(),
                version: head.version.clone(),
                headers: head.headers.clone(),
                body: message.body,
                trailers: message.trailers,
                body_truncated: message.dropped > 0,
                informational,
            }
        });
        out.push(Item::Exchange(Box::new(HttpExchange {
            connection: self.info.clone(),
            request,
            response,
            started_ns,
            finished_ns: timestamp_ns,
            stream_id: None,
            grpc_request: Vec::new(),
            grpc_response: Vec::new(),
            complete,
        })));
        for bytes in dropped {
            if bytes > 0 {
                out.push(Item::Lost(self.info.parser_lost(timestamp_ns, bytes)));
            }
        }
    }
}

impl ConnectionParser for Http1Parser {
    fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    fn set_info(&mut self, info: Arc<ConnInfo>) {
        self.info = info;
    }

    fn feed(&mut self, chunk: &Chunk<'_>, from_client: bool, out: &mut Vec<Item>) {
        let s = if from_client { CLIENT } else { SERVER };
        if !self.feed_side(s, chunk.data, chunk.timestamp_ns, out) {
            return;
        }
        if chunk.truncated && chunk.last_chunk {
            // the kernel copied less than the call moved: bytes are missing
            // right after this chunk
            self.gap_at(chunk.timestamp_ns, out);
        }
    }

    fn gap(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        self.gap_at(chunk.timestamp_ns, out);
    }

    fn finish(&mut self, timestamp_ns: u64, closed: bool, out: &mut Vec<Item>) {
        let server = &self.sides[SERVER];
        if closed && server.mode == Mode::UntilClose {
            if let Some(id) = server.message {
                self.response_done(id, timestamp_ns, out);
            }
        }
        self.flush_all(timestamp_ns, out);
        for s in [CLIENT, SERVER] {
            match self.sides[s].mode {
                Mode::Resync => self.report_skipped(s, timestamp_ns, out),
                Mode::Tunnel => {}
                _ => {
                    let side = &mut self.sides[s];
                    if side
                        .buffer
                        .iter()
                        .any(|&byte| byte != b'\r' && byte != b'\n')
                    {
                        // a head (or chunk line) cut by the end: shown nowhere else
                        let lost = self
                            .info
                            .parser_lost(timestamp_ns, side.buffer.len() as u64);
                        out.push(Item::Lost(lost));
                        side.buffer.clear();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, LossReason};

    fn info() -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            pid: 1,
            comm: Arc::from("test"),
            uid: 0,
            fd: 3,
            conn_id: 9,
            client: None,
            server: None,
        })
    }

    fn chunk(data: &[u8], timestamp_ns: u64) -> Chunk<'_> {
        Chunk {
            timestamp_ns,
            pid: 1,
            tid: 1,
            uid: 0,
            comm: "test",
            conn_id: 9,
            fd: 3,
            direction: Direction::Send,
            call_id: 0,
            call_len: data.len() as u64,
            offset: 0,
            data,
            last_chunk: true,
            truncated: false,
            local: None,
            remote: None,
            lost_records: 0,
            lost_bytes: 0,
            ssl: 0,
            socket_cookie: None,
        }
    }

    fn run(pieces: &[(bool, &[u8])], limit: usize) -> Vec<Item> {
        let mut parser = Http1Parser::new(info(), limit, false);
        let mut out = Vec::new();
        for (index, (from_client, data)) in pieces.iter().enumerate() {
            parser.feed(&chunk(data, index as u64), *from_client, &mut out);
        }
        parser.finish(99, true, &mut out);
        out
    }

    fn exchanges(items: &[Item]) -> Vec<&HttpExchange> {
        items
            .iter()
            .filter_map(|item| match item {
                Item::Exchange(exchange) => Some(&**exchange),
                Item::Lost(_) => None,
            })
            .collect()
    }

    #[test]
    fn keepalive_exchange_with_a_body() {
        let items = run(
            &[
                (true, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
                (false, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                (true, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
                (false, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            ],
            1 << 20,
        );
        let got = exchanges(&items);
        assert_eq!(got.len(), 2);
        for exchange in got {
            assert!(exchange.complete);
            let request = exchange.request.as_ref().unwrap();
            assert_eq!(
                (request.method.as_str(), request.target.as_str()),
                ("GET", "/a")
            );
            assert_eq!(request.authority.as_deref(), Some("h"));
            assert_eq!(exchange.response.as_ref().unwrap().body, b"ok");
        }
    }

    #[test]
    fn chunked_with_trailers_split_byte_by_byte() {
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                         3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        let mut pieces: Vec<(bool, &[u8])> = vec![(true, b"GET / HTTP/1.1\r\n\r\n")];
        pieces.extend(response.chunks(1).map(|piece| (false, piece)));
        let items = run(&pieces, 1 << 20);
        let got = exchanges(&items);
        assert_eq!(got.len(), 1);
        let response = got[0].response.as_ref().unwrap();
        assert!(got[0].complete);
        assert_eq!(response.body, b"abcde");
        assert_eq!(response.trailers, vec![(b"X-T".to_vec(), b"1".to_vec())]);
    }

    #[test]
    fn head_responses_and_limits() {
        let items = run(
            &[
                (true, b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
                (false, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
                (
                    false,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789",
                ),
            ],
            4,
        );
        let got = exchanges(&items);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].response.as_ref().unwrap().body, b"");
        let second = got[1].response.as_ref().unwrap();
        assert_eq!(second.body, b"1234");
        assert!(second.body_truncated);
        let lost: Vec<_> = items
            .iter()
            .filter_map(|item| match item {
                Item::Lost(lost) => Some((lost.reason, lost.bytes)),
                Item::Exchange(_) => None,
            })
            .collect();
        assert_eq!(lost, vec![(LossReason::Parser, 5)]);
    }

    #[test]
    fn garbage_desyncs_then_recovers() {
        let garbage: &[u8] = b"\x00\x01 not a request line\r\n\r\n";
        let second = [garbage, b"GET /next HTTP/1.1\r\n\r\n"].concat();
        let items = run(
            &[
                (true, b"GET / HTTP/1.1\r\n\r\n"),
                (false, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                (true, &second),
                (false, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            ],
            100,
        );
        let got = exchanges(&items);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|exchange| exchange.complete));
        let lost: Vec<u64> = items
            .iter()
            .filter_map(|item| match item {
                Item::Lost(lost) => Some(lost.bytes),
                Item::Exchange(_) => None,
            })
            .collect();
        assert_eq!(lost, vec![garbage.len() as u64]);
    }

    #[test]
    fn heads_read_as_python_reads_them() {
        let lenient = parse_head(b"GET / HTTP/1.1\r\nX-Esc: a\x1bb\r\nX(y): z\r\n\r\n", true)
            .expect("a control byte and an odd name");
        assert_eq!(
            *lenient.headers,
            vec![
                (b"X-Esc".to_vec(), b"a\x1bb".to_vec()),
                (b"X(y)".to_vec(), b"z".to_vec())
            ]
        );
        let folded = parse_head(b"HTTP/1.1 200 \xff\r\nX-A: a \r\n\t  b\r\n\r\n", false).unwrap();
        assert_eq!(folded.reason, "\u{ff}");
        assert_eq!(*folded.headers, vec![(b"X-A".to_vec(), b"a  b".to_vec())]);
        let listed = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n", true).unwrap();
        assert_eq!((listed.content_length, listed.bad_length), (Some(4), false));
        let differing =
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 4, 04\r\n\r\n", true).unwrap();
        assert_eq!(
            (differing.content_length, differing.bad_length),
            (None, true)
        );
        let bare = parse_head(b"HTTP/1.1 200 OK\nX: y\n\nbody\r\n\r\n", false).unwrap();
        assert_eq!(bare.size, 22);
        // only llhttp reads these start lines
        let old = parse_head(b"GET / HTTP/0.9\r\n\r\n", true).unwrap();
        assert_eq!(old.version, "HTTP/0.9");
        let rtsp = parse_head(b"RTSP/1.0 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(rtsp.version, "HTTP/1.0");
        let led = parse_head(b"\r\rGET / HTTP/1.1\r\n\r\n", true).unwrap();
        assert_eq!(led.size, 20);
        for (head, is_request) in [
            (b"G\x00T / HTTP/1.1\r\n\r\n".as_slice(), true),
            (b"GET / HTTP/1.2\r\n\r\n", true),
            (b"GET HTTP/1.1\r\n\r\n", true),
            (b"HTTP/1.1 20 OK\r\n\r\n", false),
            (b"HTTP/2 200 OK\r\n\r\n", false),
            (b"\r\n\r\n", true),
            (b"\rFOO / HTTP/1.1\r\n\r\n", true),
        ] {
            assert_eq!(parse_head(head, is_request), None, "{head:?}");
        }
    }

    #[test]
    fn the_head_cache_gives_a_fresh_parse() {
        clear_head_cache();
        let head = b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n";
        let mut side = Side::new(true);
        let first = side.read_head(head).unwrap();
        let again = side.read_head(head).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let mut other = Side::new(true);
        assert!(Arc::ptr_eq(&other.read_head(head).unwrap(), &first));
        assert_eq!(*first, parse_head(head, true).unwrap());
        assert_eq!(head_cache_len(), (1, 0));
        for index in 0..HEAD_CACHE_SIZE + 10 {
            other.read_head(format!("GET /{index} HTTP/1.1\r\n\r\n").as_bytes());
        }
        assert_eq!(head_cache_len(), (HEAD_CACHE_SIZE, 0));
    }
}
