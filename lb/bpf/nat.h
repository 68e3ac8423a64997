/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * nat.h: in-place address and port rewriting of a parsed TCP/UDP packet, for
 * XDP (DNAT to a local or remote endpoint) and tc (DNAT on DSR termination,
 * reverse SNAT of replies). The IPv4 header checksum and the TCP/UDP
 * checksum (pseudo-header included) are updated incrementally (csum.h); a
 * UDP datagram without checksum (IPv4, 0) keeps none.
 *
 * API
 *   int xlb_nat_rewrite(data, data_end, pkt, which, addr, port)
 *       which: XLB_NAT_DST or XLB_NAT_SRC. addr: 16-byte ABI address of the
 *       packet's own family (the caller checks), port in network order.
 *       pkt->tuple is updated to the rewritten packet, so after a DNAT it is
 *       the client -> endpoint key of xlb_dsr_nat. Only for TCP and UDP.
 *       Returns 0 or -XLB_DROP_TRUNCATED (cannot happen after xlb_parse on
 *       the same frame; the checks are for the verifier).
 */
#ifndef XLB_NAT_H
#define XLB_NAT_H

#include "parse.h"
#include "csum.h"

#define XLB_NAT_SRC 0
#define XLB_NAT_DST 1

static __always_inline int xlb_nat_rewrite(void *data, void *data_end, struct xlb_pkt *pkt,
					   int which, const __u8 *addr, __be16 port)
{
	__u8 *taddr = which == XLB_NAT_DST ? pkt->tuple.daddr : pkt->tuple.saddr;
	__be16 *tport = which == XLB_NAT_DST ? &pkt->tuple.dport : &pkt->tuple.sport;
	__u64 diff;

	if (pkt->tuple.family == XLB_FAMILY_V4) {
		struct iphdr *ip = xlb_l3_ptr(data, pkt);
		__be32 to = *(const __u32 *)addr;

		if ((void *)(ip + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		if (which == XLB_NAT_DST) {
			diff = xlb_csum_diff4(0, ip->daddr, to);
			ip->daddr = to;
		} else {
			diff = xlb_csum_diff4(0, ip->saddr, to);
			ip->saddr = to;
		}
		ip->check = xlb_csum_apply(ip->check, diff);
		*(__u32 *)taddr = to;
	} else {
		struct ipv6hdr *ip6 = xlb_l3_ptr(data, pkt);
		void *a;

		if ((void *)(ip6 + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		a = which == XLB_NAT_DST ? (void *)&ip6->daddr : (void *)&ip6->saddr;
		diff = xlb_csum_diff16(0, a, addr);
		xlb_addr_copy(a, addr);
		xlb_addr_copy(taddr, addr);
	}
	/* The address change above is also a pseudo-header change. */
	diff = xlb_csum_diff2(diff, *tport, port);
	*tport = port;

	if (pkt->tuple.proto == IPPROTO_TCP) {
		struct tcphdr *th = xlb_l4_ptr(data, pkt);

		if ((void *)(th + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		if (which == XLB_NAT_DST)
			th->dest = port;
		else
			th->source = port;
		th->check = xlb_csum_apply(th->check, diff);
	} else if (pkt->tuple.proto == IPPROTO_UDP) {
		struct udphdr *uh = xlb_l4_ptr(data, pkt);

		if ((void *)(uh + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		if (which == XLB_NAT_DST)
			uh->dest = port;
		else
			uh->source = port;
		uh->check = xlb_csum_apply_udp(uh->check, diff);
	}
	return 0;
}

#endif /* XLB_NAT_H */
