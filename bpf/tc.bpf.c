// SPDX-License-Identifier: GPL-2.0
/*
 * Packets of one interface for pcapng (ecapture tls -m pcap).
 *
 * Two TC clsact programs (ingress, egress) copy each packet, cut to the snap
 * length, into the ring with its socket cookie; they never change a packet's
 * fate (TC_ACT_OK, "continue with the next action": tc-bpf(8)). The filter
 * expression is applied in user space for now.
 *
 * TC runs without a process (often in softirq), so the process of a packet
 * comes from its socket: three tracing programs that only fire in process
 * context map each socket cookie to the process using it: connect()
 * (inet_sock_set_state to SYN_SENT is made by tcp_v4_connect in the caller)
 * and every send/recv system call (sock_send_length, sock_recv_length:
 * sock_sendmsg/sock_recvmsg). A state change seen in softirq is not used:
 * its current task is whoever was interrupted.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_OK 0	/* include/uapi/linux/pkt_cls.h */

const struct tc_packet_event *unused_tc_packet_event __attribute__((unused));
const struct sock_owner *unused_sock_owner __attribute__((unused));

#define TCP_SYN_SENT 2	/* include/net/tcp_states.h */

/* Written by the loader before load: bytes kept of each packet. */
const volatile __u32 snaplen = TC_PACKET_MAX;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);	/* the loader may resize it */
} packets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TC_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);	/* socket cookie */
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

static void add(__u32 index, __u64 value)
{
	__u64 *counter = bpf_map_lookup_elem(&tc_stats, &index);

	if (counter)	/* always true for an index below max_entries */
		*counter += value;
}

/* A ring reservation has a constant size; one per size class keeps a
 * 66-byte ACK from taking a 64 KiB slot. Inlined per class so that the
 * verifier sees `caplen <= size` at each copy. */
static __always_inline int submit(struct __sk_buff *skb, __u8 direction, __u64 caplen,
				  const __u64 size)
{
	struct tc_packet_event *event;

	event = bpf_ringbuf_reserve(&packets, offsetof(struct tc_packet_event, data) + size, 0);
	if (!event) {
		add(TC_STAT_RING_FULL, 1);
		add(TC_STAT_RING_FULL_BYTES, caplen);
		return TC_ACT_OK;	/* counted; the packet itself goes on */
	}
	/* The caller chose size >= caplen; the barrier keeps clang from
	 * dropping this clamp, which is what tells the verifier. */
	asm volatile("" : "+r"(caplen));
	if (caplen > size)
		caplen = size;
	event->kind = RECORD_TC_PACKET;
	event->ifindex = skb->ifindex;
	event->timestamp_ns = bpf_ktime_get_ns();
	event->socket_cookie = bpf_get_socket_cookie(skb);
	event->len = skb->len;
	event->caplen = caplen;
	event->direction = direction;
	if (caplen && bpf_skb_load_bytes(skb, 0, event->data, caplen)) {
		bpf_ringbuf_discard(event, 0);
		add(TC_STAT_LOAD_FAULTS, 1);
		return TC_ACT_OK;	/* counted; the packet itself goes on */
	}
	bpf_ringbuf_submit(event, 0);
	add(TC_STAT_PACKETS, 1);
	return TC_ACT_OK;
}

static int capture(struct __sk_buff *skb, __u8 direction)
{
	__u32 caplen = skb->len;

	if (caplen > snaplen)
		caplen = snaplen;
	if (caplen <= 128)
		return submit(skb, direction, caplen, 128);
	if (caplen <= 512)
		return submit(skb, direction, caplen, 512);
	if (caplen <= 2048)
		return submit(skb, direction, caplen, 2048);
	if (caplen <= 8192)
		return submit(skb, direction, caplen, 8192);
	if (caplen <= 16384)
		return submit(skb, direction, caplen, 16384);
	return submit(skb, direction, caplen, TC_PACKET_MAX);
}

SEC("tc")
int ecap_tc_ingress(struct __sk_buff *skb)
{
	return capture(skb, TC_INGRESS);
}

SEC("tc")
int ecap_tc_egress(struct __sk_buff *skb)
{
	return capture(skb, TC_EGRESS);
}

static void remember_owner(struct sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sock_owner owner = {
		.pid = pid_tgid >> 32,
		.tid = (__u32)pid_tgid,
	};
	struct sock_owner *known = bpf_map_lookup_elem(&sock_owners, &cookie);

	if (known && known->tid == owner.tid)
		return;	/* already known: no update on every call */
	bpf_get_current_comm(owner.comm, sizeof(owner.comm));
	bpf_map_update_elem(&sock_owners, &cookie, &owner, BPF_ANY);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(owner_on_send, struct sock *sk, int ret, int flags)
{
	remember_owner(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(owner_on_recv, struct sock *sk, int ret, int flags)
{
	remember_owner(sk);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(owner_on_connect, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate != TCP_SYN_SENT)
		return 0;	/* other transitions may run in softirq: no process */
	remember_owner((struct sock *)sk);
	return 0;
}
