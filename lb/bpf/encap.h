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
 *                     xlb_node; one option of class XLB_GENEVE_OPT_CLASS:
 *                       DSR4/DSR6 (by inner family): the frontend address
 *                         and port the client used (the load balancer);
 *                       EP4/EP6: the endpoint address and target port, for
 *                         a forwarded ICMP error;
 *                       IDENTITY: the pod overlay (tc), the source's
 *                         security identity.
 *                     One UDP port and VNI for all of them: the option says
 *                     which. UDP source port XLB_GENEVE_SPORT_BASE + hash %
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
 *   __u32 xlb_geneve_hlen(opt_type, inner_family)
 *       UDP + Geneve + the option
 *   __u32 xlb_encap_hlen(encap, outer_family, inner_family)
 *       bytes of outer headers of the load balancer's dispatch, Ethernet
 *       included
 *   int xlb_write_eth(data, data_end, dmac, smac, h_proto)
 *   int xlb_write_ip(p, data_end, family, saddr, daddr, proto, l3_len, flow)
 *       the outer IPv4 (xlb_write_ip4) or IPv6 (xlb_write_ip6) header;
 *       l3_len is the whole outer IP packet
 *   int xlb_write_geneve(p, data_end, &struct xlb_geneve_out)
 *       UDP + Geneve + one option at p; a DSR/EP option's data layout (4 or
 *       16 byte address) follows inner_family.
 *   xlb_put_eth / xlb_put_ip4 / xlb_put_ip6 / xlb_put_geneve
 *       the same writes without their bounds checks, for a caller that
 *       checked room for a whole header stack once (XDP's dispatch: one
 *       check per (encap, outer, inner) combination instead of four);
 *       xlb_put_eth_macs(data, macs, h_proto): both MACs from 12 aligned
 *       bytes (destination, source) in three word copies.
 * API (reader)
 *   int xlb_geneve_parse(ctx, gnv_off, udp_end, vni, &tun)
 *       checks the Geneve header at gnv_off and finds xlb's option among at
 *       most XLB_GENEVE_MAX_OPTS: tun gets the option's type, address
 *       family, address and port (DSR/EP) or identity (IDENTITY), and the
 *       inner packet's offset and EtherType. Geneve that is not xlb's
 *       (version != 0, OAM, another VNI, no option of xlb's class) is
 *       -XLB_PASS_FOREIGN_TUNNEL: another overlay may share the port.
 *       -XLB_DROP_TRUNCATED, -XLB_DROP_BAD_TUNNEL (with xlb's VNI: options
 *       past the payload, an option running past the options, an xlb option
 *       of the wrong length).
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

#define XLB_GENEVE_OPTID_LEN (sizeof(struct xlb_geneve_opt_hdr) + sizeof(struct xlb_identity_opt))

static __always_inline __u32 xlb_geneve_optlen(__u8 opt_type, __u8 inner_family)
{
	if (opt_type == XLB_GENEVE_OPT_IDENTITY)
		return XLB_GENEVE_OPTID_LEN;
	return inner_family == XLB_FAMILY_V6 ? XLB_GENEVE_OPT6_LEN : XLB_GENEVE_OPT4_LEN;
}

static __always_inline __u32 xlb_geneve_hlen(__u8 opt_type, __u8 inner_family)
{
	return XLB_UDP_HLEN + sizeof(struct xlb_geneve_hdr) +
	       xlb_geneve_optlen(opt_type, inner_family);
}

static __always_inline __u32 xlb_encap_hlen(__u8 encap, __u8 outer_family, __u8 inner_family)
{
	__u32 len = ETH_HLEN + (outer_family == XLB_FAMILY_V6 ? XLB_IP6_HLEN : XLB_IP4_HLEN);

	if (encap == XLB_ENCAP_GENEVE)
		len += xlb_geneve_hlen(XLB_GENEVE_OPT_DSR4, inner_family);
	return len;
}

static __always_inline void xlb_put_eth(void *data, const __u8 *dmac, const __u8 *smac,
					__be16 h_proto)
{
	struct ethhdr *eth = data;

	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = h_proto;
}

/* Ethernet from `macs`: the destination then the source MAC, 12 bytes,
 * 4-byte aligned (a stack buffer's accesses must be): three 32-bit copies
 * instead of twelve byte copies. */
static __always_inline void xlb_put_eth_macs(void *data, const __u8 *macs, __be16 h_proto)
{
	__u32 *w = data;
	const __u32 *m = (const __u32 *)macs;

	w[0] = m[0];
	w[1] = m[1];
	w[2] = m[2];
	/* one store (struct ethhdr is packed: h_proto would go byte by byte) */
	*(__be16 *)(w + 3) = h_proto;
}

static __always_inline int xlb_write_eth(void *data, void *data_end, const __u8 *dmac,
					 const __u8 *smac, __be16 h_proto)
{
	if (data + ETH_HLEN > data_end)
		return -XLB_DROP_ENCAP;
	xlb_put_eth(data, dmac, smac, h_proto);
	return 0;
}

static __always_inline void xlb_put_ip4(void *p, __be32 saddr, __be32 daddr, __u8 proto,
					__u16 tot_len)
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

	h.check = xlb_ipv4_csum(&h);
	*ip = h;
}

static __always_inline int xlb_write_ip4(void *p, void *data_end, __be32 saddr, __be32 daddr,
					 __u8 proto, __u16 tot_len)
{
	if (p + XLB_IP4_HLEN > data_end)
		return -XLB_DROP_ENCAP;
	xlb_put_ip4(p, saddr, daddr, proto, tot_len);
	return 0;
}

static __always_inline void xlb_put_ip6(void *p, const void *saddr, const void *daddr, __u8 nexthdr,
					__u16 payload_len, __u32 flow)
{
	struct ipv6hdr *ip6 = p;

	/* version 6, traffic class 0, 20-bit flow label */
	*(__be32 *)ip6 = bpf_htonl((6u << 28) | (flow & 0xfffff));
	ip6->payload_len = bpf_htons(payload_len);
	ip6->nexthdr = nexthdr;
	ip6->hop_limit = 64;
	xlb_addr_copy(&ip6->saddr, saddr);
	xlb_addr_copy(&ip6->daddr, daddr);
}

static __always_inline int xlb_write_ip6(void *p, void *data_end, const void *saddr,
					 const void *daddr, __u8 nexthdr, __u16 payload_len,
					 __u32 flow)
{
	if (p + XLB_IP6_HLEN > data_end)
		return -XLB_DROP_ENCAP;
	xlb_put_ip6(p, saddr, daddr, nexthdr, payload_len, flow);
	return 0;
}

static __always_inline int xlb_write_ip(void *p, void *data_end, __u8 family, const __u8 *saddr,
					const __u8 *daddr, __u8 proto, __u16 l3_len, __u32 flow)
{
	if (family == XLB_FAMILY_V6)
		return xlb_write_ip6(p, data_end, saddr, daddr, proto, l3_len - XLB_IP6_HLEN, flow);
	return xlb_write_ip4(p, data_end, *(const __u32 *)saddr, *(const __u32 *)daddr, proto,
			     l3_len);
}

/* What xlb_write_geneve writes after the outer IP header. */
struct xlb_geneve_out {
	const __u8 *addr; /* DSR/EP options: service or endpoint address */
	__be16 sport;	  /* UDP, network order */
	__be16 dport;
	__u32 vni;
	__u32 identity; /* IDENTITY option */
	__be16 port;	/* DSR/EP options: service or endpoint port */
	__u16 inner_len;
	__u8 inner_family;
	__u8 opt_type; /* enum xlb_geneve_opt_type, XLB_GENEVE_OPT_IDENTITY */
};

/* Two 16-bit fields as they sit in memory (each already in packet order),
 * and two bytes: one 32-bit store instead of two or four (the JIT emits
 * every store; packet stores need no alignment on the architectures XDP
 * runs xlb on). */
static __always_inline __u32 xlb_pair16(__u16 first, __u16 second)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u32)first | ((__u32)second << 16);
#else
	return ((__u32)first << 16) | second;
#endif
}

static __always_inline __u16 xlb_pair8(__u8 first, __u8 second)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u16)first | ((__u16)second << 8);
#else
	return ((__u16)first << 8) | second;
#endif
}

/* UDP + Geneve + option header (20 bytes) in five 32-bit stores, then the
 * option's data. `check` (a constant): bounds-check each part against
 * data_end, with the constant lengths the verifier needs on each option's
 * path; 0 when the caller checked room for all of it. */
static __always_inline int xlb_geneve_body(void *p, void *data_end, const struct xlb_geneve_out *g,
					   const int check)
{
	__u32 *w = p;
	__u32 optlen = xlb_geneve_optlen(g->opt_type, g->inner_family), datalen;
	__be16 proto = bpf_htons(g->inner_family == XLB_FAMILY_V6 ? ETH_P_IPV6 : ETH_P_IP);

	if (check && (void *)(w + 5) > data_end)
		return -XLB_DROP_ENCAP;
	/* UDP: ports, length, checksum 0 */
	w[0] = xlb_pair16(g->sport, g->dport);
	w[1] = xlb_pair16(
	    bpf_htons(XLB_UDP_HLEN + sizeof(struct xlb_geneve_hdr) + optlen + g->inner_len), 0);
	/* Geneve: version 0 | option length in words, flags 0, protocol; VNI, 0 */
	w[2] = xlb_pair16(xlb_pair8(optlen / 4, 0), proto);
	w[3] = bpf_htonl(g->vni << 8);
	datalen = optlen - sizeof(struct xlb_geneve_opt_hdr);
	w[4] = xlb_pair16(bpf_htons(XLB_GENEVE_OPT_CLASS), xlb_pair8(g->opt_type, datalen / 4));
	if (g->opt_type == XLB_GENEVE_OPT_IDENTITY) {
		struct xlb_identity_opt *o = (void *)(w + 5);

		if (check && (void *)(o + 1) > data_end)
			return -XLB_DROP_ENCAP;
		o->identity = bpf_htonl(g->identity);
	} else if (g->inner_family == XLB_FAMILY_V6) {
		struct xlb_dsr_opt6 *o = (void *)(w + 5);

		if (check && (void *)(o + 1) > data_end)
			return -XLB_DROP_ENCAP;
		/* through w: o's 2-byte alignment would split each word
		 * store in two */
		xlb_addr_copy(w + 5, g->addr);
		w[9] = xlb_pair16(g->port, 0);
	} else {
		struct xlb_dsr_opt4 *o = (void *)(w + 5);

		if (check && (void *)(o + 1) > data_end)
			return -XLB_DROP_ENCAP;
		w[5] = *(const __u32 *)g->addr;
		w[6] = xlb_pair16(g->port, 0);
	}
	return 0;
}

static __always_inline int xlb_write_geneve(void *p, void *data_end, const struct xlb_geneve_out *g)
{
	return xlb_geneve_body(p, data_end, g, 1);
}

static __always_inline void xlb_put_geneve(void *p, const struct xlb_geneve_out *g)
{
	xlb_geneve_body(p, 0, g, 0);
}

/* What a Geneve header and xlb's option said. */
struct xlb_tunnel {
	__u8 addr[16] __attribute__((aligned(4))); /* service (DSR*) or endpoint (EP*) */
	__u32 identity;				   /* IDENTITY: the source's */
	__be16 port;
	__u8 opt;    /* enum xlb_geneve_opt_type, XLB_GENEVE_OPT_IDENTITY */
	__u8 family; /* of addr (DSR/EP) */
	__u16 inner_off;
	__u16 inner_proto; /* EtherType, host order */
};

/* The data length an xlb option of `type` must have (0: not a type xlb
 * knows, skipped like another class's option) and the family of its
 * address. */
static __always_inline __u32 xlb_geneve_opt_want(__u8 type, __u8 *family)
{
	switch (type) {
	case XLB_GENEVE_OPT_DSR4:
	case XLB_GENEVE_OPT_EP4:
		*family = XLB_FAMILY_V4;
		return sizeof(struct xlb_dsr_opt4);
	case XLB_GENEVE_OPT_DSR6:
	case XLB_GENEVE_OPT_EP6:
		*family = XLB_FAMILY_V6;
		return sizeof(struct xlb_dsr_opt6);
	case XLB_GENEVE_OPT_IDENTITY:
		*family = 0;
		return sizeof(struct xlb_identity_opt);
	}
	return 0;
}

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
		if (opt->opt_class == bpf_htons(XLB_GENEVE_OPT_CLASS))
			want = xlb_geneve_opt_want(type, &family);
		if (want) {
			if (olen != sizeof(*opt) + want)
				return -XLB_DROP_BAD_TUNNEL;
			if (type == XLB_GENEVE_OPT_IDENTITY) {
				struct xlb_identity_opt *o = (void *)(opt + 1);

				if ((void *)(o + 1) > data_end)
					return -XLB_DROP_TRUNCATED;
				t->identity = bpf_ntohl(o->identity);
			} else if (family == XLB_FAMILY_V4) {
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
	return -XLB_PASS_FOREIGN_TUNNEL;
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
	/* Another version, an OAM frame or another network: not xlb's to take
	 * apart (another overlay may use the port). */
	if (XLB_GENEVE_VER(gnv->ver_optlen) != 0 || (gnv->flags & XLB_GENEVE_F_OAM))
		return -XLB_PASS_FOREIGN_TUNNEL;
	got = ((__u32)gnv->vni[0] << 16) | ((__u32)gnv->vni[1] << 8) | gnv->vni[2];
	if (got != vni)
		return -XLB_PASS_FOREIGN_TUNNEL;
	t->inner_proto = bpf_ntohs(gnv->proto);
	inner_off = gnv_off + sizeof(*gnv) + XLB_GENEVE_OPTLEN(gnv->ver_optlen);
	if (inner_off > udp_end)
		return -XLB_DROP_BAD_TUNNEL;
	t->inner_off = inner_off;
	xlb_ctx_pull(ctx, inner_off + XLB_GENEVE_PULL_INNER);
	return xlb_geneve_find_opt(ctx, gnv_off + sizeof(*gnv), t);
}

#endif /* XLB_ENCAP_H */
