// SPDX-License-Identifier: GPL-2.0
/*
 * The BPF half of a capture module defined only in the tests
 * (tests/e2e/test_module_plugin.py): a uprobe on mark(value) of a tiny C
 * program submits one record per call, even values to a ring buffer and odd
 * ones to a perf buffer, so one module reads two maps of both kinds. Its
 * record is declared here, not in bpf/events.h: nothing outside the test
 * knows it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define PLUGIN_RING_MARK 0x70
#define PLUGIN_PERF_MARK 0x71

struct plugin_mark {
	__u32 kind;
	__u32 pid;
	__u64 timestamp_ns;
	__u64 value;
	char comm[16];
};

const volatile __u32 target_pid = 0;	/* written by the module base (-p) */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} marks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_marks SEC(".maps");

/* [0] records submitted, [1] ring full, [2] perf output failed */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} plugin_stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&plugin_stats, &index);

	if (counter)
		*counter += 1;
}

SEC("uprobe")
int plugin_mark(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct plugin_mark record = {};

	if (target_pid && (__u32)(pid_tgid >> 32) != target_pid)
		return 0;	/* another process */
	record.pid = pid_tgid >> 32;
	record.timestamp_ns = bpf_ktime_get_ns();
	record.value = PT_REGS_PARM1(ctx);
	bpf_get_current_comm(record.comm, sizeof(record.comm));
	if (record.value & 1) {
		record.kind = PLUGIN_PERF_MARK;
		if (bpf_perf_event_output(ctx, &perf_marks, BPF_F_CURRENT_CPU, &record,
					  sizeof(record))) {
			count(2);
			return 0;	/* counted */
		}
	} else {
		record.kind = PLUGIN_RING_MARK;
		if (bpf_ringbuf_output(&marks, &record, sizeof(record), 0)) {
			count(1);
			return 0;	/* counted */
		}
	}
	count(0);
	return 0;
}

/* Never loaded: the module's BpfObject leaves it out (autoload off). The
 * kernel has no such tracepoint, so loading it would fail the whole object. */
SEC("tp_btf/ecapture_plugin_no_such_tracepoint")
int plugin_never_loaded(void *ctx)
{
	return 0;
}
