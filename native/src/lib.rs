//! ecapture's per-record data path, as the Python extension `ecapture._native`.
//!
//! Python keeps the lifecycle, the CLI, ELF work and what is rare; this crate
//! runs for every record: it reads the BPF ring itself, decodes records,
//! follows connections, frames HTTP and writes JSON lines (docs/architecture.md#native).
//! Every parser here reads attacker-controlled bytes inside a root process:
//! no panics on any input, bounded memory, and a fuzz target each (native/fuzz).

pub mod bodies;
pub mod core;
pub mod grpc;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod jsonl;
pub mod model;
pub mod py_core;
pub mod py_http2;
pub mod py_input;
pub mod py_jsonl;
pub mod py_model;
pub mod py_ring;
pub mod py_tracker;
pub mod record;
pub mod ring;
pub mod sniff;
pub mod tracker;

use pyo3::prelude::*;

/// The version of the data path, so that Python can say which core it runs.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(version, module)?)?;
    module.add_class::<py_core::TlsCore>()?;
    module.add_function(wrap_pyfunction!(py_ring::decode_record, module)?)?;
    module.add_class::<py_ring::RingConsumer>()?;
    py_jsonl::register(module)?;
    py_tracker::register(module)?;
    module.add_class::<py_http2::Http2TestParser>()?;
    Ok(())
}
