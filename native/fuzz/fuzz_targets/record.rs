//! record.rs on arbitrary bytes: never panics, and what it decodes stays inside
//! the record (a chunk's payload is the record's own bytes after the header).
#![no_main]

use ecapture_native::record::{
    DecodeError, Decoder, Record, CONN_CLOSE_SIZE, MAX_CHUNK_SIZE, RECORD_HEADER_SIZE,
    TLS_DATA_HEADER_SIZE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    for offset in [0, i64::MIN, i64::MAX] {
        let mut decoder = Decoder::new(offset);
        match decoder.decode(raw) {
            Ok(Record::Chunk(chunk)) => {
                assert!(raw.len() >= TLS_DATA_HEADER_SIZE);
                assert!(chunk.data.len() <= MAX_CHUNK_SIZE as usize);
                let payload = &raw[TLS_DATA_HEADER_SIZE..];
                assert_eq!(chunk.data.as_ptr(), payload.as_ptr());
                assert!(chunk.data.len() <= payload.len());
                assert!(chunk.comm.len() <= 16 * 3); // U+FFFD is 3 bytes
                assert!(!chunk.comm.contains('\0'));
            }
            Ok(Record::Fault(fault)) => {
                assert!(raw.len() >= TLS_DATA_HEADER_SIZE);
                assert!(fault.comm.len() <= 16 * 3);
            }
            Ok(Record::Close(close)) => {
                assert!(raw.len() >= CONN_CLOSE_SIZE);
                assert_ne!(close.tid, Some(0));
                assert_ne!(close.socket_cookie, Some(0));
            }
            Err(error) => {
                assert_eq!(
                    matches!(error, DecodeError::ShortHeader { .. }),
                    raw.len() < RECORD_HEADER_SIZE
                );
                assert!(!error.to_string().is_empty());
            }
        }
    }
});
