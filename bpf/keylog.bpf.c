// SPDX-License-Identifier: GPL-2.0
/*
 * TLS secrets as the library derives them (ecapture tls -m keylog / -m pcap).
 *
 * One uprobe on the function src/ecapture/elf/keylog_hook.py proves to be
 * the library's key-log entry point; it runs for every secret, whether or
 * not the program set a key-log callback, and copies label, client random
 * and secret into one ring record:
 *   on_nss_keylog_int  OpenSSL's static nss_keylog_int(label, ssl,
 *                      client_random, client_random_len, secret, secret_len)
 *   on_ssl_log_secret  ssl_log_secret(ssl, label, secret, secret_len):
 *                      BoringSSL's bssl::ssl_log_secret (Span secret = {data,
 *                      size}) or OpenSSL's with nss_keylog_int inlined into it;
 *                      the client random is at *(ssl + deref) + offset or at
 *                      ssl + offset, as the attach cookie says (KEYLOG_COOKIE_*).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/* Keep the record type in the object's BTF: the layout test reads it. */
const struct keylog_event *unused_keylog_event __attribute__((unused));

/* Written by the loader before load (0 = every process; -u sets the uid). */
const volatile __u32 target_pid = 0;
const volatile __u32 target_uid = 0;
const volatile __u32 filter_uid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);	/* ~5000 records: secrets come a few per handshake */
} keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KEYLOG_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} keylog_stats SEC(".maps");

/* The attach cookie of on_ssl_log_secret (KeylogHook.cookie in
 * src/ecapture/elf/keylog_hook.py): the random's offset in bits 0-31; with
 * bit 63 set, first a pointer is read at ssl + bits 32-62. */
#define KEYLOG_COOKIE_DEREF		(1ULL << 63)
#define KEYLOG_COOKIE_DEREF_SHIFT	32
#define KEYLOG_COOKIE_DEREF_MASK	0x7fffffffULL

/* The sixth argument register: libbpf 1.1 has no PT_REGS_PARM6. */
#if defined(__TARGET_ARCH_x86)
#define KEYLOG_PARM6(regs) ((regs)->r9)
#elif defined(__TARGET_ARCH_arm64)
#define KEYLOG_PARM6(regs) ((regs)->regs[5])
#else
#error "keylog.bpf.c: sixth argument register unknown for this architecture"
#endif

static void count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&keylog_stats, &index);

	if (counter)	/* always true for an index below max_entries */
		*counter += 1;
}

/* Inlined: a BPF subprogram takes at most 5 arguments. */
static __always_inline int submit(__u64 ssl, const char *label, const __u8 *random,
				  __u64 random_len, const __u8 *secret, __u64 secret_len)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct keylog_event *event;
	long copied;

	if (target_pid && pid_tgid >> 32 != target_pid)
		return 0;	/* another process */
	if (filter_uid && (__u32)bpf_get_current_uid_gid() != target_uid)
		return 0;	/* another user */
	event = bpf_ringbuf_reserve(&keys, sizeof(*event), 0);
	if (!event) {
		count(KEYLOG_STAT_RING_FULL);
		return 0;	/* counted: user space reports it as lost */
	}
	event->header.kind = RECORD_KEYLOG_SECRET;
	event->header.pid = pid_tgid >> 32;
	event->header.tid = (__u32)pid_tgid;
	event->header.uid = (__u32)bpf_get_current_uid_gid();
	event->header.timestamp_ns = bpf_ktime_get_ns();
	/* No connection id here (tls.bpf.c allocates those): the SSL* says
	 * which handshake a secret belongs to. */
	event->header.conn_id = 0;
	event->header.ssl = ssl;
	event->header.socket_cookie = 0;
	bpf_get_current_comm(event->header.comm, sizeof(event->header.comm));
	event->random_len = random_len;
	event->secret_len = secret_len;
	event->flags = 0;

	copied = bpf_probe_read_user_str(event->label, sizeof(event->label), label);
	event->label_len = copied > 0 ? copied - 1 : 0;
	if (copied <= 0)
		event->flags |= KEYLOG_FLAG_READ_FAULT;
	if (random_len > KEYLOG_RANDOM_SIZE) {
		event->flags |= KEYLOG_FLAG_RANDOM_TOO_LONG;
	} else if (bpf_probe_read_user(event->random, random_len, random)) {
		event->flags |= KEYLOG_FLAG_READ_FAULT;
	}
	if (secret_len > KEYLOG_SECRET_SIZE) {
		event->flags |= KEYLOG_FLAG_SECRET_TOO_LONG;
	} else if (bpf_probe_read_user(event->secret, secret_len, secret)) {
		event->flags |= KEYLOG_FLAG_READ_FAULT;
	}
	bpf_ringbuf_submit(event, 0);
	count(KEYLOG_STAT_RECORDS);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(on_nss_keylog_int, const char *label, void *ssl, const __u8 *random,
	       __u64 random_len, const __u8 *secret)
{
	return submit((__u64)ssl, label, random, random_len, secret, KEYLOG_PARM6(ctx));
}

SEC("uprobe")
int BPF_KPROBE(on_ssl_log_secret, void *ssl, const char *label, const __u8 *secret,
	       __u64 secret_len)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 base = (__u64)ssl;

	/* ssl->s3 (BoringSSL), then its client_random: both offsets proven in
	 * the library. A failed read leaves base 0: reading the random from
	 * near 0 then faults and the record is flagged, never written as a key. */
	if (cookie & KEYLOG_COOKIE_DEREF) {
		__u64 at = (cookie >> KEYLOG_COOKIE_DEREF_SHIFT) & KEYLOG_COOKIE_DEREF_MASK;

		if (bpf_probe_read_user(&base, sizeof(base), (const __u8 *)ssl + at))
			base = 0;
	}
	return submit((__u64)ssl, label, (const __u8 *)(base ? base + (__u32)cookie : 0),
		      KEYLOG_RANDOM_SIZE, secret, secret_len);
}
