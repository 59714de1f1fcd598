//! `--format json` in the Rust core: one JSON object per line, written
//! straight into one buffer with no Python code per record.
//!
//! src/ecapture/output/jsonl.py (msgspec Structs) is the specification: for
//! every item this writer produces the same bytes (tests/unit/native/
//! test_jsonl.py compares them, tests/unit/output/golden pins them). What
//! msgspec does, measured on msgspec 0.23 and kept here:
//! - keys in struct field order, no spaces, `null`/`true`/`false`, integers
//!   in decimal, every line ended by `\n` (encode_lines);
//! - strings: `"` and `\` escaped with a backslash, \b \t \n \f \r as short
//!   escapes, the other characters below U+0020 as `\u00XX` (lower-case hex);
//!   DEL, U+2028/U+2029 and everything else outside ASCII left as UTF-8;
//! - bytes: standard base64 with padding.
//!
//! The escaper is written by hand: the tests pin it to msgspec's exact set,
//! and header bytes are latin-1 text that is transcoded to UTF-8 in the same
//! pass (no crate escapes latin-1 input). Integers are written by hand too
//! (put_u64 says why); base64 goes through base64-simd.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::bodies::{decode_body, wants_decoding, DEFAULT_DECODED_LIMIT};
use crate::model::{
    Chunk, Close, ConnInfo, Direction, Endpoint, GrpcMessage, Headers, HttpExchange, HttpRequest,
    HttpResponse, Item, Lost,
};

/// content.py DEFAULT_SCHEME: an HTTP/1 request carries no scheme, and only
/// TLS modules produce exchanges.
const DEFAULT_SCHEME: &[u8] = b"https";
/// A new output buffer's capacity.
const INITIAL_OUTPUT_BYTES: usize = 64 << 10;

/// Formats items as JSON lines into its buffer; whoever drives it hands the
/// buffer to a sink (`buffer()` + `clear()`, or `take()`).
pub struct JsonWriter {
    out: Vec<u8>,
    tsize: usize,
    decoded_limit: usize,
    cut_records: u64,
    cut_bytes: u64,
    // The constant start of each event: {"type":"X","module":"M","ts":
    data_head: Box<[u8]>,
    close_head: Box<[u8]>,
    lost_head: Box<[u8]>,
    http_head: Box<[u8]>,
    // What repeats between events of one connection, as JSON text.
    data_texts: Vec<Option<DataText>>,
    connection_texts: Vec<Option<ConnectionText>>,
    head_texts: Vec<Option<HeadText>>,
}

/// Slots of the caches below: a slot is picked by connection and a miss
/// replaces what it held, so they never grow.
const CACHE_SLOTS: usize = 64; // a power of two

/// A slot for `key` (Fibonacci hashing: the top bits of key × 2^64/φ).
fn slot_of(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
}

/// The fields of a data event from `"pid"` to `"dst"`: the same for every
/// chunk a thread moves in one direction on one connection (two thirds of
/// the event's cost without a payload, measured).
struct DataText {
    pid: u32,
    tid: u32,
    uid: u32,
    comm: String,
    conn_id: u64,
    fd: i32,
    ssl: u64,
    socket_cookie: Option<u64>,
    direction: Direction,
    local: Option<Endpoint>,
    remote: Option<Endpoint>,
    text: Vec<u8>,
}

impl DataText {
    fn matches(&self, chunk: &Chunk<'_>) -> bool {
        self.conn_id == chunk.conn_id
            && self.direction == chunk.direction
            && self.tid == chunk.tid
            && self.pid == chunk.pid
            && self.uid == chunk.uid
            && self.fd == chunk.fd
            && self.ssl == chunk.ssl
            && self.socket_cookie == chunk.socket_cookie
            && self.local == chunk.local
            && self.remote == chunk.remote
            && *self.comm == *chunk.comm
    }
}

/// A head's header pairs as JSON and its Content-Encoding, for one
/// `Arc<Headers>` (a parser may share one head between messages that repeat
/// it); heads whose JSON is longer than this are not kept.
struct HeadText {
    head: Arc<Headers>,
    encoding: Option<Vec<u8>>,
    json: Vec<u8>,
}

const MAX_CACHED_HEAD_BYTES: usize = 4096;

/// An HTTP event's fields from `"pid"` to `"dst"`, for one ConnInfo: parsers
/// share one `Arc<ConnInfo>` per connection, and the Arc kept here keeps its
/// address from being reused while the slot holds it.
struct ConnectionText {
    connection: Arc<ConnInfo>,
    text: Vec<u8>,
}

impl JsonWriter {
    /// `module` is the capture module's name ("tls"); `tsize` is -t/--tsize
    /// (0: no cut).
    pub fn new(module: &str, tsize: usize) -> JsonWriter {
        let head = |kind: &str| -> Box<[u8]> {
            let mut text = Vec::new();
            text.extend_from_slice(b"{\"type\":\"");
            text.extend_from_slice(kind.as_bytes());
            text.extend_from_slice(b"\",\"module\":");
            put_str(&mut text, module);
            text.extend_from_slice(b",\"ts\":");
            text.into_boxed_slice()
        };
        JsonWriter {
            out: Vec::with_capacity(INITIAL_OUTPUT_BYTES),
            tsize,
            decoded_limit: DEFAULT_DECODED_LIMIT,
            cut_records: 0,
            cut_bytes: 0,
            data_head: head("data"),
            close_head: head("close"),
            lost_head: head("lost"),
            http_head: head("http"),
            data_texts: std::iter::repeat_with(|| None).take(CACHE_SLOTS).collect(),
            connection_texts: std::iter::repeat_with(|| None).take(CACHE_SLOTS).collect(),
            head_texts: std::iter::repeat_with(|| None).take(CACHE_SLOTS).collect(),
        }
    }

    /// The most decoded bytes a body may have (bodies.rs; 64 MiB by default).
    pub fn set_decoded_limit(&mut self, limit: usize) {
        self.decoded_limit = limit;
    }

    /// The lines written since the last `clear()` or `take()`.
    pub fn buffer(&self) -> &[u8] {
        &self.out
    }

    /// The lines written so far; the writer starts a new buffer.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Forget the lines written (keeps the buffer's memory).
    pub fn clear(&mut self) {
        self.out.clear();
    }

    /// Forget the lines written; keep the buffer's memory unless it grew
    /// past `retained` bytes (then start a small one again).
    pub fn clear_retaining(&mut self, retained: usize) {
        if self.out.capacity() > retained {
            self.out = Vec::with_capacity(INITIAL_OUTPUT_BYTES);
        } else {
            self.out.clear();
        }
    }

    /// What -t/--tsize kept out of the output: (records cut, bytes cut), as
    /// output/base.py CutCount counts them.
    pub fn cut(&self) -> (u64, u64) {
        (self.cut_records, self.cut_bytes)
    }

    fn add_cut(&mut self, bytes: usize) {
        self.cut_records += 1;
        self.cut_bytes += bytes as u64;
    }

    /// What a parser hands on.
    pub fn item(&mut self, item: &Item) {
        match item {
            Item::Exchange(exchange) => self.exchange(exchange),
            Item::Lost(lost) => self.lost(lost),
        }
    }

    /// A "data" event (jsonl.py DataEvent).
    pub fn data(&mut self, chunk: &Chunk<'_>) {
        let mut payload = chunk.data;
        let mut truncated = chunk.truncated;
        if self.tsize != 0 && payload.len() > self.tsize {
            self.add_cut(payload.len() - self.tsize);
            payload = &payload[..self.tsize];
            truncated = true;
        }
        let out = &mut self.out;
        out.reserve(320 + chunk.comm.len() * 6 + base64_len(payload.len()));
        out.extend_from_slice(&self.data_head);
        put_u64(out, chunk.timestamp_ns);
        let slot = slot_of(chunk.conn_id ^ (u64::from(chunk.tid) << 32) ^ chunk.direction as u64);
        match &mut self.data_texts[slot] {
            Some(cached) if cached.matches(chunk) => out.extend_from_slice(&cached.text),
            entry => {
                let start = out.len();
                put_data_fields(out, chunk);
                // Reuse the slot's buffers: a miss allocates nothing once warm.
                let (mut comm, mut text) = match entry.take() {
                    Some(old) => (old.comm, old.text),
                    None => (String::new(), Vec::new()),
                };
                comm.clear();
                comm.push_str(chunk.comm);
                text.clear();
                text.extend_from_slice(&out[start..]);
                *entry = Some(DataText {
                    pid: chunk.pid,
                    tid: chunk.tid,
                    uid: chunk.uid,
                    comm,
                    conn_id: chunk.conn_id,
                    fd: chunk.fd,
                    ssl: chunk.ssl,
                    socket_cookie: chunk.socket_cookie,
                    direction: chunk.direction,
                    local: chunk.local,
                    remote: chunk.remote,
                    text,
                });
            }
        }
        out.extend_from_slice(b",\"len\":");
        put_u64(out, chunk.call_len);
        out.extend_from_slice(b",\"offset\":");
        put_u64(out, chunk.offset);
        out.extend_from_slice(if truncated {
            b",\"truncated\":true,\"payload_b64\":"
        } else {
            b",\"truncated\":false,\"payload_b64\":"
        });
        put_b64(out, payload);
        out.extend_from_slice(b"}\n");
    }

    /// A "close" event (jsonl.py CloseEvent).
    pub fn close(&mut self, close: &Close<'_>) {
        let out = &mut self.out;
        out.extend_from_slice(&self.close_head);
        put_u64(out, close.timestamp_ns);
        out.extend_from_slice(b",\"pid\":");
        put_u64(out, close.pid.into());
        out.extend_from_slice(b",\"tid\":");
        put_opt_u64(out, close.tid.map(u64::from));
        out.extend_from_slice(b",\"comm\":");
        put_str(out, close.comm);
        out.extend_from_slice(b",\"uid\":");
        put_u64(out, close.uid.into());
        out.extend_from_slice(b",\"fd\":");
        put_i64(out, close.fd.into());
        out.extend_from_slice(b",\"conn_id\":");
        put_u64(out, close.conn_id);
        out.extend_from_slice(b",\"ssl\":");
        put_u64(out, close.ssl);
        out.extend_from_slice(b",\"socket_cookie\":");
        put_opt_u64(out, close.socket_cookie);
        out.extend_from_slice(b",\"cause\":\"");
        out.extend_from_slice(close.cause.label().as_bytes());
        out.extend_from_slice(b"\"}\n");
    }

    /// A "lost" event (jsonl.py LostEvent): tid and uid are never known.
    pub fn lost(&mut self, lost: &Lost) {
        let out = &mut self.out;
        out.extend_from_slice(&self.lost_head);
        put_u64(out, lost.timestamp_ns);
        out.extend_from_slice(b",\"pid\":");
        put_opt_u64(out, lost.pid.map(u64::from));
        out.extend_from_slice(b",\"tid\":null,\"comm\":");
        match &lost.comm {
            Some(comm) => put_str(out, comm),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"uid\":null,\"reason\":\"");
        out.extend_from_slice(lost.reason.label().as_bytes());
        out.extend_from_slice(b"\",\"records\":");
        put_u64(out, lost.records);
        out.extend_from_slice(b",\"bytes\":");
        put_u64(out, lost.bytes);
        out.extend_from_slice(b",\"conn_id\":");
        put_opt_u64(out, lost.conn_id);
        out.extend_from_slice(b",\"fd\":");
        put_opt_i64(out, lost.fd.map(i64::from));
        out.extend_from_slice(b"}\n");
    }

    /// An "http" event (jsonl.py HttpEvent, _http_event).
    pub fn exchange(&mut self, exchange: &HttpExchange) {
        let connection = &*exchange.connection;
        let request = exchange.request.as_ref();
        let response = exchange.response.as_ref();
        let out = &mut self.out;
        out.extend_from_slice(&self.http_head);
        put_u64(out, exchange.started_ns);
        let slot = slot_of(Arc::as_ptr(&exchange.connection) as u64);
        match &mut self.connection_texts[slot] {
            Some(cached) if Arc::ptr_eq(&cached.connection, &exchange.connection) => {
                out.extend_from_slice(&cached.text)
            }
            entry => {
                let start = out.len();
                put_connection_fields(out, connection);
                let mut text = entry.take().map(|old| old.text).unwrap_or_default();
                text.clear();
                text.extend_from_slice(&out[start..]);
                *entry = Some(ConnectionText {
                    connection: exchange.connection.clone(),
                    text,
                });
            }
        }
        out.extend_from_slice(b",\"version\":");
        match (request, response) {
            (Some(request), _) => put_str(out, &request.version),
            (None, Some(response)) => put_str(out, &response.version),
            (None, None) => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"stream_id\":");
        put_opt_u64(out, exchange.stream_id.map(u64::from));
        match request {
            Some(request) => {
                out.extend_from_slice(b",\"method\":");
                put_str(out, &request.method);
                out.extend_from_slice(b",\"url\":");
                put_url(out, request);
                out.extend_from_slice(b",\"authority\":");
                match &request.authority {
                    Some(authority) => put_str(out, authority),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"path\":");
                put_str(out, &request.target);
            }
            None => out.extend_from_slice(
                b",\"method\":null,\"url\":null,\"authority\":null,\"path\":null",
            ),
        }
        out.extend_from_slice(b",\"status\":");
        match response {
            Some(response) => {
                put_u64(out, response.status.into());
                out.extend_from_slice(b",\"reason\":");
                put_str(out, &response.reason);
            }
            None => out.extend_from_slice(b"null,\"reason\":null"),
        }
        out.extend_from_slice(b",\"duration_ns\":");
        // Python subtracts ints: a finish before the start is negative, not a wrap.
        put_difference(out, exchange.finished_ns, exchange.started_ns);
        out.extend_from_slice(if exchange.complete {
            b",\"complete\":true,\"request\":"
        } else {
            b",\"complete\":false,\"request\":"
        });
        match request {
            Some(request) => {
                self.body(
                    &request.headers,
                    &request.body,
                    &request.trailers,
                    request.body_truncated,
                );
                self.out.push(b'}');
            }
            None => self.out.extend_from_slice(b"null"),
        }
        self.out.extend_from_slice(b",\"response\":");
        match response {
            Some(response) => self.response_body(response),
            None => self.out.extend_from_slice(b"null"),
        }
        let out = &mut self.out;
        out.extend_from_slice(b",\"grpc\":");
        if exchange.grpc_request.is_empty() && exchange.grpc_response.is_empty() {
            out.extend_from_slice(b"null}\n");
        } else {
            out.extend_from_slice(b"{\"request\":");
            put_grpc(out, &exchange.grpc_request);
            out.extend_from_slice(b",\"response\":");
            put_grpc(out, &exchange.grpc_response);
            out.extend_from_slice(b"}}\n");
        }
    }

    fn response_body(&mut self, response: &HttpResponse) {
        self.body(
            &response.headers,
            &response.body,
            &response.trailers,
            response.body_truncated,
        );
        self.out.extend_from_slice(b",\"status\":");
        put_u64(&mut self.out, response.status.into());
        self.out.push(b'}');
    }

    /// HttpBody's fields, without the closing brace (jsonl.py _body_fields
    /// and content.py view_body): the body decoded when its Content-Encoding
    /// can be undone, then cut to -t; UTF-8 text as `body`, else base64.
    fn body(
        &mut self,
        headers: &Arc<Headers>,
        body: &[u8],
        trailers: &Headers,
        body_truncated: bool,
    ) {
        let slot = slot_of(Arc::as_ptr(headers) as u64);
        let entry = &mut self.head_texts[slot];
        if !matches!(entry, Some(cached) if Arc::ptr_eq(&cached.head, headers)) {
            let mut json = entry.take().map(|old| old.json).unwrap_or_default();
            json.clear();
            put_headers(&mut json, headers);
            *entry = Some(HeadText {
                head: headers.clone(),
                encoding: header_value(headers, b"content-encoding").map(Cow::into_owned),
                json,
            });
        }
        let Some(head) = &self.head_texts[slot] else {
            return; // filled just above
        };
        let mut truncated = body_truncated;
        let mut shown = Cow::Borrowed(body);
        if !body.is_empty() && !body_truncated {
            // A body cut short by the parser cannot decode: shown as captured.
            if let Some(encoding) = &head.encoding {
                if wants_decoding(encoding) {
                    if let Some(plain) = decode_body(body, encoding, self.decoded_limit) {
                        shown = plain;
                    }
                }
            }
        }
        let mut shown: &[u8] = &shown;
        if self.tsize != 0 && shown.len() > self.tsize {
            self.cut_records += 1;
            self.cut_bytes += (shown.len() - self.tsize) as u64;
            shown = &shown[..self.tsize];
            truncated = true;
        }
        let out = &mut self.out;
        out.extend_from_slice(b"{\"headers\":");
        out.extend_from_slice(&head.json);
        let keep = head.json.len() <= MAX_CACHED_HEAD_BYTES;
        match std::str::from_utf8(shown) {
            Ok(text) => {
                out.extend_from_slice(b",\"body\":");
                put_str(out, text);
                out.extend_from_slice(b",\"body_b64\":null,\"body_len\":");
            }
            Err(_) => {
                out.extend_from_slice(b",\"body\":null,\"body_b64\":");
                put_b64(out, shown);
                out.extend_from_slice(b",\"body_len\":");
            }
        }
        put_u64(out, body.len() as u64);
        out.extend_from_slice(if truncated {
            b",\"body_truncated\":true,\"trailers\":"
        } else {
            b",\"body_truncated\":false,\"trailers\":"
        });
        put_headers(out, trailers);
        if !keep {
            self.head_texts[slot] = None;
        }
    }
}

/// A data event from `,"pid":` to the value of `"dst"`.
fn put_data_fields(out: &mut Vec<u8>, chunk: &Chunk<'_>) {
    out.extend_from_slice(b",\"pid\":");
    put_u64(out, chunk.pid.into());
    out.extend_from_slice(b",\"tid\":");
    put_u64(out, chunk.tid.into());
    out.extend_from_slice(b",\"comm\":");
    put_str(out, chunk.comm);
    out.extend_from_slice(b",\"uid\":");
    put_u64(out, chunk.uid.into());
    out.extend_from_slice(b",\"fd\":");
    put_i64(out, chunk.fd.into());
    out.extend_from_slice(b",\"conn_id\":");
    put_u64(out, chunk.conn_id);
    out.extend_from_slice(b",\"ssl\":");
    put_u64(out, chunk.ssl);
    out.extend_from_slice(b",\"socket_cookie\":");
    put_opt_u64(out, chunk.socket_cookie);
    let (src, dst) = match chunk.direction {
        Direction::Send => {
            out.extend_from_slice(b",\"direction\":\"send\",\"src\":");
            (chunk.local, chunk.remote)
        }
        Direction::Recv => {
            out.extend_from_slice(b",\"direction\":\"recv\",\"src\":");
            (chunk.remote, chunk.local)
        }
    };
    put_opt_endpoint(out, src.as_ref());
    out.extend_from_slice(b",\"dst\":");
    put_opt_endpoint(out, dst.as_ref());
}

/// An HTTP event from `,"pid":` to the value of `"dst"` (tid is never known).
fn put_connection_fields(out: &mut Vec<u8>, connection: &ConnInfo) {
    out.extend_from_slice(b",\"pid\":");
    put_u64(out, connection.pid.into());
    out.extend_from_slice(b",\"tid\":null,\"comm\":");
    put_str(out, &connection.comm);
    out.extend_from_slice(b",\"uid\":");
    put_u64(out, connection.uid.into());
    out.extend_from_slice(b",\"fd\":");
    put_i64(out, connection.fd.into());
    out.extend_from_slice(b",\"conn_id\":");
    put_u64(out, connection.conn_id);
    out.extend_from_slice(b",\"src\":");
    put_opt_endpoint(out, connection.client.as_ref());
    out.extend_from_slice(b",\"dst\":");
    put_opt_endpoint(out, connection.server.as_ref());
}

/// content.py header_value: every value of header `name` (lower-case ASCII),
/// joined by ", ", or None. Borrowed when there is one.
pub fn header_value<'h>(headers: &'h Headers, name: &[u8]) -> Option<Cow<'h, [u8]>> {
    let mut found: Option<Cow<'h, [u8]>> = None;
    for (key, value) in headers {
        if key.eq_ignore_ascii_case(name) {
            found = Some(match found {
                None => Cow::Borrowed(value),
                Some(joined) => {
                    let mut joined = joined.into_owned();
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(value);
                    Cow::Owned(joined)
                }
            });
        }
    }
    found
}

/// `url`: scheme://authority/target for an origin-form target with a known
/// authority, else the target (absolute-form, authority-form, asterisk-form);
/// jsonl.py _http_event with content.py exchange_url.
fn put_url(out: &mut Vec<u8>, request: &HttpRequest) {
    match &request.authority {
        Some(authority) if request.target.starts_with('/') && request.method != "CONNECT" => {
            out.push(b'"');
            let scheme = match &request.scheme {
                Some(scheme) if !scheme.is_empty() => scheme.as_bytes(),
                _ => DEFAULT_SCHEME,
            };
            put_escaped(out, scheme);
            out.extend_from_slice(b"://");
            put_escaped(out, authority.as_bytes());
            put_escaped(out, request.target.as_bytes());
            out.push(b'"');
        }
        _ => put_str(out, &request.target),
    }
}

fn put_grpc(out: &mut Vec<u8>, messages: &[GrpcMessage]) {
    out.push(b'[');
    for (index, message) in messages.iter().enumerate() {
        if index != 0 {
            out.push(b',');
        }
        out.extend_from_slice(if message.compressed {
            b"{\"compressed\":true,\"len\":"
        } else {
            b"{\"compressed\":false,\"len\":"
        });
        put_u64(out, message.data.len() as u64);
        match &message.decoded {
            Some(decoded) => {
                out.extend_from_slice(b",\"decoded\":true,\"data_b64\":");
                put_b64(out, decoded);
            }
            None => {
                out.extend_from_slice(b",\"decoded\":false,\"data_b64\":");
                put_b64(out, &message.data);
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// `[["name","value"],...]`, each byte a latin-1 character (content.py header_pairs).
fn put_headers(out: &mut Vec<u8>, headers: &Headers) {
    out.push(b'[');
    for (index, (name, value)) in headers.iter().enumerate() {
        out.extend_from_slice(if index == 0 { b"[\"" } else { b",[\"" });
        put_latin1(out, name);
        out.extend_from_slice(b"\",\"");
        put_latin1(out, value);
        out.extend_from_slice(b"\"]");
    }
    out.push(b']');
}

/// The 8 decimal digits of `value` (< 10^8, leading zeros kept) as byte
/// values 0..=9 in one u64, the first digit in the lowest byte: the halves,
/// then the pairs, then the digits are split in parallel lanes of one
/// register (x * 10486 >> 20 is x / 100 for x < 10^4, x * 103 >> 10 is
/// x / 10 for x < 100; the tests check every lane value).
#[inline]
fn digits8(value: u32) -> u64 {
    let halves = u64::from(value / 10_000) | (u64::from(value % 10_000) << 32);
    let hundreds = ((halves * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let pairs = hundreds | ((halves - hundreds * 100) << 16);
    let tens = ((pairs * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | ((pairs - tens * 10) << 8)
}

const ZEROS: u64 = 0x3030_3030_3030_3030; // b"00000000"

/// `value` (< 10^8) without leading zeros: they are the low zero bytes of
/// its digits, shifted out before one 8-byte store.
#[inline]
fn put_head(out: &mut Vec<u8>, value: u32) {
    let digits = digits8(value);
    let skip = if digits == 0 {
        7
    } else {
        (digits.trailing_zeros() / 8) as usize
    };
    out.extend_from_slice(&((digits + ZEROS) >> (8 * skip)).to_le_bytes());
    out.truncate(out.len() - skip);
}

/// Decimal text of `value`. Written by hand rather than with itoa: the
/// digits are made in a register 8 at a time and stored with 8-byte stores.
/// Measured: integers were half of a data event's time with itoa (a memcpy
/// call for each integer's text) and with digit pairs written to a stack
/// array (its narrow stores stall the wide load that copies it).
fn put_u64(out: &mut Vec<u8>, value: u64) {
    const E8: u64 = 100_000_000;
    const E16: u64 = E8 * E8;
    if value < 10 {
        out.push(b'0' + value as u8);
    } else if value < E8 {
        put_head(out, value as u32);
    } else if value < E16 {
        put_head(out, (value / E8) as u32);
        out.extend_from_slice(&(digits8((value % E8) as u32) + ZEROS).to_le_bytes());
    } else {
        put_head(out, (value / E16) as u32);
        let rest = value % E16;
        out.extend_from_slice(&(digits8((rest / E8) as u32) + ZEROS).to_le_bytes());
        out.extend_from_slice(&(digits8((rest % E8) as u32) + ZEROS).to_le_bytes());
    }
}

fn put_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    put_u64(out, value.unsigned_abs());
}

/// The difference of two u64 always has a magnitude that fits a u64.
fn put_difference(out: &mut Vec<u8>, later: u64, earlier: u64) {
    if later >= earlier {
        put_u64(out, later - earlier);
    } else {
        out.push(b'-');
        put_u64(out, earlier - later);
    }
}

fn put_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => put_u64(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn put_opt_i64(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        Some(value) => put_i64(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// `"..."`: standard base64 with padding, as msgspec writes bytes.
fn put_b64(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'"');
    base64_simd::STANDARD.encode_append(data, out);
    out.push(b'"');
}

/// str(Endpoint) as JSON: `"1.2.3.4:443"`, `"[::1]:443"`; an IPv4-mapped IPv6
/// address is shown as IPv4, as events.py decode_endpoint makes it.
fn put_opt_endpoint(out: &mut Vec<u8>, endpoint: Option<&Endpoint>) {
    let Some(endpoint) = endpoint else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    match endpoint.ip {
        IpAddr::V4(ip) => put_ipv4(out, ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => put_ipv4(out, ip),
            None => {
                out.push(b'[');
                put_ipv6(out, ip);
                out.push(b']');
            }
        },
    }
    out.push(b':');
    put_u64(out, endpoint.port.into());
    out.push(b'"');
}

/// Each octet's decimal text, padded to 3 bytes, and its length.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut octet = 0;
    while octet < 256 {
        let digits = [
            b'0' + (octet / 100) as u8,
            b'0' + (octet / 10 % 10) as u8,
            b'0' + (octet % 10) as u8,
        ];
        table[octet] = if octet >= 100 {
            (digits, 3)
        } else if octet >= 10 {
            ([digits[1], digits[2], 0], 2)
        } else {
            ([digits[2], 0, 0], 1)
        };
        octet += 1;
    }
    table
};

fn put_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index != 0 {
            out.push(b'.');
        }
        let (digits, len) = &OCTETS[usize::from(octet)];
        out.extend_from_slice(digits);
        out.truncate(out.len() - 3 + usize::from(*len));
    }
}

/// Python 3.11's str(IPv6Address): lower-case hex groups without leading
/// zeros, the first longest run of two or more zero groups as "::", and no
/// dotted-quad tail (Rust's Display writes one for mapped addresses).
fn put_ipv6(out: &mut Vec<u8>, ip: Ipv6Addr) {
    let groups = ip.segments();
    let (mut best_start, mut best_len) = (0, 0);
    let (mut run_start, mut run_len) = (0, 0);
    for (index, &group) in groups.iter().enumerate() {
        if group == 0 {
            if run_len == 0 {
                run_start = index;
            }
            run_len += 1;
            if run_len > best_len {
                (best_start, best_len) = (run_start, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    let put_groups = |out: &mut Vec<u8>, groups: &[u16]| {
        for (index, group) in groups.iter().enumerate() {
            if index != 0 {
                out.push(b':');
            }
            put_hex(out, *group);
        }
    };
    if best_len > 1 {
        put_groups(out, &groups[..best_start]);
        out.extend_from_slice(b"::");
        put_groups(out, &groups[best_start + best_len..]);
    } else {
        put_groups(out, &groups);
    }
}

fn put_hex(out: &mut Vec<u8>, value: u16) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut started = false;
    for shift in [12, 8, 4, 0] {
        let digit = (value >> shift) & 0xf;
        if digit != 0 || started || shift == 0 {
            started = true;
            out.push(DIGITS[usize::from(digit)]);
        }
    }
}

/// Per byte: 0 copied as is, 1 escaped, 2 a latin-1 character above ASCII
/// (only put_latin1 treats those apart; in UTF-8 text they are copied).
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = if byte < 0x20 || byte == b'"' as usize || byte == b'\\' as usize {
            1
        } else if byte >= 0x80 {
            2
        } else {
            0
        };
        byte += 1;
    }
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Does any of the 8 bytes need escaping (below 0x20, `"` or `\`)? Exact as
/// a yes/no answer (the bytewise "has less than" and "has zero" tests).
#[inline]
fn word_needs_escape(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote =
        (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'"')));
    let backslash =
        (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGHS != 0
}

/// The escape of one byte below 0x20, `"` or `\`.
#[inline]
fn put_escape(out: &mut Vec<u8>, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        b'\t' => out.extend_from_slice(b"\\t"),
        b'\n' => out.extend_from_slice(b"\\n"),
        0x0c => out.extend_from_slice(b"\\f"),
        b'\r' => out.extend_from_slice(b"\\r"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            DIGITS[usize::from(byte >> 4)],
            DIGITS[usize::from(byte & 0xf)],
        ]),
    }
}

/// A JSON string of UTF-8 text.
pub fn put_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    put_escaped(out, text.as_bytes());
    out.push(b'"');
}

/// The inside of a JSON string of UTF-8 text (bytes at or above 0x80 are
/// parts of characters, copied as they are).
fn put_escaped(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len());
    let mut copied = 0; // text[..copied] is in `out`
    let mut index = 0;
    while index < text.len() {
        // Skip 8 plain bytes at a time; look byte by byte where a word has one to escape.
        if let Some(word) = text.get(index..index + 8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            if !word_needs_escape(u64::from_le_bytes(bytes)) {
                index += 8;
                continue;
            }
        }
        let end = (index + 8).min(text.len());
        while index < end {
            let byte = text[index];
            if CLASS[usize::from(byte)] == 1 {
                out.extend_from_slice(&text[copied..index]);
                put_escape(out, byte);
                copied = index + 1;
            }
            index += 1;
        }
    }
    out.extend_from_slice(&text[copied..]);
}

/// A JSON string of latin-1 bytes: each byte is one character, so a byte at
/// or above 0x80 becomes its two-byte UTF-8 form.
fn put_latin1(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len());
    let mut copied = 0; // bytes[..copied] is in `out`
    let mut index = 0;
    while index < bytes.len() {
        // Skip 8 plain ASCII bytes at a time, as put_escaped does.
        if let Some(word) = bytes.get(index..index + 8) {
            let mut lanes = [0u8; 8];
            lanes.copy_from_slice(word);
            let word = u64::from_le_bytes(lanes);
            if word & HIGHS == 0 && !word_needs_escape(word) {
                index += 8;
                continue;
            }
        }
        let end = (index + 8).min(bytes.len());
        while index < end {
            let byte = bytes[index];
            match CLASS[usize::from(byte)] {
                0 => {}
                1 => {
                    out.extend_from_slice(&bytes[copied..index]);
                    put_escape(out, byte);
                    copied = index + 1;
                }
                _ => {
                    out.extend_from_slice(&bytes[copied..index]);
                    out.extend_from_slice(&[0xc0 | (byte >> 6), 0x80 | (byte & 0x3f)]);
                    copied = index + 1;
                }
            }
            index += 1;
        }
    }
    out.extend_from_slice(&bytes[copied..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConnInfo, HttpExchange, HttpRequest, HttpResponse};

    fn v4(port: u16) -> Option<Endpoint> {
        Some(Endpoint {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        })
    }

    fn head(pairs: &[(&str, &str)]) -> Arc<Headers> {
        Arc::new(
            pairs
                .iter()
                .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// tests/unit/output/factories.py exchange(), and _wrk_like() of the golden test.
    fn golden_exchanges() -> [HttpExchange; 2] {
        let connection = Arc::new(ConnInfo {
            pid: 4242,
            comm: Arc::from("curl"),
            uid: 1000,
            fd: 5,
            conn_id: 0x7F00_DEAD_BEEF,
            client: v4(51234),
            server: v4(8443),
        });
        let plain = HttpExchange {
            connection,
            request: Some(HttpRequest {
                method: "GET".into(),
                target: "/index.html?q=1&lang=en".into(),
                authority: Some("example.test".into()),
                scheme: None,
                version: "HTTP/1.1".into(),
                headers: head(&[
                    ("Host", "example.test"),
                    ("User-Agent", "curl/7.88.1"),
                    ("Cookie", "session=abc; theme=dark"),
                ]),
                body: Vec::new(),
                trailers: Vec::new(),
                body_truncated: false,
            }),
            response: Some(HttpResponse {
                status: 200,
                reason: "OK".into(),
                version: "HTTP/1.1".into(),
                headers: head(&[("Content-Type", "text/plain"), ("Content-Length", "5")]),
                body: b"hello".to_vec(),
                trailers: Vec::new(),
                body_truncated: false,
                informational: Vec::new(),
            }),
            started_ns: 1_700_000_000_123_456_789,
            finished_ns: 1_700_000_000_123_456_789 + 2_500_000,
            stream_id: None,
            grpc_request: Vec::new(),
            grpc_response: Vec::new(),
            complete: true,
        };
        let mut wrk = plain.clone();
        if let Some(request) = wrk.request.as_mut() {
            request.target = "/".into();
            request.authority = Some("127.0.0.1:8443".into());
            request.headers = head(&[("Host", "127.0.0.1:8443")]);
        }
        if let Some(response) = wrk.response.as_mut() {
            response.body = b"ok".to_vec();
            response.headers = head(&[
                ("Server", "nginx/1.22.1"),
                ("Date", "Wed, 25 Nov 2026 08:00:00 GMT"),
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", "2"),
                ("Connection", "keep-alive"),
            ]);
        }
        [plain, wrk]
    }

    #[test]
    fn exchanges_are_written_as_the_golden_file_pins_them() {
        let golden = include_str!("../../tests/unit/output/golden/http_exchanges.jsonl");
        let lines: Vec<&str> = golden.split_inclusive('\n').take(2).collect();
        let mut writer = JsonWriter::new("tls", 0);
        for (exchange, line) in golden_exchanges().iter().zip(&lines) {
            for _ in 0..2 {
                // the second time from the caches
                writer.exchange(exchange);
                assert_eq!(std::str::from_utf8(writer.buffer()).unwrap(), *line);
                writer.clear();
            }
        }
    }

    fn chunk<'a>(data: &'a [u8], comm: &'a str) -> Chunk<'a> {
        Chunk {
            timestamp_ns: 1_700_000_000_123_456_789,
            pid: 4242,
            tid: 4243,
            uid: 1000,
            comm,
            conn_id: 0x7F00_DEAD_BEEF,
            fd: 5,
            direction: Direction::Send,
            call_id: 1,
            call_len: data.len() as u64,
            offset: 0,
            data,
            last_chunk: true,
            truncated: false,
            local: v4(51234),
            remote: v4(8443),
            lost_records: 0,
            lost_bytes: 0,
            ssl: 0x55D0_C0FF_EE00,
            socket_cookie: Some(4097),
        }
    }

    #[test]
    fn a_data_event_and_its_cuts() {
        let mut writer = JsonWriter::new("tls", 4);
        writer.data(&chunk(b"GET / HTTP/1.1", "curl"));
        assert_eq!(
            std::str::from_utf8(writer.buffer()).unwrap(),
            concat!(
                r#"{"type":"data","module":"tls","ts":1700000000123456789,"pid":4242,"tid":4243,"#,
                r#""comm":"curl","uid":1000,"fd":5,"conn_id":139641712656111,"#,
                r#""ssl":94355079556608,"socket_cookie":4097,"direction":"send","#,
                r#""src":"127.0.0.1:51234","dst":"127.0.0.1:8443","len":14,"offset":0,"#,
                r#""truncated":true,"payload_b64":"R0VUIA=="}"#,
                "\n"
            )
        );
        assert_eq!(writer.cut(), (1, 10));
        writer.data(&chunk(b"GET", "curl"));
        assert_eq!(writer.cut(), (1, 10));
    }

    #[test]
    fn cached_fields_never_carry_over_to_another_chunk() {
        let base = chunk(b"x", "curl");
        let mut variants = vec![base.clone()];
        let mut changed = base.clone();
        changed.fd = 6;
        variants.push(changed);
        let mut changed = base.clone();
        changed.comm = "curm";
        variants.push(changed);
        let mut changed = base.clone();
        changed.direction = Direction::Recv;
        variants.push(changed);
        let mut changed = base.clone();
        changed.remote = v4(8444);
        variants.push(changed);
        let mut changed = base.clone();
        changed.socket_cookie = None;
        variants.push(changed);
        let fresh = |chunk: &Chunk<'_>| {
            let mut writer = JsonWriter::new("tls", 0);
            writer.data(chunk);
            writer.take()
        };
        let mut writer = JsonWriter::new("tls", 0);
        for chunk in variants.iter().chain(variants.iter().rev()) {
            writer.data(chunk);
            assert_eq!(writer.take(), fresh(chunk));
        }
    }

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        put_str(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    fn latin1(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        put_latin1(&mut out, bytes);
        String::from_utf8(out).unwrap()
    }

    /// msgspec's rule, one character at a time (measured: see the module doc).
    fn msgspec_escape(c: char) -> String {
        match c {
            '"' => "\\\"".into(),
            '\\' => "\\\\".into(),
            '\u{8}' => "\\b".into(),
            '\t' => "\\t".into(),
            '\n' => "\\n".into(),
            '\u{c}' => "\\f".into(),
            '\r' => "\\r".into(),
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        }
    }

    #[test]
    fn escapes_what_msgspec_escapes_and_nothing_else() {
        assert_eq!(escaped("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            escaped("\u{8}\t\n\u{b}\u{c}\r\u{0}\u{1b}\u{1f}"),
            r#""\b\t\n\u000b\f\r\u0000\u001b\u001f""#
        );
        assert_eq!(
            escaped("\u{7f}\u{2028}\u{2029}é€😀"),
            "\"\u{7f}\u{2028}\u{2029}é€😀\""
        );
        for code in (0..0x3000).chain(0xfff0..0x10100) {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            // Every position within a word and across word boundaries.
            for pad in 0..10 {
                let text = format!("{}{}{}", "x".repeat(pad), c, "y".repeat(9 - pad));
                let expected = format!(
                    "\"{}{}{}\"",
                    "x".repeat(pad),
                    msgspec_escape(c),
                    "y".repeat(9 - pad)
                );
                assert_eq!(escaped(&text), expected, "U+{code:04X} at {pad}");
            }
        }
    }

    #[test]
    fn word_test_is_exact() {
        for byte in 0..=255u8 {
            for lane in 0..8 {
                let mut word = [b'a'; 8];
                word[lane] = byte;
                let expected = CLASS[usize::from(byte)] == 1;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    expected,
                    "{byte:#x} in lane {lane}"
                );
                // Neighbours that are themselves special or high must not hide it or fake it.
                let mut word = [0xffu8; 8];
                word[lane] = byte;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    expected,
                    "{byte:#x} among 0xff"
                );
            }
        }
    }

    #[test]
    fn latin1_bytes_become_utf8_characters() {
        assert_eq!(latin1(b"caf\xe9 \xff"), "café ÿ");
        assert_eq!(latin1(b"\x1b]0;t\x07\x00"), "\\u001b]0;t\\u0007\\u0000");
        assert_eq!(latin1(b"\x80\x85\x9f\xa0"), "\u{80}\u{85}\u{9f}\u{a0}");
        assert_eq!(latin1(b"\"\\/"), "\\\"\\\\/");
    }

    fn endpoint(ip: &str, port: u16) -> String {
        let mut out = Vec::new();
        put_opt_endpoint(
            &mut out,
            Some(&Endpoint {
                ip: ip.parse().unwrap(),
                port,
            }),
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn endpoints_as_python_shows_them() {
        assert_eq!(endpoint("127.0.0.1", 8443), "\"127.0.0.1:8443\"");
        assert_eq!(endpoint("::1", 443), "\"[::1]:443\"");
        assert_eq!(endpoint("::", 0), "\"[::]:0\"");
        assert_eq!(endpoint("1:0:2:3:4:5:6:7", 1), "\"[1:0:2:3:4:5:6:7]:1\"");
        assert_eq!(endpoint("1:0:0:2:0:0:0:3", 1), "\"[1:0:0:2::3]:1\"");
        assert_eq!(endpoint("1:0:0:2:0:0:3:4", 1), "\"[1::2:0:0:3:4]:1\"");
        assert_eq!(endpoint("0:0:1::", 1), "\"[0:0:1::]:1\"");
        assert_eq!(endpoint("::1.2.3.4", 1), "\"[::102:304]:1\"");
        assert_eq!(endpoint("64:ff9b::1.2.3.4", 1), "\"[64:ff9b::102:304]:1\"");
        assert_eq!(endpoint("::ffff:10.0.0.1", 80), "\"10.0.0.1:80\"");
        assert_eq!(endpoint("FE80::ABCD", 1), "\"[fe80::abcd]:1\"");
    }

    #[test]
    fn header_values_are_joined() {
        let headers: Headers = vec![
            (b"Content-Encoding".to_vec(), b"gzip".to_vec()),
            (b"X".to_vec(), b"y".to_vec()),
            (b"content-encoding".to_vec(), b"br".to_vec()),
        ];
        assert_eq!(
            header_value(&headers, b"content-encoding")
                .unwrap()
                .as_ref(),
            b"gzip, br"
        );
        assert!(matches!(
            header_value(&headers, b"x"),
            Some(Cow::Borrowed(b"y"))
        ));
        assert!(header_value(&headers, b"host").is_none());
    }

    #[test]
    fn every_lane_value_makes_its_digits() {
        for high in 0..10_000u32 {
            for low in [high, 9_999 - high, (high * 7) % 10_000] {
                let value = high * 10_000 + low;
                assert_eq!(
                    (digits8(value) + ZEROS).to_le_bytes(),
                    *format!("{value:08}").as_bytes()
                );
            }
        }
    }

    #[test]
    fn integers_in_decimal() {
        let mut values = vec![
            0,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            9999,
            10_000,
            u64::MAX,
            u64::MAX - 1,
        ];
        for power in 0..20 {
            let exact = 10u64.pow(power);
            values.extend([exact - 1, exact, exact + 1, exact.wrapping_mul(7) / 3]);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            values.push(seed >> (seed % 64));
        }
        for value in values {
            let mut out = b"x".to_vec();
            put_u64(&mut out, value);
            assert_eq!(out, format!("x{value}").as_bytes());
            let signed = value as i64;
            let mut out = Vec::new();
            put_i64(&mut out, signed);
            assert_eq!(out, signed.to_string().as_bytes());
            let mut out = Vec::new();
            put_difference(&mut out, value / 3, value);
            assert_eq!(
                out,
                (i128::from(value / 3) - i128::from(value))
                    .to_string()
                    .as_bytes()
            );
        }
        let mut out = Vec::new();
        put_difference(&mut out, 0, u64::MAX);
        assert_eq!(out, b"-18446744073709551615");
    }

    #[test]
    fn base64_is_standard_with_padding() {
        for (data, text) in [
            (&b""[..], "\"\""),
            (b"\x00\xff\xfe", "\"AP/+\""),
            (b"ab", "\"YWI=\""),
            (b"a", "\"YQ==\""),
        ] {
            let mut out = Vec::new();
            put_b64(&mut out, data);
            assert_eq!(out, text.as_bytes());
        }
    }
}
