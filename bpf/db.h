/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What mysqld.bpf.c and postgres.bpf.c share: the ring, the stats, the
 * filters, the chunked copy of a query's text and the end record. Included
 * once per object, after vmlinux.h and events.h.
 */
#ifndef ECAPTURE_DB_H
#define ECAPTURE_DB_H

#include "common.h"
_Static_assert(DB_STAT_MAX <= STATS_ENTRIES, "stats indexes fit the map");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);	/* the loader sets --mapsize */
} events SEC(".maps");

/* A chunk is built here (too large for the stack), then copied into the
 * ring with its real size. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_query_chunk);
} chunk_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct db_query_end);
} end_scratch SEC(".maps");


static __always_inline void fill_header(struct db_header *header, __u32 kind, __u64 pid_tgid,
					__u64 now)
{
	header->kind = kind;
	header->pid = pid_tgid >> 32;
	header->tid = (__u32)pid_tgid;
	header->uid = (__u32)bpf_get_current_uid_gid();
	header->timestamp_ns = now;
	bpf_get_current_comm(header->comm, sizeof(header->comm));
}

struct text_copy {
	const char *text;
	__u32 length;	/* when sized */
	__u32 offset;
	bool sized;	/* false: NUL-terminated */
};

/* One chunk of the text at copy->offset (a bpf_loop step: 1 ends the loop). */
static long copy_chunk(__u64 index, void *context)
{
	struct text_copy *copy = context;
	__u32 zero = 0, size, length = copy->length, offset = copy->offset;
	bool sized = copy->sized;
	struct db_query_chunk *chunk = bpf_map_lookup_elem(&chunk_scratch, &zero);
	const char *text = copy->text;
	long copied;
	char next = 0;
	__u64 n;

	if (!chunk)
		return 1;	/* cannot happen: a one-slot per-CPU array */
	chunk->flags = 0;
	chunk->offset = offset;
	if (sized) {
		n = (__u64)length - offset;
		if (n > DB_CHUNK_SIZE)
			n = DB_CHUNK_SIZE;
		else
			chunk->flags |= DB_CHUNK_LAST;
		/* Keep the bound on the register the helper gets. */
		asm volatile("" : "+r"(n));
		if (n > DB_CHUNK_SIZE)
			n = DB_CHUNK_SIZE;
		if (n == 0 || bpf_probe_read_user(chunk->data, n, text + offset)) {
			if (n)
				stat_add(DB_STAT_READ_FAULTS, 1);
			chunk->flags |= DB_CHUNK_LAST | (n ? DB_CHUNK_READ_FAULT : 0);
			n = 0;
		}
	} else {
		/* A NUL-terminated copy holds DB_CHUNK_SIZE - 1 text bytes. */
		copied = bpf_probe_read_user_str(chunk->data, DB_CHUNK_SIZE, text + offset);
		if (copied <= 0) {
			stat_add(DB_STAT_READ_FAULTS, 1);
			chunk->flags |= DB_CHUNK_LAST | DB_CHUNK_READ_FAULT;
			n = 0;
		} else {
			n = copied - 1;
			if (copied < DB_CHUNK_SIZE)
				chunk->flags |= DB_CHUNK_LAST;
		}
	}
	asm volatile("" : "+r"(n));
	if (n > DB_CHUNK_SIZE)
		n = DB_CHUNK_SIZE;
	chunk->data_len = n;
	if (!(chunk->flags & DB_CHUNK_LAST) && index == DB_MAX_CHUNKS - 1) {
		/* The limit: cut unless the text ends just here. */
		if (sized)
			next = offset + n < length;
		else
			bpf_probe_read_user(&next, 1, text + offset + n);
		chunk->flags |= DB_CHUNK_LAST | (next ? DB_CHUNK_TRUNCATED : 0);
		if (next)
			stat_add(DB_STAT_TRUNCATED, 1);
	}
	size = offsetof(struct db_query_chunk, data) + n;
	if (bpf_ringbuf_output(&events, chunk, size, 0)) {
		stat_add(DB_STAT_RING_FULL_RECORDS, 1);
		stat_add(DB_STAT_RING_FULL_BYTES, n);
	} else {
		stat_add(DB_STAT_RECORDS, 1);
	}
	copy->offset = offset + n;
	return (chunk->flags & DB_CHUNK_LAST) ? 1 : 0;
}

/* Copy a query's text into chunk records: `length` bytes when `sized`
 * (mysqld's packet, maybe empty), else a NUL-terminated string (postgres). */
static __always_inline void submit_text(__u64 pid_tgid, const char *text, bool sized,
					__u32 length, __u64 conn, __u8 command)
{
	__u32 zero = 0;
	struct db_query_chunk *chunk = bpf_map_lookup_elem(&chunk_scratch, &zero);
	struct text_copy copy = { .text = text, .length = length, .offset = 0, .sized = sized };
	__u64 now = bpf_ktime_get_ns();

	if (!chunk)
		return;	/* cannot happen: a one-slot per-CPU array */
	fill_header(&chunk->header, RECORD_DB_QUERY_CHUNK, pid_tgid, now);
	chunk->query_id = now;
	chunk->conn = conn;
	chunk->total_len = sized ? length : 0;
	chunk->command = command;
	chunk->_pad0 = 0;
	bpf_loop(DB_MAX_CHUNKS, copy_chunk, &copy, 0);
}

/* The end record in end_scratch (filled by the caller past the header). */
static __always_inline struct db_query_end *end_record(__u64 pid_tgid)
{
	__u32 zero = 0;
	struct db_query_end *end = bpf_map_lookup_elem(&end_scratch, &zero);

	if (!end)
		return NULL;	/* cannot happen: a one-slot per-CPU array */
	fill_header(&end->header, RECORD_DB_QUERY_END, pid_tgid, bpf_ktime_get_ns());
	end->conn = 0;
	end->status = 0;
	end->error_code = 0;
	end->stmt_id = 0;
	end->command = 0;
	end->_pad0 = 0;
	end->message_len = 0;
	__builtin_memset(end->sqlstate, 0, sizeof(end->sqlstate));
	return end;
}

static __always_inline int submit_end(struct db_query_end *end)
{
	__u32 size = offsetof(struct db_query_end, message) + (end->message_len & (DB_MESSAGE_SIZE - 1));

	if (size > sizeof(*end))
		size = sizeof(*end);
	if (bpf_ringbuf_output(&events, end, size, 0)) {
		stat_add(DB_STAT_RING_FULL_RECORDS, 1);
		return 0;	/* ring full: counted */
	}
	stat_add(DB_STAT_RECORDS, 1);
	return 0;
}

#endif
