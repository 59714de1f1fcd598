// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Loaded only by tests/unit/native/test_ring.py and bench/native_ring.py: a
 * producer of ring buffer records of known content, run from user space with
 * BPF_PROG_TEST_RUN (a "syscall" program: no attach, no traced process).
 *
 * Record `seq` (seq = first, first + 1, ...) is `size(seq)` bytes of the
 * `pattern` map's value starting at offset (seq * stride) % 32768, with seq
 * (u64, little-endian) written over bytes stamp_at..stamp_at+8 when they fit:
 *   size(seq) = size_min + mix(seq) % size_span   (size_span 0: size_min)
 *   mix(seq)  = (seq * 0x9E3779B97F4A7C15 mod 2^64) >> 32
 * After every discard_every-th record (seq % discard_every == discard_every - 1)
 * one more 256-byte record is reserved and discarded. A run stops at the first
 * record the ring has no room for; `produced` says how many went out, so the
 * caller runs it again from first + produced: nothing is lost.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define MAX_RECORD 32768	/* a tls_data_event of 16 KiB payload is 16536 bytes */
#define PATTERN_SIZE 65536
#define PATTERN_WINDOW 32768	/* offsets wrap here: a record never reads past the map value */
#define DISCARD_SIZE 256

/* The program's context: the caller's arguments, and its results written back. */
struct produce_args {
	__u64 first;
	__u64 count;
	__u32 size_min;
	__u32 size_span;
	__u32 stride;
	__u32 stamp_at;		/* 8-aligned; MAX_RECORD or more: no stamp */
	__u32 discard_every;
	__u32 wakeup_flags;	/* bpf_ringbuf_output flags: 0, BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP */
	__u64 produced;		/* out: records submitted */
	__u64 discarded;	/* out: records reserved and discarded */
	__u32 full;		/* out: 1 when the run stopped at a full ring */
	__u32 bad_size;		/* out: 1 when a size was 0 or above MAX_RECORD */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);	/* the tests resize it (set_map_max_entries) */
} ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[PATTERN_SIZE]);
} pattern SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[MAX_RECORD]);
} scratch SEC(".maps");

struct loop_state {
	struct produce_args args;
};

static long produce_one(__u64 index, struct loop_state *state)
{
	struct produce_args *args = &state->args;
	__u64 seq = args->first + index;
	__u32 zero = 0;
	__u64 size = args->size_min;	/* 64-bit: the verifier keeps its bounds through the calls */
	__u8 *buffer, *source;
	__u32 offset;

	if (args->size_span)
		size += (__u32)((seq * 0x9E3779B97F4A7C15ULL) >> 32) % args->size_span;
	if (size == 0 || size > MAX_RECORD) {
		args->bad_size = 1;
		return 1;
	}
	buffer = bpf_map_lookup_elem(&scratch, &zero);
	source = bpf_map_lookup_elem(&pattern, &zero);
	if (!buffer || !source)
		return 1;
	offset = (__u32)(seq * args->stride) & (PATTERN_WINDOW - 1);
	bpf_probe_read_kernel(buffer, size, source + offset);
	if (args->stamp_at <= MAX_RECORD - 8) {
		__u32 at = args->stamp_at & (MAX_RECORD - 8);	/* 8-aligned, in bounds */

		*(__u64 *)(buffer + at) = seq;
	}
	if (bpf_ringbuf_output(&ring, buffer, size, args->wakeup_flags)) {
		args->full = 1;
		return 1;
	}
	args->produced++;
	if (args->discard_every && seq % args->discard_every == args->discard_every - 1) {
		__u8 *record = bpf_ringbuf_reserve(&ring, DISCARD_SIZE, 0);

		if (record) {
			__builtin_memset(record, 0xEE, DISCARD_SIZE);
			bpf_ringbuf_discard(record, 0);
			args->discarded++;
		}
	}
	return 0;
}

SEC("syscall")
int produce(struct produce_args *ctx)
{
	struct loop_state state = {};

	state.args = *ctx;
	state.args.produced = 0;
	state.args.discarded = 0;
	state.args.full = 0;
	state.args.bad_size = 0;
	if (state.args.count > (1 << 20))
		state.args.count = 1 << 20;
	bpf_loop(state.args.count, produce_one, &state, 0);
	ctx->produced = state.args.produced;
	ctx->discarded = state.args.discarded;
	ctx->full = state.args.full;
	ctx->bad_size = state.args.bad_size;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
