/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every capture object shares: the loader's filters, the test each
 * probe makes first, and the per-CPU `stats` counters. Included once per
 * object, after vmlinux.h, the libbpf headers and events.h.
 */
#ifndef ECAPTURE_COMMON_H
#define ECAPTURE_COMMON_H

/* Written by the loader before load (0 = no filter): the verifier then
 * prunes the branches a filter does not need. */
const volatile __u32 target_pid = 0;
const volatile __u32 target_uid = 0;
const volatile __u8 filter_uid = 0;

/* Counters user space sums; each object's indexes are an enum of events.h
 * (stat_index, shell_stat_index, db_stat_index), all below STATS_ENTRIES. */
#define STATS_ENTRIES 8

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 index, __u64 value)
{
	__u64 *counter = bpf_map_lookup_elem(&stats, &index);

	if (counter)
		*counter += value;	/* per-CPU: no atomics needed */
}

/* Whether the current task passes the -p/-u filters. */
static __always_inline bool wanted(__u64 pid_tgid)
{
	if (target_pid && (__u32)(pid_tgid >> 32) != target_pid)
		return false;
	if (filter_uid && (__u32)bpf_get_current_uid_gid() != target_uid)
		return false;
	return true;
}

#endif
