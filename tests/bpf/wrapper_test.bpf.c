// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Loaded only by the tests of src/ecapture/bpf/ (tests/e2e/test_bpf_wrapper.py).
 * The test builds a tiny C program whose noinline functions these uprobes hook:
 *   marked_call(value)      -> one record {magic, value, pid, kind=MARK}
 *   burst(count, size)      -> `count` records of `size` bytes, numbered 0..count-1
 * and counts its own syscalls with tp_btf / raw_tp programs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define MAX_RECORD_SIZE 16384	/* the largest record burst() may ask for */

/* Written by the loader before load (ObjectSpec.set_constant). */
const volatile __u64 magic = 0;		/* copied into every MARK record */
const volatile __u32 use_perf = 0;	/* 1: submit to perf_events instead of events */
const volatile __u32 target_tgid = 0;	/* the syscall counters count only this process */

/* Header of every record; burst() records are padded with zeroes up to `size`
 * (or cut to it when the test asks for fewer bytes than the header). */
struct test_record {
	__u64 magic;
	__u64 value;	/* marked_call's argument, or the record's index in a burst */
	__u32 pid;
	__u32 kind;	/* 1 = MARK, 2 = BURST */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);	/* the tests resize it (set_map_max_entries) */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

/* [0] = tp_btf hits, [1] = raw_tp hits, [2] = failed ring submissions,
 * [3] = tracepoint hits */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Scratch space for burst records: too large for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[MAX_RECORD_SIZE]);
} scratch SEC(".maps");

/* A plain hash map for the Map.update/lookup/delete tests. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} table SEC(".maps");

static void count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&counters, &index);

	if (counter)	/* always true for an index below max_entries */
		*counter += 1;
}

SEC("uprobe")
int BPF_KPROBE(on_marked_call, __u64 value)
{
	struct test_record record = {
		.magic = magic,
		.value = value,
		.pid = bpf_get_current_pid_tgid() >> 32,
		.kind = 1,
	};

	if (use_perf) {
		bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, &record, sizeof(record));
		return 0;
	}
	if (bpf_ringbuf_output(&events, &record, sizeof(record), 0))
		count(2);
	return 0;
}

struct burst_context {
	__u8 *buffer;
	__u32 size;
	__u32 pid;
	__u64 count;
};

static long submit_one(__u64 index, struct burst_context *burst)
{
	struct test_record *record = (struct test_record *)burst->buffer;
	/* Wake the reader only with the last record: the test polls anyway (docs/kernel.md#wake-ups). */
	__u64 flags = index + 1 == burst->count ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	__u32 size = burst->size;

	record->magic = magic;
	record->value = index;
	record->pid = burst->pid;
	record->kind = 2;
	if (size > MAX_RECORD_SIZE)
		return 1;	/* larger than the scratch buffer: stop the loop */
	if (bpf_ringbuf_output(&events, burst->buffer, size, flags))
		count(2);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(on_burst, __u64 count, __u64 size)
{
	__u32 zero = 0;
	struct burst_context burst = {
		.size = size,
		.pid = bpf_get_current_pid_tgid() >> 32,
		.count = count,
	};

	burst.buffer = bpf_map_lookup_elem(&scratch, &zero);
	if (!burst.buffer)	/* cannot happen for index 0; the verifier wants the check */
		return 0;
	__builtin_memset(burst.buffer, 0, sizeof(struct test_record));
	bpf_loop(count, submit_one, &burst, 0);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(count_sys_enter_btf, struct pt_regs *regs, long id)
{
	if (bpf_get_current_pid_tgid() >> 32 != target_tgid)
		return 0;	/* another process */
	count(0);
	return 0;
}

SEC("raw_tp")
int count_sys_enter_raw(struct bpf_raw_tracepoint_args *args)
{
	if (bpf_get_current_pid_tgid() >> 32 != target_tgid)
		return 0;	/* another process */
	count(1);
	return 0;
}

/* Needs tracefs to attach (libbpf reads the tracepoint's id there). */
SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *args)
{
	if (bpf_get_current_pid_tgid() >> 32 != target_tgid)
		return 0;	/* another process */
	count(3);
	return 0;
}

/* Only for the autoload test: the verifier rejects it (unbounded read), so
 * the object loads only with this program's autoload switched off. */
SEC("raw_tp/sys_exit")
int rejected_by_verifier(struct bpf_raw_tracepoint_args *args)
{
	__u64 *pointer = (__u64 *)args->args[1];

	return *pointer == 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
