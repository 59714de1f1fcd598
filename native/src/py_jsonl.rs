//! Test bindings of the JSON writer and the body decoder: Python hands the
//! items its own pipeline made, the Rust core encodes them, and
//! tests/unit/native/test_jsonl.py compares the bytes with
//! ecapture.output.jsonl.JsonLinesWriter's. Not the data path: there the
//! items never leave Rust.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bodies;
use crate::jsonl::JsonWriter;
use crate::py_input::{Converter, PyItem};

fn convert(items: &Bound<'_, PyAny>) -> PyResult<Vec<PyItem>> {
    let mut converter = Converter::new();
    items
        .try_iter()?
        .map(|item| converter.item(&item?))
        .collect()
}

fn write(writer: &mut JsonWriter, item: &PyItem) {
    match item {
        PyItem::Data(chunk) => writer.data(&chunk.chunk()),
        PyItem::Close(close) => writer.close(&close.close()),
        PyItem::Lost(lost) => writer.lost(lost),
        PyItem::Exchange(exchange) => writer.exchange(exchange),
        PyItem::Unparsed => {}
    }
}

/// The JSON lines of `items` (TlsData, ConnClose, Lost, HttpExchange,
/// Unparsed) written by one JsonWriter, and its -t cut count (records, bytes).
/// A head tuple or ConnectionInfo object used by several items becomes one
/// shared Arc, as a Rust parser shares them (the writer's caches see it).
#[pyfunction]
#[pyo3(signature = (items, module = "tls", tsize = 0))]
fn jsonl_encode<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    module: &str,
    tsize: usize,
) -> PyResult<(Bound<'py, PyBytes>, (u64, u64))> {
    let items = convert(items)?;
    let mut writer = JsonWriter::new(module, tsize);
    for item in &items {
        write(&mut writer, item);
    }
    Ok((PyBytes::new(py, writer.buffer()), writer.cut()))
}

/// This thread's CPU time in ns (CLOCK_THREAD_CPUTIME_ID): on a shared
/// machine wall time also counts the other processes' turns.
fn thread_cpu_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which
    // lives on this stack frame for the whole call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return 0;
    }
    u128::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000
        + u128::try_from(now.tv_nsec).unwrap_or(0)
}

/// CPU nanoseconds per item for writing `items` `rounds` times in Rust (the
/// conversion from Python is not timed; the buffer is cleared after each
/// round, as a driver hands it to its sink).
#[pyfunction]
#[pyo3(signature = (items, rounds, module = "tls", tsize = 0))]
fn jsonl_time(items: &Bound<'_, PyAny>, rounds: u32, module: &str, tsize: usize) -> PyResult<f64> {
    let items = convert(items)?;
    if items.is_empty() || rounds == 0 {
        return Err(PyValueError::new_err("nothing to time"));
    }
    let mut writer = JsonWriter::new(module, tsize);
    let start = thread_cpu_ns();
    for _ in 0..rounds {
        for item in &items {
            write(&mut writer, item);
        }
        std::hint::black_box(writer.buffer());
        writer.clear();
    }
    let elapsed = thread_cpu_ns().saturating_sub(start);
    Ok(elapsed as f64 / (f64::from(rounds) * items.len() as f64))
}

/// bodies.rs decode_body with Python's signature (processor/bodies.py):
/// `content_encoding` is latin-1 text; None when the body cannot be decoded.
#[pyfunction]
#[pyo3(signature = (body, content_encoding, limit = bodies::DEFAULT_DECODED_LIMIT))]
fn decode_body<'py>(
    py: Python<'py>,
    body: &[u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let Some(content_encoding) = content_encoding else {
        return Ok(Some(PyBytes::new(py, body)));
    };
    let latin1 = content_encoding
        .chars()
        .map(|c| u8::try_from(u32::from(c)))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| PyValueError::new_err("content_encoding is not latin-1 text"))?;
    Ok(bodies::decode_body(body, &latin1, limit).map(|decoded| PyBytes::new(py, &decoded)))
}

/// Adds the bindings to the extension module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(jsonl_encode, module)?)?;
    module.add_function(wrap_pyfunction!(jsonl_time, module)?)?;
    module.add_function(wrap_pyfunction!(decode_body, module)?)?;
    Ok(())
}
