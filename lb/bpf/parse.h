/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * parse.h: the one bounds-checked L2-L4 parser of every xlb program, over the
 * context layer (ctx.h). Headers are read by direct packet access, each
 * access checked against xlb_ctx_data_end() (the frame in XDP, the linear
 * head in tc: tc callers xlb_ctx_pull() what they need first); IP length
 * fields are checked against xlb_ctx_len() (the frame in XDP, the whole skb
 * in tc). The pieces are separate so each program checks in the order its
 * counted reasons promise (XDP: lengths before L4; tc: the tunnel's
 * addressing first); xlb_parse() is the whole walk for a packet xlb handles.
 *
 * API
 *   struct xlb_pkt           what one parse learns (see its field comments);
 *                            pkt.tuple is an xlb_flow_key in packet direction
 *                            (padding and unused address bytes zero), used
 *                            directly as the xlb_ct / xlb_dsr_nat key.
 *   int xlb_parse_eth(ctx, &pkt)
 *       Ethernet + at most one 802.1Q / 802.1ad tag: pkt.l3_off, eth_proto.
 *       -XLB_DROP_TRUNCATED, -XLB_PASS_NOT_IP.
 *   int xlb_parse_ip(ctx, off, eth_proto, &pkt)   (xlb_parse_ip4 / _ip6)
 *       the fixed IPv4 / IPv6 header at off: version, IHL, addresses,
 *       protocol (the first next header for IPv6), fragment flags, l3_len as
 *       the header states it, l4_off past it. -XLB_DROP_TRUNCATED,
 *       -XLB_DROP_BAD_VERSION, -XLB_DROP_BAD_IHL.
 *   int xlb_parse_eth_ip(ctx, &pkt)
 *       both, for an untagged frame (tc): a VLAN tag in the frame is
 *       -XLB_PASS_NOT_IP.
 *   int xlb_check_l3_len(&pkt, limit)
 *       the IP length covers the header and ends within `limit` (an offset:
 *       the packet's end, or a tunnel payload's). -XLB_DROP_BAD_LEN. Only
 *       for packets xlb takes apart or forwards: egress GSO (BIG TCP's IPv4
 *       tot_len 0) must not meet it.
 *   int xlb_parse_ext(ctx, &pkt)
 *       IPv6: skips hop-by-hop, routing and destination-options headers (at
 *       most XLB_IPV6_EXT_MAX), moving l4_off and tuple.proto to what
 *       follows; a Fragment header sets XLB_FRAG_LATER (its offset is not
 *       read: no IPv6 fragment is taken apart). IPv4: nothing.
 *       -XLB_DROP_TRUNCATED.
 *   int xlb_proto_reason(&pkt)
 *       for a protocol xlb does not take apart: -XLB_PASS_FRAGMENT (IPv6
 *       fragment header), -XLB_PASS_IPV6_EXT (an extension header not
 *       followed, or a chain too long), else -XLB_PASS_L4_PROTO.
 *   int xlb_parse_l4(ctx, &pkt)
 *       the TCP, UDP, SCTP or ICMP(v6) header at l4_off, within the IP
 *       length: ports, TCP flags, ICMP type and code; the length fields the
 *       kernel checks on input: a TCP data offset of at least 5 words whose
 *       header ends within the IP packet, a UDP length of at least 8 that
 *       ends within it (in a first fragment only the lower bound: the
 *       datagram goes on). -XLB_DROP_TRUNCATED, -XLB_DROP_BAD_L4_LEN,
 *       -XLB_PASS_L4_PROTO (another protocol, or ICMP of the other family).
 *   int xlb_parse(ctx, &pkt)
 *       all of the above in XDP's order for a frame at the start of the
 *       context: eth, IP, length (against the packet), extension headers,
 *       fragments, L4. An IPv4 first fragment is parsed as any packet (its
 *       L4 header must be whole: RFC 1858), a later one stops with
 *       pkt.frag == XLB_FRAG_LATER and no ports (the caller finds them);
 *       IPv6 fragments are -XLB_PASS_FRAGMENT. Frames may carry bytes
 *       after the IP packet (Ethernet padding): pkt.l3_len is the IP
 *       packet's.
 *   int xlb_icmp_is_error(family, type)
 *   int xlb_parse_icmp_quote(ctx, &pkt, &quote)
 *       for an ICMP(v6) error parsed by xlb_parse_l4: the TCP/UDP/SCTP packet
 *       quoted after the 8-byte ICMP header (IP header of the same family,
 *       IPv4 IHL honoured, no IPv6 extension headers, not a later fragment,
 *       its ports within the ICMP packet) as quote.tuple in its own
 *       direction, with the quoted headers' offsets and, when the quote
 *       holds it, its L4 checksum (not SCTP's). -XLB_PASS_ICMP_NO_FLOW
 *       otherwise.
 *   void xlb_flow_reverse(&rev, &key)    key with its ends swapped (the other
 *                                        direction of the flow), pad zero
 *   xlb_l3_off(&pkt), xlb_l4_off(&pkt)   masked offsets (see below)
 *   (address helpers: addr.h)
 *
 * Every function here is __always_inline: the callers are single programs
 * and the verifier keeps packet-pointer ranges only within one frame.
 */
#ifndef XLB_PARSE_H
#define XLB_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "ctx.h"
#include "addr.h"

/* IPv6 extension headers followed before giving up (bounded loop). */
#define XLB_IPV6_EXT_MAX 4

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* The IPv4 fragment fields of frag_off (network order when masked). */
#define XLB_IP_MF     0x2000
#define XLB_IP_OFFSET 0x1fff

/* 802.1Q / 802.1ad tag as it follows the MAC addresses; the uapi has no
 * public struct for it. */
struct xlb_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* ICMP and ICMPv6 share this 8-byte header shape. <linux/icmp.h> is not
 * used: it pulls in libc headers (via <linux/if.h>) that do not build for
 * the bpf target. */
struct xlb_icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

#define XLB_ICMP_DEST_UNREACH	3 /* ICMPv4; code 4: fragmentation needed */
#define XLB_ICMP_TIME_EXCEEDED	11
#define XLB_ICMP_PARAMETERPROB	12
#define XLB_ICMPV6_DEST_UNREACH 1
#define XLB_ICMPV6_PKT_TOOBIG	2
#define XLB_ICMPV6_TIME_EXCEED	3
#define XLB_ICMPV6_PARAMPROB	4

/* SCTP's common header (RFC 9260 3.1): ports, verification tag, and the
 * CRC32c at offset 8 (<linux/sctp.h> is not usable from BPF programs). */
#define XLB_SCTP_HLEN	  12
#define XLB_SCTP_CSUM_OFF 8

/* xlb_pkt.frag */
#define XLB_FRAG_FIRST 1 /* IPv4 MF, offset 0: the L4 header is here */
#define XLB_FRAG_LATER 2 /* IPv4 offset > 0, or an IPv6 fragment header */

struct xlb_pkt {
	/* Packet-direction 5-tuple: addresses (IPv4 in the first 4 bytes),
	 * TCP/UDP ports (0 for ICMP), proto, family; pad zero. */
	struct xlb_flow_key tuple;
	__u16 l3_off;	  /* IP header, from data */
	__u16 l4_off;	  /* TCP/UDP/ICMP header (past IPv6 extensions), from data */
	__u16 l3_len;	  /* IP packet length per its header (v6: 40 + payload) */
	__be16 eth_proto; /* ETH_P_IP or ETH_P_IPV6, network order */
	__u8 icmp_type;	  /* ICMP/ICMPv6 only */
	__u8 icmp_code;
	__u8 tcp_flags; /* TCP only: byte 13 of the header (FIN..CWR) */
	__u8 frag;	/* XLB_FRAG_* or 0 */
	__be16 ip_id;	/* IPv4 fragments only: the identification field */
} __attribute__((aligned(8)));

/* An ICMP error's quoted packet (xlb_parse_icmp_quote). */
struct xlb_icmp_quote {
	struct xlb_flow_key tuple; /* in the quoted packet's own direction */
	__u16 l3_off;		   /* the quoted IP header */
	__u16 l4_off;		   /* the quoted TCP/UDP header */
	__u16 csum_off;		   /* its L4 checksum; 0: not quoted */
	__sum16 csum;		   /* its value when quoted */
} __attribute__((aligned(8)));

/*
 * Verifier workaround (clang 14, kernel 6.18): an offset reloaded from the
 * stack is only known to be < 2^16, and the verifier ignores a bounds check
 * on a packet pointer whose variable offset plus constant may exceed
 * MAX_PACKET_OFF (0xffff): the access after the check is then rejected as
 * "R? offset is outside of the packet". The masks restate bounds the parser
 * guarantees, so they never change a valid offset: an IP header starts
 * within 18 bytes (Ethernet + VLAN) or, inside a tunnel, within the outer
 * headers (at most 14 + 60 + 8 + 8 + 252 bytes of Geneve options); L4
 * starts within that + 40 + XLB_IPV6_EXT_MAX * 2048 bytes.
 */
#define XLB_L3_OFF_MASK 0x3ff
#define XLB_L4_OFF_MASK 0x3fff
_Static_assert(14 + 60 + 8 + 8 + 252 <= XLB_L3_OFF_MASK, "L3 offset mask");
_Static_assert(XLB_L3_OFF_MASK + 60 + XLB_IPV6_EXT_MAX * 2048 <= XLB_L4_OFF_MASK, "L4 offset mask");

#define xlb_l3_off(pkt) ((pkt)->l3_off & XLB_L3_OFF_MASK)
#define xlb_l4_off(pkt) ((pkt)->l4_off & XLB_L4_OFF_MASK)

static __always_inline int xlb_parse_eth(struct xlb_ctx *ctx, struct xlb_pkt *pkt)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct xlb_vlan_hdr *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	pkt->l3_off = off;
	pkt->eth_proto = proto;
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return -XLB_PASS_NOT_IP;
	return 0;
}

static __always_inline int xlb_parse_ip4(struct xlb_ctx *ctx, __u32 off, struct xlb_pkt *pkt)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct iphdr *ip;
	__u32 hlen;

	off &= XLB_L3_OFF_MASK;
	ip = data + off;
	pkt->l3_off = off;
	pkt->eth_proto = bpf_htons(ETH_P_IP);
	if ((void *)(ip + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	if (ip->version != 4)
		return -XLB_DROP_BAD_VERSION;
	hlen = ip->ihl * 4;
	if (hlen < sizeof(*ip) || (void *)ip + hlen > data_end)
		return -XLB_DROP_BAD_IHL;
	pkt->l3_len = bpf_ntohs(ip->tot_len);
	pkt->l4_off = off + hlen;
	pkt->tuple.family = XLB_FAMILY_V4;
	pkt->tuple.proto = ip->protocol;
	*(__u32 *)pkt->tuple.saddr = ip->saddr;
	*(__u32 *)pkt->tuple.daddr = ip->daddr;
	if (ip->frag_off & bpf_htons(XLB_IP_OFFSET | XLB_IP_MF)) {
		pkt->frag =
		    (ip->frag_off & bpf_htons(XLB_IP_OFFSET)) ? XLB_FRAG_LATER : XLB_FRAG_FIRST;
		pkt->ip_id = ip->id;
	}
	return 0;
}

static __always_inline int xlb_parse_ip6(struct xlb_ctx *ctx, __u32 off, struct xlb_pkt *pkt)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct ipv6hdr *ip6;

	off &= XLB_L3_OFF_MASK;
	ip6 = data + off;
	pkt->l3_off = off;
	pkt->eth_proto = bpf_htons(ETH_P_IPV6);
	if ((void *)(ip6 + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	if (ip6->version != 6)
		return -XLB_DROP_BAD_VERSION;
	pkt->l3_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	pkt->l4_off = off + sizeof(*ip6);
	pkt->tuple.family = XLB_FAMILY_V6;
	pkt->tuple.proto = ip6->nexthdr;
	xlb_addr_copy(pkt->tuple.saddr, &ip6->saddr);
	xlb_addr_copy(pkt->tuple.daddr, &ip6->daddr);
	return 0;
}

static __always_inline int xlb_parse_ip(struct xlb_ctx *ctx, __u32 off, __be16 eth_proto,
					struct xlb_pkt *pkt)
{
	if (eth_proto == bpf_htons(ETH_P_IP))
		return xlb_parse_ip4(ctx, off, pkt);
	return xlb_parse_ip6(ctx, off, pkt);
}

/* The IP header right after an untagged Ethernet header: tc, where the
 * kernel has taken any VLAN tag out of band (a tag still in the frame is
 * not xlb's to take apart: -XLB_PASS_NOT_IP). */
static __always_inline int xlb_parse_eth_ip(struct xlb_ctx *ctx, struct xlb_pkt *pkt)
{
	int rc = xlb_parse_eth(ctx, pkt);

	if (!rc && pkt->l3_off != ETH_HLEN)
		rc = -XLB_PASS_NOT_IP;
	return rc ? rc : xlb_parse_ip(ctx, ETH_HLEN, pkt->eth_proto, pkt);
}

static __always_inline int xlb_check_l3_len(const struct xlb_pkt *pkt, __u32 limit)
{
	__u32 hlen = pkt->tuple.family == XLB_FAMILY_V4 ? pkt->l4_off - pkt->l3_off : 40;

	if (pkt->l3_len < hlen || pkt->l3_off + pkt->l3_len > limit)
		return -XLB_DROP_BAD_LEN;
	return 0;
}

static __always_inline int xlb_ipv6_ext_known(__u8 nh)
{
	switch (nh) {
	case IPPROTO_AH:
	case IPPROTO_ESP:
	case 135: /* Mobility */
	case 139: /* HIP */
	case 140: /* Shim6 */
	case 253: /* experimental */
	case 254:
		return 1;
	}
	return 0;
}

static __always_inline int xlb_parse_ext(struct xlb_ctx *ctx, struct xlb_pkt *pkt)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u32 off = xlb_l4_off(pkt), l3_end = pkt->l3_off + pkt->l3_len, i;
	__u8 nh = pkt->tuple.proto;

	if (pkt->tuple.family != XLB_FAMILY_V6)
		return 0;
		/* Bounded so the verifier sees a finite walk; each step moves `off` by
		 * at most 2048 bytes, so it stays within the 64 KiB packet range the
		 * verifier accepts for variable offsets. */
#pragma unroll
	for (i = 0; i < XLB_IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *oh;

		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS)
			break;
		oh = data + off;
		if ((void *)(oh + 1) > data_end || off + sizeof(*oh) > l3_end)
			return -XLB_DROP_TRUNCATED;
		nh = oh->nexthdr;
		off += (oh->hdrlen + 1) * 8;
	}
	pkt->l4_off = off;
	pkt->tuple.proto = nh;
	if (nh == IPPROTO_FRAGMENT)
		pkt->frag = XLB_FRAG_LATER;
	return 0;
}

static __always_inline int xlb_proto_reason(const struct xlb_pkt *pkt)
{
	__u8 nh = pkt->tuple.proto;

	if (pkt->tuple.family != XLB_FAMILY_V6)
		return -XLB_PASS_L4_PROTO;
	if (nh == IPPROTO_FRAGMENT)
		return -XLB_PASS_FRAGMENT;
	if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	    xlb_ipv6_ext_known(nh))
		return -XLB_PASS_IPV6_EXT;
	return -XLB_PASS_L4_PROTO;
}

static __always_inline int xlb_parse_l4(struct xlb_ctx *ctx, struct xlb_pkt *pkt)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u32 off = xlb_l4_off(pkt), l3_end = pkt->l3_off + pkt->l3_len;

	switch (pkt->tuple.proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = data + off;

		__u32 hlen;

		if ((void *)(th + 1) > data_end || off + sizeof(*th) > l3_end)
			return -XLB_DROP_TRUNCATED;
		hlen = th->doff * 4;
		if (hlen < sizeof(*th) || off + hlen > l3_end)
			return -XLB_DROP_BAD_L4_LEN;
		pkt->tuple.sport = th->source;
		pkt->tuple.dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = data + off;
		__u32 ulen;

		if ((void *)(uh + 1) > data_end || off + sizeof(*uh) > l3_end)
			return -XLB_DROP_TRUNCATED;
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh) || (!pkt->frag && off + ulen > l3_end))
			return -XLB_DROP_BAD_L4_LEN;
		pkt->tuple.sport = uh->source;
		pkt->tuple.dport = uh->dest;
		return 0;
	}
	case IPPROTO_SCTP: {
		/* The common header: ports, verification tag, CRC32c. */
		__be16 *ports = data + off;

		if ((void *)ports + XLB_SCTP_HLEN > data_end || off + XLB_SCTP_HLEN > l3_end)
			return -XLB_DROP_TRUNCATED;
		pkt->tuple.sport = ports[0];
		pkt->tuple.dport = ports[1];
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct xlb_icmp_hdr *ih = data + off;

		if ((void *)(ih + 1) > data_end || off + sizeof(*ih) > l3_end)
			return -XLB_DROP_TRUNCATED;
		if ((pkt->tuple.proto == IPPROTO_ICMP) != (pkt->tuple.family == XLB_FAMILY_V4))
			return -XLB_PASS_L4_PROTO; /* ICMPv4 in IPv6 or the reverse */
		pkt->icmp_type = ih->type;
		pkt->icmp_code = ih->code;
		return 0;
	}
	}
	return xlb_proto_reason(pkt);
}

/* What follows the fixed IP header, in XDP's order. Inlined once per family
 * by xlb_parse, so each copy knows its family (clang folds the other's
 * branches instead of merging both into spilled registers). */
static __always_inline int xlb_parse_rest(struct xlb_ctx *ctx, struct xlb_pkt *pkt)
{
	int rc = xlb_check_l3_len(pkt, xlb_ctx_len(ctx));

	if (rc)
		return rc;
	rc = xlb_parse_ext(ctx, pkt);
	if (rc)
		return rc;
	/* A later IPv4 fragment has no L4 header; the IPv6 fragment header
	 * is not followed. */
	if (pkt->frag == XLB_FRAG_LATER)
		return pkt->tuple.family == XLB_FAMILY_V4 ? 0 : -XLB_PASS_FRAGMENT;
	return xlb_parse_l4(ctx, pkt);
}

static __always_inline int xlb_parse(struct xlb_ctx *ctx, struct xlb_pkt *pkt)
{
	int rc;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	rc = xlb_parse_eth(ctx, pkt);
	if (rc)
		return rc;
	if (pkt->eth_proto == bpf_htons(ETH_P_IP)) {
		rc = xlb_parse_ip4(ctx, pkt->l3_off, pkt);
		return rc ? rc : xlb_parse_rest(ctx, pkt);
	}
	rc = xlb_parse_ip6(ctx, pkt->l3_off, pkt);
	return rc ? rc : xlb_parse_rest(ctx, pkt);
}

static __always_inline int xlb_icmp_is_error(__u8 family, __u8 type)
{
	if (family == XLB_FAMILY_V4)
		return type == XLB_ICMP_DEST_UNREACH || type == XLB_ICMP_TIME_EXCEEDED ||
		       type == XLB_ICMP_PARAMETERPROB;
	return type == XLB_ICMPV6_DEST_UNREACH || type == XLB_ICMPV6_PKT_TOOBIG ||
	       type == XLB_ICMPV6_TIME_EXCEED || type == XLB_ICMPV6_PARAMPROB;
}

/* The ICMP error payload: the offending packet's IP header and at least the
 * first 8 bytes of its L4 header (RFC 792 / RFC 4443). */
static __always_inline int xlb_parse_icmp_quote(struct xlb_ctx *ctx, const struct xlb_pkt *pkt,
						struct xlb_icmp_quote *q)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u32 off = xlb_l4_off(pkt) + sizeof(struct xlb_icmp_hdr);
	__u32 end = pkt->l3_off + pkt->l3_len, csum_off;
	__be16 *ports;

	__builtin_memset(q, 0, sizeof(*q));
	q->l3_off = off;
	if (pkt->tuple.family == XLB_FAMILY_V4) {
		struct iphdr *ip = data + off;
		__u32 hlen;

		if ((void *)(ip + 1) > data_end || ip->version != 4)
			return -XLB_PASS_ICMP_NO_FLOW;
		hlen = ip->ihl * 4;
		if (hlen < sizeof(*ip) || (ip->frag_off & bpf_htons(XLB_IP_OFFSET)))
			return -XLB_PASS_ICMP_NO_FLOW;
		q->tuple.proto = ip->protocol;
		*(__u32 *)q->tuple.saddr = ip->saddr;
		*(__u32 *)q->tuple.daddr = ip->daddr;
		off += hlen;
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
			return -XLB_PASS_ICMP_NO_FLOW;
		q->tuple.proto = ip6->nexthdr;
		xlb_addr_copy(q->tuple.saddr, &ip6->saddr);
		xlb_addr_copy(q->tuple.daddr, &ip6->daddr);
		off += sizeof(*ip6);
	}
	if (q->tuple.proto != IPPROTO_TCP && q->tuple.proto != IPPROTO_UDP &&
	    q->tuple.proto != IPPROTO_SCTP)
		return -XLB_PASS_ICMP_NO_FLOW;
	off &= XLB_L4_OFF_MASK;
	ports = data + off;
	if ((void *)(ports + 2) > data_end || off + 4 > end)
		return -XLB_PASS_ICMP_NO_FLOW;
	q->l4_off = off;
	q->tuple.sport = ports[0];
	q->tuple.dport = ports[1];
	q->tuple.family = pkt->tuple.family;

	/* The quoted L4 checksum, when the quote holds it (IPv4 routers quote
	 * only 8 bytes: TCP's is cut off). SCTP's CRC is not an Internet
	 * checksum (and nobody checks a quoted one): left as it is. */
	if (q->tuple.proto == IPPROTO_SCTP)
		return 0;
	csum_off = off + (q->tuple.proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							: offsetof(struct udphdr, check));
	if (csum_off + 2 <= end) {
		__sum16 *qc = data + csum_off;

		if ((void *)(qc + 1) > data_end)
			return -XLB_PASS_ICMP_NO_FLOW;
		q->csum_off = csum_off;
		q->csum = *qc;
	}
	return 0;
}

/* `key` with its ends swapped: the other direction of the flow. */
static __always_inline void xlb_flow_reverse(struct xlb_flow_key *rev,
					     const struct xlb_flow_key *key)
{
	xlb_addr_copy(rev->saddr, key->daddr);
	xlb_addr_copy(rev->daddr, key->saddr);
	rev->sport = key->dport;
	rev->dport = key->sport;
	rev->proto = key->proto;
	rev->family = key->family;
	rev->pad = 0;
}

#endif /* XLB_PARSE_H */
