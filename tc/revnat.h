/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * revnat.h: the reverse translation of direct server return, tc egress on a
 * node's uplink. A packet whose reversed 5-tuple has an xlb_dsr_nat entry is
 * a reply from an endpoint; its source is rewritten back to the service
 * address and port the client used (nat.h). An ICMP error about a client's
 * packet (quoting client -> endpoint: the xlb_dsr_nat key as is) gets its
 * quote rewritten to the service, and its source too when the endpoint sent
 * it. One hash lookup for everything else.
 *
 * API
 *   int xlb_revnat(ctx, &reason)   the stage: sets *reason and returns the
 *                                  tc verdict (always TC_ACT_OK but for a
 *                                  failed rewrite)
 */
#ifndef XLB_TC_REVNAT_H
#define XLB_TC_REVNAT_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "nat.h"

/* Linear bytes wanted before parsing: Ethernet + IPv4 with options + TCP;
 * for an ICMP error, the quoted IP header and 8 bytes of quoted L4 too. */
#define XLB_REVNAT_PULL	     (ETH_HLEN + 60 + 20)
#define XLB_REVNAT_PULL_ICMP (8 + 60 + 8)

static __always_inline int xlb_revnat_icmp(struct __sk_buff *skb, struct xlb_pkt *pkt,
					   __u32 *reason)
{
	struct xlb_dsr_nat_entry *nat;
	struct xlb_icmp_quote q;
	int rc;

	xlb_ctx_pull(skb, xlb_l4_off(pkt) + XLB_REVNAT_PULL_ICMP);
	if (xlb_parse_l4(skb, pkt))
		return xlb_fail(-XLB_PASS_ICMP_NO_FLOW, reason);
	if (!xlb_icmp_is_error(pkt->tuple.family, pkt->icmp_type))
		return xlb_fail(-XLB_PASS_L4_PROTO, reason);
	rc = xlb_parse_icmp_quote(skb, pkt, &q);
	if (rc)
		return xlb_fail(rc, reason);
	nat = bpf_map_lookup_elem(&xlb_dsr_nat, &q.tuple);
	if (!nat)
		return xlb_fail(-XLB_PASS_NO_NAT, reason);
	if (nat->family != pkt->tuple.family)
		return xlb_fail(-XLB_DROP_NAT, reason);
	/* The quote's destination (the endpoint) becomes the service; the
	 * error's source goes along when the endpoint sent it (not when a
	 * router on the way did). */
	rc = xlb_nat_icmp(skb, pkt, &q, XLB_NAT_DST, xlb_addr_eq(pkt->tuple.saddr, q.tuple.daddr),
			  nat->vaddr, nat->vport);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_TC_REVNAT;
	return TC_ACT_OK;
}

static __always_inline int xlb_revnat(struct __sk_buff *skb, __u32 *reason)
{
	struct xlb_dsr_nat_entry *nat;
	struct xlb_flow_key key = {};
	struct xlb_pkt pkt = {};
	int rc;

	xlb_ctx_pull(skb, XLB_REVNAT_PULL);
	rc = xlb_parse_eth_ip(skb, &pkt);
	/* Not ours to police what the node sends. */
	if (rc == -XLB_DROP_BAD_VERSION)
		rc = -XLB_PASS_NOT_IP;
	if (rc)
		return xlb_fail(rc, reason);
	/* GSO packets of BIG TCP leave with an IP length of 0 (IPv4 tot_len,
	 * IPv6 payload_len): their length is the skb's. */
	if (pkt.tuple.family == XLB_FAMILY_V4 ? pkt.l3_len == 0
					      : pkt.l3_len == sizeof(struct ipv6hdr))
		pkt.l3_len = skb->len - ETH_HLEN > 0xffff ? 0xffff : skb->len - ETH_HLEN;
	rc = xlb_parse_ext(skb, &pkt);
	if (rc)
		return xlb_fail(rc, reason);
	if (pkt.frag)
		return xlb_fail(-XLB_PASS_FRAGMENT, reason);
	if (pkt.tuple.proto == (pkt.tuple.family == XLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
		return xlb_revnat_icmp(skb, &pkt, reason);
	rc = xlb_parse_l4(skb, &pkt);
	/* Not ours to police what the node sends: a header xlb would not
	 * forward is still not its to drop. */
	if (rc == -XLB_DROP_BAD_L4_LEN)
		rc = -XLB_PASS_L4_PROTO;
	if (rc)
		return xlb_fail(rc, reason);

	/* The reply reversed is the flow as the endpoint received it. */
	xlb_flow_reverse(&key, &pkt.tuple);
	nat = bpf_map_lookup_elem(&xlb_dsr_nat, &key);
	if (!nat)
		return xlb_fail(-XLB_PASS_NO_NAT, reason);
	if (nat->family != pkt.tuple.family)
		return xlb_fail(-XLB_DROP_NAT, reason);
	rc = xlb_nat(skb, &pkt, XLB_NAT_SRC, nat->vaddr, nat->vport);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_TC_REVNAT;
	return TC_ACT_OK;
}

#endif /* XLB_TC_REVNAT_H */
