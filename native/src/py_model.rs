//! Rust items as the Python model's objects (ecapture.processor.model,
//! ecapture.events), so that a test compares what a Rust parser produced
//! with what the Python reference produced using plain `==`.
//!
//! Only tests and the differential fuzzing use this: on the production path
//! items never become Python objects.

use std::net::IpAddr;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::model::{
    ConnInfo, Endpoint, GrpcMessage, Headers, HttpExchange, HttpRequest, HttpResponse, Item, Lost,
};

fn endpoint<'py>(py: Python<'py>, value: Option<Endpoint>) -> PyResult<Bound<'py, PyAny>> {
    let Some(value) = value else {
        return Ok(py.None().into_bound(py));
    };
    let ip = match value.ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => ip.to_string(),
    };
    py.import("ecapture.events")?
        .getattr("Endpoint")?
        .call1((ip, value.port))
}

fn headers<'py>(py: Python<'py>, fields: &Headers) -> PyResult<Bound<'py, PyTuple>> {
    let pairs = fields
        .iter()
        .map(|(name, value)| {
            PyTuple::new(
                py,
                [
                    PyBytes::new(py, name).into_any(),
                    PyBytes::new(py, value).into_any(),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, pairs)
}

fn connection<'py>(py: Python<'py>, info: &ConnInfo) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("pid", info.pid)?;
    kwargs.set_item("comm", &*info.comm)?;
    kwargs.set_item("uid", info.uid)?;
    kwargs.set_item("fd", info.fd)?;
    kwargs.set_item("conn_id", info.conn_id)?;
    kwargs.set_item("client", endpoint(py, info.client)?)?;
    kwargs.set_item("server", endpoint(py, info.server)?)?;
    model(py, "ConnectionInfo")?.call((), Some(&kwargs))
}

fn model<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("ecapture.processor.model")?.getattr(name)
}

fn request<'py>(py: Python<'py>, message: &HttpRequest) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("method", &message.method)?;
    kwargs.set_item("target", &message.target)?;
    kwargs.set_item("authority", &message.authority)?;
    kwargs.set_item("scheme", &message.scheme)?;
    kwargs.set_item("version", &message.version)?;
    kwargs.set_item("headers", headers(py, &message.headers)?)?;
    kwargs.set_item("body", PyBytes::new(py, &message.body))?;
    kwargs.set_item("trailers", headers(py, &message.trailers)?)?;
    kwargs.set_item("body_truncated", message.body_truncated)?;
    model(py, "HttpRequest")?.call((), Some(&kwargs))
}

fn response<'py>(py: Python<'py>, message: &HttpResponse) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("status", message.status)?;
    kwargs.set_item("reason", &message.reason)?;
    kwargs.set_item("version", &message.version)?;
    kwargs.set_item("headers", headers(py, &message.headers)?)?;
    kwargs.set_item("body", PyBytes::new(py, &message.body))?;
    kwargs.set_item("trailers", headers(py, &message.trailers)?)?;
    kwargs.set_item("body_truncated", message.body_truncated)?;
    kwargs.set_item("informational", PyTuple::new(py, &message.informational)?)?;
    model(py, "HttpResponse")?.call((), Some(&kwargs))
}

fn grpc<'py>(py: Python<'py>, messages: &[GrpcMessage]) -> PyResult<Bound<'py, PyTuple>> {
    let class = model(py, "GrpcMessage")?;
    let items = messages
        .iter()
        .map(|message| {
            let decoded = match &message.decoded {
                Some(bytes) => PyBytes::new(py, bytes).into_any(),
                None => py.None().into_bound(py),
            };
            class.call1((message.compressed, PyBytes::new(py, &message.data), decoded))
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, items)
}

/// An exchange as ecapture.processor.model.HttpExchange.
pub fn exchange<'py>(py: Python<'py>, value: &HttpExchange) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("connection", connection(py, &value.connection)?)?;
    let none = || py.None().into_bound(py);
    kwargs.set_item(
        "request",
        match &value.request {
            Some(message) => request(py, message)?,
            None => none(),
        },
    )?;
    kwargs.set_item(
        "response",
        match &value.response {
            Some(message) => response(py, message)?,
            None => none(),
        },
    )?;
    kwargs.set_item("started_ns", value.started_ns)?;
    kwargs.set_item("finished_ns", value.finished_ns)?;
    kwargs.set_item("stream_id", value.stream_id)?;
    kwargs.set_item("grpc_request", grpc(py, &value.grpc_request)?)?;
    kwargs.set_item("grpc_response", grpc(py, &value.grpc_response)?)?;
    kwargs.set_item("complete", value.complete)?;
    model(py, "HttpExchange")?.call((), Some(&kwargs))
}

/// A loss as ecapture.events.Lost (its reason as ecapture.events.LossReason).
pub fn lost<'py>(py: Python<'py>, value: &Lost) -> PyResult<Bound<'py, PyAny>> {
    let events = py.import("ecapture.events")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("timestamp_ns", value.timestamp_ns)?;
    kwargs.set_item(
        "reason",
        events
            .getattr("LossReason")?
            .call1((value.reason.label(),))?,
    )?;
    kwargs.set_item("records", value.records)?;
    kwargs.set_item("bytes", value.bytes)?;
    kwargs.set_item("pid", value.pid)?;
    kwargs.set_item("comm", value.comm.as_deref())?;
    kwargs.set_item("conn_id", value.conn_id)?;
    kwargs.set_item("fd", value.fd)?;
    events.getattr("Lost")?.call((), Some(&kwargs))
}

/// Items in order, as a Python list of HttpExchange and Lost objects.
pub fn items<'py>(py: Python<'py>, values: &[Item]) -> PyResult<Bound<'py, PyList>> {
    let objects = values
        .iter()
        .map(|item| match item {
            Item::Exchange(value) => exchange(py, value),
            Item::Lost(value) => lost(py, value),
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, objects)
}
