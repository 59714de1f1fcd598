//! A BPF_MAP_TYPE_RINGBUF consumer over the map's own mmap: no libbpf, no
//! callback through C per record, no copy.
//!
//! The layout the kernel exposes (kernel/bpf/ringbuf.c, include/uapi/linux/bpf.h;
//! src/ecapture/bpf/ringpos.py reads the same pages):
//! - page 0: the consumer position (u64), the only page user space may map
//!   writable; the kernel reads it to know how much space is free;
//! - page 1: the producer position (u64), read-only;
//! - then the data pages, mapped twice in a row, so that a record that wraps
//!   at the end of the ring is still contiguous for the reader.
//!
//! Each record starts with an 8-byte header: `u32 len` (bit 31 busy: reserved,
//! not yet committed; bit 30 discarded) and `u32 pg_off`; it takes
//! `round_up(len + 8, 8)` bytes. Positions are byte counters that only grow;
//! `position & (size - 1)` is the offset in the data pages.
//!
//! Memory ordering, as the kernel's side pairs with it: the producer writes a
//! record's header (busy) before it publishes the producer position with a
//! release store, and clears the busy bit with a release store once the data
//! is written; so we load the producer position and each header with acquire.
//! We publish the consumer position with one release store (a single 8-byte
//! store: the kernel must never see a torn or zeroed value, BENCH.md point 5).
//!
//! No crate does this without libbpf (libbpf-rs and aya wrap their own map
//! objects and call back per record), so it is written here, in about the
//! size of libbpf's ringbuf.c consumer.

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// BPF_RINGBUF_BUSY_BIT: reserved, not yet committed.
pub const BUSY_BIT: u32 = 1 << 31;
/// BPF_RINGBUF_DISCARD_BIT: committed as discarded; skipped.
pub const DISCARD_BIT: u32 = 1 << 30;
/// BPF_RINGBUF_HDR_SZ.
pub const HEADER_SIZE: usize = 8;
/// enum bpf_map_type BPF_MAP_TYPE_RINGBUF.
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
/// enum bpf_cmd BPF_OBJ_GET_INFO_BY_FD.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// What one `consume` call took from the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Records handed to the callback.
    pub records: usize,
    /// Their bytes (the records' lengths, headers and padding not counted).
    pub bytes: usize,
    /// Discarded records skipped on the way.
    pub discarded: usize,
}

/// One region this process mapped; unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn map(fd: RawFd, len: usize, protection: libc::c_int, offset: usize) -> io::Result<Mapping> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring offset too large"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no address hint),
        // so it replaces nothing of ours; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(base.cast::<u8>())
            .map(|base| Mapping { base, len })
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base..base+len` is a mapping made by `Mapping::map` (or handed
        // over by `Ring::from_raw_parts`'s caller) that nothing else unmaps; every
        // slice into it was lent for a callback's duration only, so none outlives it.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The consumer of one ring buffer map. Only one consumer may read a map at a
/// time (in any process): the consumer position is its to write. Each batch
/// starts from the position in the consumer page, so readers may take turns.
pub struct Ring {
    consumer_page: Mapping,  // read-write: the consumer position at offset 0
    producer_pages: Mapping, // read-only: producer position, then the data twice
    data_offset: usize,      // the data pages' offset in producer_pages (one page)
    size: usize,             // bytes of data (a power of two)
    fd: OwnedFd,             // a dup of the map fd: what `wait` polls
}

// SAFETY: a Ring owns its mappings and its fd; nothing in it is tied to a thread.
// Shared-memory reads and writes go through atomics (positions, headers) or
// through slices of committed records that the kernel does not write until we
// publish a consumer position past them, which needs `&mut self`. `&self`
// methods only load atomics and call poll(2), so sharing a `&Ring` is sound too.
unsafe impl Send for Ring {}
// SAFETY: see `Send` above: `&self` methods are atomic loads and poll(2).
unsafe impl Sync for Ring {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The prefix of struct bpf_map_info we read (the kernel fills at most `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The BPF_OBJ_GET_INFO_BY_FD member of union bpf_attr.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// (map type, max_entries) of a BPF map fd.
fn map_info(fd: RawFd) -> io::Result<(u32, u32)> {
    let mut info = MapInfo::default();
    let attr = InfoAttr {
        bpf_fd: u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    // SAFETY: bpf(2) reads `attr` (valid for its size) and writes at most
    // `info_len` bytes to `info`, which lives until the call returns.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.map_type, info.max_entries))
}

impl Ring {
    /// Map the ring buffer map `map_fd` of `size` data bytes (its max_entries).
    /// The fd is duplicated: the caller keeps (and closes) its own.
    pub fn new(map_fd: RawFd, size: usize) -> io::Result<Ring> {
        let page = page_size();
        let (map_type, max_entries) = map_info(map_fd)?;
        if map_type != BPF_MAP_TYPE_RINGBUF {
            return Err(invalid(format!(
                "map fd {map_fd} is a BPF map of type {map_type}, not a ring buffer ({BPF_MAP_TYPE_RINGBUF})"
            )));
        }
        if usize::try_from(max_entries).ok() != Some(size) {
            return Err(invalid(format!(
                "ring buffer map fd {map_fd} holds {max_entries} bytes, not {size}"
            )));
        }
        Self::check_size(size, page)?;
        // SAFETY: F_DUPFD_CLOEXEC has no memory effects; the result is checked.
        let dup = unsafe { libc::fcntl(map_fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let consumer_page =
            Mapping::map(fd.as_raw_fd(), page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        // The producer page and the data pages twice (libbpf maps the same span).
        let span = size
            .checked_mul(2)
            .and_then(|data| data.checked_add(page))
            .ok_or_else(|| invalid(format!("ring size {size} too large")))?;
        let producer_pages = Mapping::map(fd.as_raw_fd(), span, libc::PROT_READ, page)?;
        Ok(Self::assemble(
            consumer_page,
            producer_pages,
            page,
            size,
            fd,
        ))
    }

    fn check_size(size: usize, page: usize) -> io::Result<()> {
        if !size.is_power_of_two() || size < page {
            return Err(invalid(format!(
                "ring buffer size must be a power of two of at least a page ({page}); got {size}"
            )));
        }
        Ok(())
    }

    fn assemble(
        consumer_page: Mapping,
        producer_pages: Mapping,
        page: usize,
        size: usize,
        fd: OwnedFd,
    ) -> Ring {
        Ring {
            consumer_page,
            producer_pages,
            data_offset: page,
            size,
            fd,
        }
    }

    /// A ring over mappings the caller made (tests fake the kernel's layout
    /// with a memfd mapped twice). `pollable` is what `wait` polls.
    ///
    /// # Safety
    /// `consumer` must point to a writable, page-aligned mapping of at least
    /// 8 bytes, `producer` to a readable mapping of `page + 2 * size` bytes laid
    /// out as the kernel's (producer position, then the data pages twice, the
    /// second copy the same memory as the first), both made with mmap(2),
    /// exclusively owned by the Ring from now on (it unmaps them: `consumer`
    /// for `page` bytes, `producer` for `page + 2 * size` bytes), and whoever
    /// writes them must follow the kernel's protocol (module docs).
    pub unsafe fn from_raw_parts(
        consumer: NonNull<u8>,
        producer: NonNull<u8>,
        page: usize,
        size: usize,
        pollable: OwnedFd,
    ) -> io::Result<Ring> {
        Self::check_size(size, page)?;
        let consumer_page = Mapping {
            base: consumer,
            len: page,
        };
        let producer_pages = Mapping {
            base: producer,
            len: page + 2 * size,
        };
        Ok(Self::assemble(
            consumer_page,
            producer_pages,
            page,
            size,
            pollable,
        ))
    }

    /// Bytes of data the ring holds (its max_entries).
    pub fn size(&self) -> usize {
        self.size
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write for our lifetime and
        // page-aligned (so 8-aligned); the kernel only reads it.
        unsafe { AtomicU64::from_ptr(self.consumer_page.base.as_ptr().cast::<u64>()) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the producer page is mapped (read-only: we only load) for our
        // lifetime, page-aligned; the kernel writes it with atomic stores.
        unsafe { AtomicU64::from_ptr(self.producer_pages.base.as_ptr().cast::<u64>()) }
    }

    /// The data pages' first byte; `offset < 2 * size` stays inside the mapping.
    fn data(&self) -> *const u8 {
        // SAFETY: data_offset (one page) is inside producer_pages.
        unsafe { self.producer_pages.base.as_ptr().add(self.data_offset) }
    }

    fn header_len(&self, offset: usize) -> u32 {
        debug_assert!(offset < self.size && offset % 8 == 0);
        // SAFETY: `offset < size` (masked) and 8-aligned (`consume_until` starts
        // only from an 8-aligned position and advances by multiples of 8), so
        // the u32 lies inside the mapped data pages, aligned; the
        // kernel writes it with atomic stores (reserve, then commit/discard).
        unsafe { AtomicU32::from_ptr(self.data().add(offset).cast_mut().cast::<u32>()) }
            .load(Ordering::Acquire)
    }

    /// (consumer, producer) positions: byte counters that only grow.
    pub fn positions(&self) -> (u64, u64) {
        (
            self.consumer_pos().load(Ordering::Relaxed),
            self.producer_pos().load(Ordering::Acquire),
        )
    }

    /// Bytes between the consumer and the producer position (the backlog,
    /// headers, padding and records still busy included).
    pub fn pending_bytes(&self) -> u64 {
        let (consumer, producer) = self.positions();
        producer.saturating_sub(consumer)
    }

    /// Wait up to `timeout_ms` (negative: no limit) for the ring to hold data
    /// or for the kernel's wake-up. True when it is readable; false on timeout
    /// or when a signal interrupted the wait (the caller checks its signals).
    /// A producer that submits with BPF_RB_NO_WAKEUP wakes nobody: such a
    /// reader polls on a timer and calls `consume` regardless.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(error);
        }
        if pollfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::other(format!(
                "polling the ring buffer fd: revents {:#x}",
                pollfd.revents
            )));
        }
        Ok(ready > 0 && pollfd.revents & libc::POLLIN != 0)
    }

    /// `consume_until` for callbacks that never stop a batch.
    pub fn consume(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(&[u8]),
    ) -> io::Result<Consumed> {
        self.consume_until(max_records, max_bytes, |record| {
            f(record);
            ControlFlow::Continue(())
        })
    }

    /// Hand the committed records, in order, to `f` as slices of the ring's own
    /// pages (no copy); skip discarded ones; stop at the first record still busy,
    /// at the producer position seen when the call began, once `max_records`
    /// records or at least `max_bytes` bytes were handed out, or after the
    /// record for which `f` returned `Break` (it counts as consumed).
    ///
    /// The consumer position is published once, after the batch, when no slice
    /// is alive any more: once published, the kernel may write new records over
    /// those pages. So a batch holds back its space from the producer until it
    /// ends; keep `max_bytes` a small part of the ring (the Python reader used
    /// 4 MiB batches of 64 MiB rings).
    ///
    /// A header that cannot be the kernel's (a record longer than the ring, or
    /// reaching past the producer position) ends the batch with InvalidData,
    /// after publishing what was consumed before it; the ring stays stuck there.
    pub fn consume_until(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> io::Result<Consumed> {
        let mut done = Consumed::default();
        if max_records == 0 {
            return Ok(done);
        }
        let producer = self.producer_pos().load(Ordering::Acquire);
        let mask = (self.size - 1) as u64;
        // Read back, not cached: a reader that consumed before us (libbpf's,
        // another Ring) hands over where it stopped. Only we write it meanwhile.
        let start = self.consumer_pos().load(Ordering::Relaxed);
        if start % 8 != 0 {
            // Positions advance by multiples of 8; headers are read as aligned u32.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the ring's consumer position {start} is not 8-aligned"),
            ));
        }
        let mut position = start;
        let mut corrupt = None;
        while position < producer {
            let offset = (position & mask) as usize;
            let header = self.header_len(offset);
            if header & BUSY_BIT != 0 {
                break;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            let step = (len + HEADER_SIZE + 7) & !7;
            if step > self.size || step as u64 > producer - position {
                corrupt = Some(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "ring record at position {position} claims {len} bytes: \
                         {} are committed, the ring holds {}",
                        producer - position,
                        self.size
                    ),
                ));
                break;
            }
            position += step as u64;
            if header & DISCARD_BIT != 0 {
                done.discarded += 1;
                continue;
            }
            // SAFETY: the record starts inside the first copy of the data pages
            // (`offset < size`) and ends by `offset + step < 2 * size` (`step <=
            // size`, checked above), inside the second copy: inside the mapping,
            // and contiguous because the kernel maps the data twice. It is committed
            // (acquire load of its header without the busy bit), so the kernel
            // wrote it all before and writes none of it until our consumer
            // position passes it, which happens only after the loop, once this
            // slice (lent to `f` for one call) is gone.
            let record =
                unsafe { std::slice::from_raw_parts(self.data().add(offset + HEADER_SIZE), len) };
            done.records += 1;
            done.bytes += len;
            let flow = f(record);
            if flow.is_break() || done.records >= max_records || done.bytes >= max_bytes {
                break;
            }
        }
        if position != start {
            // One 8-byte release store: the kernel reads this to free the space.
            self.consumer_pos().store(position, Ordering::Release);
        }
        match corrupt {
            Some(error) => Err(error),
            None => Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The kernel's layout faked with a memfd: the data pages mapped twice in a
    //! row, the producer side written through a second mapping by a test
    //! producer that follows the kernel's protocol (tests/unit/native/test_ring.py
    //! checks a real ring buffer map fed by a BPF program).
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    /// The kernel's side of a fake ring: a memfd laid out as ringbuf pages.
    struct FakeKernel {
        memfd: OwnedFd,
        page: usize,
        size: usize,
        view: Mapping, // read-write: consumer page, producer page, data (once)
    }

    // SAFETY: only atomics and raw writes to free ring space go through `view`
    // (the test producer is the one writer of the producer side).
    unsafe impl Send for FakeKernel {}
    // SAFETY: as for Send: shared use is atomic loads/stores and writes to space no reader holds.
    unsafe impl Sync for FakeKernel {}

    fn check(result: libc::c_int) -> io::Result<libc::c_int> {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }

    impl FakeKernel {
        fn new(size: usize) -> FakeKernel {
            let page = page_size();
            // SAFETY: a NUL-terminated name; the result is checked.
            let raw = check(unsafe { libc::memfd_create(c"fake-ringbuf".as_ptr(), 0) }).unwrap();
            // SAFETY: fresh fd, owned here only.
            let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
            let len = 2 * page + size;
            // SAFETY: ftruncate on our own memfd.
            check(unsafe { libc::ftruncate(memfd.as_raw_fd(), len as libc::off_t) }).unwrap();
            let view = Mapping::map(
                memfd.as_raw_fd(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                0,
            )
            .unwrap();
            FakeKernel {
                memfd,
                page,
                size,
                view,
            }
        }

        /// A Ring over this memfd, laid out as the kernel maps a ringbuf map.
        fn ring(&self, pollable: OwnedFd) -> Ring {
            let (page, size, fd) = (self.page, self.size, self.memfd.as_raw_fd());
            let consumer = Mapping::map(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0).unwrap();
            // Reserve page + 2 * size, then map the data a second time at its end.
            let producer = Mapping::map(fd, page + 2 * size, libc::PROT_READ, page).unwrap();
            // SAFETY: MAP_FIXED over the second half of our own fresh mapping.
            let second = unsafe {
                libc::mmap(
                    producer.base.as_ptr().add(page + size).cast(),
                    size,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    (2 * page) as libc::off_t,
                )
            };
            assert_ne!(second, libc::MAP_FAILED);
            let (consumer_base, producer_base) = (consumer.base, producer.base);
            std::mem::forget(consumer);
            std::mem::forget(producer);
            // SAFETY: the layout above is the kernel's; the ring owns both mappings now.
            unsafe { Ring::from_raw_parts(consumer_base, producer_base, page, size, pollable) }
                .unwrap()
        }

        fn at(&self, offset: usize) -> *mut u8 {
            assert!(offset < self.view.len);
            // SAFETY: inside the view (asserted).
            unsafe { self.view.base.as_ptr().add(offset) }
        }

        fn consumer(&self) -> &AtomicU64 {
            // SAFETY: page 0 of the view, page-aligned.
            unsafe { AtomicU64::from_ptr(self.at(0).cast()) }
        }

        fn producer(&self) -> &AtomicU64 {
            // SAFETY: page 1 of the view, page-aligned.
            unsafe { AtomicU64::from_ptr(self.at(self.page).cast()) }
        }

        fn header(&self, position: u64) -> &AtomicU32 {
            let offset = 2 * self.page + (position as usize & (self.size - 1));
            // SAFETY: inside the data page, 8-aligned.
            unsafe { AtomicU32::from_ptr(self.at(offset).cast()) }
        }

        fn write_data(&self, position: u64, bytes: &[u8]) {
            // The producer's view maps the data once: a record may wrap here.
            let mask = self.size - 1;
            for (index, byte) in bytes.iter().enumerate() {
                let offset = 2 * self.page + ((position as usize + index) & mask);
                // SAFETY: inside the data pages; space between the producer and the
                // consumer position is no reader's.
                unsafe { self.at(offset).write_volatile(*byte) };
            }
        }

        /// Reserve, fill, commit (or discard) one record, as bpf_ringbuf_output
        /// does; None when the ring has no room.
        fn submit(&self, data: &[u8], discard: bool) -> Option<u64> {
            let position = self.producer().load(Ordering::Relaxed);
            let step = ((data.len() + HEADER_SIZE + 7) & !7) as u64;
            let consumer = self.consumer().load(Ordering::Acquire);
            if position + step - consumer > self.size as u64 {
                return None;
            }
            self.header(position)
                .store(data.len() as u32 | BUSY_BIT, Ordering::Relaxed);
            self.producer().store(position + step, Ordering::Release);
            self.write_data(position + HEADER_SIZE as u64, data);
            let committed = data.len() as u32 | if discard { DISCARD_BIT } else { 0 };
            self.header(position).store(committed, Ordering::Release);
            Some(position)
        }
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: no memory effects; checked.
        let raw = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }).unwrap();
        // SAFETY: fresh fd.
        unsafe { OwnedFd::from_raw_fd(raw) }
    }

    fn pattern(seq: u64, len: usize) -> Vec<u8> {
        let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn collect(ring: &mut Ring, max_records: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        ring.consume(max_records, max_bytes, |record| out.push(record.to_vec()))
            .unwrap();
        out
    }

    #[test]
    fn records_come_in_order_and_discarded_ones_are_skipped() {
        let kernel = FakeKernel::new(1 << 16);
        let mut ring = kernel.ring(eventfd());
        let records: Vec<Vec<u8>> = (0..20)
            .map(|seq| pattern(seq, 1 + seq as usize * 37))
            .collect();
        for (index, record) in records.iter().enumerate() {
            kernel.submit(record, false).unwrap();
            kernel.submit(b"discarded", true).unwrap();
            if index == 9 {
                kernel.submit(&[], false).unwrap(); // an empty record is a record
            }
        }
        let mut expected = records.clone();
        expected.insert(10, Vec::new());
        assert_eq!(
            ring.pending_bytes(),
            kernel.producer().load(Ordering::Relaxed)
        );
        let got = collect(&mut ring, 1000, usize::MAX);
        assert_eq!(got, expected);
        assert_eq!(ring.pending_bytes(), 0);
        assert_eq!(
            kernel.consumer().load(Ordering::Relaxed),
            kernel.producer().load(Ordering::Relaxed)
        );
        assert!(collect(&mut ring, 1000, usize::MAX).is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_limits_and_publishes_only_what_it_took() {
        let kernel = FakeKernel::new(1 << 16);
        let mut ring = kernel.ring(eventfd());
        for seq in 0..10 {
            kernel.submit(&pattern(seq, 100), false).unwrap();
        }
        let result = ring.consume(3, usize::MAX, |_| ()).unwrap();
        assert_eq!(
            result,
            Consumed {
                records: 3,
                bytes: 300,
                discarded: 0
            }
        );
        assert_eq!(kernel.consumer().load(Ordering::Relaxed), 3 * 112);
        // At least max_bytes: the record that reaches it is the last one.
        let result = ring.consume(100, 150, |_| ()).unwrap();
        assert_eq!((result.records, result.bytes), (2, 200));
        let mut stop_after = Vec::new();
        let result = ring
            .consume_until(100, usize::MAX, |record| {
                stop_after.push(record.to_vec());
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(result.records, 1);
        assert_eq!(stop_after, vec![pattern(5, 100)]);
        assert_eq!(
            ring.consume(0, usize::MAX, |_| ()).unwrap(),
            Consumed::default()
        );
        assert_eq!(
            collect(&mut ring, 100, usize::MAX),
            (6..10).map(|s| pattern(s, 100)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn two_consumers_taking_turns_each_start_where_the_other_stopped() {
        let kernel = FakeKernel::new(1 << 16);
        let (mut first, mut second) = (kernel.ring(eventfd()), kernel.ring(eventfd()));
        for seq in 0..6 {
            kernel.submit(&pattern(seq, 50), false).unwrap();
        }
        assert_eq!(
            collect(&mut first, 2, usize::MAX),
            [pattern(0, 50), pattern(1, 50)]
        );
        assert_eq!(
            collect(&mut second, 3, usize::MAX),
            [2, 3, 4].map(|s| pattern(s, 50))
        );
        assert_eq!(collect(&mut first, 9, usize::MAX), [pattern(5, 50)]);
        assert_eq!(second.positions(), first.positions());
    }

    #[test]
    fn a_busy_record_ends_the_batch_until_it_is_committed() {
        let kernel = FakeKernel::new(1 << 16);
        let mut ring = kernel.ring(eventfd());
        kernel.submit(b"first", false).unwrap();
        let busy = kernel.submit(b"second", false).unwrap();
        kernel.submit(b"third", false).unwrap();
        kernel.header(busy).store(6 | BUSY_BIT, Ordering::Release);
        assert_eq!(collect(&mut ring, 100, usize::MAX), vec![b"first".to_vec()]);
        assert_eq!(collect(&mut ring, 100, usize::MAX), Vec::<Vec<u8>>::new());
        assert!(ring.pending_bytes() > 0);
        kernel.header(busy).store(6, Ordering::Release);
        assert_eq!(
            collect(&mut ring, 100, usize::MAX),
            vec![b"second".to_vec(), b"third".to_vec()]
        );
    }

    #[test]
    fn a_record_that_wraps_is_contiguous() {
        let size = 1 << 16;
        let kernel = FakeKernel::new(size);
        // Both positions close to the end of the ring (on its third lap): the
        // next record wraps; the ring starts where the consumer position is.
        let start = (3 * size - 24) as u64;
        kernel.producer().store(start, Ordering::Relaxed);
        kernel.consumer().store(start, Ordering::Relaxed);
        let mut ring = kernel.ring(eventfd());
        let record = pattern(7, 5000);
        kernel.submit(&record, false).unwrap();
        assert_eq!(collect(&mut ring, 10, usize::MAX), vec![record]);
        assert_eq!(ring.positions().0, start + 5008);
    }

    #[test]
    fn a_header_the_kernel_cannot_have_written_is_an_error_not_a_read_out_of_bounds() {
        let kernel = FakeKernel::new(1 << 16);
        let mut ring = kernel.ring(eventfd());
        kernel.submit(b"good", false).unwrap();
        let bad = kernel.submit(b"bad", false).unwrap();
        kernel.header(bad).store(0x3fff_ffff, Ordering::Release);
        let mut got = Vec::new();
        let error = ring
            .consume(10, usize::MAX, |r| got.push(r.to_vec()))
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(got, vec![b"good".to_vec()]);
        assert_eq!(kernel.consumer().load(Ordering::Relaxed), bad);
        kernel.header(bad).store(100, Ordering::Release); // past the producer position
        assert!(ring.consume(10, usize::MAX, |_| ()).is_err());
        kernel.consumer().store(bad + 4, Ordering::Relaxed);
        let error = ring.consume(10, usize::MAX, |_| ()).unwrap_err();
        assert!(error.to_string().contains("not 8-aligned"), "{error}");
    }

    #[test]
    fn wait_times_out_and_sees_a_wakeup() {
        let kernel = FakeKernel::new(1 << 16);
        let wake = eventfd();
        // SAFETY: dup of our own eventfd.
        let pollable = unsafe { OwnedFd::from_raw_fd(libc::dup(wake.as_raw_fd())) };
        let ring = kernel.ring(pollable);
        let started = Instant::now();
        assert!(!ring.wait(30).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(25));
        let one: u64 = 1;
        // SAFETY: 8 bytes from a u64 to our eventfd.
        let written = unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        assert_eq!(written, 8);
        assert!(ring.wait(1000).unwrap());
    }

    #[test]
    fn a_concurrent_producer_wrapping_many_times_loses_and_corrupts_nothing() {
        let size = 1 << 14;
        let kernel = Arc::new(FakeKernel::new(size));
        let mut ring = kernel.ring(eventfd());
        let total = 5_000u64;
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (kernel, stop) = (kernel.clone(), stop.clone());
            thread::spawn(move || {
                let mut seq = 0;
                while seq < total && !stop.load(Ordering::Relaxed) {
                    let record = pattern(seq, (seq as usize * 7919) % 3000);
                    if kernel.submit(&record, false).is_some() {
                        if seq % 3 == 0 {
                            while kernel.submit(b"discard me", true).is_none() {
                                thread::yield_now();
                            }
                        }
                        seq += 1;
                    } else {
                        thread::yield_now();
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seq = 0u64;
        while seq < total && Instant::now() < deadline {
            ring.consume(64, 8192, |record| {
                assert_eq!(
                    record,
                    pattern(seq, (seq as usize * 7919) % 3000).as_slice()
                );
                seq += 1;
            })
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap();
        assert_eq!(seq, total);
        assert!(kernel.producer().load(Ordering::Relaxed) > 10 * size as u64);
    }
}
