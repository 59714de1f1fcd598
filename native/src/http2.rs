//! HTTP/2 observed from outside, both directions of one connection: the Rust
//! counterpart of src/ecapture/processor/http2.py, item for item (that file
//! is the specification and tests/unit/native/test_http2_diff.py compares
//! the two).
//!
//! Frames are read here, by hand: no crate frames HTTP/2 for an observer
//! (h2 and the like implement a peer and refuse what a peer would: stream
//! ids, flow control). The checks on each frame are those of hyperframe,
//! which the Python reference uses. HPACK is src/hpack.rs (libnghttp2), one
//! decoder per direction (RFC 7541 §2.2); SETTINGS_HEADER_TABLE_SIZE sent by
//! one end bounds the table of the other end's encoder, so it changes the
//! decoder of the OTHER direction (RFC 9113 §6.5.2). Once bytes are lost
//! the HPACK tables are untrusted: the connection is given up ("desync"),
//! its open streams are emitted incomplete and nothing more is parsed (the
//! tracker passes the bytes on raw).
//!
//! Where Python and this file differ on purpose (hostile input only):
//! - a dynamic table larger than hpack::MAX_TABLE_SIZE, or more than
//!   MAX_PENDING_SETTINGS unacknowledged SETTINGS_HEADER_TABLE_SIZE values,
//!   give the connection up here (Python keeps growing);
//! - a `:status` of digits above 65535 becomes 0 here (Python keeps the
//!   number; the model's status is a u16).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::grpc::{header_value, is_grpc, latin1, split_grpc_messages};
use crate::hpack;
use crate::model::{
    Chunk, ConnInfo, ConnectionParser, GrpcMessage, Headers, HttpExchange, HttpRequest,
    HttpResponse, Item,
};

pub const FRAME_HEADER_SIZE: usize = 9;
/// RFC 9113 §6.5.2 SETTINGS_MAX_FRAME_SIZE initial value.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16384;
/// HEADERS + CONTINUATION backlog kept per direction.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Open streams kept per connection; the oldest is flushed beyond.
pub const MAX_STREAMS: usize = 4096;
/// Header blocks remembered per direction (hpack_native.CACHE_ENTRIES).
pub const CACHE_ENTRIES: usize = 256;
/// Larger blocks are decoded every time (never seen: real blocks are
/// well under 1 KiB), so the cache holds at most 256 x 16 KiB; Python's
/// keeps any size. Invisible in the items: a remembered block decodes to
/// what it decoded to before.
pub const CACHE_MAX_BLOCK: usize = 16 << 10;
/// SETTINGS_HEADER_TABLE_SIZE values not yet acknowledged, per direction.
pub const MAX_PENDING_SETTINGS: usize = 4096;
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// RFC 9113 §6 frame types and flags
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const ALTSVC: u8 = 0xA; // RFC 7838
const FLAG_END_STREAM: u8 = 0x01;
const FLAG_ACK: u8 = 0x01;
const FLAG_END_HEADERS: u8 = 0x04;
const FLAG_PADDED: u8 = 0x08;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_FIELDS: usize = 5; // stream dependency (4) + weight (1), RFC 9113 §6.2
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// The connection cannot be followed any more.
#[derive(Debug)]
struct Desync;

type Parsed<T = ()> = Result<T, Desync>;

/// A decoded header block, split once: the pseudo-header fields the model
/// uses (the first of each name) and the regular fields in order.
#[derive(Debug, Default)]
struct Block {
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
    scheme: Option<Vec<u8>>,
    status: Option<Vec<u8>>,
    regular: Arc<Headers>,
}

impl Block {
    fn split(fields: &mut hpack::Fields) -> Block {
        let mut block = Block::default();
        let mut regular = Vec::with_capacity(fields.len());
        for (name, value) in fields.drain(..) {
            if !name.starts_with(b":") {
                regular.push((name, value));
                continue;
            }
            let slot = match name.as_slice() {
                b":method" => &mut block.method,
                b":path" => &mut block.path,
                b":authority" => &mut block.authority,
                b":scheme" => &mut block.scheme,
                b":status" => &mut block.status,
                _ => continue, // other pseudo-headers are left out of both
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        block.regular = Arc::new(regular);
        block
    }
}

/// processor/base.py BodyBuffer: kept up to a limit, the rest only counted.
#[derive(Debug, Default)]
struct Body {
    data: Vec<u8>,
    dropped: u64,
}

impl Body {
    fn add(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.data.len());
        if chunk.len() <= room {
            self.data.extend_from_slice(chunk);
            return;
        }
        self.data.extend_from_slice(&chunk[..room]);
        self.dropped += (chunk.len() - room) as u64;
    }
}

/// One direction of a stream: headers, body, trailers.
#[derive(Debug, Default)]
struct Half {
    headers: Option<Arc<Block>>,
    trailers: Option<Arc<Block>>, // only its regular fields are kept
    body: Body,
    ended: bool,
    informational: Vec<u16>,
}

#[derive(Debug)]
struct Stream {
    started_ns: u64,
    order: u64, // its place in `Http2Parser::order`
    request: Half,
    response: Half,
}

/// One direction's byte buffer, HPACK decoder and header-block backlog.
struct Side {
    buffer: Vec<u8>,
    expect_preface: bool,
    decoder: hpack::Decoder,
    /// block bytes -> what they decoded to, for blocks that leave the table
    /// as it was (hpack_native.CachingDecoder); cleared by one that does not
    cache: HashMap<Vec<u8>, Arc<Block>>,
    /// the largest frame this direction may send: what the OTHER end
    /// announced (RFC 9113 §4.2); a longer length means framing was lost
    max_frame: u32,
    /// header block being assembled: HEADERS or PUSH_PROMISE + CONTINUATIONs
    block: Option<Vec<u8>>,
    block_stream: u32, // the stream the block is for (promised, for PUSH_PROMISE)
    block_frame: u32,  // the stream its frames arrive on
    block_end_stream: bool,
    block_is_push: bool,
    /// SETTINGS_HEADER_TABLE_SIZE values this direction sent, not yet ACKed
    pending_table_sizes: VecDeque<u32>,
}

impl Side {
    fn new(is_client: bool) -> Side {
        Side {
            buffer: Vec::new(),
            expect_preface: is_client,
            decoder: hpack::Decoder::new(),
            cache: HashMap::new(),
            max_frame: DEFAULT_MAX_FRAME_SIZE,
            block: None,
            block_stream: 0,
            block_frame: 0,
            block_end_stream: false,
            block_is_push: false,
            pending_table_sizes: VecDeque::new(),
        }
    }
}

fn u24(bytes: &[u8]) -> usize {
    match bytes {
        [a, b, c, ..] => (usize::from(*a) << 16) | (usize::from(*b) << 8) | usize::from(*c),
        _ => 0,
    }
}

fn u32_at(bytes: &[u8], pos: usize) -> Option<u32> {
    let word = bytes.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

/// An interim `:status` (the caller checked: 3 bytes starting with "1"): its
/// value when every byte is an ASCII digit, as http2.py reads it.
fn interim_status(status: &[u8]) -> Option<u16> {
    status.iter().try_fold(0u16, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u16::from(byte - b'0'))
    })
}

/// `int(status) if status.isdigit() else 0`, within the model's u16.
fn final_status(status: &[u8]) -> u16 {
    if status.is_empty() || !status.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    status
        .iter()
        .try_fold(0u16, |value, digit| {
            value.checked_mul(10)?.checked_add(u16::from(digit - b'0'))
        })
        .unwrap_or(0)
}

fn text(value: &Option<Vec<u8>>) -> Option<String> {
    value.as_deref().map(latin1)
}

/// Both directions of one HTTP/2 connection; exchanges per stream.
pub struct Http2Parser {
    info: Arc<ConnInfo>,
    max_body: usize,
    sides: [Side; 2],
    streams: HashMap<u32, Stream>,
    order: BTreeMap<u64, u32>, // streams in the order they opened
    next_order: u64,
    desynced: bool,
    event_ns: u64,
    fields: hpack::Fields, // reused for every decoded block
}

/// For the tracker: `fn(Arc<ConnInfo>, usize) -> Box<dyn ConnectionParser>`.
pub fn new_boxed(info: Arc<ConnInfo>, max_body_bytes: usize) -> Box<dyn ConnectionParser> {
    Box::new(Http2Parser::new(info, max_body_bytes))
}

impl Http2Parser {
    pub fn new(info: Arc<ConnInfo>, max_body_bytes: usize) -> Http2Parser {
        Http2Parser {
            info,
            max_body: max_body_bytes,
            sides: [Side::new(true), Side::new(false)],
            streams: HashMap::new(),
            order: BTreeMap::new(),
            next_order: 0,
            desynced: false,
            event_ns: 0,
            fields: Vec::new(),
        }
    }

    /// Whether the connection was given up (lost bytes, or bytes that are
    /// not HTTP/2): every later chunk is left to the raw output.
    pub fn desynced(&self) -> bool {
        self.desynced
    }

    // -- frames ---------------------------------------------------------------

    /// Frames of `data` (this direction's buffered bytes, or a whole chunk
    /// when nothing was buffered): how many bytes were used.
    fn parse(&mut self, dir: usize, data: &[u8], out: &mut Vec<Item>) -> Parsed<usize> {
        let mut pos = 0;
        let side = &mut self.sides[dir];
        if side.expect_preface {
            if data.len() < PREFACE.len() {
                if !PREFACE.starts_with(data) {
                    return Err(Desync);
                }
                return Ok(0);
            }
            if !data.starts_with(PREFACE) {
                return Err(Desync);
            }
            pos = PREFACE.len();
            side.expect_preface = false;
        }
        // frames toward the other end grow only when the other end speaks:
        // this direction's limit holds for the whole call
        let max_frame = usize::try_from(side.max_frame).unwrap_or(usize::MAX);
        let rest = &data[pos..];
        if rest.len() < FRAME_HEADER_SIZE {
            return Ok(pos);
        }
        let first_length = u24(rest);
        if first_length > max_frame {
            return Err(Desync);
        }
        if rest.len() < FRAME_HEADER_SIZE + first_length {
            return Ok(pos); // the first frame is still incomplete
        }
        while data.len() - pos >= FRAME_HEADER_SIZE {
            let header = &data[pos..pos + FRAME_HEADER_SIZE];
            let length = u24(header);
            let kind = header[3];
            let flags = header[4];
            let stream_id =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7FFF_FFFF;
            // hyperframe's stream association rules, checked on the header
            let needs_stream = matches!(
                kind,
                DATA | HEADERS | CONTINUATION | PRIORITY | RST_STREAM | PUSH_PROMISE
            );
            let forbids_stream = matches!(kind, SETTINGS | PING | GOAWAY);
            if (needs_stream && stream_id == 0) || (forbids_stream && stream_id != 0) {
                return Err(Desync);
            }
            if length > max_frame {
                return Err(Desync);
            }
            let end = pos + FRAME_HEADER_SIZE + length;
            if end > data.len() {
                break;
            }
            let body = &data[pos + FRAME_HEADER_SIZE..end];
            pos = end;
            match kind {
                DATA | HEADERS | CONTINUATION => {
                    self.fast_frame(dir, kind, flags, stream_id, body, out)?
                }
                _ => self.frame(dir, kind, flags, stream_id, body, out)?,
            }
        }
        Ok(pos)
    }

    /// DATA, HEADERS or CONTINUATION (http2.py _fast_frame).
    fn fast_frame(
        &mut self,
        dir: usize,
        kind: u8,
        flags: u8,
        stream_id: u32,
        body: &[u8],
        out: &mut Vec<Item>,
    ) -> Parsed {
        let side = &mut self.sides[dir];
        if kind == CONTINUATION {
            let Some(block) = side.block.as_mut() else {
                return Err(Desync); // RFC 9113 §6.10: no header block open
            };
            if stream_id != side.block_frame {
                return Err(Desync); // ... on this stream
            }
            block.extend_from_slice(body);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(Desync);
            }
            if flags & FLAG_END_HEADERS != 0 {
                self.header_block(dir, out)?;
            }
            return Ok(());
        }
        if side.block.is_some() {
            return Err(Desync); // RFC 9113 §6.10: nothing may interleave a header block
        }
        let mut payload = body;
        let mut pad = 0usize;
        if flags & FLAG_PADDED != 0 {
            let Some((&length, rest)) = body.split_first() else {
                return Err(Desync); // no pad-length byte
            };
            pad = usize::from(length);
            payload = rest;
        }
        if kind == DATA {
            if pad > 0 && pad >= body.len() {
                return Err(Desync); // RFC 9113 §6.1: padding as long as the payload
            }
            let data = &payload[..payload.len() - pad];
            self.data(dir, stream_id, flags, data, out);
            return Ok(());
        }
        let mut start = 0;
        if flags & FLAG_PRIORITY != 0 {
            if payload.len() < PRIORITY_FIELDS {
                return Err(Desync);
            }
            start = PRIORITY_FIELDS;
        }
        if pad > 0 && pad >= payload.len() {
            return Err(Desync); // RFC 9113 §6.2
        }
        let end = payload.len() - pad;
        let block = payload.get(start..end).unwrap_or_default().to_vec();
        side.block = Some(block);
        side.block_is_push = false;
        side.block_frame = stream_id;
        side.block_stream = stream_id;
        side.block_end_stream = flags & FLAG_END_STREAM != 0;
        if flags & FLAG_END_HEADERS != 0 {
            self.header_block(dir, out)?;
        }
        Ok(())
    }

    /// Every frame but DATA, HEADERS and CONTINUATION: hyperframe's body
    /// checks, then http2.py _frame.
    fn frame(
        &mut self,
        dir: usize,
        kind: u8,
        flags: u8,
        stream_id: u32,
        body: &[u8],
        out: &mut Vec<Item>,
    ) -> Parsed {
        match kind {
            PRIORITY if body.len() != PRIORITY_FIELDS => return Err(Desync),
            RST_STREAM | WINDOW_UPDATE if body.len() != 4 => return Err(Desync),
            PING if body.len() != 8 => return Err(Desync),
            GOAWAY if body.len() < 8 => return Err(Desync),
            SETTINGS if flags & FLAG_ACK != 0 && !body.is_empty() => return Err(Desync),
            SETTINGS if body.len() % 6 != 0 => return Err(Desync),
            WINDOW_UPDATE => {
                let increment = u32_at(body, 0).ok_or(Desync)?;
                if !(1..=0x7FFF_FFFF).contains(&increment) {
                    return Err(Desync);
                }
            }
            ALTSVC => {
                let origin = body.get(..2).ok_or(Desync)?;
                let origin = usize::from(u16::from_be_bytes([origin[0], origin[1]]));
                if body.len() - 2 < origin {
                    return Err(Desync);
                }
            }
            _ => {}
        }
        let promise = if kind == PUSH_PROMISE {
            Some(Self::push_promise_body(flags, body)?)
        } else {
            None
        };
        if self.sides[dir].block.is_some() {
            return Err(Desync); // RFC 9113 §6.10: nothing may interleave a header block
        }
        match kind {
            PUSH_PROMISE => {
                let Some((promised, block)) = promise else {
                    return Ok(());
                };
                let side = &mut self.sides[dir];
                side.block = Some(block.to_vec());
                side.block_is_push = true;
                side.block_frame = stream_id;
                side.block_end_stream = false; // PUSH_PROMISE defines no END_STREAM
                side.block_stream = promised;
                if flags & FLAG_END_HEADERS != 0 {
                    self.header_block(dir, out)?;
                }
            }
            SETTINGS => self.settings(dir, flags, body)?,
            RST_STREAM => {
                if let Some(stream) = self.take_stream(stream_id) {
                    self.emit(stream_id, stream, false, out);
                }
            }
            GOAWAY => {
                // streams above last_stream_id were not and will not be
                // processed (RFC 9113 §6.8)
                let last = u32_at(body, 0).ok_or(Desync)?;
                let refused: Vec<u32> = self
                    .order
                    .values()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                for id in refused {
                    if let Some(stream) = self.take_stream(id) {
                        self.emit(id, stream, false, out);
                    }
                }
            }
            // PING, PRIORITY, WINDOW_UPDATE and extension frames carry no message data
            _ => {}
        }
        Ok(())
    }

    /// hyperframe PushPromiseFrame.parse_body: (promised stream, block).
    fn push_promise_body(flags: u8, body: &[u8]) -> Parsed<(u32, &[u8])> {
        let mut pad = 0usize;
        let mut start = 0usize;
        if flags & FLAG_PADDED != 0 {
            pad = usize::from(*body.first().ok_or(Desync)?);
            start = 1;
        }
        let promised = u32_at(body, start).ok_or(Desync)?;
        if promised == 0 || promised % 2 != 0 {
            return Err(Desync);
        }
        if pad > 0 && pad >= body.len() {
            return Err(Desync);
        }
        let block = body.get(start + 4..body.len() - pad).unwrap_or_default();
        Ok((promised, block))
    }

    fn settings(&mut self, dir: usize, flags: u8, body: &[u8]) -> Parsed {
        let other = 1 - dir;
        if flags & FLAG_ACK != 0 {
            // the other end's announced size takes effect once acknowledged
            if let Some(size) = self.sides[other].pending_table_sizes.pop_front() {
                self.sides[dir].decoder.max_allowed_table_size = u64::from(size);
            }
            return Ok(());
        }
        let mut max_frame = None;
        let mut table_size = None;
        for setting in body.chunks_exact(6) {
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match u16::from_be_bytes([setting[0], setting[1]]) {
                SETTINGS_MAX_FRAME_SIZE => max_frame = Some(value),
                SETTINGS_HEADER_TABLE_SIZE => table_size = Some(value),
                _ => {}
            }
        }
        if let Some(max_frame) = max_frame {
            // frames toward this end may grow once it is read; never shrink
            // before the ACK, so an early large frame is not taken for garbage
            let limit = &mut self.sides[other].max_frame;
            *limit = (*limit).max(max_frame);
        }
        let Some(size) = table_size else {
            return Ok(());
        };
        let pending = &mut self.sides[dir].pending_table_sizes;
        if pending.len() >= MAX_PENDING_SETTINGS {
            return Err(Desync);
        }
        pending.push_back(size);
        // a larger limit may be used by the encoder as soon as it reads this
        // frame, possibly before we see the ACK: allow it at once
        let decoder = &mut self.sides[other].decoder;
        decoder.max_allowed_table_size = decoder.max_allowed_table_size.max(u64::from(size));
        Ok(())
    }

    /// The stream, opened (at this event's time) if new; the oldest open
    /// stream is flushed when MAX_STREAMS are open.
    fn open_stream(&mut self, stream_id: u32, out: &mut Vec<Item>) -> &mut Stream {
        if !self.streams.contains_key(&stream_id) && self.streams.len() >= MAX_STREAMS {
            if let Some((_, &oldest)) = self.order.first_key_value() {
                if let Some(stream) = self.take_stream(oldest) {
                    self.emit(oldest, stream, false, out);
                }
            }
        }
        let (started_ns, next_order, order) =
            (self.event_ns, &mut self.next_order, &mut self.order);
        self.streams.entry(stream_id).or_insert_with(|| {
            let place = *next_order;
            *next_order += 1;
            order.insert(place, stream_id);
            Stream {
                started_ns,
                order: place,
                request: Half::default(),
                response: Half::default(),
            }
        })
    }

    fn take_stream(&mut self, stream_id: u32) -> Option<Stream> {
        let stream = self.streams.remove(&stream_id)?;
        self.order.remove(&stream.order);
        Some(stream)
    }

    /// Decode a block with this direction's table (or remember it).
    fn decode(&mut self, dir: usize, block: &[u8]) -> Parsed<Arc<Block>> {
        let side = &mut self.sides[dir];
        if let Some(known) = side.cache.get(block) {
            side.decoder.check_table_size().map_err(|_| Desync)?;
            return Ok(known.clone());
        }
        side.decoder
            .decode(block, &mut self.fields)
            .map_err(|_| Desync)?;
        let split = Arc::new(Block::split(&mut self.fields));
        if hpack::changes_table(block) {
            side.cache.clear();
        } else if block.len() <= CACHE_MAX_BLOCK {
            if side.cache.len() >= CACHE_ENTRIES {
                side.cache.clear();
            }
            side.cache.insert(block.to_vec(), split.clone());
        }
        Ok(split)
    }

    fn header_block(&mut self, dir: usize, out: &mut Vec<Item>) -> Parsed {
        let Some(block) = self.sides[dir].block.take() else {
            return Ok(());
        };
        let fields = self.decode(dir, &block)?;
        let side = &self.sides[dir];
        let (stream_id, is_push, end_stream) =
            (side.block_stream, side.block_is_push, side.block_end_stream);
        let stream = self.open_stream(stream_id, out);
        if is_push {
            // a promised request is sent by the server (RFC 9113 §8.4)
            stream.request.headers = Some(fields);
            stream.request.ended = true;
            return Ok(());
        }
        let is_response = dir == SERVER;
        let half = if is_response {
            &mut stream.response
        } else {
            &mut stream.request
        };
        if half.headers.is_none() {
            if is_response {
                let status = fields.status.as_deref().unwrap_or_default();
                if status.len() == 3 && status[0] == b'1' {
                    if let Some(code) = interim_status(status) {
                        half.informational.push(code); // interim response
                        return Ok(());
                    }
                }
            }
            half.headers = Some(fields);
        } else {
            half.trailers = Some(fields);
        }
        if end_stream {
            self.end(stream_id, is_response, out);
        }
        Ok(())
    }

    fn data(&mut self, dir: usize, stream_id: u32, flags: u8, data: &[u8], out: &mut Vec<Item>) {
        let limit = self.max_body;
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            return; // DATA of a stream already emitted (or never opened): nothing to pair
        };
        let is_response = dir == SERVER;
        let half = if is_response {
            &mut stream.response
        } else {
            &mut stream.request
        };
        half.body.add(data, limit);
        if flags & FLAG_END_STREAM != 0 {
            self.end(stream_id, is_response, out);
        }
    }

    fn end(&mut self, stream_id: u32, is_response: bool, out: &mut Vec<Item>) {
        if !is_response {
            if let Some(stream) = self.streams.get_mut(&stream_id) {
                stream.request.ended = true;
            }
            return;
        }
        if let Some(mut stream) = self.take_stream(stream_id) {
            stream.response.ended = true;
            let complete = stream.request.ended;
            self.emit(stream_id, stream, complete, out);
        }
    }

    // -- exchanges ------------------------------------------------------------

    fn flush_streams(&mut self, out: &mut Vec<Item>) {
        let order = std::mem::take(&mut self.order);
        let mut streams = std::mem::take(&mut self.streams);
        for stream_id in order.into_values() {
            if let Some(stream) = streams.remove(&stream_id) {
                self.emit(stream_id, stream, false, out);
            }
        }
    }

    fn emit(&self, stream_id: u32, stream: Stream, complete: bool, out: &mut Vec<Item>) {
        let Stream {
            started_ns,
            request,
            response,
            ..
        } = stream;
        let empty = Arc::new(Headers::new());
        let request_regular = request
            .headers
            .as_ref()
            .map_or_else(|| empty.clone(), |block| block.regular.clone());
        let response_regular = response
            .headers
            .as_ref()
            .map_or_else(|| empty.clone(), |block| block.regular.clone());
        let mut content_type = None;
        if request.headers.is_some() {
            content_type = header_value(&request_regular, b"content-type");
        }
        if response.headers.is_some() && content_type.is_none_or(<[u8]>::is_empty) {
            content_type = header_value(&response_regular, b"content-type");
        }
        let (mut grpc_request, mut grpc_response): (Vec<GrpcMessage>, Vec<GrpcMessage>) =
            (Vec::new(), Vec::new());
        if is_grpc(content_type) {
            grpc_request = split_grpc_messages(
                &request.body.data,
                header_value(&request_regular, b"grpc-encoding"),
            );
            grpc_response = split_grpc_messages(
                &response.body.data,
                header_value(&response_regular, b"grpc-encoding"),
            );
        }
        let trailers = |half: &Half| -> Headers {
            half.trailers
                .as_ref()
                .map(|block| block.regular.as_ref().clone())
                .unwrap_or_default()
        };
        let (request_dropped, response_dropped) = (request.body.dropped, response.body.dropped);
        let http_request = request.headers.as_ref().map(|block| HttpRequest {
            method: text(&block.method).unwrap_or_default(),
            target: text(&block.path).unwrap_or_default(),
            authority: text(&block.authority),
            scheme: text(&block.scheme),
            version: "HTTP/2".to_string(),
            headers: block.regular.clone(),
            trailers: trailers(&request),
            body: Vec::new(),
            body_truncated: request_dropped > 0,
        });
        let http_response = response.headers.as_ref().map(|block| HttpResponse {
            status: final_status(block.status.as_deref().unwrap_or_default()),
            reason: String::new(),
            version: "HTTP/2".to_string(),
            headers: block.regular.clone(),
            trailers: trailers(&response),
            body: Vec::new(),
            body_truncated: response_dropped > 0,
            informational: response.informational.clone(),
        });
        let complete = complete && http_request.is_some() && http_response.is_some();
        let http_request = http_request.map(|mut message| {
            message.body = request.body.data;
            message
        });
        let http_response = http_response.map(|mut message| {
            message.body = response.body.data;
            message
        });
        out.push(Item::Exchange(Box::new(HttpExchange {
            connection: self.info.clone(),
            request: http_request,
            response: http_response,
            started_ns,
            finished_ns: self.event_ns,
            stream_id: Some(stream_id),
            grpc_request,
            grpc_response,
            complete,
        })));
        for dropped in [request_dropped, response_dropped] {
            if dropped > 0 {
                out.push(Item::Lost(self.info.parser_lost(self.event_ns, dropped)));
            }
        }
    }

    /// Lost bytes or bytes that are not HTTP/2: emit what is open, stop.
    fn give_up(&mut self, timestamp_ns: u64, out: &mut Vec<Item>) {
        if self.desynced {
            return;
        }
        self.event_ns = timestamp_ns;
        self.desynced = true;
        self.flush_streams(out);
        for side in &mut self.sides {
            // nothing of this connection is decoded again: free it now
            side.buffer = Vec::new();
            side.block = None;
            side.cache = HashMap::new();
            side.pending_table_sizes = VecDeque::new();
        }
    }
}

impl ConnectionParser for Http2Parser {
    fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    fn set_info(&mut self, info: Arc<ConnInfo>) {
        self.info = info;
    }

    fn feed(&mut self, chunk: &Chunk<'_>, from_client: bool, out: &mut Vec<Item>) {
        if self.desynced {
            return;
        }
        self.event_ns = chunk.timestamp_ns;
        let dir = if from_client { CLIENT } else { SERVER };
        let parsed = if self.sides[dir].buffer.is_empty() {
            // nothing held back: frames straight from the chunk, the rest kept
            self.parse(dir, chunk.data, out).map(|used| {
                self.sides[dir]
                    .buffer
                    .extend_from_slice(chunk.data.get(used..).unwrap_or_default());
            })
        } else {
            let mut buffer = std::mem::take(&mut self.sides[dir].buffer);
            buffer.extend_from_slice(chunk.data);
            self.parse(dir, &buffer, out).map(|used| {
                buffer.drain(..used.min(buffer.len()));
                self.sides[dir].buffer = buffer;
            })
        };
        if parsed.is_err() {
            self.give_up(chunk.timestamp_ns, out);
            return;
        }
        if chunk.truncated && chunk.last_chunk {
            self.gap(chunk, out);
        }
    }

    fn gap(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        self.give_up(chunk.timestamp_ns, out);
    }

    fn finish(&mut self, timestamp_ns: u64, _closed: bool, out: &mut Vec<Item>) {
        self.event_ns = timestamp_ns;
        self.flush_streams(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, LossReason};

    fn info() -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            pid: 42,
            comm: Arc::from("curl"),
            uid: 1000,
            fd: 7,
            conn_id: 9,
            client: None,
            server: None,
        })
    }

    fn chunk(data: &[u8], timestamp_ns: u64) -> Chunk<'_> {
        Chunk {
            timestamp_ns,
            pid: 42,
            tid: 42,
            uid: 1000,
            comm: "curl",
            conn_id: 9,
            fd: 7,
            direction: Direction::Send,
            call_id: 1,
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

    fn frame(kind: u8, flags: u8, stream_id: u32, body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// GET / https a (static table + literal authority)
    const GET: &[u8] = b"\x82\x84\x87\x41\x01a";

    fn client_hello() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, b""));
        bytes
    }

    fn exchanges(items: &[Item]) -> Vec<&HttpExchange> {
        items
            .iter()
            .filter_map(|item| match item {
                Item::Exchange(exchange) => Some(exchange.as_ref()),
                Item::Lost(_) => None,
            })
            .collect()
    }

    fn run(parts: &[(bool, Vec<u8>)], max_body: usize) -> (Vec<Item>, Http2Parser) {
        let mut parser = Http2Parser::new(info(), max_body);
        let mut out = Vec::new();
        for (index, (from_client, data)) in parts.iter().enumerate() {
            parser.feed(&chunk(data, 100 + index as u64), *from_client, &mut out);
        }
        parser.finish(1000, true, &mut out);
        (out, parser)
    }

    #[test]
    fn a_get_and_its_response_in_any_split() {
        let mut request = client_hello();
        request.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, GET));
        let mut response = frame(SETTINGS, 0, 0, b"");
        // :status 200, content-type text/plain (literal, indexed name 31)
        response.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            b"\x88\x5f\x0atext/plain",
        ));
        response.extend(frame(DATA, FLAG_END_STREAM, 1, b"hello"));
        let whole = run(
            &[(true, request.clone()), (false, response.clone())],
            1 << 20,
        )
        .0;
        for size in [1, 2, 9, 10, 33] {
            let mut parts: Vec<(bool, Vec<u8>)> = request
                .chunks(size)
                .map(|part| (true, part.to_vec()))
                .collect();
            parts.extend(response.chunks(size).map(|part| (false, part.to_vec())));
            let items = run(&parts, 1 << 20).0;
            let got = exchanges(&items);
            assert_eq!(got.len(), 1);
            let exchange = got[0];
            assert!(exchange.complete);
            assert_eq!(exchange.stream_id, Some(1));
            let request = exchange.request.as_ref().unwrap();
            assert_eq!(
                (request.method.as_str(), request.target.as_str()),
                ("GET", "/")
            );
            assert_eq!(request.authority.as_deref(), Some("a"));
            assert_eq!(request.scheme.as_deref(), Some("https"));
            let response = exchange.response.as_ref().unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body, b"hello");
            assert_eq!(
                response.headers.as_ref(),
                &vec![(b"content-type".to_vec(), b"text/plain".to_vec())]
            );
            let first = exchanges(&whole)[0];
            assert_eq!(
                (exchange.request.clone(), exchange.response.clone()),
                (first.request.clone(), first.response.clone())
            );
        }
    }

    #[test]
    fn padding_priority_and_continuation() {
        let mut request = client_hello();
        // HEADERS padded (3) with priority, the block split over a CONTINUATION
        let mut body = vec![3];
        body.extend_from_slice(&[0, 0, 0, 0, 16]);
        body.extend_from_slice(&GET[..2]);
        body.extend_from_slice(&[0, 0, 0]);
        request.extend(frame(HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &body));
        request.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, &GET[2..]));
        request.extend(frame(DATA, FLAG_PADDED | FLAG_END_STREAM, 1, b"\x02up\0\0"));
        let response = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, b"\x89");
        let items = run(&[(true, request), (false, response)], 1 << 20).0;
        let got = exchanges(&items);
        assert!(got[0].complete);
        let request = got[0].request.as_ref().unwrap();
        assert_eq!(request.body, b"up");
        assert_eq!(request.authority.as_deref(), Some("a"));
        assert_eq!(got[0].response.as_ref().unwrap().status, 204);
    }

    #[test]
    fn trailers_interim_responses_and_grpc() {
        let mut request = client_hello();
        // POST, content-type application/grpc (literal new name)
        let mut block = b"\x83\x84\x87\x41\x01a".to_vec();
        block.extend_from_slice(b"\x00\x0ccontent-type\x10application/grpc");
        request.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &block));
        request.extend(frame(DATA, FLAG_END_STREAM, 1, b"\x00\x00\x00\x00\x02hi"));
        let mut response = frame(HEADERS, FLAG_END_HEADERS, 1, b"\x08\x03103"); // 103
        response.extend(frame(HEADERS, FLAG_END_HEADERS, 1, b"\x88"));
        response.extend(frame(DATA, 0, 1, b"\x00\x00\x00\x00\x02ok\x00\x00"));
        response.extend(frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            b"\x00\x0bgrpc-status\x010",
        ));
        let items = run(&[(true, request), (false, response)], 1 << 20).0;
        let exchange = exchanges(&items)[0];
        assert!(exchange.complete);
        let response = exchange.response.as_ref().unwrap();
        assert_eq!(response.informational, vec![103]);
        assert_eq!(
            response.trailers,
            vec![(b"grpc-status".to_vec(), b"0".to_vec())]
        );
        assert_eq!(
            exchange.grpc_request[0].decoded.as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(exchange.grpc_response.len(), 1); // the cut-off one is left out
    }

    #[test]
    fn bodies_beyond_the_limit_are_lost_items() {
        let mut request = client_hello();
        request.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, GET));
        let mut response = frame(HEADERS, FLAG_END_HEADERS, 1, b"\x88");
        response.extend(frame(DATA, FLAG_END_STREAM, 1, &[b'z'; 5000]));
        let items = run(&[(true, request), (false, response)], 1000).0;
        let exchange = exchanges(&items)[0];
        let response = exchange.response.as_ref().unwrap();
        assert!(response.body_truncated && response.body.len() == 1000);
        let Item::Lost(lost) = &items[1] else {
            panic!("no loss")
        };
        assert_eq!((lost.reason, lost.bytes), (LossReason::Parser, 4000));
    }

    #[test]
    fn garbage_and_gaps_give_the_connection_up() {
        let mut request = client_hello();
        request.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, GET));
        let (items, parser) = run(
            &[(true, request.clone()), (true, b"garbage!!!".to_vec())],
            1,
        );
        assert!(parser.desynced());
        let got = exchanges(&items);
        assert_eq!(got.len(), 1);
        assert!(!got[0].complete && got[0].finished_ns == 101);
        // not the preface at all
        let (items, parser) = run(&[(true, b"GET / HTTP/1.1\r\n\r\n".to_vec())], 1);
        assert!(parser.desynced() && items.is_empty());
        // a frame longer than the limit, HEADERS on stream 0, SETTINGS on a stream
        for bad in [
            frame(DATA, 0, 1, &[0; 16385]),
            frame(HEADERS, FLAG_END_HEADERS, 0, GET),
            frame(SETTINGS, 0, 1, b""),
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0]),
            frame(CONTINUATION, FLAG_END_HEADERS, 1, GET),
            frame(HEADERS, FLAG_END_HEADERS, 1, b"\xff\xff"),
        ] {
            let mut bytes = client_hello();
            bytes.extend(bad);
            assert!(run(&[(true, bytes)], 1).1.desynced());
        }
    }

    #[test]
    fn the_parser_may_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Http2Parser>(); // the tracker may hold it in a pyclass
        let boxed = new_boxed(info(), 10);
        assert_eq!(boxed.info().conn_id, 9);
    }

    #[test]
    fn statuses_as_python_reads_them() {
        assert_eq!(interim_status(b"103"), Some(103));
        assert_eq!(interim_status(b"1_2"), None);
        assert_eq!(interim_status(b"12 "), None);
        assert_eq!(interim_status(b"1ab"), None);
        assert_eq!(final_status(b"200"), 200);
        assert_eq!(final_status(b"2x0"), 0);
        assert_eq!(final_status(b""), 0);
        assert_eq!(final_status(b"99999"), 0);
    }

    #[test]
    fn many_streams_stay_bounded() {
        let mut bytes = client_hello();
        for index in 0..(MAX_STREAMS as u32 + 10) {
            bytes.extend(frame(HEADERS, FLAG_END_HEADERS, 2 * index + 1, GET));
        }
        let mut parser = Http2Parser::new(info(), 10);
        let mut out = Vec::new();
        parser.feed(&chunk(&bytes, 1), true, &mut out);
        assert_eq!(parser.streams.len(), MAX_STREAMS);
        let got = exchanges(&out);
        assert_eq!(got.len(), 10);
        assert_eq!(got[0].stream_id, Some(1)); // the oldest first
        assert_eq!(got[9].stream_id, Some(19));
    }
}
