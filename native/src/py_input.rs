//! Python items → model.rs values, for tests and bindings that hand the Rust
//! core what the Python pipeline made (ecapture.events TlsData, ConnClose,
//! Lost; ecapture.processor.model HttpExchange and its parts).
//!
//! Attributes are read by name, so any object with the same fields works.
//! Numbers outside the model's types (a negative pid, a port above 65535)
//! and endpoint addresses that do not parse are errors, never wrapped.
//! An Endpoint's `ip` is parsed into an IpAddr: the text is not kept, so an
//! IPv4-mapped IPv6 text (which events.py decode_endpoint never makes: it
//! writes those as IPv4) comes back out as IPv4.
//!
//! A `Converter` turns one Python object used twice (a head tuple, a
//! ConnectionInfo) into one shared Arc, as a Rust parser shares what repeats.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::model::{
    Chunk, Close, CloseCause, ConnInfo, Direction, Endpoint, GrpcMessage, Headers, HttpExchange,
    HttpRequest, HttpResponse, LossReason, Lost,
};

/// A TlsData with its bytes owned; `chunk()` lends it as the model's Chunk.
#[derive(Clone, Debug)]
pub struct OwnedChunk {
    pub timestamp_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    pub conn_id: u64,
    pub fd: i32,
    pub direction: Direction,
    pub call_id: u64,
    pub call_len: u64,
    pub offset: u64,
    pub data: Vec<u8>,
    pub last_chunk: bool,
    pub truncated: bool,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub lost_records: u32,
    pub lost_bytes: u64,
    pub ssl: u64,
    pub socket_cookie: Option<u64>,
}

impl OwnedChunk {
    pub fn chunk(&self) -> Chunk<'_> {
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

/// A ConnClose with its comm owned; `close()` lends it as the model's Close.
#[derive(Clone, Debug)]
pub struct OwnedClose {
    pub timestamp_ns: u64,
    pub pid: u32,
    pub tid: Option<u32>,
    pub uid: u32,
    pub comm: String,
    pub conn_id: u64,
    pub fd: i32,
    pub lost_records: u32,
    pub lost_bytes: u64,
    pub ssl: u64,
    pub socket_cookie: Option<u64>,
    pub cause: CloseCause,
    pub deferred: bool,
}

impl OwnedClose {
    pub fn close(&self) -> Close<'_> {
        Close {
            timestamp_ns: self.timestamp_ns,
            pid: self.pid,
            tid: self.tid,
            uid: self.uid,
            comm: &self.comm,
            conn_id: self.conn_id,
            fd: self.fd,
            lost_records: self.lost_records,
            lost_bytes: self.lost_bytes,
            ssl: self.ssl,
            socket_cookie: self.socket_cookie,
            cause: self.cause,
            deferred: self.deferred,
        }
    }
}

/// One Python output item, converted.
#[derive(Clone, Debug)]
pub enum PyItem {
    Data(OwnedChunk),
    Close(OwnedClose),
    Lost(Lost),
    Exchange(Box<HttpExchange>),
    /// processor.model.Unparsed: the JSON output skips it.
    Unparsed,
}

fn attr<'py, T>(object: &Bound<'py, PyAny>, name: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    object.getattr(name)?.extract::<T>()
}

fn bytes_attr(object: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<u8>> {
    Ok(object.getattr(name)?.cast::<PyBytes>()?.as_bytes().to_vec())
}

fn str_attr(object: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    Ok(object
        .getattr(name)?
        .cast::<PyString>()?
        .to_str()?
        .to_owned())
}

fn opt_str_attr(object: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<String>> {
    let value = object.getattr(name)?;
    if value.is_none() {
        return Ok(None);
    }
    Ok(Some(value.cast::<PyString>()?.to_str()?.to_owned()))
}

/// events.Endpoint (or None).
pub fn endpoint(value: &Bound<'_, PyAny>) -> PyResult<Option<Endpoint>> {
    if value.is_none() {
        return Ok(None);
    }
    let ip: String = str_attr(value, "ip")?;
    let ip = ip
        .parse()
        .map_err(|_| PyValueError::new_err(format!("endpoint ip {ip:?} is no IP address")))?;
    Ok(Some(Endpoint {
        ip,
        port: attr(value, "port")?,
    }))
}

/// An IntEnum (or int) direction.
fn direction(value: &Bound<'_, PyAny>) -> PyResult<Direction> {
    match value.extract::<u8>()? {
        0 => Ok(Direction::Recv),
        1 => Ok(Direction::Send),
        other => Err(PyValueError::new_err(format!("direction {other}"))),
    }
}

/// A StrEnum's value (or a str).
fn enum_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let value = if value.is_instance_of::<PyString>() && value.hasattr("value")? {
        value.getattr("value")?
    } else {
        value.clone()
    };
    Ok(value.cast::<PyString>()?.to_str()?.to_owned())
}

fn close_cause(text: &str) -> PyResult<CloseCause> {
    Ok(match text {
        "tcp" => CloseCause::Tcp,
        "ssl_moved" => CloseCause::SslMoved,
        "ssl_free" => CloseCause::SslFree,
        "ssl_clear" => CloseCause::SslClear,
        "unknown" => CloseCause::Unknown,
        other => return Err(PyValueError::new_err(format!("close cause {other:?}"))),
    })
}

fn loss_reason(text: &str) -> PyResult<LossReason> {
    const REASONS: [LossReason; 11] = [
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
    REASONS
        .into_iter()
        .find(|reason| reason.label() == text)
        .ok_or_else(|| PyValueError::new_err(format!("loss reason {text:?}")))
}

/// events.TlsData.
pub fn chunk(item: &Bound<'_, PyAny>) -> PyResult<OwnedChunk> {
    Ok(OwnedChunk {
        timestamp_ns: attr(item, "timestamp_ns")?,
        pid: attr(item, "pid")?,
        tid: attr(item, "tid")?,
        uid: attr(item, "uid")?,
        comm: str_attr(item, "comm")?,
        conn_id: attr(item, "conn_id")?,
        fd: attr(item, "fd")?,
        direction: direction(&item.getattr("direction")?)?,
        call_id: attr(item, "call_id")?,
        call_len: attr(item, "call_len")?,
        offset: attr(item, "offset")?,
        data: bytes_attr(item, "data")?,
        last_chunk: attr(item, "last_chunk")?,
        truncated: attr(item, "truncated")?,
        local: endpoint(&item.getattr("local")?)?,
        remote: endpoint(&item.getattr("remote")?)?,
        lost_records: attr(item, "lost_records")?,
        lost_bytes: attr(item, "lost_bytes")?,
        ssl: attr(item, "ssl")?,
        socket_cookie: attr(item, "socket_cookie")?,
    })
}

/// events.ConnClose.
pub fn close(item: &Bound<'_, PyAny>) -> PyResult<OwnedClose> {
    Ok(OwnedClose {
        timestamp_ns: attr(item, "timestamp_ns")?,
        pid: attr(item, "pid")?,
        tid: attr(item, "tid")?,
        uid: attr(item, "uid")?,
        comm: str_attr(item, "comm")?,
        conn_id: attr(item, "conn_id")?,
        fd: attr(item, "fd")?,
        lost_records: attr(item, "lost_records")?,
        lost_bytes: attr(item, "lost_bytes")?,
        ssl: attr(item, "ssl")?,
        socket_cookie: attr(item, "socket_cookie")?,
        cause: close_cause(&enum_text(&item.getattr("cause")?)?)?,
        deferred: attr(item, "deferred")?,
    })
}

/// events.Lost.
pub fn lost(item: &Bound<'_, PyAny>) -> PyResult<Lost> {
    Ok(Lost {
        timestamp_ns: attr(item, "timestamp_ns")?,
        reason: loss_reason(&enum_text(&item.getattr("reason")?)?)?,
        records: attr(item, "records")?,
        bytes: attr(item, "bytes")?,
        pid: attr(item, "pid")?,
        comm: opt_str_attr(item, "comm")?.map(Arc::from),
        conn_id: attr(item, "conn_id")?,
        fd: attr(item, "fd")?,
    })
}

/// A tuple of (name, value) bytes pairs.
pub fn headers(value: &Bound<'_, PyAny>) -> PyResult<Headers> {
    let mut headers = Headers::new();
    for pair in value.try_iter()? {
        let pair = pair?;
        let name = pair.get_item(0)?;
        let field = pair.get_item(1)?;
        headers.push((
            name.cast::<PyBytes>()?.as_bytes().to_vec(),
            field.cast::<PyBytes>()?.as_bytes().to_vec(),
        ));
    }
    Ok(headers)
}

/// Converts items, sharing one Arc for each Python head or ConnectionInfo
/// object met more than once (keyed by the object's address, valid while
/// the caller holds the items).
#[derive(Default)]
pub struct Converter {
    heads: HashMap<usize, Arc<Headers>>,
    connections: HashMap<usize, Arc<ConnInfo>>,
}

impl Converter {
    pub fn new() -> Converter {
        Converter::default()
    }

    fn head(&mut self, value: &Bound<'_, PyAny>) -> PyResult<Arc<Headers>> {
        let key = value.as_ptr() as usize;
        if let Some(head) = self.heads.get(&key) {
            return Ok(head.clone());
        }
        let head = Arc::new(headers(value)?);
        self.heads.insert(key, head.clone());
        Ok(head)
    }

    fn connection(&mut self, value: &Bound<'_, PyAny>) -> PyResult<Arc<ConnInfo>> {
        let key = value.as_ptr() as usize;
        if let Some(connection) = self.connections.get(&key) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(connection(value)?);
        self.connections.insert(key, connection.clone());
        Ok(connection)
    }

    /// processor.model.HttpExchange.
    pub fn exchange(&mut self, item: &Bound<'_, PyAny>) -> PyResult<HttpExchange> {
        Ok(HttpExchange {
            connection: self.connection(&item.getattr("connection")?)?,
            request: self.request(&item.getattr("request")?)?,
            response: self.response(&item.getattr("response")?)?,
            started_ns: attr(item, "started_ns")?,
            finished_ns: attr(item, "finished_ns")?,
            stream_id: attr(item, "stream_id")?,
            grpc_request: grpc(&item.getattr("grpc_request")?)?,
            grpc_response: grpc(&item.getattr("grpc_response")?)?,
            complete: attr(item, "complete")?,
        })
    }

    fn request(&mut self, value: &Bound<'_, PyAny>) -> PyResult<Option<HttpRequest>> {
        if value.is_none() {
            return Ok(None);
        }
        Ok(Some(HttpRequest {
            method: str_attr(value, "method")?,
            target: str_attr(value, "target")?,
            authority: opt_str_attr(value, "authority")?,
            scheme: opt_str_attr(value, "scheme")?,
            version: str_attr(value, "version")?,
            headers: self.head(&value.getattr("headers")?)?,
            body: bytes_attr(value, "body")?,
            trailers: headers(&value.getattr("trailers")?)?,
            body_truncated: attr(value, "body_truncated")?,
        }))
    }

    fn response(&mut self, value: &Bound<'_, PyAny>) -> PyResult<Option<HttpResponse>> {
        if value.is_none() {
            return Ok(None);
        }
        Ok(Some(HttpResponse {
            status: attr(value, "status")?,
            reason: str_attr(value, "reason")?,
            version: str_attr(value, "version")?,
            headers: self.head(&value.getattr("headers")?)?,
            body: bytes_attr(value, "body")?,
            trailers: headers(&value.getattr("trailers")?)?,
            body_truncated: attr(value, "body_truncated")?,
            informational: attr(value, "informational")?,
        }))
    }

    /// Any output item of the TLS module, told apart by its class name.
    pub fn item(&mut self, item: &Bound<'_, PyAny>) -> PyResult<PyItem> {
        let kind = item.get_type().name()?;
        Ok(match kind.to_str()? {
            "TlsData" => PyItem::Data(chunk(item)?),
            "ConnClose" => PyItem::Close(close(item)?),
            "Lost" => PyItem::Lost(lost(item)?),
            "HttpExchange" => PyItem::Exchange(Box::new(self.exchange(item)?)),
            "Unparsed" => PyItem::Unparsed,
            other => {
                return Err(PyValueError::new_err(format!(
                    "no Rust counterpart for {other} items"
                )))
            }
        })
    }
}

/// processor.model.ConnectionInfo's fields.
fn connection(value: &Bound<'_, PyAny>) -> PyResult<ConnInfo> {
    Ok(ConnInfo {
        pid: attr(value, "pid")?,
        comm: Arc::from(str_attr(value, "comm")?),
        uid: attr(value, "uid")?,
        fd: attr(value, "fd")?,
        conn_id: attr(value, "conn_id")?,
        client: endpoint(&value.getattr("client")?)?,
        server: endpoint(&value.getattr("server")?)?,
    })
}

fn grpc(value: &Bound<'_, PyAny>) -> PyResult<Vec<GrpcMessage>> {
    let mut messages = Vec::new();
    for message in value.try_iter()? {
        let message = message?;
        let decoded = message.getattr("decoded")?;
        messages.push(GrpcMessage {
            compressed: attr(&message, "compressed")?,
            data: bytes_attr(&message, "data")?,
            decoded: if decoded.is_none() {
                None
            } else {
                Some(decoded.cast::<PyBytes>()?.as_bytes().to_vec())
            },
        });
    }
    Ok(messages)
}
