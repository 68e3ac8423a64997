/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * reply.h (XDP only): answers to the client, built in place of its packet
 * and sent back out the port it came in by (XDP_TX), under a per-CPU rate
 * limit:
 *   - a service without endpoints rejects (kube-proxy and Cilium do): a TCP
 *     RST, an ICMP / ICMPv6 port unreachable for anything else;
 *   - a packet too big for the tunnel once encapsulated gets an ICMP
 *     fragmentation needed / ICMPv6 packet too big with the MTU left for it,
 *     so path MTU discovery works through the load balancer.
 * Replies come from the address the client used (the frontend), keep the
 * frame's VLAN tag and swap its MAC addresses. An ICMP error quotes the
 * start of the client's IP packet (XLB_REPLY_QUOTE bytes at most, rounded
 * down to 4: always the IP header and 8 bytes of L4 for what reaches here).
 *
 * Rate limit: a token bucket per CPU, xlb_reply_rate replies per second
 * with bursts of xlb_reply_burst (load-time constants, LoadOptions; rate 0:
 * never reply). A reply over the limit is not sent: the packet is dropped
 * (XLB_DROP_REPLY_LIMIT). The kernel limits its own ICMP errors the same
 * way (icmp_msgs_per_sec): an attacker must not turn the load balancer into
 * a reflector.
 *
 * API (each returns the XDP verdict and sets *reason)
 *   int xlb_reply_reject(ctx, &pkt, &reason)
 *       TCP RST for a TCP segment (none for a RST), else ICMP port
 *       unreachable. A later fragment is dropped (XLB_DROP_NO_BACKEND).
 *   int xlb_reply_too_big(ctx, &pkt, mtu, &reason)
 *       ICMP fragmentation needed (IPv4) / packet too big (IPv6) with `mtu`.
 */
#ifndef XLB_XDP_REPLY_H
#define XLB_XDP_REPLY_H

#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "encap.h"
#include "bucket.h"

/* Set by the loader (LoadOptions::reply_rate, reply_burst). */
volatile const __u32 xlb_reply_rate = 1000;
volatile const __u32 xlb_reply_burst = 50;

#define XLB_REPLY_QUOTE 128
#define XLB_TCP_RST	0x04
#define XLB_TCP_ACK	0x10

#define XLB_ICMP_PORT_UNREACH	3 /* ICMPv4 destination unreachable code */
#define XLB_ICMP_FRAG_NEEDED	4
#define XLB_ICMPV6_PORT_UNREACH 4 /* ICMPv6 destination unreachable code */

/* Per CPU: credit in nanoseconds of sending time, and when it was topped
 * up. Private to this program (not pinned, not ABI). */
struct reply_bucket {
	__u64 credit_ns;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct reply_bucket));
	__uint(max_entries, 1);
} xlb_reply_bucket SEC(".maps");

/* Takes one reply's worth of credit: 1 if a reply may be sent now. */
static __always_inline int xlb_reply_allowed(void)
{
	struct reply_bucket *b;
	__u32 zero = 0;

	b = bpf_map_lookup_elem(&xlb_reply_bucket, &zero);
	if (!b)
		return 0;
	return xlb_bucket_take(&b->credit_ns, &b->last_ns, bpf_ktime_get_ns(), xlb_reply_rate,
			       xlb_reply_burst);
}

/* Swaps the Ethernet addresses of the frame at data. */
static __always_inline int xlb_reply_swap_mac(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	__u8 mac[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return 0;
}

/* The IP header of a reply at off: from `src` to `dst` (16-byte ABI
 * addresses of `family`), `l4_len` bytes of protocol `proto` after it. */
static __always_inline int xlb_reply_ip(void *data, void *data_end, __u32 off, __u8 family,
					const __u8 *src, const __u8 *dst, __u8 proto, __u16 l4_len)
{
	off &= XLB_L3_OFF_MASK;
	if (family == XLB_FAMILY_V6)
		return xlb_write_ip6(data + off, data_end, src, dst, proto, l4_len, 0);
	return xlb_write_ip4(data + off, data_end, *(const __u32 *)src, *(const __u32 *)dst, proto,
			     XLB_IP4_HLEN + l4_len);
}

/* The pseudo-header of a reply's TCP or ICMPv6 checksum. */
static __always_inline __u64 xlb_reply_pseudo(__u8 family, const __u8 *src, const __u8 *dst,
					      __u8 proto, __u16 l4_len)
{
	const __u32 *s = (const __u32 *)src, *d = (const __u32 *)dst;
	__u64 sum = (__u64)bpf_htons(proto) + bpf_htons(l4_len);

	if (family == XLB_FAMILY_V4)
		return sum + s[0] + d[0];
	return sum + s[0] + s[1] + s[2] + s[3] + d[0] + d[1] + d[2] + d[3];
}

/* An ICMP(v6) error about the packet, in its place (see the top). */
static __always_inline int xlb_reply_icmp(struct xdp_md *ctx, struct xlb_pkt *pkt, __u8 type,
					  __u8 code, __u32 info, __u32 ok, __u32 *reason)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u8 family = pkt->tuple.family, v6 = family == XLB_FAMILY_V6;
	__u32 l3 = xlb_l3_off(pkt), iph = v6 ? XLB_IP6_HLEN : XLB_IP4_HLEN;
	__u32 hdr = iph + sizeof(struct xlb_icmp_hdr), quote = pkt->l3_len, i;
	/* From the frontend the client used, to the client. */
	const __u8 *src = pkt->tuple.daddr, *dst = pkt->tuple.saddr;
	struct xlb_icmp_hdr *ih;
	void *old_l2;
	__u64 sum;
	int rc;

	if (!xlb_reply_allowed())
		return xlb_fail(-XLB_DROP_REPLY_LIMIT, reason);
	if (quote > XLB_REPLY_QUOTE)
		quote = XLB_REPLY_QUOTE;
	quote &= ~3u;

	/* The frame becomes L2 | IP | ICMP | quote: cut it after the quote,
	 * then make room for the new headers in front and move L2 there. */
	if (bpf_xdp_adjust_tail(ctx, (int)(l3 + quote) - (int)(data_end - data)))
		return xlb_fail(-XLB_DROP_ENCAP, reason);
	if (bpf_xdp_adjust_head(ctx, -(int)hdr))
		return xlb_fail(-XLB_DROP_ENCAP, reason);
	data = xlb_ctx_data(ctx);
	data_end = xlb_ctx_data_end(ctx);
	/* Ethernet header (and VLAN tag): at most 18 bytes; for an untagged
	 * frame the last 4 copied land where the IP header is written next.
	 * The old header is further on than its length: no overlap. */
	old_l2 = data + hdr;
	if (old_l2 + 18 > data_end)
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	__builtin_memcpy(data, old_l2 + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(data + ETH_ALEN, old_l2, ETH_ALEN);
	__builtin_memcpy(data + 2 * ETH_ALEN, old_l2 + 2 * ETH_ALEN, 6);

	rc = xlb_reply_ip(data, data_end, l3, family, src, dst, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP,
			  sizeof(*ih) + quote);
	if (rc)
		return xlb_fail(rc, reason);
	ih = data + ((l3 + iph) & XLB_L3_OFF_MASK);
	if ((void *)(ih + 1) > data_end)
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	ih->type = type;
	ih->code = code;
	ih->checksum = 0;
	ih->rest = bpf_htonl(info);
	sum = v6 ? xlb_reply_pseudo(family, src, dst, IPPROTO_ICMPV6, sizeof(*ih) + quote) : 0;
	sum += ((__u32 *)ih)[0] + ((__u32 *)ih)[1];
	for (i = 0; i < XLB_REPLY_QUOTE / 4; i++) {
		__u32 *w = (void *)(ih + 1) + i * 4;

		if (i * 4 >= quote)
			break;
		if ((void *)(w + 1) > data_end)
			return xlb_fail(-XLB_DROP_TRUNCATED, reason);
		sum += *w;
	}
	ih->checksum = ~xlb_csum_fold(sum);
	*reason = ok;
	return XDP_TX;
}

static __always_inline int xlb_reply_too_big(struct xdp_md *ctx, struct xlb_pkt *pkt, __u32 mtu,
					     __u32 *reason)
{
	if (pkt->tuple.family == XLB_FAMILY_V6)
		return xlb_reply_icmp(ctx, pkt, XLB_ICMPV6_PKT_TOOBIG, 0, mtu, XLB_OK_ICMP_TOO_BIG,
				      reason);
	return xlb_reply_icmp(ctx, pkt, XLB_ICMP_DEST_UNREACH, XLB_ICMP_FRAG_NEEDED, mtu & 0xffff,
			      XLB_OK_ICMP_TOO_BIG, reason);
}

/* A TCP RST answering the segment (RFC 9293 3.10.7.1): to a segment with
 * ACK, <SEQ=SEG.ACK><CTL=RST>; else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
 * The frame keeps L2 and gets a new IP header (no options or extension
 * headers) and a bare 20-byte TCP header: never longer than the segment. */
static __always_inline int xlb_reply_rst(struct xdp_md *ctx, struct xlb_pkt *pkt, __u32 *reason)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u8 family = pkt->tuple.family, v6 = family == XLB_FAMILY_V6;
	__u32 l3 = xlb_l3_off(pkt), iph = v6 ? XLB_IP6_HLEN : XLB_IP4_HLEN, seg_len;
	const __u8 *src = pkt->tuple.daddr, *dst = pkt->tuple.saddr;
	struct tcphdr *th = data + xlb_l4_off(pkt);
	__be32 seq = 0, ack_seq = 0;
	__u8 flags = XLB_TCP_RST;
	__u64 sum;
	int rc;

	if ((void *)(th + 1) > data_end)
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	if (th->rst)
		return xlb_fail(-XLB_DROP_NO_BACKEND, reason);
	if (!xlb_reply_allowed())
		return xlb_fail(-XLB_DROP_REPLY_LIMIT, reason);
	if (th->ack) {
		seq = th->ack_seq;
	} else {
		seg_len =
		    pkt->l3_off + pkt->l3_len - pkt->l4_off - th->doff * 4 + th->syn + th->fin;
		ack_seq = bpf_htonl(bpf_ntohl(th->seq) + seg_len);
		flags |= XLB_TCP_ACK;
	}

	if (bpf_xdp_adjust_tail(ctx, (int)(l3 + iph + sizeof(*th)) - (int)(data_end - data)))
		return xlb_fail(-XLB_DROP_ENCAP, reason);
	data = xlb_ctx_data(ctx);
	data_end = xlb_ctx_data_end(ctx);
	rc = xlb_reply_swap_mac(data, data_end);
	if (!rc)
		rc = xlb_reply_ip(data, data_end, l3, family, src, dst, IPPROTO_TCP, sizeof(*th));
	if (rc)
		return xlb_fail(rc, reason);
	th = data + ((l3 + iph) & XLB_L3_OFF_MASK);
	if ((void *)(th + 1) > data_end)
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	th->source = pkt->tuple.dport;
	th->dest = pkt->tuple.sport;
	th->seq = seq;
	th->ack_seq = ack_seq;
	((__u8 *)th)[12] = (sizeof(*th) / 4) << 4; /* data offset, no options */
	((__u8 *)th)[13] = flags;
	th->window = 0;
	th->check = 0;
	th->urg_ptr = 0;
	sum = xlb_reply_pseudo(family, src, dst, IPPROTO_TCP, sizeof(*th));
	for (int i = 0; i < (int)(sizeof(*th) / 4); i++)
		sum += ((__u32 *)th)[i];
	th->check = ~xlb_csum_fold(sum);
	*reason = XLB_OK_REJECT;
	return XDP_TX;
}

static __always_inline int xlb_reply_reject(struct xdp_md *ctx, struct xlb_pkt *pkt, __u32 *reason)
{
	if (pkt->frag == XLB_FRAG_LATER)
		return xlb_fail(-XLB_DROP_NO_BACKEND, reason);
	if (pkt->tuple.proto == IPPROTO_TCP)
		return xlb_reply_rst(ctx, pkt, reason);
	if (pkt->tuple.family == XLB_FAMILY_V6)
		return xlb_reply_icmp(ctx, pkt, XLB_ICMPV6_DEST_UNREACH, XLB_ICMPV6_PORT_UNREACH, 0,
				      XLB_OK_REJECT, reason);
	return xlb_reply_icmp(ctx, pkt, XLB_ICMP_DEST_UNREACH, XLB_ICMP_PORT_UNREACH, 0,
			      XLB_OK_REJECT, reason);
}

#endif /* XLB_XDP_REPLY_H */
