/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * The one declaration of every record the BPF programs hand to user space.
 * src/ecapture/events.py decodes these; tests/unit/test_events_layout.py
 * compares its struct formats with the BTF of the built objects, so a change
 * here that is not mirrored there fails the build's tests.
 */
#ifndef ECAPTURE_EVENTS_H
#define ECAPTURE_EVENTS_H

#define TASK_COMM_LEN 16
/* One ring record carries at most this much payload; larger calls are split
 * into consecutive chunks (same call_id, increasing offset). Power of two so
 * that masking bounds the length for the verifier. */
#define MAX_CHUNK_SIZE 16384

enum record_kind {
	RECORD_TLS_DATA = 1,	/* struct tls_data_event */
	RECORD_CONN_CLOSE = 2,	/* struct conn_close_event */
};

/* Why a connection ended (conn_close_event.cause). */
enum close_cause {
	CLOSE_TCP = 1,		/* our side sent FIN, or the connection was reset */
	CLOSE_SSL_MOVED = 2,	/* its SSL* was next seen on another socket */
	CLOSE_SSL_FREE = 3,	/* SSL_free(ssl) */
	CLOSE_SSL_CLEAR = 4,	/* SSL_clear(ssl): the SSL* is made ready for a new connection */
};

/* flags of struct conn_close_event */
#define CLOSE_FLAG_DEFERRED	(1 << 0)	/* the main ring was full: came through spare_closes */

enum direction {
	DIRECTION_RECV = 0,
	DIRECTION_SEND = 1,
};

/* flags of struct tls_data_event */
#define DATA_FLAG_LAST_CHUNK	(1 << 0)	/* no further chunk of this call */
#define DATA_FLAG_TRUNCATED	(1 << 1)	/* the call returned more than was copied */
/* bpf_probe_read_user failed on this chunk: the record carries no data[]
 * and data_len is the number of bytes that could not be read. */
#define DATA_FLAG_READ_FAULT	(1 << 2)

/* Fields every record starts with. */
struct record_header {
	__u32 kind;		/* enum record_kind */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 uid;
	__u64 timestamp_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 conn_id;		/* unique for the capture: allocated when a connection is first seen */
	__u64 ssl;		/* the SSL* of the connection (reused by allocators: not an id) */
	__u64 socket_cookie;	/* bpf_get_socket_cookie() of its socket, 0 = not known */
	char comm[TASK_COMM_LEN];
};

/* Address of one end of a socket; family 0 when unknown. */
struct sock_addr {
	__u16 family;		/* AF_INET / AF_INET6, 0 = unknown */
	__u16 port;		/* host byte order */
	__u8 addr[16];		/* IPv4 in the first 4 bytes */
};

struct tls_data_event {
	struct record_header header;
	__s32 fd;		/* -1 when not known yet */
	__u8 direction;		/* enum direction */
	__u8 flags;		/* DATA_FLAG_* */
	__u16 _pad0;
	__u64 call_id;		/* increases per SSL call (per CPU); chunks of one call share it */
	__u64 call_len;		/* bytes the SSL call returned */
	__u64 offset;		/* offset of data[] within the call's buffer */
	__u32 data_len;		/* bytes in data[] */
	__u32 lost_records;	/* records of this connection lost just before this one */
	__u64 lost_bytes;	/* payload bytes in those lost records */
	struct sock_addr local;
	struct sock_addr remote;
	__u8 data[MAX_CHUNK_SIZE];	/* only data_len bytes are submitted */
};

/* The connection ended (enum close_cause), exactly once per conn_id. A TCP
 * close is often seen in softirq context: header.tid is 0 then, and
 * header.comm/uid are those recorded when the connection was first seen. */
struct conn_close_event {
	struct record_header header;
	__s32 fd;
	__u32 lost_records;	/* lost records of this connection not yet reported */
	__u64 lost_bytes;
	__u8 cause;		/* enum close_cause */
	__u8 flags;		/* CLOSE_FLAG_* */
	__u16 _pad0;
	__u32 _pad1;
};

/* Indexes of the per-CPU "stats" array: counters user space sums. */
enum stat_index {
	STAT_RECORDS = 0,		/* records submitted */
	STAT_RING_FULL_RECORDS = 1,	/* records lost: ring reservation failed */
	STAT_RING_FULL_BYTES = 2,	/* payload bytes in those */
	STAT_TRUNCATED_CALLS = 3,	/* calls cut at the per-call limit */
	STAT_TRUNCATED_BYTES = 4,	/* bytes not copied because of it */
	STAT_READ_FAULTS = 5,		/* bpf_probe_read_user failed (reported per connection) */
	STAT_CLOSES_DEFERRED = 6,	/* closes that went through spare_closes (main ring full) */
	STAT_CLOSES_LOST = 7,		/* closes lost: both rings full */
	STAT_MAX = 8,
};

/* ---- TLS secrets (bpf/keylog.bpf.c) ----
 * The tls modes' kinds are 56-63: apart from enum record_kind and from the
 * other modules' ranges (shells 16-17, databases 32-39), so one stream of
 * mixed kinds stays decodable. */
#define RECORD_KEYLOG_SECRET	56	/* struct keylog_event */

/* "CLIENT_HANDSHAKE_TRAFFIC_SECRET" is the longest NSS key-log label (31). */
#define KEYLOG_LABEL_SIZE	48
#define KEYLOG_RANDOM_SIZE	32	/* SSL3_RANDOM_SIZE */
#define KEYLOG_SECRET_SIZE	64	/* EVP_MAX_MD_SIZE; TLS secrets are 32 or 48 */

/* flags of struct keylog_event: the line must not be written */
#define KEYLOG_FLAG_SECRET_TOO_LONG	(1 << 0)
#define KEYLOG_FLAG_RANDOM_TOO_LONG	(1 << 1)
#define KEYLOG_FLAG_READ_FAULT		(1 << 2)

/* One secret as the library logs it: `label random secret` of the NSS key log. */
struct keylog_event {
	struct record_header header;	/* ssl: the SSL*; conn_id, socket_cookie 0 */
	__u32 label_len;		/* bytes in label[] before its NUL */
	__u32 random_len;		/* as the library passed it */
	__u32 secret_len;		/* as the library passed it */
	__u32 flags;			/* KEYLOG_FLAG_* */
	char label[KEYLOG_LABEL_SIZE];
	__u8 random[KEYLOG_RANDOM_SIZE];
	__u8 secret[KEYLOG_SECRET_SIZE];
};

/* Indexes of the per-CPU "keylog_stats" array. */
enum keylog_stat_index {
	KEYLOG_STAT_RECORDS = 0,	/* records submitted */
	KEYLOG_STAT_RING_FULL = 1,	/* records lost: ring reservation failed */
	KEYLOG_STAT_MAX = 2,
};

/* ---- packets (bpf/tc.bpf.c) ---- */
#define RECORD_TC_PACKET	57	/* struct tc_packet_event */
/* Bytes of one packet a record holds at most: loopback's MTU is 65536 and
 * GSO packets keep IP's 16-bit total length. Power of two for masking. */
#define TC_PACKET_MAX		65536

enum tc_direction {
	TC_INGRESS = 0,
	TC_EGRESS = 1,
};

/* One packet seen by the TC clsact hook; no process context there, the
 * socket cookie links it to the connection (0: no socket). */
struct tc_packet_event {
	__u32 kind;		/* RECORD_TC_PACKET */
	__u32 ifindex;
	__u64 timestamp_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 socket_cookie;
	__u32 len;		/* skb->len: the whole packet from the MAC header */
	__u32 caplen;		/* bytes in data[] (snap length applied) */
	__u8 direction;		/* enum tc_direction */
	__u8 _pad[7];
	__u8 data[TC_PACKET_MAX];	/* only caplen bytes are submitted */
};

/* Value of the "sock_owners" map (key: socket cookie): the process that last
 * used the socket from a system call. */
struct sock_owner {
	__u32 pid;	/* tgid */
	__u32 tid;
	char comm[TASK_COMM_LEN];
};

/* Indexes of the per-CPU "tc_stats" array. */
enum tc_stat_index {
	TC_STAT_PACKETS = 0,		/* records submitted */
	TC_STAT_RING_FULL = 1,		/* packets lost: ring full */
	TC_STAT_RING_FULL_BYTES = 2,	/* their captured bytes */
	TC_STAT_LOAD_FAULTS = 3,	/* bpf_skb_load_bytes failed */
	TC_STAT_MAX = 4,
};

#endif

/* ---- shell commands: bpf/bash.bpf.c, bpf/zsh.bpf.c (ecapture bash, zsh) ----
 * Their own header, not struct record_header: a line has no connection.
 * Every record still starts with its kind, so one stream stays decodable. */
#ifndef ECAPTURE_SHELL_EVENTS_H
#define ECAPTURE_SHELL_EVENTS_H

/* A line longer than this is cut, flagged and counted; power of two so that
 * masking bounds the length for the verifier. */
#define MAX_LINE_SIZE 4096
/* How far past MAX_LINE_SIZE a cut line is measured (bounded loop). */
#define MAX_LINE_MEASURED (64 * MAX_LINE_SIZE)
#define TTY_NAME_SIZE 64	/* struct tty_struct name[64] */
/* Files one shell object hooks at most (the shell, readline libraries). */
#define MAX_SHELL_TARGETS 8

enum shell_record_kind {
	RECORD_SHELL_LINE = 16,		/* struct shell_line_event */
	RECORD_SHELL_STATUS = 17,	/* struct shell_status_event */
};

/* Who read a line; the attach cookie carries it with the target index. */
enum line_source {
	LINE_SOURCE_BASH = 1,		/* bash's built-in readline */
	LINE_SOURCE_ZSH = 2,		/* zsh's line editor (zleentry) */
	LINE_SOURCE_READLINE = 3,	/* libreadline.so in another program */
};

/* flags of struct shell_line_event */
#define LINE_FLAG_CONTINUATION	(1 << 0)	/* read to complete a command begun earlier */
#define LINE_FLAG_POSITION	(1 << 1)	/* the shell said first line or continuation */
#define LINE_FLAG_TRUNCATED	(1 << 2)	/* longer than MAX_LINE_SIZE - 1: cut */

struct shell_header {
	__u32 kind;		/* enum shell_record_kind */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 uid;
	__u64 timestamp_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	char comm[TASK_COMM_LEN];
};

struct shell_line_event {
	struct shell_header header;
	char tty[TTY_NAME_SIZE];	/* the controlling terminal's name, "" when none */
	__u8 source;		/* enum line_source */
	__u8 flags;		/* LINE_FLAG_* */
	__u16 _pad0;
	__u32 line_len;		/* bytes in line[], no NUL */
	__u32 full_len;		/* the line's length; more than line_len when cut (at most
				 * MAX_LINE_MEASURED: longer lines say that much) */
	__u32 _pad1;		/* line[] at an 8-byte offset: no tail padding */
	char line[MAX_LINE_SIZE];	/* only line_len bytes are submitted */
};

/* A command finished: bash's outermost execute_command returned, or zsh
 * came back to its primary prompt (lastval then holds the status). */
struct shell_status_event {
	struct shell_header header;
	__u8 source;		/* enum line_source */
	__u8 _pad0[3];
	__s32 status;		/* the exit status, as $? shows it */
};

/* Indexes of the per-CPU "stats" array of the shell objects. */
enum shell_stat_index {
	SHELL_STAT_RECORDS = 0,			/* records submitted */
	SHELL_STAT_RING_FULL_RECORDS = 1,	/* records lost: ring reservation failed */
	SHELL_STAT_RING_FULL_BYTES = 2,		/* line bytes in those */
	SHELL_STAT_TRUNCATED_LINES = 3,		/* lines cut at MAX_LINE_SIZE - 1 */
	SHELL_STAT_READ_FAULTS = 4,		/* a user-memory read failed */
	SHELL_STAT_MAX = 8,
};

#endif

/* ---- database queries: bpf/mysqld.bpf.c, bpf/postgres.bpf.c ----
 * A query's text goes out in chunks (same query_id, increasing offset), then
 * one end record when the server is done with it. */
#ifndef ECAPTURE_DB_EVENTS_H
#define ECAPTURE_DB_EVENTS_H

/* Text bytes per chunk record; power of two for masking. */
#define DB_CHUNK_SIZE 16384
/* Chunks of one query at most: 64 x 16 KiB = 1 MiB of text; more is cut,
 * flagged and counted. */
#define DB_MAX_CHUNKS 64
#define DB_MESSAGE_SIZE 256	/* the error message kept with an error */

enum db_record_kind {
	RECORD_DB_QUERY_CHUNK = 32,	/* struct db_query_chunk */
	RECORD_DB_QUERY_END = 33,	/* struct db_query_end */
};

/* flags of struct db_query_chunk */
#define DB_CHUNK_LAST		(1 << 0)	/* no further chunk of this query */
#define DB_CHUNK_TRUNCATED	(1 << 1)	/* the text went on past DB_MAX_CHUNKS chunks */
#define DB_CHUNK_READ_FAULT	(1 << 2)	/* the text could not be read from here on */

/* status of struct db_query_end */
enum db_status {
	DB_STATUS_OK = 1,
	DB_STATUS_ERROR = 2,
	/* postgres: the backend went idle (ReadyForQuery); the error, if any,
	 * came as an end record of its own just before */
	DB_STATUS_IDLE = 3,
	/* postgres: PortalRun began running the query: one per execution, so
	 * the same text reported again after it is the next execution */
	DB_STATUS_RUN = 4,
};

struct db_header {
	__u32 kind;		/* enum db_record_kind */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 uid;
	__u64 timestamp_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	char comm[TASK_COMM_LEN];
};

struct db_query_chunk {
	struct db_header header;
	__u64 query_id;		/* header.timestamp_ns of the query's first chunk */
	__u64 conn;		/* mysqld: the THD* of the connection; postgres: 0 */
	__u32 offset;		/* of data[] within the text */
	__u32 data_len;		/* bytes in data[] */
	__u32 total_len;	/* the text's length when the server passed it (mysqld), else 0 */
	__u8 command;		/* mysqld: enum_server_command; postgres: 0 */
	__u8 flags;		/* DB_CHUNK_* */
	__u16 _pad0;
	char data[DB_CHUNK_SIZE];	/* only data_len bytes are submitted */
};

struct db_query_end {
	struct db_header header;
	__u64 conn;		/* as in the chunks */
	__u32 status;		/* enum db_status */
	__u32 error_code;	/* mysqld: the error number sent to the client */
	__u32 stmt_id;		/* mysqld: the id a COM_STMT_PREPARE was given, else 0 */
	__u8 command;
	__u8 _pad0;
	__u16 message_len;	/* bytes in message[] */
	char sqlstate[8];	/* mysqld: the SQLSTATE sent with an error */
	char message[DB_MESSAGE_SIZE];
};

/* Indexes of the per-CPU "stats" array of the database objects. */
enum db_stat_index {
	DB_STAT_RECORDS = 0,		/* records submitted */
	DB_STAT_RING_FULL_RECORDS = 1,	/* records lost: ring reservation failed */
	DB_STAT_RING_FULL_BYTES = 2,	/* text bytes in those */
	DB_STAT_TRUNCATED = 3,		/* queries cut at DB_MAX_CHUNKS chunks */
	DB_STAT_READ_FAULTS = 4,	/* a user-memory read failed */
	DB_STAT_MAX = 8,
};

#endif

/* ---- Go crypto/tls (bpf/gotls.bpf.c): its data and closes are the records
 * above; this one is its own (kinds 40-47). ---- */
#ifndef ECAPTURE_GOTLS_EVENTS_H
#define ECAPTURE_GOTLS_EVENTS_H

#define RECORD_GO_UNSEEN 40	/* struct go_unseen_event */

/* A Read or Write returned n > 0 whose entry was never seen (it was running
 * when the probes were attached): those bytes are not captured, and say so. */
struct go_unseen_event {
	__u32 kind;		/* RECORD_GO_UNSEEN */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 direction;	/* enum direction */
	__u64 timestamp_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 bytes;		/* what the call returned */
	char comm[TASK_COMM_LEN];
};

#endif
