//! `ecapture._native.TlsCore`: the TLS pipeline (core.rs) for Python, fed
//! either by the ring it consumes itself (the production path: no Python
//! per record) or by raw records Python read (tests, other readers).
//! Every call that works on records releases the GIL.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::core::{Batch, Core, CoreConfig};
use crate::model::{LossReason, Lost};
use crate::ring::Ring;
use crate::tracker::TrackerOptions;

/// Records handled by one poll, and their payload bytes (core.rs Batch).
type Handled = (u64, u64);

#[pyclass(module = "ecapture._native")]
pub struct TlsCore {
    core: Core,
    ring: Option<Ring>,
}

fn reason(label: &str) -> PyResult<LossReason> {
    LossReason::from_label(label)
        .ok_or_else(|| PyValueError::new_err(format!("unknown loss reason {label:?}")))
}

#[pymethods]
impl TlsCore {
    /// `max_connections` / `max_body_bytes` / `parse_http` as the Python
    /// ConnectionTracker takes them; `http=False`: no HTTP processing at all.
    #[new]
    #[pyo3(signature = (module, *, tsize, clock_offset_ns, http, max_connections, max_body_bytes, parse_http))]
    fn new(
        module: &str,
        tsize: usize,
        clock_offset_ns: i64,
        http: bool,
        max_connections: usize,
        max_body_bytes: usize,
        parse_http: bool,
    ) -> TlsCore {
        let tracker = http.then_some(TrackerOptions {
            max_connections,
            max_body_bytes,
            parse_http,
        });
        TlsCore {
            core: Core::new(CoreConfig {
                module: module.to_string(),
                tsize,
                clock_offset_ns,
                tracker,
            }),
            ring: None,
        }
    }

    /// Consume this ring map (fd, data size) directly from now on.
    fn attach_ring(&mut self, map_fd: i32, size: usize) -> PyResult<()> {
        let ring = Ring::new(map_fd, size)
            .map_err(|error| PyOSError::new_err(format!("mapping the ring: {error}")))?;
        self.ring = Some(ring);
        Ok(())
    }

    /// Wait up to `timeout_ms` for the attached ring, then handle at most
    /// `max_records` / about `max_bytes` of it; returns (records, bytes).
    fn poll(
        &mut self,
        py: Python<'_>,
        timeout_ms: i32,
        max_records: usize,
        max_bytes: usize,
    ) -> PyResult<Handled> {
        let Self { core, ring } = self;
        let Some(ring) = ring.as_mut() else {
            return Err(PyValueError::new_err("no ring attached"));
        };
        py.detach(|| {
            if timeout_ms > 0 && ring.pending_bytes() == 0 {
                ring.wait(timeout_ms)
                    .map_err(|error| PyOSError::new_err(format!("waiting on the ring: {error}")))?;
            }
            let mut batch = Batch::default();
            ring.consume(max_records, max_bytes, |raw| {
                core.batch_record(&mut batch, raw)
            })
            .map_err(|error| PyOSError::new_err(format!("reading the ring: {error}")))?;
            Ok(core.end_batch(batch))
        })
    }

    /// Bytes the attached ring holds, not consumed yet.
    fn pending_bytes(&self) -> u64 {
        self.ring.as_ref().map_or(0, Ring::pending_bytes)
    }

    /// Raw records Python read (a batch of the main ring), in order.
    fn feed(&mut self, py: Python<'_>, records: Vec<Vec<u8>>) -> Handled {
        let core = &mut self.core;
        py.detach(|| {
            let mut batch = Batch::default();
            for raw in &records {
                core.batch_record(&mut batch, raw);
            }
            core.end_batch(batch)
        })
    }

    /// Records of the spare ring (deferred closes).
    fn park(&mut self, records: Vec<Vec<u8>>) {
        for raw in &records {
            self.core.park(raw);
        }
    }

    fn release_parked(&mut self) {
        self.core.release_parked(None);
    }

    fn tick(&mut self) {
        self.core.tick();
    }

    /// A loss found outside the records (kernel counters, the drain, the sink).
    #[pyo3(signature = (timestamp_ns, reason_label, records, nbytes, pid=None, comm=None, conn_id=None, fd=None))]
    #[allow(clippy::too_many_arguments)]
    fn report_loss(
        &mut self,
        timestamp_ns: u64,
        reason_label: &str,
        records: u64,
        nbytes: u64,
        pid: Option<u32>,
        comm: Option<&str>,
        conn_id: Option<u64>,
        fd: Option<i32>,
    ) -> PyResult<()> {
        self.core.lost(Lost {
            timestamp_ns,
            reason: reason(reason_label)?,
            records,
            bytes: nbytes,
            pid,
            comm: comm.map(Into::into),
            conn_id,
            fd,
        });
        Ok(())
    }

    fn finish(&mut self) {
        self.core.finish();
    }

    /// The JSON lines written since the last call.
    fn take_output<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let output = PyBytes::new(py, self.core.output());
        self.core.clear_output();
        output
    }

    /// Bytes of JSON lines written since the last take_output/write_output.
    fn output_len(&self) -> usize {
        self.core.output_len()
    }

    /// Write the JSON lines since the last call straight to `fd` (the events
    /// sink's file or stdout): no bytes object per poll, whose fresh pages
    /// cost more than the copy (docs/performance.md#native-results). The
    /// lines are forgotten whether or not the write succeeds: a failed
    /// delivery is the sink's to count. Returns the bytes written.
    fn write_output(&mut self, py: Python<'_>, fd: i32) -> PyResult<usize> {
        let output = self.core.output();
        let result = py.detach(|| write_all(fd, output));
        let written = output.len();
        self.core.clear_output();
        result.map(|()| written).map_err(PyErr::from)
    }

    fn take_warnings(&mut self) -> Vec<String> {
        self.core.take_warnings()
    }

    fn open_connections(&self) -> usize {
        self.core.open_connections()
    }

    /// pipeline.py PipelineCounters: records, data_bytes, connections_closed,
    /// http_exchanges, parser_errors, and (records, bytes) lost by reason label.
    fn counters<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(u64, u64, u64, u64, u64, Bound<'py, PyDict>)> {
        let counters = self.core.counters();
        let lost = PyDict::new(py);
        for (reason, totals) in &counters.lost {
            lost.set_item(reason.label(), (totals.records, totals.bytes))?;
        }
        Ok((
            counters.records,
            counters.data_bytes,
            counters.connections_closed,
            counters.http_exchanges,
            counters.parser_errors,
            lost,
        ))
    }
}

/// write(2) until every byte is out (a pipe or terminal may take part of it);
/// EINTR retried, any other error returned.
fn write_all(fd: i32, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a live, initialised slice for the whole call and
        // the kernel reads at most data.len() bytes from its start; `fd` is
        // only a number to the kernel, which checks it (EBADF otherwise).
        let written = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // write(2) returns at most data.len(), never 0 for a non-empty buffer.
        data = &data[written.unsigned_abs()..];
    }
    Ok(())
}
