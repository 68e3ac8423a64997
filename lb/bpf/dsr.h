/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * dsr.h: DSR termination on a backend node (tc, struct __sk_buff).
 *
 * Ingress (dsr_ingress), on packets addressed to this node:
 *   - Geneve: the client packet inside was already DNAT'd to the endpoint by
 *     the load balancer; a DSR option names the service address and port the
 *     client used. The tunnel is checked, (client -> endpoint) => service is
 *     remembered in xlb_dsr_nat and the outer headers are stripped; the
 *     kernel then routes the inner packet to the endpoint (a pod behind a
 *     veth, or the node itself). An ICMP error the load balancer forwards
 *     (quoting service -> client) carries an endpoint option (EP4/EP6)
 *     instead and is translated so the endpoint's socket gets it.
 *   - IPIP / IP6IP6 / IPv6-in-IPv4: the inner packet is as the client sent
 *     it; the node picks the backend with the shared tables (frontend,
 *     xlb_select: conntrack, affinity, Maglev) and accepts only its own.
 *
 * Egress (dsr_egress): a packet whose reversed 5-tuple has an xlb_dsr_nat
 * entry is a reply from the endpoint; its source is rewritten back to the
 * service address and port. An ICMP error about a client's packet (quote
 * client -> endpoint: the xlb_dsr_nat key as is) gets its quote rewritten to
 * the service. One hash lookup for everything else.
 *
 * Every function returns DSR_NEXT (keep going) or the xlb_counter the packet
 * is counted under; the program's single exit maps OK_* / PASS_* to
 * TC_ACT_OK and DROP_* to TC_ACT_SHOT (dsr_verdict).
 *
 * Headers are read by direct packet access at offsets from skb->data. An
 * offset is always a sum of masked header fields, so the verifier knows its
 * upper bound; each access is preceded by an explicit data_end check.
 * parse.h's xlb_parse is not used here: it checks IP lengths against
 * data_end, which in tc is the end of the skb's linear head, not of the
 * packet (paged TCP payload, BIG TCP's tot_len 0). Lengths here are checked
 * against skb->len, and only on packets xlb takes apart. Packet rewrites use
 * the kernel's checksum helpers, which keep CHECKSUM_PARTIAL and
 * CHECKSUM_COMPLETE skbs right; csum.h computes only the quoted checksum
 * inside ICMP errors, which no offload covers.
 */
#ifndef XLB_DSR_H
#define XLB_DSR_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "parse.h"
#include "maglev.h"
#include "counters.h"
#include "csum.h"

/* Keep going: not a counter, every counter is >= 0. */
#define DSR_NEXT (-1)

/* BPF_F_IPV6 for bpf_l4_csum_replace (uapi since Linux 6.16, missing from
 * the Debian 12 headers): with BPF_F_PSEUDO_HDR on an IPv6 packet it stops
 * the helper from adjusting skb->csum of a CHECKSUM_COMPLETE skb (IPv6 has
 * no header checksum to absorb the address change). Older kernels reject
 * the flag with -EINVAL; xlb targets 6.18. */
#define DSR_F_IPV6 (1ULL << 7)

/* The same for bpf_skb_adjust_room (uapi since Linux 6.3): the L3 family of
 * the packet after the outer header is removed, when it differs. */
#define DSR_ADJ_DECAP_L3_IPV4 (1ULL << 7)
#define DSR_ADJ_DECAP_L3_IPV6 (1ULL << 8)

#define DSR_GENEVE_VER(b)      ((b) >> 6)
#define DSR_GENEVE_OPTLEN(b)   (((b)&0x3f) * 4)
#define DSR_GENEVE_F_OAM       0x80
#define DSR_GENEVE_OPT_LEN(b)  (((b)&0x1f) * 4)
#define DSR_GENEVE_OPT_TYPE(t) ((t)&0x7f) /* without the critical bit */
#define DSR_GENEVE_MAX_OPTS    8

/* ICMP error types (struct xlb_icmp_hdr from parse.h is the header). */
#define DSR_ICMP_DEST_UNREACH  3
#define DSR_ICMP_TIME_EXCEEDED 11
#define DSR_ICMP_PARAMETERPROB 12
#define DSR_ICMP6_DEST_UNREACH 1
#define DSR_ICMP6_PKT_TOOBIG   2
#define DSR_ICMP6_TIME_EXCEED  3
#define DSR_ICMP6_PARAMPROB    4

#define DSR_IP_MF     0x2000
#define DSR_IP_OFFSET 0x1fff

/* Linear bytes wanted before parsing. Egress: Ethernet + IPv4 with options
 * + TCP. Ingress, after the outer headers are known: the inner IP header,
 * an ICMP header, the quoted IP header and 8 bytes of quoted L4. */
#define DSR_PULL_EGRESS (ETH_HLEN + 60 + 20)
#define DSR_PULL_OUTER	(ETH_HLEN + 60 + 8)
#define DSR_PULL_INNER	(60 + 8 + 60 + 8)

static __always_inline int dsr_verdict(int counter)
{
	return xlb_reason_is_drop(counter) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Makes the first min(want, skb->len) bytes linear if they are not. Costs
 * nothing for the usual skb whose headers are already in the head. */
static __always_inline void dsr_pull(struct __sk_buff *skb, __u32 want)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (want > skb->len)
		want = skb->len;
	if (data + want > data_end)
		/* A failed pull leaves the skb as it was: the bounds checks
		 * below then report the header as truncated. */
		bpf_skb_pull_data(skb, want);
}

static __always_inline int dsr_addr6_zero(const void *a)
{
	const __u32 *x = a;

	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* One IP header, parsed. Offsets are from skb->data. */
struct dsr_ip {
	__u32 l3off;
	__u32 l4off;
	__u32 end; /* just past the IP packet (total / payload length) */
	__u8 family;
	__u8 proto;
	__u8 later_frag; /* a fragment other than the first: no L4 header */
	__u8 first_frag; /* the first fragment of several */
};

/* Parses the IPv4 header at l3off (which the caller bounded): bounds, version
 * (else `bad_version`) and IHL. Lengths are checked by dsr_check_len. */
static __always_inline int dsr_parse_ip4(void *data, void *data_end, __u32 l3off, int bad_version,
					 struct dsr_ip *ip)
{
	struct iphdr *iph = data + l3off;
	__u32 hlen;

	if ((void *)(iph + 1) > data_end)
		return XLB_DROP_TRUNCATED;
	if (iph->version != 4)
		return bad_version;
	hlen = iph->ihl * 4;
	if (hlen < sizeof(*iph) || (void *)iph + hlen > data_end)
		return XLB_DROP_BAD_IHL;
	ip->l3off = l3off;
	ip->l4off = l3off + hlen;
	ip->end = l3off + bpf_ntohs(iph->tot_len);
	ip->family = XLB_FAMILY_V4;
	ip->proto = iph->protocol;
	ip->later_frag = (iph->frag_off & bpf_htons(DSR_IP_OFFSET)) != 0;
	ip->first_frag = !ip->later_frag && (iph->frag_off & bpf_htons(DSR_IP_MF));
	return DSR_NEXT;
}

/* Parses the IPv6 header at l3off. Extension headers are not followed:
 * ip->proto is the first next-header value. */
static __always_inline int dsr_parse_ip6(void *data, void *data_end, __u32 l3off, int bad_version,
					 struct dsr_ip *ip)
{
	struct ipv6hdr *ip6 = data + l3off;

	if ((void *)(ip6 + 1) > data_end)
		return XLB_DROP_TRUNCATED;
	if (ip6->version != 6)
		return bad_version;
	ip->l3off = l3off;
	ip->l4off = l3off + sizeof(*ip6);
	ip->end = ip->l4off + bpf_ntohs(ip6->payload_len);
	ip->family = XLB_FAMILY_V6;
	ip->proto = ip6->nexthdr;
	ip->later_frag = 0;
	ip->first_frag = 0;
	return DSR_NEXT;
}

/* The IP length field must cover the header and fit in `limit` (the frame,
 * or the tunnel payload for an inner packet). Only checked on packets xlb
 * takes apart: egress BIG TCP (tot_len 0) must not be caught by it. */
static __always_inline int dsr_check_len(const struct dsr_ip *ip, __u32 limit)
{
	if (ip->end < ip->l4off || ip->end > limit)
		return XLB_DROP_BAD_LEN;
	return DSR_NEXT;
}

/* Fills the addresses of key from the IP header at ip->l3off, swapped when
 * `reverse`. The header was checked by dsr_parse_ip*, but the verifier
 * tracks bounds per pointer, not per offset, so the check is repeated. */
static __always_inline int dsr_key_addrs(void *data, void *data_end, const struct dsr_ip *ip,
					 struct xlb_flow_key *key, int reverse)
{
	if (ip->family == XLB_FAMILY_V4) {
		struct iphdr *iph = data + ip->l3off;

		if ((void *)(iph + 1) > data_end)
			return XLB_DROP_TRUNCATED;
		__builtin_memcpy(reverse ? key->daddr : key->saddr, &iph->saddr, 4);
		__builtin_memcpy(reverse ? key->saddr : key->daddr, &iph->daddr, 4);
	} else {
		struct ipv6hdr *ip6 = data + ip->l3off;

		if ((void *)(ip6 + 1) > data_end)
			return XLB_DROP_TRUNCATED;
		__builtin_memcpy(reverse ? key->daddr : key->saddr, &ip6->saddr, 16);
		__builtin_memcpy(reverse ? key->saddr : key->daddr, &ip6->daddr, 16);
	}
	key->family = ip->family;
	return DSR_NEXT;
}

/* ---- egress: reply source rewrite ---------------------------------------- */

#define DSR_SRC 0
#define DSR_DST 1

/* Rewrites the source (DSR_SRC) or destination (DSR_DST) address and port
 * of a TCP/UDP packet from `from`:from_port to `to`:to_port (16-byte
 * addresses, IPv4 in the first 4), with the kernel's checksum helpers: they
 * keep CHECKSUM_PARTIAL (local sockets, veth) and CHECKSUM_COMPLETE skbs
 * right, which patching the checksum field by hand would not. */
static __always_inline int dsr_rewrite(struct __sk_buff *skb, const struct dsr_ip *ip, int dir,
				       const __u8 *from, const __u8 *to, __be16 from_port,
				       __be16 to_port)
{
	__u32 csum_off = ip->l4off + (ip->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							       : offsetof(struct udphdr, check));
	/* UDP over IPv4 with checksum 0 (none) keeps 0; a computed 0 is sent
	 * as 0xffff. TCP has no such case. */
	__u64 mangled = ip->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u8 old[16] __attribute__((aligned(4)));
	__u8 new[16] __attribute__((aligned(4)));

	/* copies: the helpers below invalidate packet pointers, and map
	 * values may change under us */
	__builtin_memcpy(old, from, 16);
	__builtin_memcpy(new, to, 16);
	if (ip->family == XLB_FAMILY_V4) {
		__u32 addr_off =
		    dir == DSR_DST ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr);
		__be32 f, t;

		__builtin_memcpy(&f, old, 4);
		__builtin_memcpy(&t, new, 4);
		if (bpf_l4_csum_replace(skb, csum_off, f, t, BPF_F_PSEUDO_HDR | mangled | 4))
			return XLB_DROP_NAT;
		if (bpf_l3_csum_replace(skb, ip->l3off + offsetof(struct iphdr, check), f, t, 4))
			return XLB_DROP_NAT;
		if (bpf_skb_store_bytes(skb, ip->l3off + addr_off, &t, 4, 0))
			return XLB_DROP_NAT;
	} else {
		__u32 addr_off = dir == DSR_DST ? offsetof(struct ipv6hdr, daddr)
						: offsetof(struct ipv6hdr, saddr);
		__s64 diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);

		if (diff < 0)
			return XLB_DROP_NAT;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff,
					BPF_F_PSEUDO_HDR | DSR_F_IPV6 | mangled))
			return XLB_DROP_NAT;
		if (bpf_skb_store_bytes(skb, ip->l3off + addr_off, new, 16, 0))
			return XLB_DROP_NAT;
	}
	if (from_port != to_port) {
		/* source port then destination port, in TCP and UDP alike */
		__u32 port_off = ip->l4off + (dir == DSR_DST ? 2 : 0);

		if (bpf_l4_csum_replace(skb, csum_off, from_port, to_port, mangled | 2))
			return XLB_DROP_NAT;
		if (bpf_skb_store_bytes(skb, port_off, &to_port, 2, 0))
			return XLB_DROP_NAT;
	}
	return DSR_NEXT;
}

/* ---- ICMP errors -------------------------------------------------------- */

static __always_inline int dsr_icmp_is_error(__u8 family, __u8 type)
{
	if (family == XLB_FAMILY_V4)
		return type == DSR_ICMP_DEST_UNREACH || type == DSR_ICMP_TIME_EXCEEDED ||
		       type == DSR_ICMP_PARAMETERPROB;
	return type == DSR_ICMP6_DEST_UNREACH || type == DSR_ICMP6_PKT_TOOBIG ||
	       type == DSR_ICMP6_TIME_EXCEED || type == DSR_ICMP6_PARAMPROB;
}

/* An ICMP error and the TCP/UDP packet it quotes. */
struct dsr_icmp {
	struct xlb_flow_key err;    /* the error's addresses (ports 0) */
	struct xlb_flow_key quoted; /* the quoted tuple, in its own direction */
	struct dsr_ip q;	    /* the quoted IP header */
	__u32 qcsum_off;	    /* the quoted L4 checksum; 0: not quoted */
	__sum16 qcsum;
	__u16 pad;
} __attribute__((aligned(8)));

/* Parses the ICMP error at in->l4off and the TCP/UDP packet it quotes.
 * Another ICMP type is `not_error`; a quote xlb cannot use is `bad`. */
static __always_inline int dsr_parse_icmp_error(void *data, void *data_end, const struct dsr_ip *in,
						int not_error, int bad, struct dsr_icmp *e)
{
	struct xlb_icmp_hdr *icmp = data + in->l4off;
	__be16 *ports;
	__u32 off;
	int rc;

	if (in->proto != (in->family == XLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6) ||
	    in->later_frag)
		return bad;
	if ((void *)(icmp + 1) > data_end)
		return bad;
	if (!dsr_icmp_is_error(in->family, icmp->type))
		return not_error;
	if (in->family == XLB_FAMILY_V4)
		rc = dsr_parse_ip4(data, data_end, in->l4off + sizeof(*icmp), bad, &e->q);
	else
		rc = dsr_parse_ip6(data, data_end, in->l4off + sizeof(*icmp), bad, &e->q);
	if (rc != DSR_NEXT)
		return bad;
	if ((e->q.proto != IPPROTO_TCP && e->q.proto != IPPROTO_UDP) || e->q.later_frag)
		return bad;
	ports = data + e->q.l4off;
	if ((void *)(ports + 2) > data_end || e->q.l4off + 4 > in->end)
		return bad;
	if (dsr_key_addrs(data, data_end, &e->q, &e->quoted, 0) != DSR_NEXT ||
	    dsr_key_addrs(data, data_end, in, &e->err, 0) != DSR_NEXT)
		return bad;
	e->quoted.sport = ports[0];
	e->quoted.dport = ports[1];
	e->quoted.proto = e->q.proto;

	/* The quoted L4 checksum is rewritten too when the quote holds it
	 * (IPv4 routers quote only 8 bytes: TCP's is cut off). */
	off = e->q.l4off + (e->q.proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
						      : offsetof(struct udphdr, check));
	e->qcsum_off = 0;
	if (off + 2 <= in->end) {
		__sum16 *qc = data + off;

		if ((void *)(qc + 1) > data_end)
			return bad;
		e->qcsum_off = off;
		e->qcsum = *qc;
	}
	return DSR_NEXT;
}

/* Translates an ICMP error and its quote. The quote runs opposite to the
 * error: its `qdir` address and port go from:from_port -> to:to_port, and
 * the error's address on the other side goes along when `outer` (left as
 * is otherwise: a router's source address stays).
 *
 * Checksums: the quoted IPv4 header's own checksum absorbs the quoted
 * address change, so it does not move the ICMPv4 checksum; ICMPv6 covers the
 * pseudo-header and the quoted addresses. The quoted L4 checksum (when
 * quoted) is updated with csum.h and the ICMP checksum follows it. */
static __always_inline int dsr_icmp_xlate(struct __sk_buff *skb, const struct dsr_ip *in,
					  const struct dsr_icmp *e, int qdir, int outer,
					  const __u8 *from, const __u8 *to, __be16 from_port,
					  __be16 to_port)
{
	__u32 csum_off = in->l4off + offsetof(struct xlb_icmp_hdr, checksum);
	int v4 = in->family == XLB_FAMILY_V4;
	__u32 oaddr =
	    v4 ? (qdir == DSR_SRC ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr))
	       : (qdir == DSR_SRC ? offsetof(struct ipv6hdr, daddr)
				  : offsetof(struct ipv6hdr, saddr));
	__u32 qaddr =
	    v4 ? (qdir == DSR_SRC ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr))
	       : (qdir == DSR_SRC ? offsetof(struct ipv6hdr, saddr)
				  : offsetof(struct ipv6hdr, daddr));
	__u8 old[16] __attribute__((aligned(4)));
	__u8 new[16] __attribute__((aligned(4)));
	__sum16 qcsum = e->qcsum, new_qcsum = e->qcsum;
	__u32 qcsum_off = e->qcsum_off;

	__builtin_memcpy(old, from, 16);
	__builtin_memcpy(new, to, 16);
	if (qcsum_off) {
		__u64 d = v4 ? xlb_csum_diff4(0, *(__u32 *)old, *(__u32 *)new)
			     : xlb_csum_diff16(0, old, new);

		d = xlb_csum_diff2(d, from_port, to_port);
		new_qcsum = e->q.proto == IPPROTO_UDP ? xlb_csum_apply_udp(qcsum, d)
						      : xlb_csum_apply(qcsum, d);
	}

	if (v4) {
		__be32 f = *(__u32 *)old, t = *(__u32 *)new;

		if (outer &&
		    (bpf_l3_csum_replace(skb, in->l3off + offsetof(struct iphdr, check), f, t, 4) ||
		     bpf_skb_store_bytes(skb, in->l3off + oaddr, &t, 4, 0)))
			return XLB_DROP_NAT;
		if (bpf_l3_csum_replace(skb, e->q.l3off + offsetof(struct iphdr, check), f, t, 4) ||
		    bpf_skb_store_bytes(skb, e->q.l3off + qaddr, &t, 4, 0))
			return XLB_DROP_NAT;
	} else {
		__s64 diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);

		if (diff < 0)
			return XLB_DROP_NAT;
		if (outer &&
		    (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | DSR_F_IPV6) ||
		     bpf_skb_store_bytes(skb, in->l3off + oaddr, new, 16, 0)))
			return XLB_DROP_NAT;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, 0) ||
		    bpf_skb_store_bytes(skb, e->q.l3off + qaddr, new, 16, 0))
			return XLB_DROP_NAT;
	}
	if (from_port != to_port &&
	    (bpf_l4_csum_replace(skb, csum_off, from_port, to_port, 2) ||
	     bpf_skb_store_bytes(skb, e->q.l4off + (qdir == DSR_DST ? 2 : 0), &to_port, 2, 0)))
		return XLB_DROP_NAT;
	if (qcsum_off && new_qcsum != qcsum &&
	    (bpf_l4_csum_replace(skb, csum_off, qcsum, new_qcsum, 2) ||
	     bpf_skb_store_bytes(skb, qcsum_off, &new_qcsum, 2, 0)))
		return XLB_DROP_NAT;
	return DSR_NEXT;
}

/* An ICMP error leaving the node about a packet a client sent to an
 * endpoint (the endpoint's port unreachable, the node's own "too big" when
 * forwarding to a pod): the quote (client -> endpoint) is an xlb_dsr_nat key
 * as it stands. The quote becomes client -> service, and the error's source
 * becomes the service when it was the endpoint. */
static __always_inline int dsr_egress_icmp(struct __sk_buff *skb, const struct dsr_ip *ip)
{
	void *data, *data_end;
	struct xlb_dsr_nat_entry *nat;
	struct dsr_icmp e = {};
	int rc;

	dsr_pull(skb, ip->l4off + DSR_PULL_INNER);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	rc = dsr_parse_icmp_error(data, data_end, ip, XLB_PASS_L4_PROTO, XLB_PASS_ICMP_NO_FLOW, &e);
	if (rc != DSR_NEXT)
		return rc;
	nat = bpf_map_lookup_elem(&xlb_dsr_nat, &e.quoted);
	if (!nat)
		return XLB_PASS_NO_NAT;
	if (nat->family != ip->family)
		return XLB_DROP_NAT;
	rc = dsr_icmp_xlate(skb, ip, &e, DSR_DST, xlb_addr_eq(e.err.saddr, e.quoted.daddr),
			    e.quoted.daddr, nat->vaddr, e.quoted.dport, nat->vport);
	return rc != DSR_NEXT ? rc : XLB_OK_TC_REVNAT;
}

static __always_inline int dsr_egress(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct dsr_ip ip;
	struct xlb_flow_key key = {};
	struct xlb_dsr_nat_entry *nat;
	__be16 *ports;
	int rc;

	dsr_pull(skb, DSR_PULL_EGRESS);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XLB_DROP_TRUNCATED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		rc = dsr_parse_ip4(data, data_end, ETH_HLEN, XLB_PASS_NOT_IP, &ip);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		rc = dsr_parse_ip6(data, data_end, ETH_HLEN, XLB_PASS_NOT_IP, &ip);
	else
		return XLB_PASS_NOT_IP;
	if (rc != DSR_NEXT)
		return rc;
	if (ip.later_frag || ip.first_frag)
		return XLB_PASS_FRAGMENT;
	if (ip.proto == (ip.family == XLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
		return dsr_egress_icmp(skb, &ip);
	if (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
		/* IPv6 extension headers are not followed on egress: endpoints
		 * reply without them. */
		if (ip.family == XLB_FAMILY_V6 && ip.proto == IPPROTO_FRAGMENT)
			return XLB_PASS_FRAGMENT;
		if (ip.family == XLB_FAMILY_V6 &&
		    (ip.proto == IPPROTO_HOPOPTS || ip.proto == IPPROTO_ROUTING ||
		     ip.proto == IPPROTO_DSTOPTS || xlb_ipv6_ext_known(ip.proto)))
			return XLB_PASS_IPV6_EXT;
		return XLB_PASS_L4_PROTO;
	}
	ports = data + ip.l4off;
	if ((void *)ports +
		(ip.proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) >
	    data_end)
		return XLB_DROP_TRUNCATED;

	rc = dsr_key_addrs(data, data_end, &ip, &key, 1);
	if (rc != DSR_NEXT)
		return rc;
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = ip.proto;
	nat = bpf_map_lookup_elem(&xlb_dsr_nat, &key);
	if (!nat)
		return XLB_PASS_NO_NAT;
	if (nat->family != ip.family)
		return XLB_DROP_NAT;
	/* the reply's source is the flow key's destination (the endpoint) */
	rc = dsr_rewrite(skb, &ip, DSR_SRC, key.daddr, nat->vaddr, key.dport, nat->vport);
	return rc != DSR_NEXT ? rc : XLB_OK_TC_REVNAT;
}

/* ---- ingress: Geneve termination ----------------------------------------- */

/* What the Geneve header and the xlb option said. */
struct dsr_tunnel {
	__u8 addr[16] __attribute__((aligned(4))); /* service (DSR*) or endpoint (EP*) */
	__be16 port;
	__u8 opt;    /* XLB_GENEVE_OPT_* */
	__u8 family; /* of addr */
	__u32 inner_off;
	__u32 inner_end; /* end of the UDP payload */
};

/* Remembers (client -> endpoint) => service. The entry is written only when
 * it is new or changed, so an established flow costs one lookup. */
static __always_inline int dsr_remember(const struct xlb_flow_key *key, const struct dsr_tunnel *t)
{
	struct xlb_dsr_nat_entry *cur = bpf_map_lookup_elem(&xlb_dsr_nat, key);
	struct xlb_dsr_nat_entry e = {};

	if (cur && cur->vport == t->port && cur->family == t->family &&
	    xlb_addr_eq(cur->vaddr, t->addr))
		return DSR_NEXT;
	__builtin_memcpy(e.vaddr, t->addr, 16);
	e.vport = t->port;
	e.family = t->family;
	e.created_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&xlb_dsr_nat, key, &e, BPF_ANY))
		return XLB_DROP_NAT;
	return DSR_NEXT;
}

/* Finds the xlb option among the Geneve options in [off, t->inner_off). */
static __always_inline int dsr_find_opt(void *data, void *data_end, __u32 off, struct dsr_tunnel *t)
{
	for (int i = 0; i < DSR_GENEVE_MAX_OPTS; i++) {
		struct xlb_geneve_opt_hdr *opt;
		__u32 olen, want = 0;
		__u8 type, family = 0;

		if (off >= t->inner_off)
			break;
		opt = data + off;
		if ((void *)(opt + 1) > data_end)
			return XLB_DROP_TRUNCATED;
		olen = sizeof(*opt) + DSR_GENEVE_OPT_LEN(opt->len);
		if (off + olen > t->inner_off)
			return XLB_DROP_BAD_TUNNEL;
		type = DSR_GENEVE_OPT_TYPE(opt->type);
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
				return XLB_DROP_BAD_TUNNEL;
			if (family == XLB_FAMILY_V4) {
				struct xlb_dsr_opt4 *o = (void *)(opt + 1);

				if ((void *)(o + 1) > data_end)
					return XLB_DROP_TRUNCATED;
				__builtin_memcpy(t->addr, o->vaddr, 4);
				t->port = o->vport;
			} else {
				struct xlb_dsr_opt6 *o = (void *)(opt + 1);

				if ((void *)(o + 1) > data_end)
					return XLB_DROP_TRUNCATED;
				__builtin_memcpy(t->addr, o->vaddr, 16);
				t->port = o->vport;
			}
			t->opt = type;
			t->family = family;
			return DSR_NEXT;
		}
		off += olen;
	}
	return XLB_DROP_NO_DSR_OPT;
}

/* Removes everything between the Ethernet header and the inner IP header. */
static __always_inline int dsr_decap(struct __sk_buff *skb, __u32 inner_off, __u8 outer_family,
				     __u8 inner_family)
{
	/* FIXED_GSO: the inner segments keep their size; the kernel would
	 * otherwise grow gso_size by the removed length. */
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	__be16 proto;

	if (outer_family != inner_family)
		flags |=
		    inner_family == XLB_FAMILY_V4 ? DSR_ADJ_DECAP_L3_IPV4 : DSR_ADJ_DECAP_L3_IPV6;
	if (bpf_skb_adjust_room(skb, -(__s32)(inner_off - ETH_HLEN), BPF_ADJ_ROOM_MAC, flags))
		return XLB_DROP_DECAP;
	if (outer_family != inner_family) {
		/* adjust_room fixed skb->protocol; the frame's EtherType is ours */
		proto = bpf_htons(inner_family == XLB_FAMILY_V4 ? ETH_P_IP : ETH_P_IPV6);
		if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2, 0))
			return XLB_DROP_DECAP;
	}
	return DSR_NEXT;
}

/* The inner packet of a DSR4/DSR6 tunnel: remember the flow. */
static __always_inline int dsr_inner_flow(void *data, void *data_end, const struct dsr_ip *in,
					  const struct dsr_tunnel *t)
{
	struct xlb_flow_key key = {};
	__be16 *ports;
	int rc;

	if (in->proto != IPPROTO_TCP && in->proto != IPPROTO_UDP)
		return XLB_DROP_BAD_TUNNEL;
	if (in->later_frag)
		return DSR_NEXT; /* no ports to remember; the first fragment did */
	ports = data + in->l4off;
	if ((void *)(ports + 2) > data_end)
		return XLB_DROP_TRUNCATED;
	rc = dsr_key_addrs(data, data_end, in, &key, 0);
	if (rc != DSR_NEXT)
		return rc;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = in->proto;
	return dsr_remember(&key, t);
}

/* An ICMP error the load balancer forwarded with an EP4/EP6 option, about
 * a reply it saw leave as the service (quoting service -> client): the
 * error's destination and the quoted source become the endpoint
 * t->addr:t->port, so the endpoint's socket gets it. */
static __always_inline int dsr_icmp_dnat(struct __sk_buff *skb, const struct dsr_ip *in,
					 const struct dsr_tunnel *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct dsr_icmp e = {};
	int rc;

	rc = dsr_parse_icmp_error(data, data_end, in, XLB_DROP_BAD_TUNNEL, XLB_DROP_BAD_TUNNEL, &e);
	if (rc != DSR_NEXT)
		return rc;
	/* the quoted packet must have left from where the error was sent to */
	if (!xlb_addr_eq(e.err.daddr, e.quoted.saddr))
		return XLB_DROP_BAD_TUNNEL;
	return dsr_icmp_xlate(skb, in, &e, DSR_SRC, 1, e.quoted.saddr, t->addr, e.quoted.sport,
			      t->port);
}

static __always_inline int dsr_geneve(struct __sk_buff *skb, const struct xlb_node_cfg *node,
				      const struct dsr_ip *out, __u32 udp_end)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 gnv_off = out->l4off + sizeof(struct udphdr);
	struct xlb_geneve_hdr *gnv = data + gnv_off;
	struct dsr_tunnel t = {};
	struct dsr_ip in;
	__u16 inner_proto;
	__u32 vni;
	int rc;

	if ((void *)(gnv + 1) > data_end)
		return XLB_DROP_TRUNCATED;
	if (DSR_GENEVE_VER(gnv->ver_optlen) != 0 || (gnv->flags & DSR_GENEVE_F_OAM))
		return XLB_DROP_BAD_TUNNEL;
	vni = ((__u32)gnv->vni[0] << 16) | ((__u32)gnv->vni[1] << 8) | gnv->vni[2];
	if (vni != node->vni)
		return XLB_DROP_BAD_TUNNEL;
	inner_proto = bpf_ntohs(gnv->proto);
	t.inner_off = gnv_off + sizeof(*gnv) + DSR_GENEVE_OPTLEN(gnv->ver_optlen);
	t.inner_end = udp_end;
	if (t.inner_off > udp_end)
		return XLB_DROP_BAD_TUNNEL;

	dsr_pull(skb, t.inner_off + DSR_PULL_INNER);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	rc = dsr_find_opt(data, data_end, gnv_off + sizeof(*gnv), &t);
	if (rc != DSR_NEXT)
		return rc;

	if (inner_proto == ETH_P_IP)
		rc = dsr_parse_ip4(data, data_end, t.inner_off, XLB_DROP_BAD_TUNNEL, &in);
	else if (inner_proto == ETH_P_IPV6)
		rc = dsr_parse_ip6(data, data_end, t.inner_off, XLB_DROP_BAD_TUNNEL, &in);
	else
		return XLB_DROP_BAD_TUNNEL;
	if (rc != DSR_NEXT)
		return rc;
	rc = dsr_check_len(&in, udp_end);
	if (rc != DSR_NEXT)
		return rc;
	/* The LB translates within a family: option and packet agree. */
	if (in.family != t.family)
		return XLB_DROP_BAD_TUNNEL;

	if (t.opt == XLB_GENEVE_OPT_DSR4 || t.opt == XLB_GENEVE_OPT_DSR6) {
		rc = dsr_inner_flow(data, data_end, &in, &t);
		if (rc != DSR_NEXT)
			return rc;
		rc = dsr_decap(skb, t.inner_off, out->family, in.family);
		return rc != DSR_NEXT ? rc : XLB_OK_TC_DECAP;
	}
	rc = dsr_icmp_dnat(skb, &in, &t);
	if (rc != DSR_NEXT)
		return rc;
	rc = dsr_decap(skb, t.inner_off, out->family, in.family);
	return rc != DSR_NEXT ? rc : XLB_OK_ICMP_FORWARD;
}

/* ---- ingress: IPIP / IP6IP6 / mixed ---------------------------------------
 * The inner packet is as the client sent it (to the service address). The
 * node picks the backend itself with the tables every node shares: the
 * frontend, then xlb_select (xlb_ct, affinity, Maglev: the same hash and
 * table as the load balancer, so the same backend). Only a backend on this
 * node is accepted; the packet is then DNAT'd to it and handled as Geneve. */

/* Whether the backend's node address is this node's. */
static __always_inline int dsr_backend_is_local(const struct xlb_backend *be,
						const struct xlb_node_cfg *node)
{
	if (be->node_family == XLB_FAMILY_V4)
		return *(const __u32 *)be->node == *(const __u32 *)node->addr4 &&
		       *(const __u32 *)node->addr4 != 0;
	return be->node_family == XLB_FAMILY_V6 && xlb_addr_eq(be->node, node->addr6) &&
	       !dsr_addr6_zero(node->addr6);
}

static __always_inline int dsr_ipip(struct __sk_buff *skb, const struct xlb_node_cfg *node,
				    const struct dsr_ip *out)
{
	/* 4-byte aligned: xlb_select hashes it as words */
	struct xlb_flow_key key __attribute__((aligned(4))) = {};
	struct xlb_frontend_key fk = {};
	void *data, *data_end;
	struct xlb_service *svc;
	struct xlb_sel sel = {};
	struct dsr_tunnel t = {};
	struct xlb_backend *be;
	__u8 ep[16] __attribute__((aligned(4)));
	__be16 ep_port, *ports;
	struct dsr_ip in;
	int rc;

	dsr_pull(skb, out->l4off + 60 + 8);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (out->proto == IPPROTO_IPIP)
		rc = dsr_parse_ip4(data, data_end, out->l4off, XLB_DROP_BAD_TUNNEL, &in);
	else
		rc = dsr_parse_ip6(data, data_end, out->l4off, XLB_DROP_BAD_TUNNEL, &in);
	if (rc != DSR_NEXT)
		return rc;
	rc = dsr_check_len(&in, out->end);
	if (rc != DSR_NEXT)
		return rc;
	/* The load balancer passes fragments to its own kernel: none come. */
	if (in.later_frag || in.first_frag)
		return XLB_PASS_FRAGMENT;
	if (in.proto != IPPROTO_TCP && in.proto != IPPROTO_UDP)
		return XLB_DROP_BAD_TUNNEL;
	ports = data + in.l4off;
	if ((void *)(ports + 2) > data_end)
		return XLB_DROP_TRUNCATED;
	rc = dsr_key_addrs(data, data_end, &in, &key, 0);
	if (rc != DSR_NEXT)
		return rc;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = in.proto;

	xlb_addr_copy(fk.addr, key.daddr);
	fk.port = key.dport;
	fk.proto = key.proto;
	fk.family = key.family;
	svc = bpf_map_lookup_elem(&xlb_frontends, &fk);
	if (!svc)
		return XLB_PASS_NOT_FRONTEND;
	/* new_conn 0: the IPIP path keeps an existing entry's backend even
	 * for a SYN (it decides only for flows the LB already sent here). */
	rc = xlb_select(svc, &key, 0, &sel);
	if (rc)
		return -rc;
	be = sel.be;
	if (be->family != in.family) /* no NAT64 */
		return XLB_DROP_BACKEND_MISSING;
	if (!dsr_backend_is_local(be, node))
		return XLB_DROP_NOT_LOCAL;
	xlb_addr_copy(ep, be->addr);
	ep_port = be->port;

	rc = dsr_rewrite(skb, &in, DSR_DST, key.daddr, ep, key.dport, ep_port);
	if (rc != DSR_NEXT)
		return rc;
	/* remembered as delivered: client -> endpoint => service */
	xlb_addr_copy(t.addr, key.daddr);
	t.port = key.dport;
	t.family = key.family;
	xlb_addr_copy(key.daddr, ep);
	key.dport = ep_port;
	rc = dsr_remember(&key, &t);
	if (rc != DSR_NEXT)
		return rc;
	rc = dsr_decap(skb, in.l3off, out->family, in.family);
	return rc != DSR_NEXT ? rc : XLB_OK_TC_DECAP;
}

/* A TCP connection opened directly to an endpoint (not through the
 * tunnel) takes its 4-tuple over: a reverse translation left by an earlier
 * load-balanced connection with the same 4-tuple must not rewrite this one's
 * replies to the service address. Only bare SYNs pay the delete. */
static __always_inline void dsr_forget_direct(void *data, void *data_end, const struct dsr_ip *ip,
					      const void *saddr, const void *daddr)
{
	struct xlb_flow_key key = {};
	struct tcphdr *th;
	__u32 l4off = ip->l4off;

	if (ip->proto != IPPROTO_TCP || ip->later_frag)
		return;
	/* Bound for the verifier: L4 starts within the first 512 bytes. */
	if (l4off > 512)
		return;
	th = data + l4off;
	if ((void *)(th + 1) > data_end)
		return;
	if (!th->syn || th->ack)
		return;
	__builtin_memcpy(key.saddr, saddr, ip->family == XLB_FAMILY_V6 ? 16 : 4);
	__builtin_memcpy(key.daddr, daddr, ip->family == XLB_FAMILY_V6 ? 16 : 4);
	key.sport = th->source;
	key.dport = th->dest;
	key.proto = IPPROTO_TCP;
	key.family = ip->family;
	bpf_map_delete_elem(&xlb_dsr_nat, &key);
}

static __always_inline int dsr_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct xlb_node_cfg *node = bpf_map_lookup_elem(&xlb_node, &zero);
	void *data, *data_end;
	struct ethhdr *eth;
	struct udphdr *udp;
	struct dsr_ip out;
	__u32 udp_end;
	int rc;

	if (!node) /* an array of one: never, but the verifier asks */
		return XLB_PASS_NOT_TUNNEL;
	dsr_pull(skb, DSR_PULL_OUTER);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XLB_DROP_TRUNCATED;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph;

		rc = dsr_parse_ip4(data, data_end, ETH_HLEN, XLB_PASS_NOT_IP, &out);
		if (rc != DSR_NEXT)
			return rc;
		iph = data + ETH_HLEN;
		if (iph + 1 > (struct iphdr *)data_end) /* re-proven for the verifier */
			return XLB_DROP_TRUNCATED;
		if (iph->daddr != *(__u32 *)node->addr4 || iph->daddr == 0) {
			dsr_forget_direct(data, data_end, &out, &iph->saddr, &iph->daddr);
			return XLB_PASS_NOT_TUNNEL;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;

		rc = dsr_parse_ip6(data, data_end, ETH_HLEN, XLB_PASS_NOT_IP, &out);
		if (rc != DSR_NEXT)
			return rc;
		ip6 = data + ETH_HLEN;
		if (ip6 + 1 > (struct ipv6hdr *)data_end)
			return XLB_DROP_TRUNCATED;
		if (!xlb_addr_eq(&ip6->daddr, node->addr6) || dsr_addr6_zero(node->addr6)) {
			dsr_forget_direct(data, data_end, &out, &ip6->saddr, &ip6->daddr);
			return XLB_PASS_NOT_TUNNEL;
		}
	} else {
		return XLB_PASS_NOT_IP;
	}
	if (out.proto != IPPROTO_UDP && out.proto != IPPROTO_IPIP && out.proto != IPPROTO_IPV6)
		return XLB_PASS_NOT_TUNNEL;
	if (out.later_frag || out.first_frag)
		return XLB_PASS_FRAGMENT;
	if (out.proto != IPPROTO_UDP) {
		rc = dsr_check_len(&out, skb->len);
		return rc != DSR_NEXT ? rc : dsr_ipip(skb, node, &out);
	}
	udp = data + out.l4off;
	if ((void *)(udp + 1) > data_end)
		return XLB_DROP_TRUNCATED;
	if (udp->dest != node->geneve_port)
		return XLB_PASS_NOT_TUNNEL;
	rc = dsr_check_len(&out, skb->len);
	if (rc != DSR_NEXT)
		return rc;
	udp_end = out.l4off + bpf_ntohs(udp->len);
	if (udp_end < out.l4off + sizeof(*udp) + sizeof(struct xlb_geneve_hdr) || udp_end > out.end)
		return XLB_DROP_BAD_LEN;
	return dsr_geneve(skb, node, &out, udp_end);
}

#endif /* XLB_DSR_H */
