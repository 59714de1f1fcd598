//! Connections by (pid, conn_id): which protocol, which side, which parser
//! (src/ecapture/processor/tracker.py, the reference).
//!
//! The tracker runs for every captured chunk, so the common paths are short:
//! a connection being parsed costs one hash lookup (which also moves it to
//! the recently used end) and its parser's feed; one known not to be parsed
//! costs the lookup alone. Memory is bounded by `max_connections` (least
//! recently used evicted, its exchanges flushed, a `lost` item with reason
//! "evicted" said), `max_body_bytes` per body and small sniffing buffers.
//! Time alone never ends a connection: a quiet HTTP/2 connection keeps its
//! HPACK tables for as long as it lives.
//!
//! conn_id is unique for the capture (bpf/tls.bpf.c allocates it); the kernel
//! ends a connection with a close record. Should that close never come, a new
//! conn_id for the same (pid, SSL*) still means the old connection is over.
//!
//! What Python hands on as `Unparsed` (bytes not parsed as HTTP) has no item
//! here: those bytes go out as "data" events before they reach the tracker.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hashlink::LinkedHashMap;

use crate::http1::Http1Parser;
use crate::model::{
    Chunk, Close, ConnInfo, ConnectionParser, Direction, Endpoint, Fault, Item, LossReason, Lost,
};
use crate::sniff::{self, Sniffed, StartKind, Want, MAX_START_LINE, START_TAIL};

/// Sniffing waits for at most this much before deciding (a start line is short).
pub const MAX_SNIFF_BYTES: usize = 16 << 10;
pub const MAX_SNIFF_CHUNKS: usize = 1024; // byte-sized chunks while a first line trickles in
/// A connection joined mid-way is scanned for a start line this long, then
/// taken for not HTTP.
pub const MAX_SCAN_BYTES: u64 = 1 << 20;

/// Builds the parser of an HTTP/2 connection (native/src/http2.rs): its
/// owner and its body limit. Send, so that the tracker is (a Python object
/// holding it may be used from any thread).
pub type Http2Factory = fn(Arc<ConnInfo>, usize) -> Box<dyn ConnectionParser>;

/// The tracker's limits, as ConnectionTracker's keyword arguments.
#[derive(Clone, Copy, Debug)]
pub struct TrackerOptions {
    pub max_connections: usize,
    pub max_body_bytes: usize,
    /// false: nothing is parsed (every chunk only passes through)
    pub parse_http: bool,
}

impl Default for TrackerOptions {
    fn default() -> TrackerOptions {
        TrackerOptions {
            max_connections: 16384,
            max_body_bytes: 8 << 20,
            parse_http: true,
        }
    }
}

type Key = (u32, u64);

/// A chunk held while its connection's protocol is not known yet.
struct HeldChunk {
    timestamp_ns: u64,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: String,
    conn_id: u64,
    fd: i32,
    direction: Direction,
    call_id: u64,
    call_len: u64,
    offset: u64,
    data: Vec<u8>,
    last_chunk: bool,
    truncated: bool,
    local: Option<Endpoint>,
    remote: Option<Endpoint>,
    lost_records: u32,
    lost_bytes: u64,
    ssl: u64,
    socket_cookie: Option<u64>,
}

impl HeldChunk {
    fn new(chunk: &Chunk<'_>) -> HeldChunk {
        HeldChunk {
            timestamp_ns: chunk.timestamp_ns,
            pid: chunk.pid,
            tid: chunk.tid,
            uid: chunk.uid,
            comm: chunk.comm.to_owned(),
            conn_id: chunk.conn_id,
            fd: chunk.fd,
            direction: chunk.direction,
            call_id: chunk.call_id,
            call_len: chunk.call_len,
            offset: chunk.offset,
            data: chunk.data.to_vec(),
            last_chunk: chunk.last_chunk,
            truncated: chunk.truncated,
            local: chunk.local,
            remote: chunk.remote,
            lost_records: chunk.lost_records,
            lost_bytes: chunk.lost_bytes,
            ssl: chunk.ssl,
            socket_cookie: chunk.socket_cookie,
        }
    }

    fn chunk(&self) -> Chunk<'_> {
        Chunk {
            timestamp_ns: self.timestamp_ns,
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            comm: &self.comm,
            conn_id: self.conn_id,
            fd: self.fd,
            direction: self.direction,
            call_id: self.call_id,
            call_len: self.call_len,
            offset: self.offset,
            data: &self.data,
            last_chunk: self.last_chunk,
            truncated: self.truncated,
            local: self.local,
            remote: self.remote,
            lost_records: self.lost_records,
            lost_bytes: self.lost_bytes,
            ssl: self.ssl,
            socket_cookie: self.socket_cookie,
        }
    }
}

/// Who owns a connection, as its first chunk told it.
struct Owner {
    pid: u32,
    comm: Arc<str>,
    uid: u32,
    fd: i32,
    conn_id: u64,
    local: Option<Endpoint>,
    remote: Option<Endpoint>,
    ssl: u64,
}

impl Owner {
    fn info(&self, client_direction: Direction) -> ConnInfo {
        let (client, server) = if client_direction == Direction::Send {
            (self.local, self.remote)
        } else {
            (self.remote, self.local)
        };
        ConnInfo {
            pid: self.pid,
            comm: self.comm.clone(),
            uid: self.uid,
            fd: self.fd,
            conn_id: self.conn_id,
            client,
            server,
        }
    }
}

enum Parser {
    Http1(Box<Http1Parser>),
    Other(Box<dyn ConnectionParser>),
}

impl Parser {
    fn get(&mut self) -> &mut dyn ConnectionParser {
        match self {
            Parser::Http1(parser) => &mut **parser,
            Parser::Other(parser) => &mut **parser,
        }
    }
}

/// What the tracker's per-connection work needs of its settings.
struct Settings {
    max_body_bytes: usize,
    http2: Option<Http2Factory>,
}

struct Connection {
    owner: Owner,
    last_ns: u64,
    parser: Option<Parser>,
    client_direction: Direction,
    /// set once the connection is known not to be parsed: the fast path
    passthrough: bool,
    pending: Vec<HeldChunk>,     // held while sniffing
    sniffed: [Vec<u8>; 2],       // first bytes by Direction
    tails: Option<[Vec<u8>; 2]>, // partial lines by Direction, when scanning
    scanned: u64,
    faulted: bool, // a read fault left a gap before the next chunk
}

/// The first chunk may precede the fd and addresses (they come from a nested
/// syscall): take them from a later chunk that knows them.
fn learn_endpoints(
    client_direction: Direction,
    parser: &mut dyn ConnectionParser,
    chunk: &Chunk<'_>,
) {
    let info = parser.info();
    if (info.fd < 0 && chunk.fd >= 0) || (info.client.is_none() && chunk.remote.is_some()) {
        parser.set_info(Arc::new(ConnInfo::from_chunk(chunk, client_direction)));
    }
}

impl Connection {
    fn new(chunk: &Chunk<'_>) -> Connection {
        Connection {
            owner: Owner {
                pid: chunk.pid,
                comm: Arc::from(chunk.comm),
                uid: chunk.uid,
                fd: chunk.fd,
                conn_id: chunk.conn_id,
                local: chunk.local,
                remote: chunk.remote,
                ssl: chunk.ssl,
            },
            last_ns: chunk.timestamp_ns,
            parser: None,
            client_direction: Direction::Send,
            passthrough: false,
            pending: Vec::new(),
            sniffed: Default::default(),
            tails: None,
            scanned: 0,
            faulted: false,
        }
    }

    /// Still deciding the protocol from the first bytes.
    fn sniffing(&self) -> bool {
        self.tails.is_none() && self.parser.is_none() && !self.passthrough
    }

    fn route(&mut self, settings: &Settings, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        if self.sniffing() {
            self.sniff(settings, chunk, out);
        } else {
            self.scan(settings, chunk, out);
        }
    }

    /// A gap before the protocol was known: scan what was held instead.
    fn lost_while_sniffing(&mut self, settings: &Settings, out: &mut Vec<Item>) {
        let pending = std::mem::take(&mut self.pending);
        self.sniffed = Default::default();
        self.tails = Some(Default::default());
        for held in &pending {
            self.scan(settings, &held.chunk(), out);
        }
    }

    /// Decide protocol and roles from the first bytes of each direction.
    fn sniff(&mut self, settings: &Settings, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        let direction = chunk.direction;
        let sniffed = &mut self.sniffed[direction.index()];
        let room = MAX_SNIFF_BYTES.saturating_sub(sniffed.len());
        sniffed.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
        let verdict = sniff::sniff_start(sniffed);
        let total: usize = self.sniffed.iter().map(Vec::len).sum();
        if verdict == Sniffed::NeedMore
            && self.pending.len() + 1 < MAX_SNIFF_CHUNKS
            && total < MAX_SNIFF_BYTES
        {
            self.pending.push(HeldChunk::new(chunk));
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.sniffed = Default::default();
        let start = match verdict {
            Sniffed::Request => StartKind::Request,
            Sniffed::Response => StartKind::Response,
            Sniffed::Http2 => {
                self.client_direction = direction;
                let info = Arc::new(self.owner.info(direction));
                match settings.http2 {
                    Some(build) => {
                        self.parser = Some(Parser::Other(build(info, settings.max_body_bytes)))
                    }
                    None => self.passthrough = true, // no HTTP/2 parser: not parsed
                }
                for held in &pending {
                    self.feed_parser(&held.chunk(), out);
                }
                self.feed_parser(chunk, out);
                return;
            }
            Sniffed::NeedMore | Sniffed::No => {
                // not a message start: joined mid-way, or not HTTP at all
                self.tails = Some(Default::default());
                for held in &pending {
                    self.scan(settings, &held.chunk(), out);
                }
                self.scan(settings, chunk, out);
                return;
            }
        };
        let client = match start {
            StartKind::Request => direction,
            StartKind::Response => direction.other(),
        };
        self.start_http1(settings, client, false);
        for held in &pending {
            self.feed_parser(&held.chunk(), out);
        }
        self.feed_parser(chunk, out);
    }

    /// Joined mid-way: look for an HTTP/1 start line in either direction.
    fn scan(&mut self, settings: &Settings, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        if self.parser.is_some() {
            self.feed_parser(chunk, out);
            return;
        }
        let Some(tails) = &mut self.tails else {
            return; // not parsed: passed through
        };
        let tail = &mut tails[chunk.direction.index()];
        let carried = tail.len();
        tail.extend_from_slice(chunk.data);
        let Some((_, start)) = sniff::find_start(tail, Want::Any) else {
            self.scanned += chunk.data.len() as u64;
            let keep_from = memchr::memrchr(b'\n', tail).map_or(0, |newline| newline + 1);
            tail.drain(..keep_from);
            if tail.len() > MAX_START_LINE {
                // no line end for long: keep what a start may begin with
                let cut = tail.len() - START_TAIL;
                tail.drain(..cut);
            }
            if self.scanned > MAX_SCAN_BYTES {
                self.passthrough = true; // not HTTP
                self.tails = None;
            }
            return;
        };
        let partial_line = tail[..carried].to_vec();
        let client = match start {
            StartKind::Request => chunk.direction,
            StartKind::Response => chunk.direction.other(),
        };
        self.start_http1(settings, client, true);
        self.tails = None;
        if let Some(Parser::Http1(parser)) = &mut self.parser {
            parser.prime(chunk.direction == client, &partial_line);
        }
        self.feed_parser(chunk, out);
    }

    fn start_http1(&mut self, settings: &Settings, client: Direction, resync: bool) {
        self.client_direction = client;
        let info = Arc::new(self.owner.info(client));
        self.parser = Some(Parser::Http1(Box::new(Http1Parser::new(
            info,
            settings.max_body_bytes,
            resync,
        ))));
    }

    fn feed_parser(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        let client_direction = self.client_direction;
        let Some(parser) = &mut self.parser else {
            return; // not parsed: passed through
        };
        let parser = parser.get();
        learn_endpoints(client_direction, parser, chunk);
        parser.feed(chunk, chunk.direction == client_direction, out);
    }
}

/// Routes captured TLS plaintext to per-connection HTTP parsers.
pub struct Tracker {
    max_connections: usize,
    parse_http: bool,
    settings: Settings,
    // least recently used first
    connections: LinkedHashMap<Key, Connection>,
    // (pid, SSL*) -> the conn_id open on it, for the safety net in feed()
    by_ssl: HashMap<Key, u64>,
    // keys of connections not seen yet whose first chunk faulted (bounded)
    faulted: LinkedHashMap<Key, ()>,
}

impl Tracker {
    /// `http2` builds the parser of an HTTP/2 connection; with None such a
    /// connection is not parsed (its chunks only pass through).
    pub fn new(options: TrackerOptions, http2: Option<Http2Factory>) -> Tracker {
        Tracker {
            max_connections: options.max_connections.max(1),
            parse_http: options.parse_http,
            settings: Settings {
                max_body_bytes: options.max_body_bytes,
                http2,
            },
            connections: LinkedHashMap::new(),
            by_ssl: HashMap::new(),
            faulted: LinkedHashMap::new(),
        }
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// One captured chunk, in capture order.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        let key = (chunk.pid, chunk.conn_id);
        if let Some(connection) = self.connections.to_back(&key) {
            connection.last_ns = chunk.timestamp_ns;
            if connection.passthrough {
                return;
            }
            let mut gap = chunk.lost_records != 0;
            if connection.faulted {
                // a read fault before this chunk
                connection.faulted = false;
                gap = true;
            }
            let client_direction = connection.client_direction;
            if let Some(parser) = &mut connection.parser {
                let parser = parser.get();
                let info = parser.info();
                if info.fd < 0 || info.client.is_none() {
                    learn_endpoints(client_direction, parser, chunk);
                }
                if gap {
                    parser.gap(chunk, out);
                }
                parser.feed(chunk, chunk.direction == client_direction, out);
                return;
            }
            if gap && connection.tails.is_none() {
                connection.lost_while_sniffing(&self.settings, out);
            }
            // (Python sends the chunk to _sniff even when the held chunks
            // just started a parser and raises there; it goes to that parser)
            connection.route(&self.settings, chunk, out);
            return;
        }
        self.new_ssl_user(chunk, out);
        self.connections.insert(key, Connection::new(chunk));
        if self.connections.len() > self.max_connections {
            self.evict(chunk.timestamp_ns, out);
        }
        let Some(connection) = self.connections.get_mut(&key) else {
            return; // unreachable: just inserted, and eviction takes the oldest
        };
        if !self.parse_http {
            connection.passthrough = true;
            return;
        }
        let faulted = self.faulted.remove(&key).is_some();
        if chunk.lost_records != 0 || faulted {
            connection.tails = Some(Default::default()); // its start was lost
        }
        connection.route(&self.settings, chunk, out);
    }

    /// The connection ended: flush it at once.
    pub fn close(&mut self, close: &Close<'_>, out: &mut Vec<Item>) {
        let key = (close.pid, close.conn_id);
        let connection = self.connections.remove(&key);
        self.faulted.remove(&key);
        if let Some(connection) = connection {
            self.finish(connection, close.timestamp_ns, true, out);
        }
    }

    /// A chunk of this connection could not be read: its next chunk follows
    /// a gap (the parser resynchronises as after lost records).
    pub fn fault(&mut self, fault: &Fault<'_>) {
        let key = (fault.pid, fault.conn_id);
        if let Some(connection) = self.connections.get_mut(&key) {
            connection.faulted = true;
            return;
        }
        if !self.faulted.contains_key(&key) {
            self.faulted.insert(key, ());
        }
        if self.faulted.len() > self.max_connections {
            self.faulted.pop_front(); // bounded: an old mark may be dropped
        }
    }

    /// At exit: everything still in flight, marked incomplete.
    pub fn flush(&mut self, out: &mut Vec<Item>) {
        while let Some((_, connection)) = self.connections.pop_front() {
            let last_ns = connection.last_ns;
            self.finish(connection, last_ns, false, out);
        }
    }

    /// A new conn_id on an SSL* whose previous connection is still open here:
    /// that one ended (its close was lost or is late).
    fn new_ssl_user(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Item>) {
        if chunk.ssl == 0 {
            return;
        }
        let owner = (chunk.pid, chunk.ssl);
        let previous = self.by_ssl.insert(owner, chunk.conn_id);
        let Some(previous) = previous.filter(|&previous| previous != chunk.conn_id) else {
            return;
        };
        if let Some(connection) = self.connections.remove(&(chunk.pid, previous)) {
            self.finish(connection, chunk.timestamp_ns, true, out);
        }
    }

    fn evict(&mut self, timestamp_ns: u64, out: &mut Vec<Item>) {
        let Some((_, mut connection)) = self.connections.pop_front() else {
            return;
        };
        let owner = &connection.owner;
        let fd = match &mut connection.parser {
            Some(parser) => parser.get().info().fd,
            None => owner.fd,
        };
        // Its parser state goes: what follows on it is parsed as joined mid-way.
        out.push(Item::Lost(Lost {
            timestamp_ns,
            reason: LossReason::Evicted,
            records: 0,
            bytes: 0,
            pid: Some(owner.pid),
            comm: Some(owner.comm.clone()),
            conn_id: Some(owner.conn_id),
            fd: Some(fd),
        }));
        self.finish(connection, timestamp_ns, false, out);
    }

    fn finish(
        &mut self,
        mut connection: Connection,
        timestamp_ns: u64,
        closed: bool,
        out: &mut Vec<Item>,
    ) {
        let owner = &connection.owner;
        if owner.ssl != 0 {
            let key = (owner.pid, owner.ssl);
            if self.by_ssl.get(&key) == Some(&owner.conn_id) {
                self.by_ssl.remove(&key);
            }
        }
        if let Some(parser) = &mut connection.parser {
            parser.get().finish(timestamp_ns, closed, out);
        }
        // still sniffing: never decided, its held chunks were not HTTP
    }
}

/// An address as Python's events.Endpoint has it (ip text, port).
pub fn endpoint(ip: &str, port: u16) -> Option<Endpoint> {
    ip.parse::<IpAddr>().ok().map(|ip| Endpoint { ip, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CloseCause, HttpExchange};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn chunk(data: &[u8], direction: Direction, conn_id: u64, timestamp_ns: u64) -> Chunk<'_> {
        Chunk {
            timestamp_ns,
            pid: 4242,
            tid: 4242,
            uid: 1000,
            comm: "curl",
            conn_id,
            fd: 7,
            direction,
            call_id: 0,
            call_len: data.len() as u64,
            offset: 0,
            data,
            last_chunk: true,
            truncated: false,
            local: endpoint("127.0.0.1", 40000),
            remote: endpoint("127.0.0.1", 8443),
            lost_records: 0,
            lost_bytes: 0,
            ssl: 0,
            socket_cookie: None,
        }
    }

    fn close(conn_id: u64) -> Close<'static> {
        Close {
            timestamp_ns: 1_000_000_000,
            pid: 4242,
            tid: Some(4242),
            uid: 1000,
            comm: "curl",
            conn_id,
            fd: 7,
            lost_records: 0,
            lost_bytes: 0,
            ssl: 0,
            socket_cookie: None,
            cause: CloseCause::Tcp,
            deferred: false,
        }
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
    fn the_tracker_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Tracker>();
    }

    #[test]
    fn roles_come_from_content() {
        let mut tracker = Tracker::new(TrackerOptions::default(), None);
        let mut out = Vec::new();
        tracker.feed(&chunk(GET, Direction::Recv, 1, 1), &mut out);
        tracker.feed(&chunk(OK, Direction::Send, 1, 2), &mut out);
        let got = exchanges(&out);
        assert_eq!(got.len(), 1);
        assert!(got[0].complete);
        assert_eq!(got[0].connection.client.map(|end| end.port), Some(8443));
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let options = TrackerOptions {
            max_connections: 2,
            ..TrackerOptions::default()
        };
        let mut tracker = Tracker::new(options, None);
        let mut out = Vec::new();
        tracker.feed(&chunk(GET, Direction::Send, 1, 1), &mut out);
        tracker.feed(&chunk(GET, Direction::Send, 2, 2), &mut out);
        tracker.feed(&chunk(b"\r\n", Direction::Send, 1, 3), &mut out);
        assert!(out.is_empty());
        tracker.feed(&chunk(GET, Direction::Send, 3, 5000), &mut out);
        assert!(matches!(
            &out[0],
            Item::Lost(Lost {
                reason: LossReason::Evicted,
                conn_id: Some(2),
                timestamp_ns: 5000,
                ..
            })
        ));
        let got = exchanges(&out);
        assert_eq!(
            (got.len(), got[0].connection.conn_id, got[0].complete),
            (1, 2, false)
        );
        assert_eq!(tracker.len(), 2);
        let mut rest = Vec::new();
        tracker.close(&close(1), &mut rest);
        tracker.flush(&mut rest);
        assert_eq!(exchanges(&rest).len(), 2);
        assert!(tracker.is_empty());
    }

    /// ns per chunk on the judging workload's shape: wrk's request and
    /// nginx's "200 ok" answer on one keep-alive connection.
    /// `cargo test --release --lib -- --ignored --nocapture keepalive_timing`
    #[test]
    #[ignore]
    fn keepalive_timing() {
        let request: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n";
        let response: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
            Date: Wed, 25 Nov 2026 08:05:32 GMT\r\nContent-Type: text/plain\r\n\
            Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
        let mut tracker = Tracker::new(TrackerOptions::default(), None);
        let mut out = Vec::new();
        let mut sent = chunk(request, Direction::Send, 1, 0);
        let mut answer = chunk(response, Direction::Recv, 1, 0);
        let rounds = 1_000_000u64;
        let cpu = || {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec through a valid pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
            now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
        };
        let (wall, thread) = (std::time::Instant::now(), cpu());
        for round in 0..rounds {
            sent.timestamp_ns = 2 * round;
            answer.timestamp_ns = 2 * round + 1;
            tracker.feed(&sent, &mut out);
            tracker.feed(&answer, &mut out);
            assert_eq!(out.len(), 1);
            out.clear();
        }
        let chunks = (2 * rounds) as f64;
        println!(
            "{:.1} ns of CPU per chunk ({:.1} wall), {} chunks",
            (cpu() - thread) / chunks,
            wall.elapsed().as_nanos() as f64 / chunks,
            2 * rounds
        );
    }

    /// Stands for native/src/http2.rs: says each chunk it was fed as a loss
    /// of its length, and its finish as one of 0 bytes.
    struct Recorder {
        info: Arc<ConnInfo>,
    }

    impl ConnectionParser for Recorder {
        fn info(&self) -> &Arc<ConnInfo> {
            &self.info
        }

        fn set_info(&mut self, info: Arc<ConnInfo>) {
            self.info = info;
        }

        fn feed(&mut self, chunk: &Chunk<'_>, _from_client: bool, out: &mut Vec<Item>) {
            let lost = self
                .info
                .parser_lost(chunk.timestamp_ns, chunk.data.len() as u64);
            out.push(Item::Lost(lost));
        }

        fn gap(&mut self, _chunk: &Chunk<'_>, _out: &mut Vec<Item>) {}

        fn finish(&mut self, timestamp_ns: u64, _closed: bool, out: &mut Vec<Item>) {
            out.push(Item::Lost(self.info.parser_lost(timestamp_ns, 0)));
        }
    }

    fn recorder(info: Arc<ConnInfo>, _max_body_bytes: usize) -> Box<dyn ConnectionParser> {
        Box::new(Recorder { info })
    }

    #[test]
    fn an_http2_connection_goes_to_the_parser_plugged_in() {
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings: &[u8] = b"\0\0\0\x04\0\0\0\0\0";
        for http2 in [None, Some(recorder as Http2Factory)] {
            let mut tracker = Tracker::new(TrackerOptions::default(), http2);
            let mut out = Vec::new();
            // the server's SETTINGS before the client's preface: held, then fed
            tracker.feed(&chunk(settings, Direction::Recv, 1, 1), &mut out);
            tracker.feed(&chunk(&preface[..10], Direction::Send, 1, 2), &mut out);
            assert!(out.is_empty());
            tracker.feed(&chunk(&preface[10..], Direction::Send, 1, 3), &mut out);
            tracker.feed(&chunk(b"frames", Direction::Recv, 1, 4), &mut out);
            tracker.close(&close(1), &mut out);
            let bytes: Vec<u64> = out
                .iter()
                .map(|item| match item {
                    Item::Lost(lost) => lost.bytes,
                    Item::Exchange(_) => u64::MAX,
                })
                .collect();
            if http2.is_some() {
                assert_eq!(bytes, vec![9, 10, 14, 6, 0]);
            } else {
                assert!(bytes.is_empty()); // not parsed: passed through
            }
        }
    }

    #[test]
    fn not_http_passes_through() {
        let mut tracker = Tracker::new(TrackerOptions::default(), None);
        let mut out = Vec::new();
        let blob = [0u8, 1, 2].repeat(1000);
        for index in 0..400 {
            tracker.feed(&chunk(&blob, Direction::Send, 9, index), &mut out);
        }
        tracker.feed(&chunk(GET, Direction::Send, 9, 401), &mut out);
        tracker.feed(&chunk(OK, Direction::Recv, 9, 402), &mut out);
        assert!(out.is_empty()); // past the scan budget: not parsed any more
        tracker.close(&close(9), &mut out);
        assert!(out.is_empty());
    }
}
