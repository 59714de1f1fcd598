//! Test and bench bindings of the ring consumer and the record decoder:
//! `decode_record` builds the same ecapture.events objects as
//! events.decode_record (tests compare them with `==`), `RingConsumer` reads a
//! real ring buffer map as RingReader does. The production path never turns
//! records into Python objects.

use std::ops::ControlFlow;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::model::{Direction, Endpoint};
use crate::record::{Decoder, Record};
use crate::ring::Ring;

/// An io::Error as Python's OSError(errno, strerror) (so that `.errno` is set
/// and Python picks the subclass), or OSError(message) when it has no errno.
fn os_error(error: std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(code) => {
            let text = error.to_string();
            let suffix = format!(" (os error {code})");
            let strerror = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
            PyOSError::new_err((code, strerror))
        }
        None => PyOSError::new_err(error.to_string()),
    }
}

fn events(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("ecapture.events")
}

fn endpoint<'py>(py: Python<'py>, value: Option<Endpoint>) -> PyResult<Bound<'py, PyAny>> {
    match value {
        None => Ok(py.None().into_bound(py)),
        Some(value) => events(py)?
            .getattr("Endpoint")?
            .call1((value.ip.to_string(), value.port)),
    }
}

fn direction<'py>(py: Python<'py>, value: Direction) -> PyResult<Bound<'py, PyAny>> {
    events(py)?.getattr("Direction")?.call1((value as u8,))
}

/// A decoded record as events.TlsData, ConnClose or ReadFault.
fn record_object<'py>(py: Python<'py>, record: &Record<'_>) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    let class = match record {
        Record::Chunk(chunk) => {
            kwargs.set_item("timestamp_ns", chunk.timestamp_ns)?;
            kwargs.set_item("pid", chunk.pid)?;
            kwargs.set_item("tid", chunk.tid)?;
            kwargs.set_item("uid", chunk.uid)?;
            kwargs.set_item("comm", chunk.comm)?;
            kwargs.set_item("conn_id", chunk.conn_id)?;
            kwargs.set_item("fd", chunk.fd)?;
            kwargs.set_item("direction", direction(py, chunk.direction)?)?;
            kwargs.set_item("call_id", chunk.call_id)?;
            kwargs.set_item("call_len", chunk.call_len)?;
            kwargs.set_item("offset", chunk.offset)?;
            kwargs.set_item("data", PyBytes::new(py, chunk.data))?;
            kwargs.set_item("last_chunk", chunk.last_chunk)?;
            kwargs.set_item("truncated", chunk.truncated)?;
            kwargs.set_item("local", endpoint(py, chunk.local)?)?;
            kwargs.set_item("remote", endpoint(py, chunk.remote)?)?;
            kwargs.set_item("lost_records", chunk.lost_records)?;
            kwargs.set_item("lost_bytes", chunk.lost_bytes)?;
            kwargs.set_item("ssl", chunk.ssl)?;
            kwargs.set_item("socket_cookie", chunk.socket_cookie)?;
            "TlsData"
        }
        Record::Close(close) => {
            kwargs.set_item("timestamp_ns", close.timestamp_ns)?;
            kwargs.set_item("pid", close.pid)?;
            kwargs.set_item("tid", close.tid)?;
            kwargs.set_item("uid", close.uid)?;
            kwargs.set_item("comm", close.comm)?;
            kwargs.set_item("conn_id", close.conn_id)?;
            kwargs.set_item("fd", close.fd)?;
            kwargs.set_item("lost_records", close.lost_records)?;
            kwargs.set_item("lost_bytes", close.lost_bytes)?;
            kwargs.set_item("ssl", close.ssl)?;
            kwargs.set_item("socket_cookie", close.socket_cookie)?;
            let cause = events(py)?
                .getattr("CloseCause")?
                .call1((close.cause.label(),))?;
            kwargs.set_item("cause", cause)?;
            kwargs.set_item("deferred", close.deferred)?;
            "ConnClose"
        }
        Record::Fault(fault) => {
            kwargs.set_item("timestamp_ns", fault.timestamp_ns)?;
            kwargs.set_item("pid", fault.pid)?;
            kwargs.set_item("tid", fault.tid)?;
            kwargs.set_item("uid", fault.uid)?;
            kwargs.set_item("comm", fault.comm)?;
            kwargs.set_item("conn_id", fault.conn_id)?;
            kwargs.set_item("fd", fault.fd)?;
            kwargs.set_item("direction", direction(py, fault.direction)?)?;
            kwargs.set_item("call_id", fault.call_id)?;
            kwargs.set_item("call_len", fault.call_len)?;
            kwargs.set_item("offset", fault.offset)?;
            kwargs.set_item("bytes", fault.bytes)?;
            kwargs.set_item("ssl", fault.ssl)?;
            kwargs.set_item("socket_cookie", fault.socket_cookie)?;
            "ReadFault"
        }
    };
    events(py)?.getattr(class)?.call((), Some(&kwargs))
}

/// `decode_record(raw, clock_offset)`: the Rust decoder's result as the
/// ecapture.events record events.decode_record(raw, Clock(clock_offset))
/// returns; a malformed record raises ecapture.errors.DecodeError with the
/// same text.
#[pyfunction]
pub fn decode_record<'py>(
    py: Python<'py>,
    raw: &[u8],
    clock_offset: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let mut decoder = Decoder::new(clock_offset);
    match decoder.decode(raw) {
        Ok(record) => record_object(py, &record),
        Err(error) => {
            let class = py.import("ecapture.errors")?.getattr("DecodeError")?;
            Err(PyErr::from_value(class.call1((error.to_string(),))?))
        }
    }
}

/// `RingConsumer(map_fd, size)`: the Rust consumer over a BPF ring buffer map
/// (size: its max_entries). The map fd is duplicated; `close()` unmaps.
/// One thread at a time: a call while another thread waits in `poll` raises.
#[pyclass(module = "ecapture._native")]
pub struct RingConsumer {
    ring: Option<Ring>,
}

impl RingConsumer {
    fn ring(&self) -> PyResult<&Ring> {
        self.ring
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("the ring consumer is closed"))
    }

    fn ring_mut(&mut self) -> PyResult<&mut Ring> {
        self.ring
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("the ring consumer is closed"))
    }
}

#[pymethods]
impl RingConsumer {
    #[new]
    fn new(map_fd: i32, size: usize) -> PyResult<RingConsumer> {
        Ok(RingConsumer {
            ring: Some(Ring::new(map_fd, size).map_err(os_error)?),
        })
    }

    /// Wait up to `timeout_ms` (without the GIL) unless the ring already holds
    /// data, then take at most `max_records` records or about `max_bytes`, in
    /// order, as bytes.
    #[pyo3(signature = (timeout_ms, max_records = 16384, max_bytes = 4 << 20))]
    fn poll<'py>(
        &mut self,
        py: Python<'py>,
        timeout_ms: i32,
        max_records: usize,
        max_bytes: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let ring = self.ring()?;
        if timeout_ms != 0 && ring.pending_bytes() == 0 {
            py.detach(|| ring.wait(timeout_ms)).map_err(os_error)?;
            py.check_signals()?;
        }
        let mut records = Vec::new();
        self.ring_mut()?
            .consume(max_records, max_bytes, |record| {
                records.push(PyBytes::new(py, record));
            })
            .map_err(os_error)?;
        PyList::new(py, records)
    }

    /// Wait up to `timeout_ms` (without the GIL) for data or a wake-up.
    fn wait(&self, py: Python<'_>, timeout_ms: i32) -> PyResult<bool> {
        let ring = self.ring()?;
        let ready = py.detach(|| ring.wait(timeout_ms)).map_err(os_error)?;
        py.check_signals()?;
        Ok(ready)
    }

    /// producer - consumer position: the backlog in ring bytes.
    fn pending_bytes(&self) -> PyResult<u64> {
        Ok(self.ring()?.pending_bytes())
    }

    /// (consumer, producer) positions.
    fn positions(&self) -> PyResult<(u64, u64)> {
        Ok(self.ring()?.positions())
    }

    /// Bench: consume and decode in Rust (no Python object per record); with
    /// `read_payload`, also read every payload byte (a sum of them), as a stage
    /// after the decoder would. Returns (records, record bytes, payload bytes
    /// of the chunks, decode errors, the payload bytes' sum).
    #[pyo3(signature = (clock_offset, max_records = 16384, max_bytes = 4 << 20, read_payload = false))]
    fn consume_decoded(
        &mut self,
        clock_offset: i64,
        max_records: usize,
        max_bytes: usize,
        read_payload: bool,
    ) -> PyResult<(usize, usize, u64, usize, u64)> {
        let mut decoder = Decoder::new(clock_offset);
        let (mut payload, mut errors, mut sum) = (0u64, 0usize, 0u64);
        let consumed = self
            .ring_mut()?
            .consume_until(max_records, max_bytes, |raw| {
                match decoder.decode(raw) {
                    Ok(Record::Chunk(chunk)) => {
                        payload += chunk.data.len() as u64;
                        if read_payload {
                            sum = chunk
                                .data
                                .iter()
                                .fold(sum, |sum, &byte| sum.wrapping_add(u64::from(byte)));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
                ControlFlow::Continue(())
            })
            .map_err(os_error)?;
        Ok((consumed.records, consumed.bytes, payload, errors, sum))
    }

    /// Unmap the ring and close its fd; later calls raise ValueError.
    fn close(&mut self) {
        self.ring = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _kind: Option<Bound<'_, PyAny>>,
        _value: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) {
        self.close();
    }
}
