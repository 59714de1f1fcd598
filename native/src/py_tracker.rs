//! A test binding of the Rust tracker: it takes what the Python
//! ConnectionTracker takes (ecapture.events TlsData, ConnClose, ReadFault)
//! and returns what it returns, as the Python model's objects (py_model), so
//! that tests/unit/native/test_http1_diff.py compares the two with `==`.
//! The production path never builds Python objects per record.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::http1;
use crate::model::{Chunk, Close, CloseCause, Direction, Endpoint, Fault, Headers, Item};
use crate::py_model;
use crate::tracker::{self, Tracker, TrackerOptions};

fn attr<'py, T: FromPyObjectOwned<'py>>(event: &Bound<'py, PyAny>, name: &str) -> PyResult<T> {
    event.getattr(name)?.extract::<T>().map_err(Into::into)
}

fn endpoint(event: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<Endpoint>> {
    let value = event.getattr(name)?;
    if value.is_none() {
        return Ok(None);
    }
    let ip: String = attr(&value, "ip")?;
    let port: u16 = attr(&value, "port")?;
    tracker::endpoint(&ip, port)
        .map(Some)
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("not an address: {ip}")))
}

fn direction(event: &Bound<'_, PyAny>) -> PyResult<Direction> {
    let raw: u8 = attr(event, "direction")?;
    Ok(Direction::from_raw(raw))
}

fn cause(event: &Bound<'_, PyAny>) -> PyResult<CloseCause> {
    let label: String = event.getattr("cause")?.getattr("value")?.extract()?;
    Ok(match label.as_str() {
        "tcp" => CloseCause::Tcp,
        "ssl_moved" => CloseCause::SslMoved,
        "ssl_free" => CloseCause::SslFree,
        "ssl_clear" => CloseCause::SslClear,
        _ => CloseCause::Unknown,
    })
}

/// The Rust ConnectionTracker behind the Python one's interface.
#[pyclass(unsendable, module = "ecapture._native")]
pub struct DiffTracker {
    tracker: Tracker,
}

#[pymethods]
impl DiffTracker {
    #[new]
    #[pyo3(signature = (*, max_connections=16384, max_body_bytes=8 << 20, parse_http=true))]
    fn new(max_connections: i64, max_body_bytes: i64, parse_http: bool) -> DiffTracker {
        let options = TrackerOptions {
            max_connections: usize::try_from(max_connections).unwrap_or(1),
            // a negative limit keeps nothing, as Python's BodyBuffer
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(0),
            parse_http,
        };
        DiffTracker {
            tracker: Tracker::new(options, None),
        }
    }

    /// One TlsData, in capture order.
    fn feed<'py>(&mut self, event: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let py = event.py();
        let comm: String = attr(event, "comm")?;
        let data = event.getattr("data")?.cast_into::<PyBytes>()?;
        let chunk = Chunk {
            timestamp_ns: attr(event, "timestamp_ns")?,
            pid: attr(event, "pid")?,
            tid: attr(event, "tid")?,
            uid: attr(event, "uid")?,
            comm: &comm,
            conn_id: attr(event, "conn_id")?,
            fd: attr(event, "fd")?,
            direction: direction(event)?,
            call_id: attr(event, "call_id")?,
            call_len: attr(event, "call_len")?,
            offset: attr(event, "offset")?,
            data: data.as_bytes(),
            last_chunk: attr(event, "last_chunk")?,
            truncated: attr(event, "truncated")?,
            local: endpoint(event, "local")?,
            remote: endpoint(event, "remote")?,
            lost_records: attr(event, "lost_records")?,
            lost_bytes: attr(event, "lost_bytes")?,
            ssl: attr(event, "ssl")?,
            socket_cookie: attr(event, "socket_cookie")?,
        };
        let mut out: Vec<Item> = Vec::new();
        self.tracker.feed(&chunk, &mut out);
        py_model::items(py, &out)
    }

    /// One ConnClose.
    fn close<'py>(&mut self, event: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let comm: String = attr(event, "comm")?;
        let close = Close {
            timestamp_ns: attr(event, "timestamp_ns")?,
            pid: attr(event, "pid")?,
            tid: attr(event, "tid")?,
            uid: attr(event, "uid")?,
            comm: &comm,
            conn_id: attr(event, "conn_id")?,
            fd: attr(event, "fd")?,
            lost_records: attr(event, "lost_records")?,
            lost_bytes: attr(event, "lost_bytes")?,
            ssl: attr(event, "ssl")?,
            socket_cookie: attr(event, "socket_cookie")?,
            cause: cause(event)?,
            deferred: attr(event, "deferred")?,
        };
        let mut out: Vec<Item> = Vec::new();
        self.tracker.close(&close, &mut out);
        py_model::items(event.py(), &out)
    }

    /// One ReadFault.
    fn fault(&mut self, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let comm: String = attr(event, "comm")?;
        let fault = Fault {
            timestamp_ns: attr(event, "timestamp_ns")?,
            pid: attr(event, "pid")?,
            tid: attr(event, "tid")?,
            uid: attr(event, "uid")?,
            comm: &comm,
            conn_id: attr(event, "conn_id")?,
            fd: attr(event, "fd")?,
            direction: direction(event)?,
            call_id: attr(event, "call_id")?,
            call_len: attr(event, "call_len")?,
            offset: attr(event, "offset")?,
            bytes: attr(event, "bytes")?,
            ssl: attr(event, "ssl")?,
            socket_cookie: attr(event, "socket_cookie")?,
        };
        self.tracker.fault(&fault);
        Ok(())
    }

    /// Everything still in flight, marked incomplete.
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut out: Vec<Item> = Vec::new();
        self.tracker.flush(&mut out);
        py_model::items(py, &out)
    }

    fn __len__(&self) -> usize {
        self.tracker.len()
    }
}

fn headers<'py>(py: Python<'py>, fields: &Headers) -> PyResult<Bound<'py, PyTuple>> {
    let pairs = fields
        .iter()
        .map(|(name, value)| (PyBytes::new(py, name), PyBytes::new(py, value)))
        .collect::<Vec<_>>();
    PyTuple::new(py, pairs)
}

/// One head read as http1.rs reads it, as a tuple of the Python `_Head`'s
/// fields in their order (None when it is not a head).
#[pyfunction]
fn diff_parse_head<'py>(
    py: Python<'py>,
    head: &[u8],
    is_request: bool,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Some(parsed) = http1::parse_head(head, is_request) else {
        return Ok(None);
    };
    let fields: Vec<Bound<'py, PyAny>> = vec![
        parsed.method.into_pyobject(py)?.into_any(),
        parsed.target.into_pyobject(py)?.into_any(),
        parsed.authority.into_pyobject(py)?.into_any(),
        parsed.status.into_pyobject(py)?.into_any(),
        parsed.reason.into_pyobject(py)?.into_any(),
        parsed.version.into_pyobject(py)?.into_any(),
        headers(py, &parsed.headers)?.into_any(),
        parsed
            .transfer_encoding
            .as_deref()
            .map(|value| PyBytes::new(py, value))
            .into_pyobject(py)?
            .into_any(),
        pyo3::types::PyBool::new(py, parsed.chunked)
            .to_owned()
            .into_any(),
        parsed.content_length.into_pyobject(py)?.into_any(),
        pyo3::types::PyBool::new(py, parsed.bad_length)
            .to_owned()
            .into_any(),
        parsed.size.into_pyobject(py)?.into_any(),
    ];
    Ok(Some(PyTuple::new(py, fields)?))
}

/// Empty this thread's head cache.
#[pyfunction]
fn diff_clear_head_cache() {
    http1::clear_head_cache();
}

/// Heads cached for (requests, responses).
#[pyfunction]
fn diff_head_cache_len() -> (usize, usize) {
    http1::head_cache_len()
}

/// Adds the binding to the extension module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<DiffTracker>()?;
    module.add_function(wrap_pyfunction!(diff_parse_head, module)?)?;
    module.add_function(wrap_pyfunction!(diff_clear_head_cache, module)?)?;
    module.add_function(wrap_pyfunction!(diff_head_cache_len, module)?)?;
    Ok(())
}
