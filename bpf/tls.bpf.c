// SPDX-License-Identifier: GPL-2.0
/*
 * TLS plaintext capture for OpenSSL and BoringSSL (ecapture tls -m text),
 * GnuTLS (ecapture gnutls: its record calls have SSL_read/SSL_write's
 * shape, the session playing the SSL*) and NSS (ecapture nss: NSPR's PR_*
 * calls on the SSL layer only, see nspr_enter).
 *
 * Entry probes remember, per thread, the SSL* and buffer of a read or write
 * call; the return probe copies what the call really moved (only for a
 * positive return value, so retries before the handshake ends give nothing)
 * into the ring buffer, split into MAX_CHUNK_SIZE chunks.
 *
 * No kprobes here: the socket comes from the socket I/O the SSL call makes
 * while it runs (tp_btf sock_send_length/sock_recv_length, filtered first by
 * the thread's `calls` slot), its addresses from CO-RE reads of the sock and
 * its fd from the thread's fd table; all cached per SSL* so later calls need
 * none. Socket tracepoints, not raw_tp/sys_enter: a syscall tracepoint puts
 * every syscall of every process on the slow path (measured: it cost the
 * judging workload ~15 % of its rate), these fire only on socket I/O.
 *
 * A connection is a conns entry keyed by (pid, SSL*) with an id of its own
 * (last_conn_id): allocators reuse a freed SSL's address for the next one,
 * so the SSL* alone would merge sequential connections. It ends, with one
 * close record, at whichever comes first: its socket's close
 * (inet_sock_set_state), SSL_free/SSL_clear of its SSL*, or its SSL* seen on
 * another socket. Deleting the conns entry claims that close.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "events.h"
#include "common.h"
_Static_assert(STAT_MAX <= STATS_ENTRIES, "stats indexes fit the map");

char LICENSE[] SEC("license") = "GPL";

/* Keep every record type in the object's BTF: the layout test reads it. */
const struct tls_data_event *unused_tls_data_event __attribute__((unused));
const struct conn_close_event *unused_conn_close_event __attribute__((unused));

/* call_state.direction of an SSL_do_handshake in flight: it carries no
 * data, but its nested syscalls name the fd before the first read, whose
 * record OpenSSL may already have buffered during the handshake. */
#define CALL_HANDSHAKE 2
/* call_state.ex of a gather write (NSPR's PR_Writev): buf is the iovec
 * array, out_ptr its length. */
#define CALL_IOV 2

#define AF_INET 2
#define AF_INET6 10
/* A TLS connection's fd is searched for once; past this many fds it stays -1. */
#define MAX_FD_SCAN 65536

/* Bytes copied per SSL call at most; the rest is counted and flagged. */
const volatile __u64 call_limit = 4 << 20;
/* Force a reader wake-up once this much is pending; otherwise submit
 * without waking it (the reader polls): wake-ups are charged to the
 * traced program (docs/kernel.md#wake-ups). */
const volatile __u64 wakeup_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20);	/* the loader sets --mapsize */
} events SEC(".maps");

/* A close that finds `events` full goes here instead, so that the end of a
 * connection is never lost with the data (user space reads it every second
 * and at stop, and reports the delay as a ring_full loss of that connection).
 * 256 KiB hold ~2500 closes; past that a close is counted in STAT_CLOSES_LOST. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} spare_closes SEC(".maps");

/* The last connection id handed out: ids are unique while the object is
 * loaded (an SSL* is not: allocators hand a freed one's address to the next). */
__u64 last_conn_id = 0;
/* Connections ended so far (any process): a connection a thread remembers
 * (thread_state.known) is trusted only while no connection ended since. */
__u64 conn_ends = 0;

/* An SSL read/write call in flight, per thread. */
struct call_state {
	__u64 ssl;
	__u64 buf;
	__u64 out_ptr;		/* size_t *written (or *readbytes) of _ex-style calls */
	__s32 fd;		/* named by the first nested socket I/O, -1 until then */
	__u8 direction;
	__u8 ex;
	__u8 active;		/* between an entry probe and its return */
	__u8 resolved;		/* the socket of this call was looked at */
};

/* A connection a thread's call was found on (see known_socket): its SSL*,
 * socket and fd, and conn_ends when it was seen. */
struct known_conn {
	__u64 ssl;
	__u64 sk;
	__u64 ends;
	__s32 fd;
	__u32 _pad;
};

/* Connections a thread remembers, by a hash of the SSL*: a server thread
 * (nginx's worker, wrk's thread) takes turns on many connections. */
#define KNOWN_CONNS 16

struct thread_state {
	struct call_state call;
	struct known_conn known[KNOWN_CONNS];
};

/* Task storage, not a hash keyed by tid: a per-thread slot freed with the
 * thread and never evicted while the thread lives (an LRU hash of 16384
 * could drop calls of busy servers with more threads). Measured as fast as
 * the LRU hash it replaced (bench producer, 64 B SSL_write/SSL_read pairs). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_state);
} calls SEC(".maps");

struct conn_key {
	__u32 pid;
	__u32 _pad;
	__u64 ssl;
};

struct conn_state {
	__u64 conn_id;		/* record_header.conn_id */
	__s32 fd;
	__u32 uid;
	__u64 sk;		/* the struct sock * of the connection, 0 unknown */
	__u64 cookie;		/* its socket cookie, 0 unknown */
	__u64 lost_records;	/* not yet reported in-band (64-bit: atomic add) */
	__u64 lost_bytes;
	struct sock_addr local;
	struct sock_addr remote;
	char comm[TASK_COMM_LEN];	/* the close may be seen from softirq context */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* Which connection a socket belongs to; conn_id tells a stale entry (its
 * SSL* was freed or moved since) from the connection that now uses the key. */
struct sock_link {
	struct conn_key key;
	__u64 conn_id;
};

/* struct sock * → its connection, to report the close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_link);
} sock_conns SEC(".maps");

/* The record is built here (too large for the stack), then copied into
 * the ring with its real size. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_data_event);
} scratch SEC(".maps");

static __always_inline __u64 new_conn_id(void)
{
	return __sync_fetch_and_add(&last_conn_id, 1) + 1;
}

/* Wake the reader only when this record makes the backlog cross
 * wakeup_bytes: past it the reader is busy or about to poll (every 10 ms),
 * and a forced wake-up per record would charge an irq_work to the traced
 * program for nothing. Concurrent producers may skip or double a crossing:
 * harmless, the reader polls anyway. */
static __always_inline __u64 ring_flags(__u64 size)
{
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	if (pending < wakeup_bytes && pending + size >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline int enter(struct pt_regs *ctx, __u8 direction, __u8 ex)
{
	struct thread_state *thread;
	struct call_state *state;

	/* Filtered here so that filtered-out calls cost no storage. Without
	 * -p/-u the verifier drops the test and its helper call (constants). */
	if ((target_pid || filter_uid) && !wanted(bpf_get_current_pid_tgid()))
		return 0;
	thread = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0,
				      BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!thread)
		return 0;	/* no memory for this thread's slot: nothing to report */
	state = &thread->call;
	state->ssl = PT_REGS_PARM1(ctx);
	state->buf = PT_REGS_PARM2(ctx);
	if (ex == CALL_IOV)
		state->out_ptr = (__u32)PT_REGS_PARM3(ctx);	/* the iovec count */
	else
		state->out_ptr = ex ? PT_REGS_PARM4(ctx) : 0;
	state->fd = -1;
	state->direction = direction;
	state->ex = ex;
	state->resolved = 0;
	state->active = 1;
	return 0;
}

/* (SSL *ssl, const void *buf, int num) -> int bytes written */
SEC("uprobe")
int BPF_KPROBE(send_plain_enter)
{
	return enter(ctx, DIRECTION_SEND, 0);
}

/* (SSL *ssl, const void *buf, size_t num, size_t *written) -> int ok */
SEC("uprobe")
int BPF_KPROBE(send_ex_enter)
{
	return enter(ctx, DIRECTION_SEND, 1);
}

SEC("uprobe")
int BPF_KPROBE(recv_plain_enter)
{
	return enter(ctx, DIRECTION_RECV, 0);
}

SEC("uprobe")
int BPF_KPROBE(recv_ex_enter)
{
	return enter(ctx, DIRECTION_RECV, 1);
}

/* (SSL *ssl) -> int */
SEC("uprobe")
int BPF_KPROBE(handshake_enter)
{
	return enter(ctx, CALL_HANDSHAKE, 0);
}

static __always_inline void read_endpoints(struct sock *sk, struct conn_state *conn)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET) {
		BPF_CORE_READ_INTO(&conn->local.addr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&conn->remote.addr, sk, __sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&conn->local.addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&conn->remote.addr, sk, __sk_common.skc_v6_daddr);
	} else {
		return;	/* a unix socket pair: no addresses */
	}
	conn->local.family = family;
	conn->remote.family = family;
	conn->local.port = BPF_CORE_READ(sk, __sk_common.skc_num);
	conn->remote.port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

struct fd_scan {
	struct file **fds;
	struct file *target;
	__s32 found;
};

static long scan_fd(__u32 index, struct fd_scan *scan)
{
	struct file *file = NULL;

	bpf_probe_read_kernel(&file, sizeof(file), &scan->fds[index]);
	if (file != scan->target)
		return 0;
	scan->found = index;
	return 1;
}

/* The fd under which the current thread holds `sk`: a search of its fd
 * table, done once per connection (the kernel keeps no reverse mapping). */
static __always_inline __s32 find_fd(struct sock *sk)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fd_scan scan = { .found = -1 };
	unsigned int max_fds;

	scan.target = BPF_CORE_READ(sk, sk_socket, file);
	if (!scan.target)
		return -1;
	scan.fds = BPF_CORE_READ(task, files, fdt, fd);
	max_fds = BPF_CORE_READ(task, files, fdt, max_fds);
	if (max_fds > MAX_FD_SCAN)
		max_fds = MAX_FD_SCAN;
	bpf_loop(max_fds, scan_fd, &scan, 0);
	return scan.found;
}

/* Report the end of a connection (once: the caller deleted its conns entry
 * and got 0, so no other path reports it). A full ring must not swallow it:
 * it goes to spare_closes then, flagged, and counts as one ring-full record
 * (user space reports it so, on that connection). */
static __always_inline void emit_close(const struct conn_key *key, const struct conn_state *conn,
				       __u8 cause, __u32 tid)
{
	struct conn_close_event close = {};

	close.header.kind = RECORD_CONN_CLOSE;
	close.header.pid = key->pid;
	close.header.tid = tid;
	close.header.uid = conn->uid;
	close.header.timestamp_ns = bpf_ktime_get_ns();
	close.header.conn_id = conn->conn_id;
	close.header.ssl = key->ssl;
	close.header.socket_cookie = conn->cookie;
	__builtin_memcpy(close.header.comm, conn->comm, sizeof(close.header.comm));
	close.fd = conn->fd;
	close.lost_records = conn->lost_records;
	close.lost_bytes = conn->lost_bytes;
	close.cause = cause;
	if (!bpf_ringbuf_output(&events, &close, sizeof(close), ring_flags(sizeof(close)))) {
		stat_add(STAT_RECORDS, 1);
		return;	/* queued in order: the common case */
	}
	stat_add(STAT_RING_FULL_RECORDS, 1);
	close.flags = CLOSE_FLAG_DEFERRED;
	if (!bpf_ringbuf_output(&spare_closes, &close, sizeof(close), BPF_RB_NO_WAKEUP))
		stat_add(STAT_CLOSES_DEFERRED, 1);
	else
		stat_add(STAT_CLOSES_LOST, 1);
}

/* Drop sk's link to the connection `conn_id`, unless it links another one now. */
static __always_inline void forget_socket(__u64 sk_id, __u64 conn_id)
{
	struct sock_link *link;

	if (!sk_id)
		return;	/* the connection never had a socket */
	link = bpf_map_lookup_elem(&sock_conns, &sk_id);
	if (link && link->conn_id == conn_id)
		bpf_map_delete_elem(&sock_conns, &sk_id);
}

/* End the connection of `key` if it is still `conn_id` (0: whichever it is):
 * deleting the conns entry claims the close, so a concurrent path (a TCP
 * close racing SSL_free) cannot report it twice. */
static __always_inline void end_connection(const struct conn_key *key, __u64 conn_id, __u8 cause,
					   __u32 tid)
{
	struct conn_state *conn = bpf_map_lookup_elem(&conns, key);
	struct conn_state copy;

	/* Never seen, or already ended. */
	if (!conn)
		return;
	/* A newer connection of this SSL*: the one asked about ended before. */
	if (conn_id && conn->conn_id != conn_id)
		return;
	copy = *conn;
	/* Another CPU ended it between the lookup and here. */
	if (bpf_map_delete_elem(&conns, key))
		return;
	__sync_fetch_and_add(&conn_ends, 1);
	forget_socket(copy.sk, copy.conn_id);
	emit_close(key, &copy, cause, tid);
}

/* Remember in the thread's `known` slot (NULL: none) that `call`'s SSL* is
 * the connection on `sk` (fd `fd`), as of `ends` (conn_ends read before the
 * conns lookup). */
static __always_inline void remember_known(struct known_conn *known, const struct call_state *call,
					   __u64 sk_id, __s32 fd, __u64 ends)
{
	if (!known)
		return;
	known->ssl = call->ssl;
	known->sk = sk_id;
	known->fd = fd;
	known->ends = ends;
}

/* The socket I/O of `call` is on `sk`: find or make its connection, and
 * name the call's fd. `known`: the thread's slot for the SSL*, or NULL. */
static __always_inline void remember_socket_known(__u64 pid_tgid, struct call_state *call,
						  struct sock *sk, struct known_conn *known)
{
	__u64 ends = conn_ends;	/* before the lookup: an end after it invalidates */
	struct conn_key key = { .pid = pid_tgid >> 32, .ssl = call->ssl };
	struct conn_state *conn = bpf_map_lookup_elem(&conns, &key);
	struct sock_link link = { .key = key };
	struct conn_state fresh = {};
	__u64 sk_id = (__u64)sk;

	if (conn && conn->sk == sk_id) {
		call->fd = conn->fd;
		remember_known(known, call, sk_id, conn->fd, ends);
		return;
	}
	if (conn && conn->sk) {
		/* The SSL* is on another socket now: that connection ended. */
		end_connection(&key, conn->conn_id, CLOSE_SSL_MOVED, (__u32)pid_tgid);
		conn = NULL;
	}
	fresh.fd = find_fd(sk);
	fresh.sk = sk_id;
	fresh.cookie = bpf_get_socket_cookie(sk);
	fresh.uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
	if (conn) {
		/* Created by a call before any socket was known: the same
		 * connection, so it keeps its id and its unreported losses. */
		fresh.conn_id = conn->conn_id;
		fresh.lost_records = conn->lost_records;
		fresh.lost_bytes = conn->lost_bytes;
	} else {
		fresh.conn_id = new_conn_id();
	}
	read_endpoints(sk, &fresh);
	call->fd = fresh.fd;
	link.conn_id = fresh.conn_id;
	if (!bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY))
		remember_known(known, call, sk_id, fresh.fd, ends);
	bpf_map_update_elem(&sock_conns, &sk_id, &link, BPF_ANY);
}

/* The same for a call with no thread slot (gotls.bpf.c's goroutines). */
static __always_inline __attribute__((unused)) void
remember_socket(__u64 pid_tgid, struct call_state *call, struct sock *sk)
{
	remember_socket_known(pid_tgid, call, sk, NULL);
}

/* The current thread's name, as bpf_get_current_comm gives it, read
 * directly from its task: two 8-byte loads instead of a helper call. The
 * bytes are the helper's: task->comm is NUL-padded by every writer
 * (__set_task_comm uses strscpy_pad since Linux 6.2; before, bytes after
 * the NUL could differ, which no decoder reads: they cut at the NUL). */
static __always_inline void read_comm(char *comm)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 *out = (__u64 *)comm;

	out[0] = *(__u64 *)&task->comm[0];
	out[1] = *(__u64 *)&task->comm[8];
}

static __always_inline void fill_header(struct record_header *header, __u32 kind,
					__u64 pid_tgid, __u64 ssl, const struct conn_state *conn)
{
	header->kind = kind;
	header->pid = pid_tgid >> 32;
	header->tid = (__u32)pid_tgid;
	header->uid = (__u32)bpf_get_current_uid_gid();
	header->timestamp_ns = bpf_ktime_get_ns();
	header->conn_id = conn ? conn->conn_id : 0;	/* 0: no conns entry could be made */
	header->ssl = ssl;
	header->socket_cookie = conn ? conn->cookie : 0;
	read_comm(header->comm);
}

/* The thread's slot for an SSL* (Fibonacci hashing of the pointer). */
static __always_inline struct known_conn *known_slot(struct thread_state *thread, __u64 ssl)
{
	return &thread->known[((ssl * 0x9E3779B97F4A7C15ULL) >> 60) & (KNOWN_CONNS - 1)];
}

/* Whether this thread found the call's SSL* on this socket before and no
 * connection ended since: then its conns entry is the one that was seen
 * (same connection id, socket and fd) and needs no lookup. The entry could
 * also go silently (LRU eviction), but call_return looks it up on every
 * call, so a connection in use is never the least recently used; and
 * call_return forgets the slot when it finds no entry. */
static __always_inline bool known_socket(const struct known_conn *known,
					 const struct call_state *call, __u64 sk_id)
{
	return known->ssl == call->ssl && known->sk == sk_id && known->ends == conn_ends;
}

static __always_inline int on_socket_io(struct sock *sk)
{
	struct thread_state *thread = bpf_task_storage_get(&calls, bpf_get_current_task_btf(),
							   0, 0);
	struct known_conn *known;
	struct call_state *call;

	/* Not inside an SSL call we trace, or its socket is known already. */
	if (!thread || !thread->call.active || thread->call.resolved)
		return 0;
	call = &thread->call;
	call->resolved = 1;
	known = known_slot(thread, call->ssl);
	if (known_socket(known, call, (__u64)sk)) {
		call->fd = known->fd;	/* as remember_socket would: conn->fd */
		return 0;
	}
	remember_socket_known(bpf_get_current_pid_tgid(), call, sk, known);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send, struct sock *sk, int ret, int flags)
{
	return on_socket_io(sk);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv, struct sock *sk, int ret, int flags)
{
	return on_socket_io(sk);
}

/* Our side closes (FIN sent) or the connection is reset: the connection ends
 * here. Often softirq context, so who owns it comes from the maps. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 sk_id = (__u64)sk;
	struct sock_link *found;
	struct sock_link link;

	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_LAST_ACK && newstate != TCP_CLOSE)
		return 0;
	found = bpf_map_lookup_elem(&sock_conns, &sk_id);
	/* Not the socket of a TLS connection we saw. */
	if (!found)
		return 0;
	link = *found;
	bpf_map_delete_elem(&sock_conns, &sk_id);
	/* tid 0: often softirq context, where the owner is not current. */
	end_connection(&link.key, link.conn_id, CLOSE_TCP, 0);
	return 0;
}

/* SSL_free(ssl) / SSL_clear(ssl), entry only: the connection of this SSL*
 * ends here whatever its transport (memory BIOs, non-TCP sockets), and a
 * reused SSL* (SSL_clear, or an address handed out again after SSL_free)
 * starts a new connection id. OpenSSL also calls SSL_clear at the start of
 * every first handshake (statem.c state_machine), before any data. */
static __always_inline int end_ssl(struct pt_regs *ctx, __u8 cause)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct conn_key key = { .pid = pid_tgid >> 32, .ssl = PT_REGS_PARM1(ctx) };

	/* Filtered out. */
	if (!wanted(pid_tgid))
		return 0;
	end_connection(&key, 0, cause, (__u32)pid_tgid);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_free_enter)
{
	return end_ssl(ctx, CLOSE_SSL_FREE);
}

SEC("uprobe")
int BPF_KPROBE(ssl_clear_enter)
{
	return end_ssl(ctx, CLOSE_SSL_CLEAR);
}

/* NSS/NSPR (ecapture nss). PR_Read/PR_Write/PR_Send/PR_Recv/PR_Writev
 * dispatch on any PRFileDesc: files, plain sockets, and each layer of an
 * I/O stack. A call is TLS plaintext only when its PRFileDesc is NSS's SSL
 * layer, i.e. its identity is the process's ssl_layer_id. That id is not
 * exported; SSL_ImportFD returns the SSL layer (NSS sslsock.c pushes it on
 * top of the stack, and PR_PushIOLayer swaps the top's contents in place),
 * so its return tells each process's id; user space writes the id of
 * processes already running (src/ecapture/modules/nss.py after_attach). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);	/* tgid */
	__type(value, __s32);	/* the SSL layer's PRDescIdentity */
} nss_ssl_identity SEC(".maps");

/* struct PRFileDesc (NSPR prio.h): methods, secret, lower, higher, dtor,
 * then PRDescIdentity identity (an int). NSPR's ABI, stable since 4.0. */
#define PRFILEDESC_IDENTITY_OFFSET 40

static __always_inline bool nss_ssl_layer(__u64 pid_tgid, __u64 fd)
{
	__u32 pid = pid_tgid >> 32;
	__s32 *ssl_id = bpf_map_lookup_elem(&nss_ssl_identity, &pid);
	__s32 identity;

	if (!ssl_id || !fd)
		return false;
	if (bpf_probe_read_user(&identity, sizeof(identity),
				(void *)(fd + PRFILEDESC_IDENTITY_OFFSET)))
		return false;
	return identity == *ssl_id;
}

/* SSL_ImportFD(model, fd) -> PRFileDesc *: the new SSL layer. */
SEC("uretprobe")
int BPF_KRETPROBE(nss_import_return, __u64 fd)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	__s32 identity;

	/* Filtered out, or the import failed (NULL). */
	if (!wanted(pid_tgid) || !fd)
		return 0;
	/* Unreadable: the id stays unknown until the next import. */
	if (bpf_probe_read_user(&identity, sizeof(identity),
				(void *)(fd + PRFILEDESC_IDENTITY_OFFSET)))
		return 0;
	bpf_map_update_elem(&nss_ssl_identity, &pid, &identity, BPF_ANY);
	return 0;
}

static __always_inline int nspr_enter(struct pt_regs *ctx, __u8 direction, __u8 ex)
{
	/* Not the SSL layer (a file, a plain socket, another layer): the
	 * calls slot is left alone, so the thread's SSL call stays intact. */
	if (!nss_ssl_layer(bpf_get_current_pid_tgid(), PT_REGS_PARM1(ctx)))
		return 0;
	return enter(ctx, direction, ex);
}

/* PR_Write(fd, buf, amount) / PR_Send(fd, buf, amount, flags, timeout) -> PRInt32 */
SEC("uprobe")
int BPF_KPROBE(nspr_send_enter)
{
	return nspr_enter(ctx, DIRECTION_SEND, 0);
}

/* PR_Read(fd, buf, amount) / PR_Recv(fd, buf, amount, flags, timeout) -> PRInt32 */
SEC("uprobe")
int BPF_KPROBE(nspr_recv_enter)
{
	return nspr_enter(ctx, DIRECTION_RECV, 0);
}

/* PR_Writev(fd, const PRIOVec *iov, PRInt32 iov_size, timeout) -> PRInt32 */
SEC("uprobe")
int BPF_KPROBE(nspr_writev_enter)
{
	return nspr_enter(ctx, DIRECTION_SEND, CALL_IOV);
}

struct emit_context {
	__u64 buf;
	__u64 copy_len;		/* bytes of this segment (the whole call but for gather writes) */
	__u64 call_offset;	/* where the segment starts in the call */
	__u8 final;		/* the call's last segment: its last chunk ends the call */
	struct conn_key key;
};

/* Linux 6.16+: copy user memory straight into a dynptr (here: a ring
 * record), any size up to the dynptr's. */
extern int bpf_probe_read_user_dynptr(struct bpf_dynptr *dptr, __u32 off, __u32 size,
				      const void *unsafe_ptr__ign) __ksym;

#define DATA_HEADER_SIZE (sizeof(struct tls_data_event) - MAX_CHUNK_SIZE)
#ifndef DIRECT_READ_MIN
/* Chunks of more bytes than this are read straight into their ring record;
 * smaller ones through the scratch and bpf_ringbuf_output, which takes
 * fewer helper calls (measured: docs/performance.md#kernel-side-cost). */
#define DIRECT_READ_MIN 4096
#endif

/* Copy the chunk's `size` bytes at `user` into the ring as the record whose
 * header is `event` (the scratch): 0 done, 1 read fault (nothing submitted),
 * -1 ring full. */
static __always_inline int output_chunk(struct tls_data_event *event, __u64 size, __u64 user)
{
	__u64 wakeup = ring_flags(DATA_HEADER_SIZE + size);
	struct tls_data_event *out;
	struct bpf_dynptr record;

	if (size <= DIRECT_READ_MIN) {
		if (bpf_probe_read_user(event->data, size, (void *)user))
			return 1;
		return bpf_ringbuf_output(&events, event, DATA_HEADER_SIZE + size, wakeup) ? -1 : 0;
	}
	if (bpf_ringbuf_reserve_dynptr(&events, DATA_HEADER_SIZE + size, 0, &record)) {
		bpf_ringbuf_discard_dynptr(&record, 0);	/* a failed one is released too */
		return -1;
	}
	out = bpf_dynptr_data(&record, 0, DATA_HEADER_SIZE);
	if (!out) {	/* cannot happen: the record is larger; the verifier wants the test */
		bpf_ringbuf_discard_dynptr(&record, 0);
		return -1;
	}
	__builtin_memcpy(out, event, DATA_HEADER_SIZE);
	if (bpf_probe_read_user_dynptr(&record, DATA_HEADER_SIZE, size, (void *)user)) {
		bpf_ringbuf_discard_dynptr(&record, BPF_RB_NO_WAKEUP);
		return 1;
	}
	bpf_ringbuf_submit_dynptr(&record, wakeup);
	return 0;
}

/* One chunk of a call, at `offset` of the segment, its header built in the
 * scratch `event` (filled by the caller). `conn` is the call's connection
 * (NULL: none could be made), looked up once by the caller, so the common
 * single-chunk call does one conns lookup. */
static __always_inline long put_chunk(struct emit_context *emit, struct tls_data_event *event,
				      struct conn_state *conn, __u64 offset)
{
	__u64 size;
	__u32 lost_records = 0;
	__u64 lost_bytes = 0;
	int result;

	size = emit->copy_len - offset;
	if (size > MAX_CHUNK_SIZE)
		size = MAX_CHUNK_SIZE;
	barrier_var(size);
	if (size > MAX_CHUNK_SIZE)	/* for the verifier: size is bounded */
		return 1;
	event->offset = emit->call_offset + offset;
	event->data_len = size;
	if (emit->final && offset + size >= emit->copy_len)
		event->flags |= DATA_FLAG_LAST_CHUNK;
	if (conn) {
		lost_records = conn->lost_records;
		lost_bytes = conn->lost_bytes;
	}
	event->lost_records = lost_records;
	event->lost_bytes = lost_bytes;
	result = output_chunk(event, size, emit->buf + offset);
	if (result > 0) {
		/* Not resident (probe reads cannot fault pages in): say so on
		 * this connection with an empty record, go on with the next chunk. */
		stat_add(STAT_READ_FAULTS, 1);
		event->flags |= DATA_FLAG_READ_FAULT;
		result = bpf_ringbuf_output(&events, event, DATA_HEADER_SIZE,
					    ring_flags(DATA_HEADER_SIZE)) ? -1 : 0;
		event->flags &= ~DATA_FLAG_READ_FAULT;
	}
	if (result < 0) {
		stat_add(STAT_RING_FULL_RECORDS, 1);
		stat_add(STAT_RING_FULL_BYTES, size);
		if (conn) {
			__sync_fetch_and_add(&conn->lost_records, 1);
			__sync_fetch_and_add(&conn->lost_bytes, size);
		}
		return 0;
	}
	stat_add(STAT_RECORDS, 1);
	if (conn && lost_records) {	/* reported in-band just now */
		__sync_fetch_and_add(&conn->lost_records, -(__u64)lost_records);
		__sync_fetch_and_add(&conn->lost_bytes, -lost_bytes);
	}
	return 0;
}

/* bpf_loop callback: chunk `index` of the segment (also called directly
 * for one chunk), its scratch record and connection looked up here. */
static long emit_chunk(__u32 index, struct emit_context *emit)
{
	__u32 zero = 0;
	struct tls_data_event *event = bpf_map_lookup_elem(&scratch, &zero);
	__u64 offset = (__u64)index * MAX_CHUNK_SIZE;

	if (!event || offset >= emit->copy_len)
		return 1;
	return put_chunk(emit, event, bpf_map_lookup_elem(&conns, &emit->key), offset);
}

/* One segment of a gather write, as chunks. A global function, so the
 * verifier checks it once with unknown arguments: inlined in emit_iov's loop
 * of 16 it was walked through ~200k instructions, ~0.3 s of every start. */
__noinline int emit_segment(struct emit_context *emit)
{
	struct emit_context local;	/* bpf_loop's context must be on this stack */

	if (!emit)
		return 0;
	local = *emit;
	if (local.copy_len <= MAX_CHUNK_SIZE)
		return emit_chunk(0, &local);
	bpf_loop((local.copy_len + MAX_CHUNK_SIZE - 1) / MAX_CHUNK_SIZE, emit_chunk, &local, 0);
	return 0;
}

/* PRIOVec (NSPR prio.h): { char *iov_base; int iov_len; }, at most
 * PR_MAX_IOVECTOR_SIZE (16) of them per PR_Writev. */
struct pr_iovec {
	__u64 base;
	__s32 len;
	__s32 _pad;
};
#define MAX_IOV 16

/* A gather write: the first emit->copy_len bytes of the iovecs, in order,
 * each vector a segment of the one call (offsets continue across them). */
static __always_inline void emit_iov(struct emit_context *emit, __u64 iov, __u64 count)
{
	__u64 total = emit->copy_len;
	__u64 done = 0;
	struct pr_iovec vec;
	__u64 seg;

	for (__u32 i = 0; i < MAX_IOV; i++) {
		if (i >= count || done >= total)
			break;
		if (bpf_probe_read_user(&vec, sizeof(vec), (void *)(iov + i * sizeof(vec)))) {
			/* The vector is gone: the rest of the call is unknown; its
			 * chunks read from address 0 and fault, each an empty
			 * fault record, so the bytes are counted, not dropped. */
			vec.base = 0;
			vec.len = total - done;
			count = i + 1;
		}
		seg = vec.len > 0 ? (__u64)vec.len : 0;
		if (seg > total - done)
			seg = total - done;
		if (!seg)
			continue;
		emit->buf = vec.base;
		emit->copy_len = seg;
		emit->call_offset = done;
		emit->final = done + seg >= total;
		emit_segment(emit);
		done += seg;
	}
}

SEC("uretprobe")
int BPF_KRETPROBE(call_return, int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct thread_state *thread = bpf_task_storage_get(&calls, bpf_get_current_task_btf(),
							   0, 0);
	struct emit_context emit = {};
	struct conn_state fresh = {};
	struct tls_data_event *event;
	struct conn_state *conn;
	struct call_state call;
	__u32 zero = 0;
	__u8 fault = 0;
	__u64 len;

	if (!thread || !thread->call.active)
		return 0;
	call = thread->call;
	thread->call.active = 0;
	/* A handshake moves no application data; it was there for the fd. */
	if (call.direction == CALL_HANDSHAKE)
		return 0;
	/* Failed, or retried later (e.g. WANT_READ before the handshake
	 * ends): nothing moved, so nothing is reported. */
	if (ret <= 0)
		return 0;
	if (call.ex == 1) {
		if (bpf_probe_read_user(&len, sizeof(len), (void *)call.out_ptr)) {
			/* How much moved is unknown: an empty fault record says so. */
			stat_add(STAT_READ_FAULTS, 1);
			fault = 1;
			len = 0;
		}
	} else {
		len = ret;
	}
	/* Nothing moved. */
	if (!len && !fault)
		return 0;

	emit.key.pid = pid_tgid >> 32;
	emit.key.ssl = call.ssl;
	conn = bpf_map_lookup_elem(&conns, &emit.key);
	if (!conn) {	/* no syscall named the fd yet: a home for its id and loss counts */
		fresh.fd = call.fd;
		fresh.conn_id = new_conn_id();
		fresh.uid = (__u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
		bpf_map_update_elem(&conns, &emit.key, &fresh, BPF_NOEXIST);
		conn = bpf_map_lookup_elem(&conns, &emit.key);
		/* Its socket is not in the entry: the next socket I/O must look
		 * (known_socket trusts only an entry it saw with its socket). */
		known_slot(thread, call.ssl)->ssl = 0;
	}
	event = bpf_map_lookup_elem(&scratch, &zero);
	/* Cannot happen (a one-entry array); the verifier wants the test. */
	if (!event)
		return 0;
	fill_header(&event->header, RECORD_TLS_DATA, pid_tgid, call.ssl, conn);
	event->fd = call.fd >= 0 ? call.fd : (conn ? conn->fd : -1);
	event->direction = call.direction;
	event->flags = 0;
	event->call_id = event->header.timestamp_ns ^ ((__u64)(__u32)pid_tgid << 32);
	event->call_len = len;
	if (conn) {
		event->local = conn->local;
		event->remote = conn->remote;
	} else {
		__builtin_memset(&event->local, 0, sizeof(event->local));
		__builtin_memset(&event->remote, 0, sizeof(event->remote));
	}
	if (fault) {
		event->flags = DATA_FLAG_READ_FAULT | DATA_FLAG_LAST_CHUNK;
		event->offset = 0;
		event->data_len = 0;
		event->lost_records = 0;
		event->lost_bytes = 0;
		if (bpf_ringbuf_output(&events, event, sizeof(*event) - MAX_CHUNK_SIZE,
				       ring_flags(sizeof(*event) - MAX_CHUNK_SIZE))) {
			stat_add(STAT_RING_FULL_RECORDS, 1);
			if (conn)
				__sync_fetch_and_add(&conn->lost_records, 1);
		} else {
			stat_add(STAT_RECORDS, 1);
		}
		return 0;
	}
	emit.buf = call.buf;
	emit.copy_len = len;
	emit.final = 1;
	if (len > call_limit) {
		emit.copy_len = call_limit;
		event->flags |= DATA_FLAG_TRUNCATED;
		stat_add(STAT_TRUNCATED_CALLS, 1);
		stat_add(STAT_TRUNCATED_BYTES, len - call_limit);
	}
	if (call.ex == CALL_IOV) {
		emit_iov(&emit, call.buf, call.out_ptr);
		return 0;
	}
	if (emit.copy_len <= MAX_CHUNK_SIZE)
		put_chunk(&emit, event, conn, 0);	/* the common case: no bpf_loop call */
	else
		bpf_loop((emit.copy_len + MAX_CHUNK_SIZE - 1) / MAX_CHUNK_SIZE, emit_chunk,
			 &emit, 0);
	return 0;
}
