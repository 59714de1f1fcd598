//! The values every stage of the data path shares: decoded records, the
//! connection a parser serves, HTTP exchanges, losses.
//!
//! They mirror src/ecapture/events.py and src/ecapture/processor/model.py
//! field for field (the Python side is the reference the tests compare
//! with); header names and values stay bytes, as captured.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Direction of a payload as seen by the traced process (bpf/events.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Recv = 0,
    Send = 1,
}

impl Direction {
    pub fn from_raw(raw: u8) -> Direction {
        if raw & 1 == 1 {
            Direction::Send
        } else {
            Direction::Recv
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Recv => "recv",
        }
    }

    pub fn other(self) -> Direction {
        match self {
            Direction::Send => Direction::Recv,
            Direction::Recv => Direction::Send,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One end of a connection. Shown as Python's `str(Endpoint)`: `1.2.3.4:443`,
/// `[::1]:443` (an IPv4-mapped IPv6 address is shown as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{}:{}", ip, self.port),
            IpAddr::V6(ip) => write!(f, "[{}]:{}", ip, self.port),
        }
    }
}

/// events.py CloseCause: why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    Tcp,
    SslMoved,
    SslFree,
    SslClear,
    Unknown,
}

impl CloseCause {
    pub fn from_raw(raw: u8) -> CloseCause {
        match raw {
            1 => CloseCause::Tcp,
            2 => CloseCause::SslMoved,
            3 => CloseCause::SslFree,
            4 => CloseCause::SslClear,
            _ => CloseCause::Unknown,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloseCause::Tcp => "tcp",
            CloseCause::SslMoved => "ssl_moved",
            CloseCause::SslFree => "ssl_free",
            CloseCause::SslClear => "ssl_clear",
            CloseCause::Unknown => "unknown",
        }
    }
}

/// One chunk of plaintext an SSL read or write moved (events.py TlsData);
/// `data` borrows the record's bytes (the ring's pages, or a test's buffer).
#[derive(Clone, Debug)]
pub struct Chunk<'a> {
    pub timestamp_ns: u64, // ns since the epoch
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: &'a str,
    pub conn_id: u64,
    pub fd: i32, // -1 when unknown
    pub direction: Direction,
    pub call_id: u64,
    pub call_len: u64,
    pub offset: u64,
    pub data: &'a [u8],
    pub last_chunk: bool,
    pub truncated: bool,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub lost_records: u32,
    pub lost_bytes: u64,
    pub ssl: u64,
    pub socket_cookie: Option<u64>,
}

/// events.py ConnClose.
#[derive(Clone, Debug)]
pub struct Close<'a> {
    pub timestamp_ns: u64,
    pub pid: u32,
    pub tid: Option<u32>,
    pub uid: u32,
    pub comm: &'a str,
    pub conn_id: u64,
    pub fd: i32,
    pub lost_records: u32,
    pub lost_bytes: u64,
    pub ssl: u64,
    pub socket_cookie: Option<u64>,
    pub cause: CloseCause,
    pub deferred: bool,
}

/// events.py ReadFault.
#[derive(Clone, Debug)]
pub struct Fault<'a> {
    pub timestamp_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: &'a str,
    pub conn_id: u64,
    pub fd: i32,
    pub direction: Direction,
    pub call_id: u64,
    pub call_len: u64,
    pub offset: u64,
    pub bytes: u32,
    pub ssl: u64,
    pub socket_cookie: Option<u64>,
}

/// events.py LossReason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossReason {
    RingFull,
    KernelLimit,
    Tsize,
    QueueFull,
    Parser,
    Decode,
    InFlight,
    ReadFault,
    Evicted,
    Stopped,
    Undelivered,
}

impl LossReason {
    pub const ALL: [LossReason; 11] = [
        LossReason::RingFull,
        LossReason::KernelLimit,
        LossReason::Tsize,
        LossReason::QueueFull,
        LossReason::Parser,
        LossReason::Decode,
        LossReason::InFlight,
        LossReason::ReadFault,
        LossReason::Evicted,
        LossReason::Stopped,
        LossReason::Undelivered,
    ];

    /// The reason whose label (events.py LossReason's value) this is.
    pub fn from_label(label: &str) -> Option<LossReason> {
        LossReason::ALL
            .into_iter()
            .find(|reason| reason.label() == label)
    }

    pub fn label(self) -> &'static str {
        match self {
            LossReason::RingFull => "ring_full",
            LossReason::KernelLimit => "kernel_limit",
            LossReason::Tsize => "tsize",
            LossReason::QueueFull => "queue_full",
            LossReason::Parser => "parser",
            LossReason::Decode => "decode",
            LossReason::InFlight => "in_flight",
            LossReason::ReadFault => "read_fault",
            LossReason::Evicted => "evicted",
            LossReason::Stopped => "stopped",
            LossReason::Undelivered => "undelivered",
        }
    }
}

/// events.py Lost: records or bytes that did not reach the output, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub timestamp_ns: u64,
    pub reason: LossReason,
    pub records: u64,
    pub bytes: u64,
    pub pid: Option<u32>,
    pub comm: Option<Arc<str>>,
    pub conn_id: Option<u64>,
    pub fd: Option<i32>,
}

/// Header fields in order, names and values as captured.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// model.py ConnectionInfo: who owns a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnInfo {
    pub pid: u32,
    pub comm: Arc<str>,
    pub uid: u32,
    pub fd: i32,
    pub conn_id: u64,
    pub client: Option<Endpoint>, // the side that sent the request
    pub server: Option<Endpoint>,
}

impl ConnInfo {
    /// tracker.py _connection_info: roles from the chunk's direction.
    pub fn from_chunk(chunk: &Chunk<'_>, client_direction: Direction) -> ConnInfo {
        let (client, server) = if client_direction == Direction::Send {
            (chunk.local, chunk.remote)
        } else {
            (chunk.remote, chunk.local)
        };
        ConnInfo {
            pid: chunk.pid,
            comm: Arc::from(chunk.comm),
            uid: chunk.uid,
            fd: chunk.fd,
            conn_id: chunk.conn_id,
            client,
            server,
        }
    }

    /// processor/base.py body_lost: bytes a parser did not keep or could not frame.
    pub fn parser_lost(&self, timestamp_ns: u64, dropped: u64) -> Lost {
        Lost {
            timestamp_ns,
            reason: LossReason::Parser,
            records: 0,
            bytes: dropped,
            pid: Some(self.pid),
            comm: Some(self.comm.clone()),
            conn_id: Some(self.conn_id),
            fd: Some(self.fd),
        }
    }
}

/// model.py GrpcMessage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcMessage {
    pub compressed: bool,
    pub data: Vec<u8>,            // as on the wire
    pub decoded: Option<Vec<u8>>, // decompressed with grpc-encoding, when it could be
}

/// model.py HttpRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub target: String,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub version: String, // "HTTP/1.0", "HTTP/1.1", "HTTP/2"
    pub headers: Arc<Headers>,
    pub body: Vec<u8>, // de-chunked, still content-encoded
    pub trailers: Headers,
    pub body_truncated: bool,
}

/// model.py HttpResponse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    pub version: String,
    pub headers: Arc<Headers>,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub body_truncated: bool,
    pub informational: Vec<u16>,
}

/// model.py HttpExchange: a request and its response (one stream for HTTP/2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    pub connection: Arc<ConnInfo>,
    pub request: Option<HttpRequest>,
    pub response: Option<HttpResponse>,
    pub started_ns: u64,
    pub finished_ns: u64,
    pub stream_id: Option<u32>,
    pub grpc_request: Vec<GrpcMessage>,
    pub grpc_response: Vec<GrpcMessage>,
    pub complete: bool,
}

/// What a parser hands on. Python's `Unparsed` has no counterpart: the JSON
/// output skips it (its bytes went out as "data" events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Exchange(Box<HttpExchange>),
    Lost(Lost),
}

/// processor/base.py ConnectionParser: one connection, both directions, in
/// capture order; never panics on bad bytes, memory bounded by its limits.
pub trait ConnectionParser: Send + Sync {
    fn info(&self) -> &Arc<ConnInfo>;
    fn set_info(&mut self, info: Arc<ConnInfo>);
    /// One chunk; `from_client` tells its direction by role.
    fn feed(&mut self, chunk: &Chunk<'_>, from_client: bool, out: &mut Vec<Item>);
    /// Records of this connection were lost just before `chunk`.
    fn gap(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Item>);
    /// Emit everything in flight; `closed`: the socket closed (ends read-until-close bodies).
    fn finish(&mut self, timestamp_ns: u64, closed: bool, out: &mut Vec<Item>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn endpoints_show_as_python_does() {
        let v4 = Endpoint {
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            port: 8443,
        };
        assert_eq!(v4.to_string(), "127.0.0.1:8443");
        let v6 = Endpoint {
            ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: 443,
        };
        assert_eq!(v6.to_string(), "[::1]:443");
    }
}
