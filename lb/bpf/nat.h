/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * nat.h: the one NAT writer, over the context layer (ctx.h): in-place address
 * and port rewriting of a parsed TCP/UDP packet (XDP: DNAT to a local or
 * remote endpoint; tc: DNAT on DSR termination, reverse SNAT of replies), and
 * the translation of an ICMP error together with the packet it quotes.
 * Checksums are updated incrementally (csum.h diffs, applied by the context
 * layer: one patch in XDP, the kernel's helpers in tc); a UDP datagram
 * without checksum (IPv4, 0) keeps none. xlb_nat rewrites a whole TCP/UDP
 * packet by direct writes in both contexts (XDP: xlb_nat_xdp; tc:
 * xlb_nat_tc, with one bpf_l4_csum_replace for the L4 field in a global
 * function, ctx.h, when the L4 header is in the linear head); fragments,
 * SCTP and ICMP go through the context layer's field writers.
 *
 * API
 *   int xlb_nat(ctx, &pkt, which, addr, port)
 *       which: XLB_NAT_DST or XLB_NAT_SRC. addr: 16-byte ABI address of the
 *       packet's own family (the caller checks), port in network order.
 *       pkt->tuple is updated to the rewritten packet, so after a DNAT it is
 *       the client -> endpoint key of xlb_dsr_nat. TCP, UDP and SCTP
 *       (CRC32c: crc32c.h; none for an address alone); a later IPv4
 *       fragment gets its address only.
 *   int xlb_nat_icmp(ctx, &pkt, &quote, which, outer, to, to_port)
 *       an ICMP error (pkt) and the TCP/UDP packet it quotes (quote, from
 *       xlb_parse_icmp_quote). The quote runs opposite to the error: its
 *       `which` side (XLB_NAT_SRC: its source) becomes to:to_port; with
 *       `outer`, the error's own address on the other side goes along
 *       (XLB_NAT_SRC: the error's destination) — else it stays, as a
 *       router's source address must.
 *   int xlb_nat_fwd(ctx, &pkt, addr, port)   (XDP)
 *       xlb_nat's DNAT for a packet about to be tunnelled: pkt->tuple's
 *       destination may be left as parsed (the caller never reads it).
 *   They return 0 or a negative reason (-XLB_DROP_TRUNCATED, -XLB_DROP_NAT:
 *   also an SCTP first fragment whose port changes).
 */
#ifndef XLB_NAT_H
#define XLB_NAT_H

#include "parse.h"
#include "csum.h"
#include "crc32c.h"

#define XLB_NAT_SRC 0
#define XLB_NAT_DST 1

/* Offset of the source (XLB_NAT_SRC) or destination address in an IP
 * header of `family`. */
static __always_inline __u32 xlb_ip_addr_off(__u8 family, int which)
{
	if (family == XLB_FAMILY_V4)
		return which == XLB_NAT_DST ? offsetof(struct iphdr, daddr)
					    : offsetof(struct iphdr, saddr);
	return which == XLB_NAT_DST ? offsetof(struct ipv6hdr, daddr)
				    : offsetof(struct ipv6hdr, saddr);
}

/* Offset of the checksum in a TCP or UDP header. */
static __always_inline __u32 xlb_l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
				    : offsetof(struct udphdr, check);
}

/* Rewrites one IP address at `addr_off` from `from` to `to` (16-byte ABI
 * form) and, for IPv4, the header checksum at l3_off; returns the change
 * as a csum.h diff for the pseudo-header. */
static __always_inline int xlb_nat_addr(struct xlb_ctx *ctx, __u32 l3_off, __u32 addr_off,
					__u8 family, const __u8 *from, const __u8 *to, __u64 *diff)
{
	int rc;

	if (family == XLB_FAMILY_V4) {
		*diff = xlb_csum_diff4(0, *(const __u32 *)from, *(const __u32 *)to);
		rc = xlb_ctx_l3_csum(ctx, l3_off + offsetof(struct iphdr, check), *diff);
		if (rc)
			return rc;
		return xlb_ctx_store(ctx, l3_off + addr_off, to, 4);
	}
	*diff = xlb_csum_diff16(0, from, to);
	return xlb_ctx_store(ctx, l3_off + addr_off, to, 16);
}

/* SCTP: its CRC32c covers the ports, not the addresses. The CRC is updated
 * for the port change (crc32c.h) unless it is 0: an skb whose CRC the stack
 * computes later (CHECKSUM_PARTIAL with SCTP CRC offload, tc egress) has 0
 * there and must keep it for that computation; a real CRC of 0 is a 2^-32
 * chance, and XDP never meets an offloaded one. */
static __always_inline int xlb_nat_sctp(struct xlb_ctx *ctx, const struct xlb_pkt *pkt,
					__u32 old_ports)
{
	__u32 l4 = xlb_l4_off(pkt), len = pkt->l3_off + pkt->l3_len - l4, crc;
	int rc;

	/* A first fragment's CRC covers data still to come: its length is
	 * not known here. */
	if (pkt->frag)
		return -XLB_DROP_NAT;
	rc = xlb_ctx_load(ctx, l4 + XLB_SCTP_CSUM_OFF, &crc, 4);
	if (rc || !crc)
		return rc;
	/* pkt->tuple holds the new ports, in packet order */
	crc ^= xlb_crc32c_port_delta(old_ports, *(const __u32 *)&pkt->tuple.sport, len);
	return xlb_ctx_store(ctx, l4 + XLB_SCTP_CSUM_OFF, &crc, 4);
}

/* The port and the L4 checksum of xlb_nat, after the address. A later IPv4
 * fragment has neither: only its key (pkt->tuple) follows the port. */
static __always_inline int xlb_nat_l4(struct xlb_ctx *ctx, struct xlb_pkt *pkt, int which,
				      __be16 port, __u64 pseudo)
{
	__be16 *tport = which == XLB_NAT_DST ? &pkt->tuple.dport : &pkt->tuple.sport;
	__u32 l4 = xlb_l4_off(pkt), old_ports = *(__u32 *)&pkt->tuple.sport;
	__u8 proto = pkt->tuple.proto;
	__u64 plain = 0;
	int rc;

	if (pkt->frag == XLB_FRAG_LATER) {
		*tport = port;
		return 0;
	}
	if (*tport != port) {
		/* source port then destination port, in TCP, UDP and SCTP alike */
		plain = xlb_csum_diff2(0, *tport, port);
		rc = xlb_ctx_store(ctx, l4 + (which == XLB_NAT_DST ? 2 : 0), &port, 2);
		if (rc)
			return rc;
		*tport = port;
		if (proto == IPPROTO_SCTP)
			return xlb_nat_sctp(ctx, pkt, old_ports);
	}
	if (proto == IPPROTO_SCTP)
		return 0;
	return xlb_ctx_l4_csum(ctx, l4 + xlb_l4_csum_off(proto), pseudo, plain,
			       (proto == IPPROTO_UDP ? XLB_CSUM_UDP : 0) |
				   (pkt->tuple.family == XLB_FAMILY_V6 ? XLB_CSUM_V6 : 0));
}

/*
 * XDP, a whole TCP or UDP packet (not a fragment): the same rewrite with
 * one bounds check per header instead of one per field, and the address
 * change reduced once to at most 17 bits (d: a 32-bit fold, then one 16-bit
 * fold), so that each checksum takes it in two short folds. A partly folded
 * sum is congruent to the full one modulo 0xffff and zero only when it is,
 * so the fields come out identical to a full fold's. Geneve mode DNATs
 * every packet it tunnels; this is most of what it costs over IPIP.
 * Measured by ablation (xlb-perf encap --rev on objects with a stage cut
 * out, AMD EPYC VM): without this DNAT Geneve - IPIP falls by 8-10 ns,
 * without the UDP/Geneve/option words by 4-6 ns, without both to 0-1 ns;
 * but cutting pieces of the DNAT (the address change as a constant, no
 * checksum loads, no stores), fusing it into the outer header writer (one
 * bounds check, ~20 fewer instructions), doing it before the helper calls,
 * or writing the Geneve words as 8-byte stores each measured 0 +- 2 ns.
 *
 * The new address is read into registers once: stores into the packet may
 * alias a map value as far as the compiler knows, so reading it through
 * the pointer after each store reloads it (IPv6: 12 loads for 4 words).
 */
static __always_inline __sum16 xlb_csum_apply_folded(__sum16 check, __u32 d)
{
	/* d <= 0x3fffe (a reduced address change plus a port change): the
	 * sum stays under 2^19 and two folds take it to 16 bits. */
	__u32 s = (__u16)~check + d;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__sum16)~s;
}

/* A sum of at most 16 32-bit words (< 2^36) reduced to <= 0x1ffff. */
static __always_inline __u32 xlb_csum_reduce(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	return (__u32)((sum & 0xffff) + (sum >> 16));
}

#ifdef XLB_CTX_XDP
static __always_inline int xlb_nat_xdp(struct xdp_md *ctx, struct xlb_pkt *pkt, int which,
				       const __u8 *addr, __be16 port, const int update)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u32 *taddr = (__u32 *)(which == XLB_NAT_DST ? pkt->tuple.daddr : pkt->tuple.saddr);
	__be16 *tport = which == XLB_NAT_DST ? &pkt->tuple.dport : &pkt->tuple.sport;
	const __u32 *to = (const __u32 *)addr;
	__be16 *ports;
	__u32 d;
	__sum16 *c;
	int udp;

	if (pkt->tuple.family == XLB_FAMILY_V4) {
		struct iphdr *ip = data + xlb_l3_off(pkt);
		__be32 t = to[0];

		if ((void *)(ip + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		d = xlb_csum_reduce(xlb_csum_diff4(0, taddr[0], t));
		ip->check = xlb_csum_apply_folded(ip->check, d);
		if (which == XLB_NAT_DST)
			ip->daddr = t;
		else
			ip->saddr = t;
		if (update)
			taddr[0] = t;
	} else {
		struct ipv6hdr *ip6 = data + xlb_l3_off(pkt);
		__u32 t0 = to[0], t1 = to[1], t2 = to[2], t3 = to[3], *a;
		__u64 sum;

		if ((void *)(ip6 + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		sum = xlb_csum_diff4(0, taddr[0], t0);
		sum = xlb_csum_diff4(sum, taddr[1], t1);
		sum = xlb_csum_diff4(sum, taddr[2], t2);
		sum = xlb_csum_diff4(sum, taddr[3], t3);
		d = xlb_csum_reduce(sum);
		a = which == XLB_NAT_DST ? (__u32 *)&ip6->daddr : (__u32 *)&ip6->saddr;
		a[0] = t0;
		a[1] = t1;
		a[2] = t2;
		a[3] = t3;
		if (update) {
			taddr[0] = t0;
			taddr[1] = t1;
			taddr[2] = t2;
			taddr[3] = t3;
		}
	}
	/* TCP and UDP alike: the ports first (source, destination), then a
	 * header whose checksum covers them and the addresses. */
	udp = pkt->tuple.proto != IPPROTO_TCP;
	ports = data + xlb_l4_off(pkt);
	if (udp) {
		struct udphdr *uh = (void *)ports;

		if ((void *)(uh + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		c = &uh->check;
	} else {
		struct tcphdr *th = (void *)ports;

		if ((void *)(th + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		c = &th->check;
	}
	if (*tport != port) {
		d = xlb_csum_diff2(d, *tport, port);
		if (which == XLB_NAT_DST)
			ports[1] = port;
		else
			ports[0] = port;
		if (update)
			*tport = port;
	}
	/* a zero UDP checksum (none) stays 0; a computed 0 goes as 0xffff */
	if (!udp || *c) {
		*c = xlb_csum_apply_folded(*c, d);
		if (udp && !*c)
			*c = 0xffff;
	}
	return 0;
}
#endif

#ifndef XLB_CTX_XDP
/*
 * tc, a whole TCP or UDP packet whose headers are in the linear head (the
 * parser put them there): addresses, ports and the IPv4 header checksum
 * written in place as XDP's xlb_nat_xdp writes them, and one
 * bpf_l4_csum_replace for the L4 field (was 4-5 helper calls). The direct
 * writes need none of the skb's checksum state: an IPv4 address and its
 * header checksum move by opposite amounts, as do a port and a full L4
 * checksum, so a CHECKSUM_COMPLETE skb->csum (which covers both) stays
 * right. The L4 field is the part that needs the state, which only the
 * kernel knows: xlb_tc_l4_csum_once (ctx.h), a global function, verified
 * once per program instead of at every tc NAT site (decap, fallback both
 * ways, masquerade both ways, reply reverse NAT). Inlined everywhere
 * (session 10's tcnat) it all took xlb_tc_egress from 222k to 659k
 * processed instructions of the verifier's 1M; this way 289k. The writes
 * stay inlined: a second call costs ~20 ns more per packet on a host
 * whose returns go through a mitigation thunk, and a global function
 * holding them needs stack that decap's call chain does not have.
 *
 * The addresses' offsets are computed before their bounds are checked:
 * the verifier loses a branch-free choice of field added to a checked
 * pointer.
 */
static __always_inline int xlb_nat_tc(struct __sk_buff *skb, struct xlb_pkt *pkt, int which,
				      const __u8 *addr, __be16 port)
{
	__u32 l3 = xlb_l3_off(pkt), l4 = xlb_l4_off(pkt), d, dport = 0;
	int udp = pkt->tuple.proto == IPPROTO_UDP, v6 = pkt->tuple.family == XLB_FAMILY_V6;
	__u32 csum_off = l4 + xlb_l4_csum_off(pkt->tuple.proto);
	void *data = xlb_ctx_data(skb), *data_end = xlb_ctx_data_end(skb);
	__u8 *taddr = which == XLB_NAT_DST ? pkt->tuple.daddr : pkt->tuple.saddr;
	__be16 *tport = which == XLB_NAT_DST ? &pkt->tuple.dport : &pkt->tuple.sport;
	const __u32 *to = (const __u32 *)addr;
	__be16 *p = data + l4 + (which == XLB_NAT_DST ? 2 : 0);
	__sum16 *c = data + csum_off;

	if ((void *)(c + 1) > data_end || (void *)(p + 1) > data_end)
		return -XLB_DROP_TRUNCATED;
	if (!v6) {
		struct iphdr *ip = data + l3;
		__be32 t = to[0], *a = data + l3 + xlb_ip_addr_off(XLB_FAMILY_V4, which);

		if ((void *)(ip + 1) > data_end || (void *)(a + 1) > data_end)
			return -XLB_DROP_TRUNCATED;
		d = xlb_csum_reduce(xlb_csum_diff4(0, *a, t));
		ip->check = xlb_csum_apply_folded(ip->check, d);
		*a = t;
		*(__u32 *)taddr = t;
	} else {
		__u32 *a = data + l3 + xlb_ip_addr_off(XLB_FAMILY_V6, which);
		__u64 sum = 0;

		if ((void *)(a + 4) > data_end)
			return -XLB_DROP_TRUNCATED;
		/* a word at a time: few registers live */
		for (int i = 0; i < 4; i++) {
			__u32 t = to[i];

			sum = xlb_csum_diff4(sum, a[i], t);
			a[i] = t;
			((__u32 *)taddr)[i] = t;
		}
		d = xlb_csum_reduce(sum);
	}
	/* source port then destination port, in TCP and UDP alike */
	if (*p != port) {
		dport = xlb_csum_diff2(0, *p, port);
		*p = port;
	}
	*tport = port;
	return xlb_tc_l4_csum_once(skb,
				   csum_off | ((udp ? XLB_CSUM_UDP : 0) | (v6 ? XLB_CSUM_V6 : 0))
						  << XLB_TC_CSUM_FLAGS_SHIFT,
				   *c, d, dport);
}

#endif

/* One copy per family: the IPv4 one moves 4 address bytes, not 16. `addr`
 * must not alias pkt (it is a map value: a backend or a translation). */
static __always_inline int xlb_nat(struct xlb_ctx *ctx, struct xlb_pkt *pkt, int which,
				   const __u8 *addr, __be16 port)
{
	__u8 *taddr = which == XLB_NAT_DST ? pkt->tuple.daddr : pkt->tuple.saddr;
	__u32 l3 = xlb_l3_off(pkt);
	__u64 pseudo;
	int rc;

	if (!pkt->frag && (pkt->tuple.proto == IPPROTO_TCP || pkt->tuple.proto == IPPROTO_UDP)) {
#ifdef XLB_CTX_XDP
		return xlb_nat_xdp(ctx, pkt, which, addr, port, 1);
#else
		/* the direct writes need the L4 header in the linear head */
		__u32 l4 =
		    xlb_l4_off(pkt) + (pkt->tuple.proto == IPPROTO_UDP ? sizeof(struct udphdr)
								       : sizeof(struct tcphdr));

		if (xlb_ctx_data(ctx) + l4 <= xlb_ctx_data_end(ctx))
			return xlb_nat_tc(ctx, pkt, which, addr, port);
#endif
	}

	if (pkt->tuple.family == XLB_FAMILY_V4) {
		__be32 to = *(const __u32 *)addr;

		rc = xlb_nat_addr(ctx, l3, xlb_ip_addr_off(XLB_FAMILY_V4, which), XLB_FAMILY_V4,
				  taddr, addr, &pseudo);
		if (rc)
			return rc;
		*(__u32 *)taddr = to;
		return xlb_nat_l4(ctx, pkt, which, port, pseudo);
	}
	rc = xlb_nat_addr(ctx, l3, xlb_ip_addr_off(XLB_FAMILY_V6, which), XLB_FAMILY_V6, taddr,
			  addr, &pseudo);
	if (rc)
		return rc;
	xlb_addr_copy(taddr, addr);
	return xlb_nat_l4(ctx, pkt, which, port, pseudo);
}

#ifdef XLB_CTX_XDP
/* XDP's DNAT of a packet it tunnels: xlb_nat whose caller reads none of
 * pkt->tuple's destination again, which is then left as parsed (a TCP or
 * UDP packet skips the tuple's stores). */
static __always_inline int xlb_nat_fwd(struct xdp_md *ctx, struct xlb_pkt *pkt, const __u8 *addr,
				       __be16 port)
{
	if (!pkt->frag && (pkt->tuple.proto == IPPROTO_TCP || pkt->tuple.proto == IPPROTO_UDP))
		return xlb_nat_xdp(ctx, pkt, XLB_NAT_DST, addr, port, 0);
	return xlb_nat(ctx, pkt, XLB_NAT_DST, addr, port);
}
#endif

/* Checksums: the quoted IPv4 header's own checksum absorbs the quoted
 * address change, so it does not move the ICMPv4 checksum; ICMPv6 covers the
 * pseudo-header and the quoted addresses. The quoted L4 checksum (when
 * quoted) is updated with csum.h and the ICMP checksum follows it. */
static __always_inline int xlb_nat_icmp(struct xlb_ctx *ctx, const struct xlb_pkt *pkt,
					const struct xlb_icmp_quote *q, int which, int outer,
					const __u8 *to_addr, __be16 to_port)
{
	__u8 family = pkt->tuple.family, v4 = family == XLB_FAMILY_V4;
	__u32 csum_off = xlb_l4_off(pkt) + offsetof(struct xlb_icmp_hdr, checksum);
	__u32 ql3 = q->l3_off & XLB_L3_OFF_MASK, ql4 = q->l4_off & XLB_L4_OFF_MASK;
	__u32 l3 = xlb_l3_off(pkt), qcsum_off = q->csum_off & XLB_L4_OFF_MASK;
	const __u8 *from = which == XLB_NAT_SRC ? q->tuple.saddr : q->tuple.daddr;
	__be16 from_port = which == XLB_NAT_SRC ? q->tuple.sport : q->tuple.dport;
	__u8 to[16] __attribute__((aligned(4)));
	__sum16 qcsum = q->csum, new_qcsum = q->csum;
	__u64 d, icmp_pseudo = 0, icmp_plain = 0;
	int rc;

	xlb_addr_copy(to, to_addr);
	if (qcsum_off) {
		d = v4 ? xlb_csum_diff4(0, *(const __u32 *)from, *(const __u32 *)to)
		       : xlb_csum_diff16(0, from, to);
		d = xlb_csum_diff2(d, from_port, to_port);
		new_qcsum = q->tuple.proto == IPPROTO_UDP ? xlb_csum_apply_udp(qcsum, d)
							  : xlb_csum_apply(qcsum, d);
	}
	/* The error's own address (the quote's other side, in the error's
	 * header: the quote's source is the error's destination). */
	if (outer) {
		rc = xlb_nat_addr(ctx, l3, xlb_ip_addr_off(family, !which), family, from, to, &d);
		if (rc)
			return rc;
		if (!v4)
			icmp_pseudo = d;
	}
	rc = xlb_nat_addr(ctx, ql3, xlb_ip_addr_off(family, which), family, from, to, &d);
	if (rc)
		return rc;
	if (!v4)
		icmp_plain = d;
	if (from_port != to_port) {
		icmp_plain = xlb_csum_diff2(icmp_plain, from_port, to_port);
		rc = xlb_ctx_store(ctx, ql4 + (which == XLB_NAT_DST ? 2 : 0), &to_port, 2);
		if (rc)
			return rc;
	}
	if (qcsum_off && new_qcsum != qcsum) {
		icmp_plain = xlb_csum_diff2(icmp_plain, qcsum, new_qcsum);
		rc = xlb_ctx_store(ctx, qcsum_off, &new_qcsum, 2);
		if (rc)
			return rc;
	}
	return xlb_ctx_l4_csum(ctx, csum_off, icmp_pseudo, icmp_plain, v4 ? 0 : XLB_CSUM_V6);
}

#endif /* XLB_NAT_H */
