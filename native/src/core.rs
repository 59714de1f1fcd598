//! The pipeline of a TLS module, in Rust: records → decode → losses →
//! tracker → JSON lines. It does what src/ecapture/pipeline.py does for
//! the TLS record kinds (that file is the reference, and the differential
//! tests run both): in-band ring losses said on their connection, calls
//! cut at the kernel's copy limit, read faults, undecodable records, closes
//! deferred through the spare ring held until the main ring caught up, -t
//! cuts summed at the end. Nothing here blocks or touches Python.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::jsonl::JsonWriter;
use crate::model::{Chunk, Close, Fault, Item, LossReason, Lost};
use crate::record::{Decoder, Record, TLS_DATA_HEADER_SIZE};
use crate::tracker::{Tracker, TrackerOptions};

/// Decode errors logged by the Python side at most this many times.
const MAX_WARNINGS: usize = 16;

/// Records and bytes lost for one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossTotals {
    pub records: u64,
    pub bytes: u64,
}

/// pipeline.py PipelineCounters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub records: u64,
    pub data_bytes: u64,
    pub connections_closed: u64,
    pub http_exchanges: u64,
    pub parser_errors: u64,
    pub lost: HashMap<LossReason, LossTotals>,
}

/// A batch of main-ring records as it is handled: how many, their payload
/// (what a record carries past the tls_data_event header; a close: 0), and
/// the newest timestamp, which orders the parked closes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Batch {
    pub records: u64,
    pub payload: u64,
    newest_ns: u64,
}

/// How a core is set up (the module's configuration).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub module: String,
    pub tsize: usize,
    pub clock_offset_ns: i64,
    pub tracker: Option<TrackerOptions>, // None: no HTTP processing
}

/// A close the main ring could not take: held, as its record's bytes, until
/// the main ring has delivered everything older than it.
struct Parked {
    timestamp_ns: u64,
    raw: Vec<u8>,
}

/// The most output buffer kept between polls (one poll writes a few MiB at
/// most: native_path.py POLL_MAX_BYTES of records, base64 in JSON).
pub const RETAINED_OUTPUT_BYTES: usize = 16 << 20;

pub struct Core {
    writer: JsonWriter,
    tracker: Option<Tracker>,
    decoder: Decoder,
    counters: Counters,
    parked: Vec<Parked>,
    batches: u64,
    batches_at_tick: u64,
    items: Vec<Item>,
    warnings: Vec<String>,
    warned: usize,
    finished: bool,
}

impl Core {
    pub fn new(config: CoreConfig) -> Core {
        Core {
            writer: JsonWriter::new(&config.module, config.tsize),
            tracker: config
                .tracker
                .map(|options| Tracker::new(options, Some(crate::http2::new_boxed))),
            decoder: Decoder::new(config.clock_offset_ns),
            counters: Counters::default(),
            parked: Vec::new(),
            batches: 0,
            batches_at_tick: 0,
            items: Vec::new(),
            warnings: Vec::new(),
            warned: 0,
            finished: false,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The JSON lines written since the last `clear_output`.
    pub fn output(&self) -> &[u8] {
        self.writer.buffer()
    }

    /// Forget the lines handed on; the buffer's memory is kept (up to
    /// RETAINED_OUTPUT_BYTES) so that a poll does not grow a fresh buffer,
    /// copying and faulting in its pages (~20 % of the tool's CPU under
    /// h2load, measured with perf: docs/performance.md#native-results).
    pub fn clear_output(&mut self) {
        self.writer.clear_retaining(RETAINED_OUTPUT_BYTES);
    }

    pub fn output_len(&self) -> usize {
        self.writer.buffer().len()
    }

    /// Warnings for the Python side to log (undecodable records, parser panics).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    pub fn open_connections(&self) -> usize {
        self.tracker.as_ref().map_or(0, Tracker::len)
    }

    fn warn(&mut self, text: String) {
        if self.warned < MAX_WARNINGS {
            self.warned += 1;
            self.warnings.push(text);
        }
    }

    /// One record of the main ring. Returns its timestamp when it orders
    /// the parked closes (data, close or fault), else 0.
    fn record(&mut self, raw: &[u8]) -> u64 {
        // The record borrows the decoder (a comm that needed replacement
        // characters lives there): taken out of self while it is handled.
        let mut decoder = std::mem::take(&mut self.decoder);
        let timestamp = self.decoded(&mut decoder, raw);
        self.decoder = decoder;
        timestamp
    }

    fn decoded(&mut self, decoder: &mut Decoder, raw: &[u8]) -> u64 {
        let record = match decoder.decode(raw) {
            Ok(record) => record,
            Err(error) => {
                self.warn(format!("undecodable record: {error}"));
                self.decode_lost(raw.len());
                return 0;
            }
        };
        self.counters.records += 1;
        match record {
            Record::Chunk(chunk) => {
                let timestamp = chunk.timestamp_ns;
                self.data(&chunk);
                timestamp
            }
            Record::Close(close) => {
                let timestamp = close.timestamp_ns;
                if close.deferred {
                    self.parked.push(Parked {
                        timestamp_ns: timestamp,
                        raw: raw.to_vec(),
                    });
                } else {
                    self.close(&close);
                }
                timestamp
            }
            Record::Fault(fault) => {
                let timestamp = fault.timestamp_ns;
                self.fault(&fault);
                timestamp
            }
        }
    }

    /// One record of a main-ring batch (`record`, and what the batch counts).
    pub fn batch_record(&mut self, batch: &mut Batch, raw: &[u8]) {
        batch.records += 1;
        batch.payload += raw.len().saturating_sub(TLS_DATA_HEADER_SIZE) as u64;
        let timestamp = self.record(raw);
        if timestamp != 0 {
            batch.newest_ns = timestamp;
        }
    }

    /// A batch of main-ring records is done: parked closes older than its
    /// newest record may go. Only a batch that had records counts (pipeline.py:
    /// a tick releases the parked closes after a tick with no batch).
    /// Returns (records, payload bytes).
    pub fn end_batch(&mut self, batch: Batch) -> (u64, u64) {
        if batch.records > 0 {
            self.batches += 1;
            if !self.parked.is_empty() && batch.newest_ns != 0 {
                self.release_parked(Some(batch.newest_ns));
            }
        }
        (batch.records, batch.payload)
    }

    /// A record of the spare ring (closes deferred by a full main ring).
    pub fn park(&mut self, raw: &[u8]) {
        let mut decoder = std::mem::take(&mut self.decoder);
        let timestamp = match decoder.decode(raw) {
            Ok(Record::Close(close)) => Ok(close.timestamp_ns),
            Ok(_) => Err(None),
            Err(error) => Err(Some(error)),
        };
        self.decoder = decoder;
        match timestamp {
            Ok(timestamp_ns) => {
                self.counters.records += 1;
                self.parked.push(Parked {
                    timestamp_ns,
                    raw: raw.to_vec(),
                });
            }
            Err(None) => {
                self.counters.records += 1;
                self.warn("unexpected record in the spare ring".to_string());
                self.decode_lost(raw.len());
            }
            Err(Some(error)) => {
                self.warn(format!("undecodable record in the spare ring: {error}"));
                self.decode_lost(raw.len());
            }
        }
    }

    fn decode_lost(&mut self, size: usize) {
        self.lost(Lost {
            timestamp_ns: now_ns(),
            reason: LossReason::Decode,
            records: 1,
            bytes: size as u64,
            pid: None,
            comm: None,
            conn_id: None,
            fd: None,
        });
    }

    /// pipeline.py _release_parked: the parked closes older than `newer_than`
    /// (None: all), each said right after a ring_full loss on its connection.
    pub fn release_parked(&mut self, newer_than: Option<u64>) {
        if self.parked.is_empty() {
            return;
        }
        let (released, kept): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|close| newer_than.is_none_or(|newest| close.timestamp_ns < newest));
        self.parked = kept;
        let mut decoder = std::mem::take(&mut self.decoder);
        for parked in released {
            let Ok(Record::Close(close)) = decoder.decode(&parked.raw) else {
                continue; // decoded once already when parked
            };
            self.connection_loss(
                LossReason::RingFull,
                close.timestamp_ns,
                1,
                0,
                (close.pid, close.comm, close.conn_id, close.fd),
            );
            self.close(&close);
        }
        self.decoder = decoder;
    }

    fn data(&mut self, chunk: &Chunk<'_>) {
        self.counters.data_bytes += chunk.data.len() as u64;
        let owner = (chunk.pid, chunk.comm, chunk.conn_id, chunk.fd);
        if chunk.lost_records != 0 {
            let records = u64::from(chunk.lost_records);
            self.connection_loss(
                LossReason::RingFull,
                chunk.timestamp_ns,
                records,
                chunk.lost_bytes,
                owner,
            );
        }
        self.writer.data(chunk);
        if chunk.truncated && chunk.last_chunk {
            let cut = chunk
                .call_len
                .saturating_sub(chunk.offset)
                .saturating_sub(chunk.data.len() as u64);
            self.connection_loss(LossReason::KernelLimit, chunk.timestamp_ns, 0, cut, owner);
        }
        self.track(
            |tracker, items| tracker.feed(chunk, items),
            || {
                format!(
                    "the HTTP processor failed on a chunk of {} pid {} conn {:#x}",
                    chunk.comm, chunk.pid, chunk.conn_id
                )
            },
        );
    }

    fn close(&mut self, close: &Close<'_>) {
        self.counters.connections_closed += 1;
        if close.lost_records != 0 {
            let owner = (close.pid, close.comm, close.conn_id, close.fd);
            let records = u64::from(close.lost_records);
            self.connection_loss(
                LossReason::RingFull,
                close.timestamp_ns,
                records,
                close.lost_bytes,
                owner,
            );
        }
        self.writer.close(close);
        self.track(
            |tracker, items| tracker.close(close, items),
            || {
                format!(
                    "the HTTP processor failed closing pid {} conn {:#x}",
                    close.pid, close.conn_id
                )
            },
        );
    }

    /// One call into the tracker, its items emitted. A parser bug must not
    /// end the capture: the raw bytes already went out as "data" events; it
    /// is said (`what`), counted, and the capture goes on.
    fn track(
        &mut self,
        call: impl FnOnce(&mut Tracker, &mut Vec<Item>),
        what: impl FnOnce() -> String,
    ) {
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        let mut items = std::mem::take(&mut self.items);
        if catch_unwind(AssertUnwindSafe(|| call(tracker, &mut items))).is_err() {
            self.counters.parser_errors += 1;
            self.warn(what());
            items.clear();
        }
        self.emit(&mut items);
        self.items = items;
    }

    fn fault(&mut self, fault: &Fault<'_>) {
        let owner = (fault.pid, fault.comm, fault.conn_id, fault.fd);
        let bytes = u64::from(fault.bytes);
        self.connection_loss(LossReason::ReadFault, fault.timestamp_ns, 1, bytes, owner);
        if let Some(tracker) = self.tracker.as_mut() {
            tracker.fault(fault);
        }
    }

    /// A loss on one connection, named by its (pid, comm, conn_id, fd).
    fn connection_loss(
        &mut self,
        reason: LossReason,
        timestamp_ns: u64,
        records: u64,
        bytes: u64,
        (pid, comm, conn_id, fd): (u32, &str, u64, i32),
    ) {
        self.lost(Lost {
            timestamp_ns,
            reason,
            records,
            bytes,
            pid: Some(pid),
            comm: Some(Arc::from(comm)),
            conn_id: Some(conn_id),
            fd: Some(fd),
        });
    }

    fn emit(&mut self, items: &mut Vec<Item>) {
        for item in items.drain(..) {
            match item {
                Item::Exchange(exchange) => {
                    self.counters.http_exchanges += 1;
                    self.writer.exchange(&exchange);
                }
                Item::Lost(lost) => self.lost(lost),
            }
        }
    }

    /// A loss: counted, and said in the stream.
    pub fn lost(&mut self, lost: Lost) {
        let totals = self.counters.lost.entry(lost.reason).or_default();
        totals.records += lost.records;
        totals.bytes += lost.bytes;
        self.writer.lost(&lost);
    }

    /// pipeline.py tick: parked closes go once a whole tick passed without a
    /// main-ring batch (the main ring is empty). Idle connections are never expired.
    pub fn tick(&mut self) {
        if !self.parked.is_empty() && self.batches == self.batches_at_tick {
            self.release_parked(None);
        }
        self.batches_at_tick = self.batches;
    }

    /// At the end: parked closes, what the tracker still holds (incomplete),
    /// then the -t cuts summed once. Idempotent.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.release_parked(None);
        self.track(Tracker::flush, || {
            "the HTTP processor failed flushing at the end".to_string()
        });
        let (records, bytes) = self.writer.cut();
        if records != 0 {
            self.lost(Lost {
                timestamp_ns: now_ns(),
                reason: LossReason::Tsize,
                records,
                bytes,
                pid: None,
                comm: None,
                conn_id: None,
                fd: None,
            });
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}
