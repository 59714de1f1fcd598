// SPDX-License-Identifier: GPL-2.0
/*
 * Go crypto/tls plaintext and secrets (ecapture gotls -m text|keylog|pcap).
 *
 * The connection bookkeeping is bpf/tls.bpf.c's, included whole: the same
 * conns/sock_conns maps, connection ids, close records (its sock_state
 * program) and data records, with header.ssl = the *tls.Conn. Only the
 * probes differ, for Go's register ABI (Go >= 1.17, amd64; Go's
 * internal/abi docs "ABI Internal"): integer arguments and results in RAX,
 * RBX, RCX, RDI, RSI, R8, R9, R10, R11; R14 holds the current goroutine (g).
 *
 *   (*Conn).Write(b []byte) (n int, err error)  entry: RAX c, RBX b.ptr, RCX b.len;
 *                                               reported there once its socket is known
 *   (*Conn).Read(b []byte) (n int, err error)   at each RET: RAX n
 *
 * No uretprobes (the kernel's return trampoline would move with a growing
 * goroutine stack): every RET of Read and Write is probed instead, found in
 * user space with capstone.
 *
 * A call in flight is keyed by (pid, g), not by thread: a goroutine blocked
 * in Read/Write parks and may resume on another thread, while its first
 * thread runs other goroutines. The socket of a call comes from its nested
 * socket I/O (tp_btf sock_send_length/sock_recv_length, as in tls.bpf.c):
 * there the goroutine is read from R14 of the task's saved user registers,
 * the value it had at the syscall instruction (Go's syscall entry
 * internal/runtime/syscall.Syscall6 is ABIInternal assembly that keeps R14).
 *
 * A buffer on the goroutine's stack moves when the stack grows during the
 * call (runtime/stack.go copystack adjusts pointers into it by
 * new.hi - old.hi): at return the buffer pointer is adjusted the same way
 * when g.stack changed (g.stack {lo, hi} is g's first field).
 */
#include "tls.bpf.c"

/* Its data and close records are RECORD_TLS_DATA/RECORD_CONN_CLOSE, its
 * secrets RECORD_KEYLOG_SECRET; its own: RECORD_GO_UNSEEN (bpf/events.h). */
const struct go_unseen_event *unused_go_unseen_event __attribute__((unused));

#define GO_CALL_READ 0	/* = DIRECTION_RECV */
#define GO_CALL_WRITE 1	/* = DIRECTION_SEND */

struct go_key {
	__u32 pid;
	__u32 _pad;
	__u64 g;
};

struct go_call {
	struct call_state call;	/* ssl = the *tls.Conn */
	__u64 stack_lo;		/* g.stack at entry */
	__u64 stack_hi;
};

/* Calls in flight; LRU so that a goroutine that never returns (a panic
 * unwinding through Read) cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct go_key);
	__type(value, struct go_call);
} go_calls SEC(".maps");

/* Handshakes in flight, by goroutine: (*Conn).handshakeContext(ctx), RAX c.
 * Their socket I/O names a connection's fd before its first Read, which may
 * find its first record already read during the handshake (a Go server
 * handshakes before it reads: net/http's conn.serve). Apart from go_calls:
 * Read and Write run the handshake themselves on a new connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct go_key);
	__type(value, struct call_state);
} go_handshakes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);	/* secrets come a few per handshake */
} keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KEYLOG_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} keylog_stats SEC(".maps");

const struct keylog_event *unused_go_keylog_event __attribute__((unused));

/* One data record (or its chunks) of a call that moved `len` bytes at `buf`. */
static __always_inline void go_emit(__u64 pid_tgid, const struct call_state *call, __u64 buf,
				    __u64 len)
{
	struct emit_context emit = {};
	struct conn_state fresh = {};
	struct tls_data_event *event;
	struct conn_state *conn;
	__u32 zero = 0;

	emit.key.pid = pid_tgid >> 32;
	emit.key.ssl = call->ssl;
	conn = bpf_map_lookup_elem(&conns, &emit.key);
	if (!conn) {	/* no socket I/O named the fd yet: a home for its id and losses */
		fresh.fd = call->fd;
		fresh.conn_id = new_conn_id();
		fresh.uid = (__u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
		bpf_map_update_elem(&conns, &emit.key, &fresh, BPF_NOEXIST);
		conn = bpf_map_lookup_elem(&conns, &emit.key);
	}
	event = bpf_map_lookup_elem(&scratch, &zero);
	/* Cannot happen (a one-entry array); the verifier wants the test. */
	if (!event)
		return;
	fill_header(&event->header, RECORD_TLS_DATA, pid_tgid, call->ssl, conn);
	event->fd = call->fd >= 0 ? call->fd : (conn ? conn->fd : -1);
	event->direction = call->direction;
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
	emit.buf = buf;
	emit.copy_len = len;
	emit.final = 1;	/* one segment: its last chunk ends the call (and says a cut) */
	if (len > call_limit) {
		emit.copy_len = call_limit;
		event->flags |= DATA_FLAG_TRUNCATED;
		stat_add(STAT_TRUNCATED_CALLS, 1);
		stat_add(STAT_TRUNCATED_BYTES, len - call_limit);
	}
	if (emit.copy_len <= MAX_CHUNK_SIZE)
		emit_chunk(0, &emit);	/* the common case: no bpf_loop call */
	else
		bpf_loop((emit.copy_len + MAX_CHUNK_SIZE - 1) / MAX_CHUNK_SIZE, emit_chunk,
			 &emit, 0);
}

static __always_inline int go_enter(struct pt_regs *ctx, __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_key key = { .pid = pid_tgid >> 32, .g = ctx->r14 };
	struct go_call fresh = {};
	struct conn_state *conn;
	struct conn_key known;

	/* Filtered here so that filtered-out calls cost no map entry. */
	if (!wanted(pid_tgid))
		return 0;
	fresh.call.ssl = ctx->ax;
	fresh.call.buf = ctx->bx;
	fresh.call.fd = -1;
	fresh.call.direction = direction;
	fresh.call.active = 1;
	if (direction == GO_CALL_WRITE && (__s64)ctx->cx > 0) {
		struct go_call *entered = bpf_map_lookup_elem(&go_calls, &key);

		/* This goroutine is still inside the Write it entered: Go restarts a
		 * function from its first instruction once runtime.morestack has
		 * grown the goroutine's stack, so the entry probe fires again for
		 * the same call (same *tls.Conn, same length; the buffer may have
		 * moved with the stack). Its bytes went out the first time. */
		if (entered && !entered->call.active && entered->call.direction == GO_CALL_WRITE &&
		    entered->call.ssl == fresh.call.ssl && entered->call.out_ptr == ctx->cx)
			return 0;
		/* A Write on a connection whose socket is known is reported here,
		 * before its bytes leave: reported at its RET, the peer's answer
		 * (read by another goroutine) could come first. (*Conn).Write
		 * writes all of b unless the connection fails (crypto/tls
		 * conn.go: it returns n < len(b) only with an error). */
		known.pid = key.pid;
		known._pad = 0;
		known.ssl = fresh.call.ssl;
		conn = bpf_map_lookup_elem(&conns, &known);
		if (conn && conn->sk) {
			fresh.call.fd = conn->fd;
			go_emit(pid_tgid, &fresh.call, fresh.call.buf, ctx->cx);
			/* Inactive: its RET has nothing left to report, and knows
			 * the call was seen; its length tells a restart (above). */
			fresh.call.active = 0;
			fresh.call.out_ptr = ctx->cx;
			bpf_map_update_elem(&go_calls, &key, &fresh, BPF_ANY);
			return 0;
		}
	}
	if (bpf_probe_read_user(&fresh.stack_lo, 2 * sizeof(__u64), (void *)key.g))
		fresh.stack_lo = fresh.stack_hi = 0;	/* no adjustment possible */
	bpf_map_update_elem(&go_calls, &key, &fresh, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_write_enter(struct pt_regs *ctx)
{
	return go_enter(ctx, GO_CALL_WRITE);
}

SEC("uprobe")
int go_read_enter(struct pt_regs *ctx)
{
	return go_enter(ctx, GO_CALL_READ);
}

SEC("uprobe")
int go_handshake_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_key key = { .pid = pid_tgid >> 32, .g = ctx->r14 };
	struct call_state fresh = { .ssl = ctx->ax, .fd = -1, .active = 1,
				    .direction = CALL_HANDSHAKE };

	/* Filtered out. */
	if (!wanted(pid_tgid))
		return 0;
	bpf_map_update_elem(&go_handshakes, &key, &fresh, BPF_ANY);
	return 0;
}

/* At each RET of handshakeContext. */
SEC("uprobe")
int go_handshake_return(struct pt_regs *ctx)
{
	struct go_key key = { .pid = bpf_get_current_pid_tgid() >> 32, .g = ctx->r14 };

	bpf_map_delete_elem(&go_handshakes, &key);
	return 0;
}

/* The socket I/O of a goroutine inside Read/Write or a handshake names the
 * socket of its connection. */
static __always_inline int go_socket_io(struct sock *sk)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_key key = { .pid = pid_tgid >> 32 };
	struct call_state *call = NULL;
	struct go_call *found;

	key.g = BPF_CORE_READ(regs, r14);
	found = bpf_map_lookup_elem(&go_calls, &key);
	if (found && found->call.active && !found->call.resolved)
		call = &found->call;
	else if (!found)
		call = bpf_map_lookup_elem(&go_handshakes, &key);
	/* Not a goroutine inside a traced call, or its socket is known already. */
	if (!call || !call->active || call->resolved)
		return 0;
	call->resolved = 1;
	remember_socket(pid_tgid, call, sk);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(go_sock_send, struct sock *sk, int ret, int flags)
{
	return go_socket_io(sk);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(go_sock_recv, struct sock *sk, int ret, int flags)
{
	return go_socket_io(sk);
}

static __always_inline void report_unseen(__u64 pid_tgid, __u64 direction, __s64 ret)
{
	struct go_unseen_event unseen = {};

	unseen.kind = RECORD_GO_UNSEEN;
	unseen.pid = pid_tgid >> 32;
	unseen.tid = (__u32)pid_tgid;
	unseen.direction = direction;
	unseen.timestamp_ns = bpf_ktime_get_ns();
	unseen.bytes = ret;
	bpf_get_current_comm(&unseen.comm, sizeof(unseen.comm));
	if (bpf_ringbuf_output(&events, &unseen, sizeof(unseen), ring_flags(sizeof(unseen))))
		stat_add(STAT_RING_FULL_RECORDS, 1);	/* counted: reported as ring_full */
	else
		stat_add(STAT_RECORDS, 1);
}

/* At a RET of Read (cookie GO_CALL_READ) or Write (GO_CALL_WRITE): n in RAX.
 * A Write gets here only when its socket was not known at entry (the first
 * Write of a connection that handshakes inside it). */
SEC("uprobe")
int go_call_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_key key = { .pid = pid_tgid >> 32, .g = ctx->r14 };
	__u64 direction = bpf_get_attach_cookie(ctx);
	struct go_call *found;
	struct go_call call;
	__u64 stack[2];
	__s64 ret = (__s64)ctx->ax;

	found = bpf_map_lookup_elem(&go_calls, &key);
	if (!found) {
		/* Its entry was not seen (running at attach): say what it moved. */
		if (ret > 0 && wanted(pid_tgid))
			report_unseen(pid_tgid, direction, ret);
		return 0;
	}
	call = *found;
	bpf_map_delete_elem(&go_calls, &key);
	/* A Write reported at its entry. */
	if (!call.call.active)
		return 0;
	/* Not the call this goroutine entered: cannot happen, Read and Write
	 * do not nest; checked so that a mix-up is never reported as data. */
	if (call.call.direction != direction)
		return 0;
	/* Nothing moved (an error, or a zero-length call). */
	if (ret <= 0)
		return 0;
	if (call.stack_hi && !bpf_probe_read_user(stack, sizeof(stack), (void *)key.g) &&
	    stack[1] != call.stack_hi && call.call.buf >= call.stack_lo &&
	    call.call.buf < call.stack_hi)
		call.call.buf += stack[1] - call.stack_hi;	/* moved with the stack */
	go_emit(pid_tgid, &call.call, call.call.buf, ret);
	return 0;
}

static __always_inline void keylog_count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&keylog_stats, &index);

	if (counter)	/* always true for an index below max_entries */
		*counter += 1;
}

/* (*Config).writeKeyLog(label string, clientRandom, secret []byte), entry:
 * RAX c, RBX/RCX label ptr/len, RDI/RSI/R8 clientRandom ptr/len/cap,
 * R9/R10/R11 secret ptr/len/cap. Go strings have no NUL: label_len bytes. */
SEC("uprobe")
int go_write_key_log(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 label_len = ctx->cx, random_len = ctx->si, secret_len = ctx->r10;
	struct keylog_event *event;

	/* Another process. */
	if (!wanted(pid_tgid))
		return 0;
	event = bpf_ringbuf_reserve(&keys, sizeof(*event), 0);
	if (!event) {
		keylog_count(KEYLOG_STAT_RING_FULL);
		return 0;	/* counted: user space reports it as lost */
	}
	event->header.kind = RECORD_KEYLOG_SECRET;
	event->header.pid = pid_tgid >> 32;
	event->header.tid = (__u32)pid_tgid;
	event->header.uid = (__u32)bpf_get_current_uid_gid();
	event->header.timestamp_ns = bpf_ktime_get_ns();
	event->header.conn_id = 0;	/* the client random names the session */
	event->header.ssl = ctx->ax;	/* the *tls.Config */
	event->header.socket_cookie = 0;
	bpf_get_current_comm(event->header.comm, sizeof(event->header.comm));
	event->random_len = random_len;
	event->secret_len = secret_len;
	event->flags = 0;
	__builtin_memset(event->label, 0, sizeof(event->label));
	if (label_len >= KEYLOG_LABEL_SIZE) {
		event->flags |= KEYLOG_FLAG_READ_FAULT;	/* no NSS label is this long */
		label_len = 0;
	} else if (bpf_probe_read_user(event->label, label_len,
				       (void *)ctx->bx)) {
		event->flags |= KEYLOG_FLAG_READ_FAULT;
	}
	event->label_len = label_len;
	if (random_len > KEYLOG_RANDOM_SIZE)
		event->flags |= KEYLOG_FLAG_RANDOM_TOO_LONG;
	else if (bpf_probe_read_user(event->random, random_len, (void *)ctx->di))
		event->flags |= KEYLOG_FLAG_READ_FAULT;
	if (secret_len > KEYLOG_SECRET_SIZE)
		event->flags |= KEYLOG_FLAG_SECRET_TOO_LONG;
	else if (bpf_probe_read_user(event->secret, secret_len, (void *)ctx->r9))
		event->flags |= KEYLOG_FLAG_READ_FAULT;
	bpf_ringbuf_submit(event, 0);
	keylog_count(KEYLOG_STAT_RECORDS);
	return 0;
}
