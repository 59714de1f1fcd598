//! `Http2TestParser`: the Rust HTTP/2 parser driven from Python, for the
//! differential tests against processor/http2.py (tests/unit/native/
//! test_http2_diff.py). It takes the Python model's objects (ConnectionInfo,
//! TlsData) and answers with them (py_model); the production path never
//! builds these objects.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::http2::Http2Parser;
use crate::model::{Chunk, ConnInfo, ConnectionParser, Direction, Endpoint, Item};
use crate::py_model;

fn endpoint(value: &Bound<'_, PyAny>) -> PyResult<Option<Endpoint>> {
    if value.is_none() {
        return Ok(None);
    }
    let ip: String = value.getattr("ip")?.extract()?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| PyValueError::new_err(format!("not an IP address: {ip}")))?;
    Ok(Some(Endpoint {
        ip,
        port: value.getattr("port")?.extract()?,
    }))
}

fn conn_info(info: &Bound<'_, PyAny>) -> PyResult<Arc<ConnInfo>> {
    let comm: String = info.getattr("comm")?.extract()?;
    Ok(Arc::new(ConnInfo {
        pid: info.getattr("pid")?.extract()?,
        comm: Arc::from(comm),
        uid: info.getattr("uid")?.extract()?,
        fd: info.getattr("fd")?.extract()?,
        conn_id: info.getattr("conn_id")?.extract()?,
        client: endpoint(&info.getattr("client")?)?,
        server: endpoint(&info.getattr("server")?)?,
    }))
}

/// A TlsData's fields, owned, so that a Chunk can borrow them.
struct Event {
    comm: String,
    data: Vec<u8>,
    fields: Chunk<'static>,
}

fn event(value: &Bound<'_, PyAny>) -> PyResult<Event> {
    let get = |name: &str| value.getattr(name);
    let direction: u8 = get("direction")?.extract()?;
    let fields = Chunk {
        timestamp_ns: get("timestamp_ns")?.extract()?,
        pid: get("pid")?.extract()?,
        tid: get("tid")?.extract()?,
        uid: get("uid")?.extract()?,
        comm: "",
        conn_id: get("conn_id")?.extract()?,
        fd: get("fd")?.extract()?,
        direction: Direction::from_raw(direction),
        call_id: get("call_id")?.extract()?,
        call_len: get("call_len")?.extract()?,
        offset: get("offset")?.extract()?,
        data: &[],
        last_chunk: get("last_chunk")?.extract()?,
        truncated: get("truncated")?.extract()?,
        local: endpoint(&get("local")?)?,
        remote: endpoint(&get("remote")?)?,
        lost_records: get("lost_records")?.extract()?,
        lost_bytes: get("lost_bytes")?.extract()?,
        ssl: get("ssl")?.extract()?,
        socket_cookie: get("socket_cookie")?.extract()?,
    };
    Ok(Event {
        comm: get("comm")?.extract()?,
        data: get("data")?.extract()?,
        fields,
    })
}

fn bench_chunk(data: &[u8], timestamp_ns: u64) -> Chunk<'_> {
    Chunk {
        timestamp_ns,
        pid: 1,
        tid: 1,
        uid: 0,
        comm: "bench",
        conn_id: 1,
        fd: 3,
        direction: Direction::Send,
        call_id: timestamp_ns,
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

impl Event {
    fn chunk(&self) -> Chunk<'_> {
        Chunk {
            comm: &self.comm,
            data: &self.data,
            ..self.fields.clone()
        }
    }
}

/// `Http2TestParser(info, max_body_bytes)`: feed(event, from_client),
/// gap(event), finish(timestamp_ns, closed) each return the items produced,
/// as ecapture.processor.model / ecapture.events objects.
#[pyclass(module = "ecapture._native")]
pub struct Http2TestParser {
    parser: Http2Parser,
}

fn items<'py>(py: Python<'py>, out: &[Item]) -> PyResult<Bound<'py, PyList>> {
    py_model::items(py, out)
}

#[pymethods]
impl Http2TestParser {
    #[new]
    fn new(info: &Bound<'_, PyAny>, max_body_bytes: usize) -> PyResult<Http2TestParser> {
        Ok(Http2TestParser {
            parser: Http2Parser::new(conn_info(info)?, max_body_bytes),
        })
    }

    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        event_object: &Bound<'py, PyAny>,
        from_client: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let owned = event(event_object)?;
        let mut out = Vec::new();
        self.parser.feed(&owned.chunk(), from_client, &mut out);
        items(py, &out)
    }

    fn gap<'py>(
        &mut self,
        py: Python<'py>,
        event_object: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let owned = event(event_object)?;
        let mut out = Vec::new();
        self.parser.gap(&owned.chunk(), &mut out);
        items(py, &out)
    }

    fn finish<'py>(
        &mut self,
        py: Python<'py>,
        timestamp_ns: u64,
        closed: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.parser.finish(timestamp_ns, closed, &mut out);
        items(py, &out)
    }

    fn set_info(&mut self, info: &Bound<'_, PyAny>) -> PyResult<()> {
        self.parser.set_info(conn_info(info)?);
        Ok(())
    }

    /// Bench: `rounds` times a new parser over `chunks` ((from_client,
    /// data) in order) and finish(); the time in Rust alone, in ns, and the
    /// exchanges of one round.
    #[staticmethod]
    fn bench(
        info: &Bound<'_, PyAny>,
        chunks: Vec<(bool, Vec<u8>)>,
        max_body_bytes: usize,
        rounds: usize,
    ) -> PyResult<(u64, usize)> {
        let info = conn_info(info)?;
        let mut out = Vec::new();
        let mut exchanges = 0;
        let started = Instant::now();
        for round in 0..rounds {
            let mut parser = Http2Parser::new(info.clone(), max_body_bytes);
            for (index, (from_client, data)) in chunks.iter().enumerate() {
                let mut event = bench_chunk(data, index as u64);
                event.direction = if *from_client {
                    Direction::Send
                } else {
                    Direction::Recv
                };
                parser.feed(&event, *from_client, &mut out);
                if round == 0 {
                    exchanges += out
                        .iter()
                        .filter(|item| matches!(item, Item::Exchange(_)))
                        .count();
                }
                out.clear();
            }
            parser.finish(u64::MAX, true, &mut out);
            out.clear();
        }
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok((elapsed, exchanges))
    }

    /// Whether the connection was given up (Python's parser then answers
    /// every chunk with Unparsed(event, "desync")).
    #[getter]
    fn desynced(&self) -> bool {
        self.parser.desynced()
    }
}
