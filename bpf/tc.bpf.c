// SPDX-License-Identifier: GPL-2.0
/*
 * Packets of one interface for pcapng (ecapture tls -m pcap).
 *
 * Two TC clsact programs (ingress, egress) copy each packet, cut to the snap
 * length, into the ring with its socket cookie; they never change a packet's
 * fate (TC_ACT_OK, "continue with the next action": tc-bpf(8)). The filter
 * expression is applied in user space for now.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_OK 0	/* include/uapi/linux/pkt_cls.h */

const struct tc_packet_event *unused_tc_packet_event __attribute__((unused));

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
