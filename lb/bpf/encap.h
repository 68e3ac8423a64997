/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * encap.h: outer headers for sending a packet to a backend's node, written
 * into room the caller has already made in front of the inner IP packet
 * (bpf_xdp_adjust_head in XDP, bpf_skb_adjust_room in tc).
 *
 * Two encapsulations (xlb_service.encap):
 *   XLB_ENCAP_GENEVE  Ethernet | outer IPv4/IPv6 | UDP | Geneve | DSR option |
 *                     inner IP packet. Geneve (RFC 8926): version 0, no O/C
 *                     flags, protocol type = inner EtherType, VNI from
 *                     xlb_node; one option of class XLB_GENEVE_OPT_CLASS, type
 *                     DSR4/DSR6 (by inner family) with the frontend address and
 *                     port the client used, or for a forwarded ICMP error
 *                     EP4/EP6 with the endpoint address and target port. UDP source port 49152 +
 * hash % 16384 for RSS/ECMP entropy. UDP checksum 0 for both outer families: IPv4 allows it, and
 * for IPv6 RFC 6935/6936 allow a zero checksum on tunnel traffic; the receiver is xlb's own tc
 * program, which decapsulates before any UDP socket checks it. The inner packet carries its own L4
 * checksum end to end. XLB_ENCAP_IPIP    Ethernet | outer IPv4 (protocol 4 or 41) or IPv6 (next
 *                     header 4 or 41) | inner IP packet. No RSS entropy beyond
 *                     the IPv6 flow label: spreading IPv4 IPIP over receive
 *                     queues would need a source prefix to vary the source.
 * Outer IPv4: DF, TTL 64, id 0, header checksum computed. Outer IPv6: hop
 * limit 64, flow label = hash & 0xfffff.
 *
 * API
 *   __u32 xlb_encap_hlen(encap, outer_family, inner_family)
 *       bytes of outer headers, Ethernet included
 *   int xlb_write_eth(data, data_end, dmac, smac, h_proto)
 *   int xlb_write_ip4(p, data_end, saddr, daddr, proto, tot_len)
 *   int xlb_write_ip6(p, data_end, saddr, daddr, nexthdr, payload_len, flow)
 *   int xlb_write_geneve(p, data_end, sport, dport, inner_len, inner_family,
 *                        vni, opt_type, addr, port)
 *       UDP + Geneve + one option at p: opt_type XLB_GENEVE_OPT_DSR4/DSR6
 *       (addr:port = the frontend) or XLB_GENEVE_OPT_EP4/EP6 (ICMP errors:
 *       addr:port = the endpoint); the option's data layout (4 or 16 byte
 *       address) follows inner_family.
 * Each returns 0 or -XLB_DROP_ENCAP if its header would pass data_end.
 * Addresses are 16-byte ABI form (IPv4 in the first 4 bytes).
 */
#ifndef XLB_ENCAP_H
#define XLB_ENCAP_H

#include "parse.h"
#include "csum.h"

#define XLB_IP4_HLEN	      20
#define XLB_IP6_HLEN	      40
#define XLB_UDP_HLEN	      8
#define XLB_GENEVE_OPT4_LEN   (sizeof(struct xlb_geneve_opt_hdr) + sizeof(struct xlb_dsr_opt4))
#define XLB_GENEVE_OPT6_LEN   (sizeof(struct xlb_geneve_opt_hdr) + sizeof(struct xlb_dsr_opt6))
#define XLB_GENEVE_SPORT_BASE 49152

_Static_assert(XLB_GENEVE_OPT4_LEN % 4 == 0 && XLB_GENEVE_OPT6_LEN % 4 == 0,
	       "Geneve options are whole 4-byte words");

static __always_inline __u32 xlb_geneve_hlen(__u8 inner_family)
{
	return XLB_UDP_HLEN + sizeof(struct xlb_geneve_hdr) +
	       (inner_family == XLB_FAMILY_V6 ? XLB_GENEVE_OPT6_LEN : XLB_GENEVE_OPT4_LEN);
}

static __always_inline __u32 xlb_encap_hlen(__u8 encap, __u8 outer_family, __u8 inner_family)
{
	__u32 len = ETH_HLEN + (outer_family == XLB_FAMILY_V6 ? XLB_IP6_HLEN : XLB_IP4_HLEN);

	if (encap == XLB_ENCAP_GENEVE)
		len += xlb_geneve_hlen(inner_family);
	return len;
}

static __always_inline int xlb_write_eth(void *data, void *data_end, const __u8 *dmac,
					 const __u8 *smac, __be16 h_proto)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -XLB_DROP_ENCAP;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = h_proto;
	return 0;
}

static __always_inline int xlb_write_ip4(void *p, void *data_end, __be32 saddr, __be32 daddr,
					 __u8 proto, __u16 tot_len)
{
	struct iphdr *ip = p;
	struct iphdr h = {
	    .version = 4,
	    .ihl = 5,
	    .tot_len = bpf_htons(tot_len),
	    .frag_off = bpf_htons(0x4000), /* DF */
	    .ttl = 64,
	    .protocol = proto,
	    .saddr = saddr,
	    .daddr = daddr,
	};

	if ((void *)(ip + 1) > data_end)
		return -XLB_DROP_ENCAP;
	h.check = xlb_ipv4_csum(&h);
	*ip = h;
	return 0;
}

static __always_inline int xlb_write_ip6(void *p, void *data_end, const void *saddr,
					 const void *daddr, __u8 nexthdr, __u16 payload_len,
					 __u32 flow)
{
	struct ipv6hdr *ip6 = p;

	if ((void *)(ip6 + 1) > data_end)
		return -XLB_DROP_ENCAP;
	/* version 6, traffic class 0, 20-bit flow label */
	*(__be32 *)ip6 = bpf_htonl((6u << 28) | (flow & 0xfffff));
	ip6->payload_len = bpf_htons(payload_len);
	ip6->nexthdr = nexthdr;
	ip6->hop_limit = 64;
	xlb_addr_copy(&ip6->saddr, saddr);
	xlb_addr_copy(&ip6->daddr, daddr);
	return 0;
}

static __always_inline int xlb_write_geneve(void *p, void *data_end, __be16 sport, __be16 dport,
					    __u16 inner_len, __u8 inner_family, __u32 vni,
					    __u8 opt_type, const __u8 *vaddr, __be16 vport)
{
	struct udphdr *uh = p;
	struct xlb_geneve_hdr *gh = (void *)(uh + 1);
	struct xlb_geneve_opt_hdr *oh = (void *)(gh + 1);
	__u32 optlen = inner_family == XLB_FAMILY_V6 ? XLB_GENEVE_OPT6_LEN : XLB_GENEVE_OPT4_LEN;

	if ((void *)(oh + 1) > data_end)
		return -XLB_DROP_ENCAP;
	uh->source = sport;
	uh->dest = dport;
	uh->len = bpf_htons(XLB_UDP_HLEN + sizeof(*gh) + optlen + inner_len);
	uh->check = 0;

	gh->ver_optlen = optlen / 4; /* version 0 in the top 2 bits */
	gh->flags = 0;
	gh->proto = bpf_htons(inner_family == XLB_FAMILY_V6 ? ETH_P_IPV6 : ETH_P_IP);
	gh->vni[0] = vni >> 16;
	gh->vni[1] = vni >> 8;
	gh->vni[2] = vni;
	gh->rsvd = 0;

	oh->opt_class = bpf_htons(XLB_GENEVE_OPT_CLASS);
	if (inner_family == XLB_FAMILY_V6) {
		struct xlb_dsr_opt6 *o = (void *)(oh + 1);

		if ((void *)(o + 1) > data_end)
			return -XLB_DROP_ENCAP;
		oh->type = opt_type;
		oh->len = sizeof(*o) / 4;
		xlb_addr_copy(o->vaddr, vaddr);
		o->vport = vport;
		o->pad = 0;
	} else {
		struct xlb_dsr_opt4 *o = (void *)(oh + 1);

		if ((void *)(o + 1) > data_end)
			return -XLB_DROP_ENCAP;
		oh->type = opt_type;
		oh->len = sizeof(*o) / 4;
		*(__u32 *)o->vaddr = *(const __u32 *)vaddr;
		o->vport = vport;
		o->pad = 0;
	}
	return 0;
}

#endif /* XLB_ENCAP_H */
