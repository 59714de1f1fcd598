/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What bash.bpf.c and zsh.bpf.c share: the ring, the stats, the filters and
 * the two submits (a line, a status). Included once per object, after
 * vmlinux.h and events.h.
 */
#ifndef ECAPTURE_SHELL_H
#define ECAPTURE_SHELL_H

#include "common.h"
_Static_assert(SHELL_STAT_MAX <= STATS_ENTRIES, "stats indexes fit the map");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);	/* the loader sets --mapsize */
} events SEC(".maps");

/* A line record is built here (too large for the stack), then copied into
 * the ring with its real size. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct shell_line_event);
} scratch SEC(".maps");

/* Where the rest of a cut line is read to measure it. */
struct line_tail {
	char bytes[MAX_LINE_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct line_tail);
} tail_scratch SEC(".maps");

/* Processes that read a line interactively: statuses are sent only for
 * them, not for every shell script running on the machine. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} interactive SEC(".maps");


static __always_inline bool is_interactive(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;

	return bpf_map_lookup_elem(&interactive, &tgid) != NULL;
}

static __always_inline void fill_header(struct shell_header *header, __u32 kind,
					__u64 pid_tgid)
{
	__u64 uid_gid = bpf_get_current_uid_gid();

	header->kind = kind;
	header->pid = pid_tgid >> 32;
	header->tid = (__u32)pid_tgid;
	header->uid = (__u32)uid_gid;
	header->timestamp_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(header->comm, sizeof(header->comm));
}

/* The controlling terminal: current->signal->tty->name (include/linux/tty.h). */
static __always_inline void read_tty(char *name)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);

	name[0] = 0;
	if (tty)
		bpf_probe_read_kernel_str(name, TTY_NAME_SIZE, tty->name);
}

/* The length of a line whose first MAX_LINE_SIZE - 1 bytes were copied:
 * read on in MAX_LINE_SIZE - 1 byte steps until the NUL (at most
 * MAX_LINE_MEASURED bytes). */
static __always_inline __u32 measure_line(const char *line)
{
	__u32 zero = 0, length = MAX_LINE_SIZE - 1;
	struct line_tail *tail = bpf_map_lookup_elem(&tail_scratch, &zero);
	long copied;

	if (!tail)
		return length;	/* cannot happen: a one-slot per-CPU array */
	for (int step = 1; step < MAX_LINE_MEASURED / MAX_LINE_SIZE; step++) {
		copied = bpf_probe_read_user_str(tail->bytes, MAX_LINE_SIZE,
						 line + (__u64)step * (MAX_LINE_SIZE - 1));
		if (copied <= 0)
			break;	/* unreadable: what was measured stands */
		length += copied - 1;
		if (copied < MAX_LINE_SIZE)
			break;	/* the NUL is in this step */
	}
	return length;
}

/* Copy the NUL-terminated `line` of user memory into one line record. */
static __always_inline int submit_line(__u64 pid_tgid, const char *line, __u8 source,
				       __u8 flags)
{
	__u32 zero = 0;
	struct shell_line_event *event = bpf_map_lookup_elem(&scratch, &zero);
	long copied;
	__u32 size;
	char next = 0;

	if (!event)
		return 0;	/* cannot happen: a one-slot per-CPU array */
	fill_header(&event->header, RECORD_SHELL_LINE, pid_tgid);
	read_tty(event->tty);
	copied = bpf_probe_read_user_str(event->line, MAX_LINE_SIZE, line);
	if (copied <= 0) {
		stat_add(SHELL_STAT_READ_FAULTS, 1);
		return 0;	/* the line is not readable: counted */
	}
	copied -= 1;	/* the NUL */
	event->full_len = copied;
	if (copied == MAX_LINE_SIZE - 1) {
		/* Filled the buffer: cut unless the NUL came just there. */
		bpf_probe_read_user(&next, 1, line + MAX_LINE_SIZE - 1);
		if (next) {
			flags |= LINE_FLAG_TRUNCATED;
			event->full_len = measure_line(line);
			stat_add(SHELL_STAT_TRUNCATED_LINES, 1);
		}
	}
	event->source = source;
	event->flags = flags;
	event->_pad0 = 0;
	event->_pad1 = 0;
	event->line_len = copied & (MAX_LINE_SIZE - 1);
	size = offsetof(struct shell_line_event, line) + (event->line_len & (MAX_LINE_SIZE - 1));
	if (bpf_ringbuf_output(&events, event, size, 0)) {
		stat_add(SHELL_STAT_RING_FULL_RECORDS, 1);
		stat_add(SHELL_STAT_RING_FULL_BYTES, event->line_len);
		return 0;	/* ring full: counted */
	}
	stat_add(SHELL_STAT_RECORDS, 1);
	{
		__u32 tgid = pid_tgid >> 32;
		__u8 yes = 1;

		bpf_map_update_elem(&interactive, &tgid, &yes, BPF_ANY);
	}
	return 0;
}

static __always_inline int submit_status(__u64 pid_tgid, __u8 source, __s32 status)
{
	struct shell_status_event *event;

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		stat_add(SHELL_STAT_RING_FULL_RECORDS, 1);
		return 0;	/* ring full: counted */
	}
	fill_header(&event->header, RECORD_SHELL_STATUS, pid_tgid);
	event->source = source;
	event->_pad0[0] = event->_pad0[1] = event->_pad0[2] = 0;
	event->status = status;
	bpf_ringbuf_submit(event, 0);
	stat_add(SHELL_STAT_RECORDS, 1);
	return 0;
}

#endif
