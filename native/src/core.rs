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
use crate::record::{Decoder, Record};
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

    /// The JSON lines written so far (taken: the buffer starts empty again).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.writer.take()
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
    pub fn record(&mut self, raw: &[u8]) -> u64 {
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
                self.lost(Lost {
                    timestamp_ns: now_ns(),
                    reason: LossReason::Decode,
                    records: 1,
                    bytes: raw.len() as u64,
                    pid: None,
                    comm: None,
                    conn_id: None,
                    fd: None,
                });
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

    /// A batch of main-ring records is done: parked closes older than its
    /// newest record may go.
    pub fn end_batch(&mut self, newest_ns: u64) {
        self.batches += 1;
        if !self.parked.is_empty() && newest_ns != 0 {
            self.release_parked(Some(newest_ns));
        }
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
            self.lost(Lost {
                timestamp_ns: close.timestamp_ns,
                reason: LossReason::RingFull,
                records: 1,
                bytes: 0,
                pid: Some(close.pid),
                comm: Some(Arc::from(close.comm)),
                conn_id: Some(close.conn_id),
                fd: Some(close.fd),
            });
            self.close(&close);
        }
        self.decoder = decoder;
    }

    fn data(&mut self, chunk: &Chunk<'_>) {
        self.counters.data_bytes += chunk.data.len() as u64;
        if chunk.lost_records != 0 {
            self.in_band_loss(
                chunk.timestamp_ns,
                chunk.lost_records,
                chunk.lost_bytes,
                chunk.pid,
                chunk.comm,
                chunk.conn_id,
                chunk.fd,
            );
        }
        self.writer.data(chunk);
        if chunk.truncated && chunk.last_chunk {
            let cut = chunk
                .call_len
                .saturating_sub(chunk.offset)
                .saturating_sub(chunk.data.len() as u64);
            self.lost(Lost {
                timestamp_ns: chunk.timestamp_ns,
                reason: LossReason::KernelLimit,
                records: 0,
                bytes: cut,
                pid: Some(chunk.pid),
                comm: Some(Arc::from(chunk.comm)),
                conn_id: Some(chunk.conn_id),
                fd: Some(chunk.fd),
            });
        }
        if let Some(tracker) = self.tracker.as_mut() {
            let mut items = std::mem::take(&mut self.items);
            let fed = catch_unwind(AssertUnwindSafe(|| tracker.feed(chunk, &mut items)));
            if fed.is_err() {
                // A parser bug must not end the capture: the raw bytes already
                // went out as a "data" event; say it, count it, go on.
                self.counters.parser_errors += 1;
                self.warn(format!(
                    "the HTTP processor failed on a chunk of {} pid {} conn {:#x}",
                    chunk.comm, chunk.pid, chunk.conn_id
                ));
                items.clear();
            }
            self.emit(&mut items);
            self.items = items;
        }
    }

    fn close(&mut self, close: &Close<'_>) {
        self.counters.connections_closed += 1;
        if close.lost_records != 0 {
            self.in_band_loss(
                close.timestamp_ns,
                close.lost_records,
                close.lost_bytes,
                close.pid,
                close.comm,
                close.conn_id,
                close.fd,
            );
        }
        self.writer.close(close);
        if let Some(tracker) = self.tracker.as_mut() {
            let mut items = std::mem::take(&mut self.items);
            if catch_unwind(AssertUnwindSafe(|| tracker.close(close, &mut items))).is_err() {
                self.counters.parser_errors += 1;
                self.warn(format!(
                    "the HTTP processor failed closing pid {} conn {:#x}",
                    close.pid, close.conn_id
                ));
                items.clear();
            }
            self.emit(&mut items);
            self.items = items;
        }
    }

    fn fault(&mut self, fault: &Fault<'_>) {
        self.lost(Lost {
            timestamp_ns: fault.timestamp_ns,
            reason: LossReason::ReadFault,
            records: 1,
            bytes: u64::from(fault.bytes),
            pid: Some(fault.pid),
            comm: Some(Arc::from(fault.comm)),
            conn_id: Some(fault.conn_id),
            fd: Some(fault.fd),
        });
        if let Some(tracker) = self.tracker.as_mut() {
            tracker.fault(fault);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn in_band_loss(
        &mut self,
        timestamp_ns: u64,
        records: u32,
        bytes: u64,
        pid: u32,
        comm: &str,
        conn_id: u64,
        fd: i32,
    ) {
        self.lost(Lost {
            timestamp_ns,
            reason: LossReason::RingFull,
            records: u64::from(records),
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
        if let Some(tracker) = self.tracker.as_mut() {
            let mut items = std::mem::take(&mut self.items);
            if catch_unwind(AssertUnwindSafe(|| tracker.flush(&mut items))).is_err() {
                self.counters.parser_errors += 1;
                items.clear();
            }
            self.emit(&mut items);
        }
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
