//! HPACK header-block decoding (RFC 7541) for the HTTP/2 observer: the
//! counterpart of src/ecapture/processor/hpack_native.py NativeDecoder.
//!
//! The decoding itself is libnghttp2's inflater (crate `libnghttp2-sys`,
//! which builds nghttp2 1.68 from its bundled sources, so no system library
//! is needed). Chosen over the pure-Rust HPACK crates because:
//! - the Python reference decodes with libnghttp2 too (through ctypes), so
//!   what is accepted, rejected and produced is the same by construction
//!   (Huffman padding and EOS rules, index ranges, where a size update may
//!   stand, integer limits);
//! - it is maintained (curl and nghttpx use it) and fuzzed continuously
//!   (OSS-Fuzz); it reports every failure as an error code, never aborts;
//! - the pure-Rust crates, fuzzed here with libFuzzer for 2 minutes each
//!   (several blocks through one decoder, overflow checks on): `hpack` 0.3
//!   (2016, unmaintained) panics within a thousand runs (unwrap on a cut
//!   size update), `httlib-hpack` 0.1 (2021) too (indexes an empty
//!   buffer); `loona-hpack` 0.4 (= `fluke-hpack`, maintained) did not panic
//!   in 540k runs but accepts a size update after the first field and
//!   refuses a block that ends in one, where nghttp2 does the opposite.
//!
//! What is ours (hand-written, as in the Python NativeDecoder): the size
//! rules of the Python `hpack` package, which the observer follows so that
//! both Python decoders agree: a dynamic table size update may not exceed
//! `max_allowed_table_size` (RFC 7541 §6.3), the table may not be left
//! above it at the end of a block (§4.2), and a decoded list may not exceed
//! 64 KiB counted as in §4.1. Any failure is a `DecodeError`; the caller
//! then stops trusting the connection and never uses the decoder again.

use std::os::raw::c_int;
use std::ptr::{self, NonNull};

use libnghttp2_sys as ng;

/// hpack's DEFAULT_MAX_HEADER_LIST_SIZE.
pub const MAX_HEADER_LIST_SIZE: usize = 1 << 16;
/// RFC 7541 §4.1: an entry's size is name + value + 32.
pub const ENTRY_OVERHEAD: usize = 32;
/// RFC 9113 §6.5.2 SETTINGS_HEADER_TABLE_SIZE initial value.
pub const DEFAULT_TABLE_SIZE: u64 = 4096;
/// The largest dynamic table an encoder may ask for, whatever SETTINGS
/// allowed: memory stays bounded even when both directions are hostile.
/// Implementations announce 4 KiB to 64 KiB; the Python reference has no
/// such cap (it tells nghttp2 "any size"), the one place the two differ.
pub const MAX_TABLE_SIZE: u64 = 1 << 20;

/// A header block that cannot be decoded with this connection's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// Header fields in order, as decoded.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// RFC 7541 §5.1 integer at `pos` with a `prefix_bits` prefix: (value,
/// position after it), None when cut short. Values beyond u64 saturate
/// (Python's int does not overflow; every caller only compares them with
/// 32-bit limits).
pub fn read_integer(block: &[u8], pos: usize, prefix_bits: u32) -> Option<(u64, usize)> {
    let mask = (1u64 << prefix_bits) - 1;
    let first = *block.get(pos)?;
    let mut value = u64::from(first) & mask;
    let mut pos = pos + 1;
    if value < mask {
        return Some((value, pos));
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(pos)?;
        pos += 1;
        let bits = u64::from(byte & 0x7F);
        if bits != 0 {
            value = match bits.checked_shl(shift) {
                Some(part) if shift < 64 && part >> shift == bits => value.saturating_add(part),
                _ => u64::MAX,
            };
        }
        if byte < 0x80 {
            return Some((value, pos));
        }
        shift = shift.saturating_add(7);
    }
}

/// Whether a (well-formed) block may add to or resize the dynamic table: a
/// literal with incremental indexing (0b01......) or a size update
/// (0b001.....), RFC 7541 §6.2.1, §6.3. Indexed fields and literals without
/// or never indexing leave it as it was (hpack_native.changes_table).
pub fn changes_table(block: &[u8]) -> bool {
    let mut pos = 0usize;
    while pos < block.len() {
        let first = block[pos];
        if first & 0x80 != 0 {
            match read_integer(block, pos, 7) {
                Some((_, next)) => pos = next,
                None => return true, // cut short: never remembered
            }
        } else if first & 0x60 != 0 {
            return true;
        } else {
            let Some((name_index, next)) = read_integer(block, pos, 4) else {
                return true;
            };
            pos = next;
            if name_index == 0 {
                let Some((length, next)) = read_integer(block, pos, 7) else {
                    return true;
                };
                pos = next.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
            }
            let Some((length, next)) = read_integer(block, pos, 7) else {
                return true;
            };
            pos = next.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
        }
    }
    false
}

/// One direction's HPACK decoder: nghttp2's inflater with hpack's size rules.
pub struct Decoder {
    inflater: Option<NonNull<ng::nghttp2_hd_inflater>>,
    /// The size the last dynamic table size update set.
    table_size: u64,
    /// The most recent SETTINGS_HEADER_TABLE_SIZE the decoder must honour.
    pub max_allowed_table_size: u64,
}

// SAFETY: the inflater is owned by this value alone (created in new(),
// freed in drop(), never shared or aliased); nghttp2's inflater keeps no
// thread-local state and allocates with malloc, so using it from another
// thread after a move is sound.
unsafe impl Send for Decoder {}

// SAFETY: no method taking &self touches the inflater (only `table_size`
// and `max_allowed_table_size`, plain integers): shared references cannot
// race on nghttp2's state.
unsafe impl Sync for Decoder {}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        let mut raw: *mut ng::nghttp2_hd_inflater = ptr::null_mut();
        // SAFETY: nghttp2_hd_inflate_new writes a new inflater (or nothing,
        // on failure) through the valid out-pointer we pass.
        let created = unsafe { ng::nghttp2_hd_inflate_new(&mut raw) };
        let inflater = if created == 0 {
            NonNull::new(raw)
        } else {
            None
        };
        if let Some(inflater) = inflater {
            // nghttp2 is told the cap rather than each SETTINGS value: hpack
            // waits for the encoder's size update after a smaller setting
            // (and fails the block if none comes) where nghttp2 would shrink
            // at once, so the allowed maximum is checked in decode().
            // SAFETY: a live inflater, between header blocks.
            let usize_cap = usize::try_from(MAX_TABLE_SIZE).unwrap_or(usize::MAX);
            unsafe { ng::nghttp2_hd_inflate_change_table_size(inflater.as_ptr(), usize_cap) };
        }
        Decoder {
            inflater,
            table_size: DEFAULT_TABLE_SIZE,
            max_allowed_table_size: DEFAULT_TABLE_SIZE,
        }
    }

    /// The check a block remembered by the caller still needs: a limit
    /// lowered since must still be met (hpack checks it every block).
    pub fn check_table_size(&self) -> Result<(), DecodeError> {
        if self.table_size > self.max_allowed_table_size {
            return Err(DecodeError);
        }
        Ok(())
    }

    /// hpack's checks on the size updates that open a block (they may stand
    /// nowhere else; nghttp2 refuses them later on, as hpack does).
    fn size_updates(&mut self, block: &[u8]) -> Result<(), DecodeError> {
        let mut pos = 0;
        while pos < block.len() && block[pos] & 0xE0 == 0x20 {
            let (size, next) = read_integer(block, pos, 5).ok_or(DecodeError)?;
            if size > self.max_allowed_table_size {
                return Err(DecodeError);
            }
            self.table_size = size;
            pos = next;
        }
        Ok(())
    }

    /// Decode one whole header block into `fields` (cleared first).
    pub fn decode(&mut self, block: &[u8], fields: &mut Fields) -> Result<(), DecodeError> {
        fields.clear();
        let inflater = self.inflater.ok_or(DecodeError)?.as_ptr();
        self.size_updates(block)?;
        let mut pos = 0usize;
        let mut list_size = 0usize;
        loop {
            let rest = block.get(pos..).ok_or(DecodeError)?;
            let mut name_value = ng::nghttp2_nv {
                name: ptr::null_mut(),
                value: ptr::null_mut(),
                namelen: 0,
                valuelen: 0,
                flags: 0,
            };
            let mut flags: c_int = 0;
            // SAFETY: a live inflater; `rest` is valid for rest.len() bytes
            // and outlives the call; the out-pointers are valid locals.
            let consumed = unsafe {
                ng::nghttp2_hd_inflate_hd3(
                    inflater,
                    &mut name_value,
                    &mut flags,
                    rest.as_ptr(),
                    rest.len(),
                    1,
                )
            };
            let consumed = usize::try_from(consumed).map_err(|_| DecodeError)?;
            if consumed > rest.len() {
                return Err(DecodeError); // never expected
            }
            pos += consumed;
            let emitted = flags as u32;
            if emitted & ng::NGHTTP2_HD_INFLATE_EMIT != 0 {
                // SAFETY: on EMIT nghttp2 points name/value at namelen /
                // valuelen readable bytes (in `block` or its own table) that
                // stay valid until the next inflate call; copied at once.
                let (name, value) = unsafe {
                    (
                        bytes_at(name_value.name, name_value.namelen),
                        bytes_at(name_value.value, name_value.valuelen),
                    )
                };
                list_size += name.len() + value.len() + ENTRY_OVERHEAD;
                fields.push((name, value));
                if list_size > MAX_HEADER_LIST_SIZE {
                    return Err(DecodeError);
                }
            }
            if emitted & ng::NGHTTP2_HD_INFLATE_FINAL != 0 {
                // SAFETY: a live inflater that just finished a block.
                unsafe { ng::nghttp2_hd_inflate_end_headers(inflater) };
                break;
            }
            if emitted == 0 && consumed == 0 {
                return Err(DecodeError); // no progress: never expected
            }
        }
        self.check_table_size()
    }
}

/// # Safety
/// `data` must be valid for `len` bytes (or `len` must be 0).
unsafe fn bytes_at(data: *const u8, len: usize) -> Vec<u8> {
    if len == 0 || data.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `data` is readable for `len` bytes.
    unsafe { std::slice::from_raw_parts(data, len) }.to_vec()
}

impl Drop for Decoder {
    fn drop(&mut self) {
        if let Some(inflater) = self.inflater.take() {
            // SAFETY: created by nghttp2_hd_inflate_new, freed only here.
            unsafe { ng::nghttp2_hd_inflate_del(inflater.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
        let mut fields = Vec::new();
        decoder.decode(block, &mut fields).map(|()| fields)
    }

    #[test]
    fn rfc7541_c3_requests_share_the_dynamic_table() {
        let mut decoder = Decoder::new();
        let first = decode(&mut decoder, b"\x82\x86\x84\x41\x0fwww.example.com").unwrap();
        assert_eq!(
            first[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        // C.3.2: the authority is now index 62
        let second = decode(&mut decoder, b"\x82\x86\x84\xbe\x58\x08no-cache").unwrap();
        assert_eq!(
            second[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        assert_eq!(second[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
    }

    #[test]
    fn huffman_strings_decode() {
        // RFC 7541 C.4.1
        let mut decoder = Decoder::new();
        let fields = decode(
            &mut decoder,
            b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff",
        )
        .unwrap();
        assert_eq!(fields[3].1, b"www.example.com");
    }

    #[test]
    fn size_updates_follow_hpacks_rules() {
        let mut decoder = Decoder::new();
        // 0x3f 0xe1 0x1f: size update to 4096 (allowed); to 8192 is not
        assert!(decode(&mut decoder, b"\x3f\xe1\x1f\x82").is_ok());
        assert_eq!(
            decode(&mut Decoder::new(), b"\x3f\xe1\x3f\x82"),
            Err(DecodeError)
        );
        let mut decoder = Decoder::new();
        decoder.max_allowed_table_size = 8192;
        assert!(decode(&mut decoder, b"\x3f\xe1\x3f\x82").is_ok());
        // the limit lowered again: the next block must shrink the table
        decoder.max_allowed_table_size = 4096;
        assert_eq!(decoder.check_table_size(), Err(DecodeError));
        assert_eq!(decode(&mut decoder, b"\x82"), Err(DecodeError));
        let mut decoder = Decoder::new();
        decoder.max_allowed_table_size = 8192;
        decode(&mut decoder, b"\x3f\xe1\x3f\x82").unwrap();
        decoder.max_allowed_table_size = 4096;
        assert!(decode(&mut decoder, b"\x3f\xe1\x1f\x82").is_ok());
        // a block of a size update alone is fine; one after a field is
        // refused (RFC 7541 §4.2)
        assert_eq!(decode(&mut Decoder::new(), b"\x3f\xe1\x1f"), Ok(Vec::new()));
        assert_eq!(decode(&mut Decoder::new(), b"\x82\x20"), Err(DecodeError));
    }

    #[test]
    fn the_table_is_capped_whatever_settings_allowed() {
        let mut decoder = Decoder::new();
        decoder.max_allowed_table_size = u64::from(u32::MAX);
        // size update to 2 MiB: above MAX_TABLE_SIZE
        let mut block = vec![0x3f];
        let mut rest = (2u64 << 20) - 31;
        while rest >= 0x80 {
            block.push((rest as u8 & 0x7f) | 0x80);
            rest >>= 7;
        }
        block.push(rest as u8);
        assert_eq!(decode(&mut decoder, &block), Err(DecodeError));
    }

    #[test]
    fn old_entries_are_evicted() {
        let mut decoder = Decoder::new();
        // 200 literals with incremental indexing of ~40 bytes each
        for index in 0..200u32 {
            let value = format!("{index:040}");
            let mut block = vec![0x40, 0x03];
            block.extend_from_slice(b"x-n");
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
            decode(&mut decoder, &block).unwrap();
        }
        // 4096 / (3 + 40 + 32) = 54 entries stay: index 62 + 60 is gone
        assert!(decode(&mut decoder, &[0x80 | (62 + 50)]).is_ok());
        assert_eq!(decode(&mut decoder, &[0xff, 0x3f]), Err(DecodeError));
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        for block in [
            &b"\x80"[..],                                        // index 0
            b"\xff\xff\xff\xff\xff\xff\xff",                     // index cut short
            b"\x41\x85\xff", // Huffman string longer than the block
            b"\x40\x01",     // literal name cut short
            b"\x7f\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", // huge index
        ] {
            assert_eq!(
                decode(&mut Decoder::new(), block),
                Err(DecodeError),
                "{block:?}"
            );
        }
    }

    #[test]
    fn header_lists_above_64k_are_refused() {
        let value = vec![b'v'; 120];
        let mut block = Vec::new();
        for _ in 0..600 {
            // literal without indexing, name "x", a 120-byte value
            block.extend_from_slice(&[0x00, 0x01, b'x', 120]);
            block.extend_from_slice(&value);
        }
        assert_eq!(decode(&mut Decoder::new(), &block), Err(DecodeError));
    }

    #[test]
    fn integers_saturate() {
        assert_eq!(read_integer(b"\x1f\x9a\x0a", 0, 5), Some((1337, 3)));
        assert_eq!(read_integer(b"\x1f\x9a", 0, 5), None);
        let long = [&[0x1f][..], &[0xff; 20], &[0x01]].concat();
        assert_eq!(read_integer(&long, 0, 5), Some((u64::MAX, long.len())));
        let zeros = [&[0x1f][..], &[0x80; 20], &[0x00]].concat();
        assert_eq!(read_integer(&zeros, 0, 5), Some((31, zeros.len())));
        assert!(changes_table(b"\x40\x01a\x01b"));
        assert!(!changes_table(b"\x82\x04\x01a"));
        assert!(changes_table(b"\xff"));
    }
}
