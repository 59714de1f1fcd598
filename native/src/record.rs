//! One raw ring record (bpf/events.h) decoded into the model's types, borrowing
//! from the record's bytes: src/ecapture/events.py `decode_record`, field for
//! field, with the same error texts (tests/unit/native/test_record.py compares
//! both on generated and malformed records).
//!
//! Sans-IO: bytes in, a `Record` out; never panics on any input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Chunk, Close, CloseCause, Direction, Endpoint, Fault};

/// struct record_header: kind, pid, tid, uid, timestamp_ns, conn_id, ssl,
/// socket_cookie, comm[16].
pub const RECORD_HEADER_SIZE: usize = 64;
/// struct tls_data_event up to data[].
pub const TLS_DATA_HEADER_SIZE: usize = RECORD_HEADER_SIZE + 88;
/// struct conn_close_event.
pub const CONN_CLOSE_SIZE: usize = RECORD_HEADER_SIZE + 24;
/// bpf/events.h MAX_CHUNK_SIZE.
pub const MAX_CHUNK_SIZE: u32 = 16384;

/// enum record_kind.
pub const KIND_TLS_DATA: u32 = 1;
pub const KIND_CONN_CLOSE: u32 = 2;

pub const DATA_FLAG_LAST_CHUNK: u8 = 1 << 0;
pub const DATA_FLAG_TRUNCATED: u8 = 1 << 1;
/// No data[]: data_len bytes could not be read.
pub const DATA_FLAG_READ_FAULT: u8 = 1 << 2;
pub const CLOSE_FLAG_DEFERRED: u8 = 1 << 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TASK_COMM_LEN: usize = 16;

/// events.py Record: what one ring record is.
#[derive(Clone, Debug)]
pub enum Record<'a> {
    Chunk(Chunk<'a>),
    Close(Close<'a>),
    Fault(Fault<'a>),
}

/// A record that does not match its struct; `Display` is Python's DecodeError text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than struct record_header.
    ShortHeader {
        len: usize,
    },
    /// A tls_data_event shorter than its fixed part.
    ShortTlsData {
        len: usize,
    },
    /// data_len above MAX_CHUNK_SIZE or beyond the record.
    Payload {
        data_len: u32,
        carried: usize,
    },
    /// A conn_close_event shorter than its struct.
    ShortClose {
        len: usize,
    },
    UnknownKind {
        kind: u32,
        len: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::ShortHeader { len } => write!(
                f,
                "record of {len} bytes is shorter than its {RECORD_HEADER_SIZE}-byte header"
            ),
            DecodeError::ShortTlsData { len } => write!(
                f,
                "tls_data_event of {len} bytes is shorter than its {TLS_DATA_HEADER_SIZE}-byte header"
            ),
            DecodeError::Payload { data_len, carried } => write!(
                f,
                "tls_data_event claims {data_len} payload bytes but carries {carried}"
            ),
            DecodeError::ShortClose { len } => write!(
                f,
                "conn_close_event of {len} bytes is shorter than {CONN_CLOSE_SIZE}"
            ),
            DecodeError::UnknownKind { kind, len } => {
                write!(f, "unknown record kind {kind} ({len} bytes)")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Little-endian fields in order, as Python's `struct.unpack_from`; `None`
/// only past the end (callers check the length first).
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (head, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().copied().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().copied().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().copied().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().copied().map(u64::from_le_bytes)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.rest = self.rest.get(n..)?;
        Some(())
    }
}

struct Header<'a> {
    kind: u32,
    pid: u32,
    tid: u32,
    uid: u32,
    timestamp_ns: u64,
    conn_id: u64,
    ssl: u64,
    socket_cookie: Option<u64>,
    comm: &'a [u8; TASK_COMM_LEN],
}

fn header<'a>(fields: &mut Fields<'a>) -> Option<Header<'a>> {
    Some(Header {
        kind: fields.u32()?,
        pid: fields.u32()?,
        tid: fields.u32()?,
        uid: fields.u32()?,
        timestamp_ns: fields.u64()?,
        conn_id: fields.u64()?,
        ssl: fields.u64()?,
        socket_cookie: Some(fields.u64()?).filter(|&cookie| cookie != 0), // `cookie or None`
        comm: fields.take()?,
    })
}

/// struct sock_addr -> Endpoint; None when the kernel did not know it
/// (events.py decode_endpoint: an IPv4-mapped IPv6 address is an IPv4 one).
fn endpoint(fields: &mut Fields<'_>) -> Option<Option<Endpoint>> {
    let family = fields.u16()?;
    let port = fields.u16()?;
    let addr: &[u8; 16] = fields.take()?;
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => {
            let ip = Ipv6Addr::from(*addr);
            match ip.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(ip),
            }
        }
        _ => return Some(None),
    };
    Some(Some(Endpoint { ip, port }))
}

/// Turns records into the model's types. Holds the clock offset and the one
/// buffer a comm that is not UTF-8 is decoded into (with U+FFFD, as Python's
/// `errors="replace"`), so a record borrows from its bytes or from here.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    clock_offset_ns: i64,
    lossy_comm: String,
}

impl Decoder {
    /// `clock_offset_ns`: epoch - CLOCK_MONOTONIC (events.py Clock), added to
    /// every bpf_ktime_get_ns() timestamp.
    pub fn new(clock_offset_ns: i64) -> Decoder {
        Decoder {
            clock_offset_ns,
            lossy_comm: String::new(),
        }
    }

    pub fn clock_offset_ns(&self) -> i64 {
        self.clock_offset_ns
    }

    /// ns since the epoch; saturates where Python's integers would leave u64
    /// (a timestamp no kernel produces).
    fn epoch(&self, monotonic_ns: u64) -> u64 {
        monotonic_ns.saturating_add_signed(self.clock_offset_ns)
    }

    /// comm up to its first NUL, decoded as UTF-8 with replacement.
    fn comm<'a>(&'a mut self, raw: &'a [u8; TASK_COMM_LEN]) -> &'a str {
        let name = match memchr::memchr(0, raw) {
            Some(end) => &raw[..end],
            None => &raw[..],
        };
        match std::str::from_utf8(name) {
            Ok(text) => text,
            Err(_) => {
                self.lossy_comm.clear();
                self.lossy_comm.push_str(&String::from_utf8_lossy(name));
                &self.lossy_comm
            }
        }
    }

    /// Decode one ring record (events.py decode_record).
    pub fn decode<'a>(&'a mut self, raw: &'a [u8]) -> Result<Record<'a>, DecodeError> {
        let len = raw.len();
        let mut fields = Fields { rest: raw };
        let Some(head) = header(&mut fields) else {
            return Err(DecodeError::ShortHeader { len });
        };
        match head.kind {
            KIND_TLS_DATA => self.tls_data(raw, head, fields),
            KIND_CONN_CLOSE => {
                let short = DecodeError::ShortClose { len };
                if len < CONN_CLOSE_SIZE {
                    return Err(short);
                }
                let timestamp_ns = self.epoch(head.timestamp_ns);
                let close = (|| {
                    let fd = fields.i32()?;
                    let lost_records = fields.u32()?;
                    let lost_bytes = fields.u64()?;
                    let cause = fields.u8()?;
                    let flags = fields.u8()?;
                    Some((fd, lost_records, lost_bytes, cause, flags))
                })();
                let Some((fd, lost_records, lost_bytes, cause, flags)) = close else {
                    return Err(short);
                };
                Ok(Record::Close(Close {
                    timestamp_ns,
                    pid: head.pid,
                    tid: Some(head.tid).filter(|&tid| tid != 0), // `tid or None`
                    uid: head.uid,
                    comm: self.comm(head.comm),
                    conn_id: head.conn_id,
                    fd,
                    lost_records,
                    lost_bytes,
                    ssl: head.ssl,
                    socket_cookie: head.socket_cookie,
                    cause: CloseCause::from_raw(cause),
                    deferred: flags & CLOSE_FLAG_DEFERRED != 0,
                }))
            }
            kind => Err(DecodeError::UnknownKind { kind, len }),
        }
    }

    fn tls_data<'a>(
        &'a mut self,
        raw: &'a [u8],
        head: Header<'a>,
        mut fields: Fields<'a>,
    ) -> Result<Record<'a>, DecodeError> {
        let len = raw.len();
        let short = DecodeError::ShortTlsData { len };
        if len < TLS_DATA_HEADER_SIZE {
            return Err(short);
        }
        let parsed = (|| {
            let fd = fields.i32()?;
            let direction = fields.u8()?;
            let flags = fields.u8()?;
            fields.skip(2)?;
            let call_id = fields.u64()?;
            let call_len = fields.u64()?;
            let offset = fields.u64()?;
            let data_len = fields.u32()?;
            let lost_records = fields.u32()?;
            let lost_bytes = fields.u64()?;
            let local = endpoint(&mut fields)?;
            let remote = endpoint(&mut fields)?;
            Some((
                fd,
                direction,
                flags,
                call_id,
                call_len,
                offset,
                data_len,
                lost_records,
                lost_bytes,
                local,
                remote,
            ))
        })();
        let Some((
            fd,
            direction,
            flags,
            call_id,
            call_len,
            offset,
            data_len,
            lost_records,
            lost_bytes,
            local,
            remote,
        )) = parsed
        else {
            return Err(short);
        };
        let timestamp_ns = self.epoch(head.timestamp_ns);
        let direction = Direction::from_raw(direction);
        if flags & DATA_FLAG_READ_FAULT != 0 {
            return Ok(Record::Fault(Fault {
                timestamp_ns,
                pid: head.pid,
                tid: head.tid,
                uid: head.uid,
                comm: self.comm(head.comm),
                conn_id: head.conn_id,
                fd,
                direction,
                call_id,
                call_len,
                offset,
                bytes: data_len,
                ssl: head.ssl,
                socket_cookie: head.socket_cookie,
            }));
        }
        let carried = len - TLS_DATA_HEADER_SIZE;
        let data = raw
            .get(TLS_DATA_HEADER_SIZE..)
            .and_then(|payload| payload.get(..data_len as usize))
            .filter(|_| data_len <= MAX_CHUNK_SIZE)
            .ok_or(DecodeError::Payload { data_len, carried })?;
        Ok(Record::Chunk(Chunk {
            timestamp_ns,
            pid: head.pid,
            tid: head.tid,
            uid: head.uid,
            comm: self.comm(head.comm),
            conn_id: head.conn_id,
            fd,
            direction,
            call_id,
            call_len,
            offset,
            data,
            last_chunk: flags & DATA_FLAG_LAST_CHUNK != 0,
            truncated: flags & DATA_FLAG_TRUNCATED != 0,
            local,
            remote,
            lost_records,
            lost_bytes,
            ssl: head.ssl,
            socket_cookie: head.socket_cookie,
        }))
    }
}

/// Builders of raw records (tests, benches, the fuzz target's seeds): the
/// struct layouts of bpf/events.h, little-endian.
pub mod build {
    use super::*;

    /// struct record_header.
    #[derive(Clone, Debug, Default)]
    pub struct RawHeader {
        pub kind: u32,
        pub pid: u32,
        pub tid: u32,
        pub uid: u32,
        pub timestamp_ns: u64,
        pub conn_id: u64,
        pub ssl: u64,
        pub socket_cookie: u64,
        pub comm: [u8; 16],
    }

    impl RawHeader {
        pub fn write(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.kind.to_le_bytes());
            out.extend_from_slice(&self.pid.to_le_bytes());
            out.extend_from_slice(&self.tid.to_le_bytes());
            out.extend_from_slice(&self.uid.to_le_bytes());
            out.extend_from_slice(&self.timestamp_ns.to_le_bytes());
            out.extend_from_slice(&self.conn_id.to_le_bytes());
            out.extend_from_slice(&self.ssl.to_le_bytes());
            out.extend_from_slice(&self.socket_cookie.to_le_bytes());
            out.extend_from_slice(&self.comm);
        }
    }

    /// struct sock_addr.
    pub fn sock_addr(family: u16, port: u16, addr: [u8; 16], out: &mut Vec<u8>) {
        out.extend_from_slice(&family.to_le_bytes());
        out.extend_from_slice(&port.to_le_bytes());
        out.extend_from_slice(&addr);
    }

    /// A tls_data_event carrying `payload` (data_len = its length).
    pub fn tls_data(header: &RawHeader, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(TLS_DATA_HEADER_SIZE + payload.len());
        let header = RawHeader {
            kind: KIND_TLS_DATA,
            ..header.clone()
        };
        header.write(&mut out);
        out.extend_from_slice(&7i32.to_le_bytes()); // fd
        out.push(1); // direction: send
        out.push(flags);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&42u64.to_le_bytes()); // call_id
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes()); // call_len
        out.extend_from_slice(&0u64.to_le_bytes()); // offset
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // lost_records
        out.extend_from_slice(&0u64.to_le_bytes()); // lost_bytes
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[127, 0, 0, 1]);
        sock_addr(AF_INET, 50000, local, &mut out);
        sock_addr(AF_INET, 443, local, &mut out);
        out.extend_from_slice(payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn header() -> RawHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        RawHeader {
            kind: KIND_TLS_DATA,
            pid: 100,
            tid: 101,
            uid: 1000,
            timestamp_ns: 5_000,
            conn_id: 9,
            ssl: 0xdead_beef,
            socket_cookie: 77,
            comm,
        }
    }

    #[test]
    fn a_chunk_borrows_its_payload_and_carries_every_field() {
        let raw = tls_data(&header(), DATA_FLAG_LAST_CHUNK, b"GET / HTTP/1.1\r\n");
        let mut decoder = Decoder::new(1_000_000);
        let Ok(Record::Chunk(chunk)) = decoder.decode(&raw) else {
            panic!("not a chunk");
        };
        assert_eq!(chunk.timestamp_ns, 1_005_000);
        assert_eq!((chunk.pid, chunk.tid, chunk.uid), (100, 101, 1000));
        assert_eq!(chunk.comm, "curl");
        assert_eq!((chunk.conn_id, chunk.fd, chunk.call_id), (9, 7, 42));
        assert_eq!(chunk.direction, Direction::Send);
        assert_eq!(chunk.data, b"GET / HTTP/1.1\r\n");
        assert_eq!(chunk.data.as_ptr(), raw[TLS_DATA_HEADER_SIZE..].as_ptr());
        assert!(chunk.last_chunk && !chunk.truncated);
        assert_eq!(chunk.local.unwrap().to_string(), "127.0.0.1:50000");
        assert_eq!(chunk.remote.unwrap().to_string(), "127.0.0.1:443");
        assert_eq!((chunk.ssl, chunk.socket_cookie), (0xdead_beef, Some(77)));
    }

    #[test]
    fn endpoints_of_each_family() {
        let mut out = Vec::new();
        let mut mapped = [0u8; 16];
        mapped[10..].copy_from_slice(&[0xff, 0xff, 10, 1, 2, 3]);
        sock_addr(AF_INET6, 8443, mapped, &mut out);
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        sock_addr(AF_INET6, 443, v6, &mut out);
        sock_addr(0, 443, [1; 16], &mut out);
        sock_addr(
            AF_INET,
            80,
            [192, 168, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
            &mut out,
        );
        let mut fields = Fields { rest: &out };
        let shown: Vec<Option<String>> = (0..4)
            .map(|_| endpoint(&mut fields).unwrap().map(|e| e.to_string()))
            .collect();
        assert_eq!(
            shown,
            [
                Some("10.1.2.3:8443".to_string()),
                Some("[2001::1]:443".to_string()),
                None,
                Some("192.168.0.1:80".to_string()),
            ]
        );
    }

    #[test]
    fn a_comm_that_is_not_utf8_is_replaced_and_stops_at_nul() {
        let mut head = header();
        head.comm = *b"ab\xffc\0zzzzzzzzzzz";
        let raw = tls_data(&head, 0, b"x");
        let mut decoder = Decoder::new(0);
        let Ok(Record::Chunk(chunk)) = decoder.decode(&raw) else {
            panic!("not a chunk");
        };
        assert_eq!(chunk.comm, "ab\u{fffd}c");
        head.comm = *b"0123456789abcdef"; // no NUL: all 16
        let raw = tls_data(&head, 0, b"x");
        let Ok(Record::Chunk(chunk)) = decoder.decode(&raw) else {
            panic!("not a chunk");
        };
        assert_eq!(chunk.comm, "0123456789abcdef");
    }

    #[test]
    fn read_faults_and_closes() {
        let mut raw = tls_data(&header(), DATA_FLAG_READ_FAULT, b"");
        raw[96..100].copy_from_slice(&99_999u32.to_le_bytes()); // data_len: more than MAX, fine for a fault
        let mut decoder = Decoder::new(-5_000);
        let Ok(Record::Fault(fault)) = decoder.decode(&raw) else {
            panic!("not a fault");
        };
        assert_eq!((fault.bytes, fault.timestamp_ns), (99_999, 0));

        let mut close = Vec::new();
        RawHeader {
            kind: KIND_CONN_CLOSE,
            tid: 0,
            socket_cookie: 0,
            ..header()
        }
        .write(&mut close);
        close.extend_from_slice(&(-1i32).to_le_bytes());
        close.extend_from_slice(&3u32.to_le_bytes());
        close.extend_from_slice(&300u64.to_le_bytes());
        close.extend_from_slice(&[9, CLOSE_FLAG_DEFERRED, 0, 0, 0, 0, 0, 0]);
        let Ok(Record::Close(close)) = decoder.decode(&close) else {
            panic!("not a close");
        };
        assert_eq!((close.tid, close.socket_cookie, close.fd), (None, None, -1));
        assert_eq!((close.lost_records, close.lost_bytes), (3, 300));
        assert_eq!(close.cause, CloseCause::Unknown);
        assert!(close.deferred);
    }

    #[test]
    fn malformed_records_say_what_python_says() {
        let mut decoder = Decoder::new(0);
        let text = |decoder: &mut Decoder, raw: &[u8]| match decoder.decode(raw) {
            Err(error) => error.to_string(),
            Ok(record) => panic!("decoded {record:?}"),
        };
        assert_eq!(
            text(&mut decoder, &[0; 10]),
            "record of 10 bytes is shorter than its 64-byte header"
        );
        let full = tls_data(&header(), 0, b"hello");
        assert_eq!(
            text(&mut decoder, &full[..100]),
            "tls_data_event of 100 bytes is shorter than its 152-byte header"
        );
        assert_eq!(
            text(&mut decoder, &full[..full.len() - 1]),
            "tls_data_event claims 5 payload bytes but carries 4"
        );
        let mut close = Vec::new();
        RawHeader {
            kind: KIND_CONN_CLOSE,
            ..header()
        }
        .write(&mut close);
        close.extend_from_slice(&[0; 23]);
        assert_eq!(
            text(&mut decoder, &close),
            "conn_close_event of 87 bytes is shorter than 88"
        );
        let mut other = Vec::new();
        RawHeader {
            kind: 56,
            ..header()
        }
        .write(&mut other);
        assert_eq!(
            text(&mut decoder, &other),
            "unknown record kind 56 (64 bytes)"
        );
        let mut big = tls_data(&header(), 0, &vec![0; 16385]);
        assert_eq!(
            text(&mut decoder, &big),
            "tls_data_event claims 16385 payload bytes but carries 16385"
        );
        big.truncate(TLS_DATA_HEADER_SIZE + 16384);
        big[96..100].copy_from_slice(&16384u32.to_le_bytes());
        assert!(decoder.decode(&big).is_ok());
    }

    #[test]
    fn timestamps_saturate_instead_of_wrapping() {
        let raw = tls_data(
            &RawHeader {
                timestamp_ns: u64::MAX - 1,
                ..header()
            },
            0,
            b"",
        );
        let mut decoder = Decoder::new(10);
        let Ok(Record::Chunk(chunk)) = decoder.decode(&raw) else {
            panic!("not a chunk");
        };
        assert_eq!(chunk.timestamp_ns, u64::MAX);
    }

    /// cargo test --release -- --ignored --nocapture decode_speed
    #[test]
    #[ignore]
    fn decode_speed() {
        let raw = tls_data(&header(), DATA_FLAG_LAST_CHUNK, &[b'x'; 64]);
        let mut decoder = Decoder::new(1);
        let rounds = 10_000_000u64;
        let started = std::time::Instant::now();
        let mut sum = 0u64;
        for _ in 0..rounds {
            if let Ok(Record::Chunk(chunk)) = decoder.decode(std::hint::black_box(&raw)) {
                sum += chunk.data.len() as u64 + chunk.comm.len() as u64;
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(sum, rounds * 68);
        println!(
            "decode: {:.1} ns a record",
            elapsed.as_nanos() as f64 / rounds as f64
        );
    }
}
