/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * encap.h: the tunnel headers, written (encapsulation, any context: into
 * room the caller made in front of the inner IP packet with
 * bpf_xdp_adjust_head or bpf_skb_adjust_room) and read (decapsulation:
 * the Geneve header and xlb's option, over the context layer).
 *
 * Two encapsulations (xlb_service.encap):
 *   XLB_ENCAP_GENEVE  Ethernet | outer IPv4/IPv6 | UDP | Geneve | xlb option
 *                     | inner IP packet. Geneve (RFC 8926): version 0, no
 *                     O/C flags, protocol type = inner EtherType, VNI from
 *                     xlb_node; one option of class XLB_GENEVE_OPT_CLASS,
 *                     type DSR4/DSR6 (by inner family) with the frontend
 *                     address and port the client used, or for a forwarded
 *                     ICMP error EP4/EP6 with the endpoint address and target
 *                     port. UDP source port XLB_GENEVE_SPORT_BASE + hash %
 *                     16384 for RSS/ECMP entropy. UDP checksum 0 for both
 *                     outer families: IPv4 allows it, and for IPv6 RFC
 *                     6935/6936 allow a zero checksum on tunnel traffic; the
 *                     receiver is xlb's own tc program, which decapsulates
 *                     before any UDP socket checks it. The inner packet
 *                     carries its own L4 checksum end to end.
 *   XLB_ENCAP_IPIP    Ethernet | outer IPv4 (protocol 4 or 41) or IPv6 (next
 *                     header 4 or 41) | inner IP packet. No RSS entropy
 *                     beyond the IPv6 flow label.
 * Outer IPv4: DF, TTL 64, id 0, header checksum computed. Outer IPv6: hop
 * limit 64, flow label = hash & 0xfffff.
 *
 * API (writers: 0 or -XLB_DROP_ENCAP if a header would pass data_end;
 * addresses are 16-byte ABI form, IPv4 in the first 4 bytes)
 *   __u32 xlb_encap_hlen(encap, outer_family, inner_family)
 *       bytes of outer headers, Ethernet included
 *   int xlb_write_eth(data, data_end, dmac, smac, h_proto)
 *   int xlb_write_ip4(p, data_end, saddr, daddr, proto, tot_len)
 *   int xlb_write_ip6(p, data_end, saddr, daddr, nexthdr, payload_len, flow)
 *   int xlb_write_geneve(p, data_end, sport, dport, inner_len, inner_family,
 *                        vni, opt_type, addr, port)
 *       UDP + Geneve + one option at p; the option's data layout (4 or 16
 *       byte address) follows inner_family.
 * API (reader)
 *   int xlb_geneve_parse(ctx, gnv_off, udp_end, vni, &tun)
 *       checks the Geneve header at gnv_off (version 0, not OAM, our VNI,
 *       options within the UDP payload) and finds xlb's option among at
 *       most XLB_GENEVE_MAX_OPTS: tun gets the option's type, address
 *       family, address and port, and the inner packet's offset and
 *       EtherType. -XLB_DROP_TRUNCATED, -XLB_DROP_BAD_TUNNEL (malformed,
 *       another VNI, an xlb option of the wrong length),
 *       -XLB_DROP_NO_DSR_OPT (no xlb option).
 */
#ifndef XLB_ENCAP_H
#define XLB_ENCAP_H

#include "parse.h"
#include "csum.h"

#define XLB_GENEVE_VER(b)      ((b) >> 6)
#define XLB_GENEVE_OPTLEN(b)   (((b)&0x3f) * 4)
#define XLB_GENEVE_F_OAM       0x80
#define XLB_GENEVE_OPT_LEN(b)  (((b)&0x1f) * 4)
#define XLB_GENEVE_OPT_TYPE(t) ((t)&0x7f) /* without the critical bit */
#define XLB_GENEVE_MAX_OPTS    8

#define XLB_IP4_HLEN	    20
#define XLB_IP6_HLEN	    40
#define XLB_UDP_HLEN	    8
#define XLB_GENEVE_OPT4_LEN (sizeof(struct xlb_geneve_opt_hdr) + sizeof(struct xlb_dsr_opt4))
#define XLB_GENEVE_OPT6_LEN (sizeof(struct xlb_geneve_opt_hdr) + sizeof(struct xlb_dsr_opt6))

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

/* What a Geneve header and xlb's option said. */
struct xlb_tunnel {
	__u8 addr[16] __attribute__((aligned(4))); /* service (DSR*) or endpoint (EP*) */
	__be16 port;
	__u8 opt;    /* enum xlb_geneve_opt_type */
	__u8 family; /* of addr */
	__u16 inner_off;
	__u16 inner_proto; /* EtherType, host order */
};

/* xlb's option among the Geneve options in [off, inner_off). */
static __always_inline int xlb_geneve_find_opt(struct xlb_ctx *ctx, __u32 off, struct xlb_tunnel *t)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);

	for (int i = 0; i < XLB_GENEVE_MAX_OPTS; i++) {
		struct xlb_geneve_opt_hdr *opt;
		__u32 olen, want = 0;
		__u8 type, family = 0;

		if (off >= t->inner_off)
			break;
		opt = data + (off & XLB_L3_OFF_MASK);
		if ((void *)(opt + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		olen = sizeof(*opt) + XLB_GENEVE_OPT_LEN(opt->len);
		if (off + olen > t->inner_off)
			return -XLB_DROP_BAD_TUNNEL;
		type = XLB_GENEVE_OPT_TYPE(opt->type);
		if (opt->opt_class == bpf_htons(XLB_GENEVE_OPT_CLASS)) {
			if (type == XLB_GENEVE_OPT_DSR4 || type == XLB_GENEVE_OPT_EP4) {
				want = sizeof(*opt) + sizeof(struct xlb_dsr_opt4);
				family = XLB_FAMILY_V4;
			} else if (type == XLB_GENEVE_OPT_DSR6 || type == XLB_GENEVE_OPT_EP6) {
				want = sizeof(*opt) + sizeof(struct xlb_dsr_opt6);
				family = XLB_FAMILY_V6;
			}
		}
		if (want) {
			if (olen != want)
				return -XLB_DROP_BAD_TUNNEL;
			if (family == XLB_FAMILY_V4) {
				struct xlb_dsr_opt4 *o = (void *)(opt + 1);

				if ((void *)(o + 1) > data_end)
					return -XLB_DROP_TRUNCATED;
				*(__u32 *)t->addr = *(__u32 *)o->vaddr;
				t->port = o->vport;
			} else {
				struct xlb_dsr_opt6 *o = (void *)(opt + 1);

				if ((void *)(o + 1) > data_end)
					return -XLB_DROP_TRUNCATED;
				xlb_addr_copy(t->addr, o->vaddr);
				t->port = o->vport;
			}
			t->opt = type;
			t->family = family;
			return 0;
		}
		off += olen;
	}
	return -XLB_DROP_NO_DSR_OPT;
}

/* Geneve needs at most this many bytes after its header to reach the
 * inner IP header and quoted packet (tc pulls them first). */
#define XLB_GENEVE_PULL_INNER (60 + 8 + 60 + 8)

static __always_inline int xlb_geneve_parse(struct xlb_ctx *ctx, __u32 gnv_off, __u32 udp_end,
					    __u32 vni, struct xlb_tunnel *t)
{
	struct xlb_geneve_hdr *gnv;
	__u32 inner_off, got;

	gnv_off &= XLB_L3_OFF_MASK;
	gnv = xlb_ctx_data(ctx) + gnv_off;
	if ((void *)(gnv + 1) > xlb_ctx_data_end(ctx))
		return -XLB_DROP_TRUNCATED;
	if (XLB_GENEVE_VER(gnv->ver_optlen) != 0 || (gnv->flags & XLB_GENEVE_F_OAM))
		return -XLB_DROP_BAD_TUNNEL;
	got = ((__u32)gnv->vni[0] << 16) | ((__u32)gnv->vni[1] << 8) | gnv->vni[2];
	if (got != vni)
		return -XLB_DROP_BAD_TUNNEL;
	t->inner_proto = bpf_ntohs(gnv->proto);
	inner_off = gnv_off + sizeof(*gnv) + XLB_GENEVE_OPTLEN(gnv->ver_optlen);
	if (inner_off > udp_end)
		return -XLB_DROP_BAD_TUNNEL;
	t->inner_off = inner_off;
	xlb_ctx_pull(ctx, inner_off + XLB_GENEVE_PULL_INNER);
	return xlb_geneve_find_opt(ctx, gnv_off + sizeof(*gnv), t);
}

#endif /* XLB_ENCAP_H */
