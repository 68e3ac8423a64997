/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * parse.h: bounds-checked L2-L4 parsing into one packet-metadata struct,
 * shared by XDP and tc. Everything works on plain `void *data, void *data_end`
 * pointers; the thin context layer is xlb_ctx_data()/xlb_ctx_data_end(),
 * which read the same-named fields of struct xdp_md and struct __sk_buff.
 *
 * API
 *   struct xlb_pkt           what one parse learns (see its field comments);
 *                            pkt.tuple is an xlb_flow_key in packet direction
 *                            (padding and unused address bytes zero) that is
 *                            used directly as the xlb_ct / xlb_dsr_nat key.
 *   int xlb_parse(data, data_end, &pkt)
 *       Ethernet (+ one 802.1Q / 802.1ad tag), IPv4 (IHL honoured, options
 *       skipped), IPv6 (hop-by-hop, routing and destination-options headers
 *       skipped, at most XLB_IPV6_EXT_MAX of them), then TCP, UDP, ICMP or
 *       ICMPv6. Returns 0 when the L4 header is in the frame, or the negative
 *       enum xlb_counter reason why not:
 *         -XLB_PASS_NOT_IP        not IPv4/IPv6 (after at most one VLAN tag)
 *         -XLB_DROP_TRUNCATED     a header runs past the frame or past the IP
 *                                 length
 *         -XLB_DROP_BAD_IHL       IPv4 IHL < 5, or the IPv4 header runs past
 *                                 the frame
 *         -XLB_DROP_BAD_LEN       IP length claims more than the frame holds,
 *                                 or less than the IP header
 *         -XLB_PASS_FRAGMENT      IPv4 MF/offset, IPv6 fragment header
 *         -XLB_PASS_IPV6_EXT      IPv6 extension header not followed (AH,
 *                                 ESP, mobility, HIP, shim6, experimental) or
 *                                 a chain longer than XLB_IPV6_EXT_MAX
 *         -XLB_PASS_L4_PROTO      any other L4 protocol
 *       Frames may carry bytes after the IP packet (Ethernet padding):
 *       pkt.l3_len is the IP packet length, not the frame's.
 *   int xlb_parse_icmp_quote(data, data_end, &pkt, &quoted)
 *       For an ICMP(v6) packet parsed by xlb_parse: reads the packet quoted
 *       after the 8-byte ICMP header (IP header of the same family, IPv4 IHL
 *       honoured, no IPv6 extension headers, then the first 4 bytes of its
 *       TCP/UDP header) into `quoted` in the quoted packet's own direction.
 *       Returns 0, or -XLB_PASS_ICMP_NO_FLOW when the quote is not a
 *       complete TCP/UDP quote of that family.
 *   xlb_ctx_data(ctx), xlb_ctx_data_end(ctx)
 *       data pointers of an xdp_md or __sk_buff.
 *   xlb_l3_ptr(data, &pkt), xlb_l4_ptr(data, &pkt)
 *       the IP / L4 header of a parsed packet (still to be bounds-checked
 *       against data_end before access: the verifier requires it).
 *   xlb_addr_copy(dst, src) / xlb_addr_eq(a, b)
 *       16-byte address copy / compare through 4-byte words.
 *
 * Every function here is __always_inline: the callers are single programs
 * and the verifier keeps packet-pointer ranges only within one frame.
 */
#ifndef XLB_PARSE_H
#define XLB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "xlb_abi.h"

#define xlb_ctx_data(ctx)     ((void *)(long)(ctx)->data)
#define xlb_ctx_data_end(ctx) ((void *)(long)(ctx)->data_end)

/* IPv6 extension headers followed before giving up (bounded loop). */
#define XLB_IPV6_EXT_MAX 4

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

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

#define XLB_ICMP_DEST_UNREACH 3 /* ICMPv4; code 4: fragmentation needed */
#define XLB_ICMPV6_PKT_TOOBIG 2 /* ICMPv6 packet too big */

struct xlb_pkt {
	/* Packet-direction 5-tuple: addresses (IPv4 in the first 4 bytes),
	 * TCP/UDP ports (0 for ICMP), proto, family; pad zero. */
	struct xlb_flow_key tuple;
	__u16 l3_off;	  /* IP header, from data */
	__u16 l4_off;	  /* TCP/UDP/ICMP header, from data */
	__u16 l3_len;	  /* IP packet length per its header (v6: 40 + payload) */
	__be16 eth_proto; /* ETH_P_IP or ETH_P_IPV6, network order */
	__u8 icmp_type;	  /* ICMP/ICMPv6 only */
	__u8 icmp_code;
	__u8 tcp_flags; /* TCP only: byte 13 of the header (FIN..CWR) */
	__u8 pad;
} __attribute__((aligned(8)));

/*
 * Pointers to the parsed headers from the offsets in struct xlb_pkt.
 * Verifier workaround (clang 14, kernel 6.18): an offset reloaded from the
 * stack is only known to be < 2^16, and the verifier ignores a bounds check
 * on a packet pointer whose variable offset plus constant may exceed
 * MAX_PACKET_OFF (0xffff): the access after the check is then rejected as
 * "R? offset is outside of the packet". The masks restate bounds xlb_parse
 * guarantees (L2 is at most 18 bytes; L4 starts within 18 + 40 +
 * XLB_IPV6_EXT_MAX * 2048 bytes), so they never change a valid offset.
 */
#define XLB_L3_OFF_MASK 0xff
#define XLB_L4_OFF_MASK 0x3fff
_Static_assert(18 + 40 + XLB_IPV6_EXT_MAX * 2048 <= XLB_L4_OFF_MASK, "L4 offset mask");

#define xlb_l3_ptr(data, pkt) ((data) + ((pkt)->l3_off & XLB_L3_OFF_MASK))
#define xlb_l4_ptr(data, pkt) ((data) + ((pkt)->l4_off & XLB_L4_OFF_MASK))

/* Addresses in ABI structs are u8[16]; the containers (xlb_pkt, map values)
 * are at least 4-byte aligned, so moving them as words is safe and saves the
 * byte-by-byte code clang emits for a u8[16] memcpy. */
static __always_inline void xlb_addr_copy(void *dst, const void *src)
{
	__u32 *d = dst;
	const __u32 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

static __always_inline int xlb_addr_eq(const void *a, const void *b)
{
	const __u32 *x = a, *y = b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
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

/* Reads the L4 header at pkt->l4_off (proto in pkt->tuple.proto). l3_end is
 * the end of the IP packet as an offset; a header past it is truncated. */
static __always_inline int xlb_parse_l4(void *data, void *data_end, struct xlb_pkt *pkt, __u32 off,
					__u32 l3_end)
{
	pkt->l4_off = off;
	switch (pkt->tuple.proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = data + off;

		if ((void *)(th + 1) > data_end || off + sizeof(*th) > l3_end)
			return -XLB_DROP_TRUNCATED;
		pkt->tuple.sport = th->source;
		pkt->tuple.dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end || off + sizeof(*uh) > l3_end)
			return -XLB_DROP_TRUNCATED;
		pkt->tuple.sport = uh->source;
		pkt->tuple.dport = uh->dest;
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
	return -XLB_PASS_L4_PROTO;
}

static __always_inline int xlb_parse_ipv4(void *data, void *data_end, struct xlb_pkt *pkt,
					  __u32 off)
{
	struct iphdr *ip = data + off;
	__u32 hlen, tot;

	if ((void *)(ip + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	hlen = ip->ihl * 4;
	if (hlen < sizeof(*ip))
		return -XLB_DROP_BAD_IHL;
	if (data + off + hlen > data_end)
		return -XLB_DROP_BAD_IHL;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || data + off + tot > data_end)
		return -XLB_DROP_BAD_LEN;
	/* MF set or a non-zero offset: any fragment. */
	if (ip->frag_off & bpf_htons(0x3fff))
		return -XLB_PASS_FRAGMENT;

	pkt->l3_len = tot;
	pkt->tuple.family = XLB_FAMILY_V4;
	pkt->tuple.proto = ip->protocol;
	*(__u32 *)pkt->tuple.saddr = ip->saddr;
	*(__u32 *)pkt->tuple.daddr = ip->daddr;
	return xlb_parse_l4(data, data_end, pkt, off + hlen, off + tot);
}

static __always_inline int xlb_parse_ipv6(void *data, void *data_end, struct xlb_pkt *pkt,
					  __u32 off)
{
	struct ipv6hdr *ip6 = data + off;
	__u32 l3_end, i;
	__u8 nh;

	if ((void *)(ip6 + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	l3_end = off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (data + l3_end > data_end)
		return -XLB_DROP_BAD_LEN;

	pkt->l3_len = l3_end - off;
	pkt->tuple.family = XLB_FAMILY_V6;
	xlb_addr_copy(pkt->tuple.saddr, &ip6->saddr);
	xlb_addr_copy(pkt->tuple.daddr, &ip6->daddr);
	nh = ip6->nexthdr;
	off += sizeof(*ip6);

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
	switch (nh) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_ICMPV6:
		break;
	case IPPROTO_FRAGMENT:
		return -XLB_PASS_FRAGMENT;
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
		return -XLB_PASS_IPV6_EXT; /* chain longer than XLB_IPV6_EXT_MAX */
	default:
		return xlb_ipv6_ext_known(nh) ? -XLB_PASS_IPV6_EXT : -XLB_PASS_L4_PROTO;
	}
	pkt->tuple.proto = nh;
	return xlb_parse_l4(data, data_end, pkt, off, l3_end);
}

static __always_inline int xlb_parse(void *data, void *data_end, struct xlb_pkt *pkt)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	__builtin_memset(pkt, 0, sizeof(*pkt));
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
	if (proto == bpf_htons(ETH_P_IP))
		return xlb_parse_ipv4(data, data_end, pkt, off);
	if (proto == bpf_htons(ETH_P_IPV6))
		return xlb_parse_ipv6(data, data_end, pkt, off);
	return -XLB_PASS_NOT_IP;
}

/* The ICMP error payload: the offending packet's IP header and at least the
 * first 8 bytes of its L4 header (RFC 792 / RFC 4443). Only TCP/UDP quotes of
 * the ICMP packet's own family are read. */
static __always_inline int xlb_parse_icmp_quote(void *data, void *data_end,
						const struct xlb_pkt *pkt, struct xlb_flow_key *q)
{
	__u32 off = (pkt->l4_off & XLB_L4_OFF_MASK) + sizeof(struct xlb_icmp_hdr);
	__be16 *ports;

	__builtin_memset(q, 0, sizeof(*q));
	if (pkt->tuple.family == XLB_FAMILY_V4) {
		struct iphdr *ip = data + off;
		__u32 hlen;

		if ((void *)(ip + 1) > data_end || ip->version != 4)
			return -XLB_PASS_ICMP_NO_FLOW;
		hlen = ip->ihl * 4;
		if (hlen < sizeof(*ip))
			return -XLB_PASS_ICMP_NO_FLOW;
		q->proto = ip->protocol;
		*(__u32 *)q->saddr = ip->saddr;
		*(__u32 *)q->daddr = ip->daddr;
		off += hlen;
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
			return -XLB_PASS_ICMP_NO_FLOW;
		q->proto = ip6->nexthdr;
		xlb_addr_copy(q->saddr, &ip6->saddr);
		xlb_addr_copy(q->daddr, &ip6->daddr);
		off += sizeof(*ip6);
	}
	if (q->proto != IPPROTO_TCP && q->proto != IPPROTO_UDP)
		return -XLB_PASS_ICMP_NO_FLOW;
	ports = data + off;
	if ((void *)(ports + 2) > data_end)
		return -XLB_PASS_ICMP_NO_FLOW;
	q->sport = ports[0];
	q->dport = ports[1];
	q->family = pkt->tuple.family;
	return 0;
}

#endif /* XLB_PARSE_H */
