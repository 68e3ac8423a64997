/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * fallback.h: service traffic no hooked socket translated (a process outside
 * the hooked cgroup, a pod in --socket-lb-host-only mode, a packet routed
 * through the node), translated per packet on the node's uplink:
 *
 *   egress   a TCP/UDP packet to a socket frontend (xlb_sock_frontends: a
 *            ClusterIP, ...) is DNAT'd to the backend xlb_select() gives,
 *            the same decision XDP makes: the flow's xlb_ct entry while its
 *            backend stands (a Maglev table change does not move it; a TCP
 *            SYN re-picks when that backend is terminating), else ClientIP
 *            affinity (keyed by the source address, as kube-proxy's), else
 *            Maglev over the 5-tuple hash; (client -> backend) => service
 *            is remembered in xlb_dsr_nat
 *   ingress  a packet whose reversed 5-tuple has such an entry is a reply:
 *            its source is rewritten back to the service
 *
 * xlb_dsr_nat is shared with direct server return: its entries there are
 * (client -> local endpoint) and are read at egress for packets *from* the
 * endpoint; these are (local client -> backend) and read at ingress for
 * packets *to* the client. No packet matches both.
 *
 * API
 *   int xlb_fallback_nat(ctx, &reason)     egress stage: XLB_OK_FALLBACK_NAT,
 *                                          a drop of a service packet, or
 *                                          XLB_PASS_NOT_FRONTEND (not ours,
 *                                          unparsable included: the next
 *                                          stage decides)
 *   int xlb_fallback_revnat(ctx, &reason)  ingress stage:
 *                                          XLB_OK_FALLBACK_REVNAT, or
 *                                          XLB_PASS_NOT_TUNNEL (not ours: the
 *                                          reason decap gave stays)
 */
#ifndef XLB_TC_FALLBACK_H
#define XLB_TC_FALLBACK_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "nat.h"
#include "maglev.h"

#define XLB_FALLBACK_PULL (ETH_HLEN + 60 + 20)

/* Ethernet, IP (no fragment) and TCP/UDP ports of the packet. */
static __always_inline int xlb_fallback_parse(struct __sk_buff *skb, struct xlb_pkt *pkt)
{
	int rc;

	xlb_ctx_pull(skb, XLB_FALLBACK_PULL);
	rc = xlb_parse_eth_ip(skb, pkt);
	/* Not ours to police what the node sends or receives. */
	if (rc == -XLB_DROP_BAD_VERSION)
		return -XLB_PASS_NOT_IP;
	if (rc)
		return rc;
	if (pkt->tuple.proto != IPPROTO_TCP && pkt->tuple.proto != IPPROTO_UDP)
		return -XLB_PASS_L4_PROTO;
	rc = xlb_parse_ext(skb, pkt);
	if (rc)
		return rc;
	if (pkt->frag)
		return -XLB_PASS_FRAGMENT;
	return xlb_parse_l4(skb, pkt);
}

/* The stages are functions of their own (BPF-to-BPF calls): inlined beside
 * the revnat stage, clang 14 merged the two stages' packet-pointer code into
 * a shape the 6.18 verifier rejects ("pointer arithmetic with <<="). */
static __attribute__((noinline)) int xlb_fallback_nat(struct __sk_buff *skb, __u32 *reason)
{
	struct xlb_frontend_key fk = {};
	struct xlb_dsr_nat_entry nat = {};
	struct xlb_flow_key key = {};
	struct xlb_pkt pkt = {};
	struct xlb_service *svc;
	struct xlb_backend *be;
	struct xlb_sel sel;
	int rc, new_conn;

	if (xlb_fallback_parse(skb, &pkt))
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	xlb_addr_copy(fk.addr, pkt.tuple.daddr);
	fk.port = pkt.tuple.dport;
	fk.proto = pkt.tuple.proto;
	fk.family = pkt.tuple.family;
	svc = bpf_map_lookup_elem(&xlb_sock_frontends, &fk);
	if (!svc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	new_conn = pkt.tuple.proto == IPPROTO_TCP && (pkt.tcp_flags & 0x12) == 0x02;
	rc = xlb_select(svc, &pkt.tuple, new_conn, &sel);
	if (rc)
		return xlb_fail(rc, reason);
	be = sel.be;
	if (be->family != pkt.tuple.family)
		return xlb_fail(-XLB_DROP_SOCK_FAMILY, reason);
	xlb_addr_copy(key.saddr, pkt.tuple.saddr);
	xlb_addr_copy(key.daddr, be->addr);
	key.sport = pkt.tuple.sport;
	key.dport = be->port;
	key.proto = pkt.tuple.proto;
	key.family = pkt.tuple.family;
	if (!bpf_map_lookup_elem(&xlb_dsr_nat, &key)) {
		xlb_addr_copy(nat.vaddr, pkt.tuple.daddr);
		nat.vport = pkt.tuple.dport;
		nat.family = pkt.tuple.family;
		nat.created_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&xlb_dsr_nat, &key, &nat, BPF_ANY);
	}
	rc = xlb_nat(skb, &pkt, XLB_NAT_DST, be->addr, be->port);
	if (rc)
		return xlb_fail(rc, reason);
	xlb_count_svc(svc->id, skb->len, sel.new_flow, sel.affinity_hit);
	xlb_count_backend(sel.backend_id, skb->len);
	*reason = XLB_OK_FALLBACK_NAT;
	return TC_ACT_OK;
}

static __attribute__((noinline)) int xlb_fallback_revnat(struct __sk_buff *skb, __u32 *reason)
{
	struct xlb_dsr_nat_entry *nat;
	struct xlb_flow_key key = {};
	struct xlb_pkt pkt = {};
	int rc;

	if (xlb_fallback_parse(skb, &pkt))
		return xlb_fail(-XLB_PASS_NOT_TUNNEL, reason);
	/* The reply reversed is the flow as the client's packets left. */
	xlb_flow_reverse(&key, &pkt.tuple);
	nat = bpf_map_lookup_elem(&xlb_dsr_nat, &key);
	if (!nat)
		return xlb_fail(-XLB_PASS_NOT_TUNNEL, reason);
	if (nat->family != pkt.tuple.family)
		return xlb_fail(-XLB_DROP_NAT, reason);
	rc = xlb_nat(skb, &pkt, XLB_NAT_SRC, nat->vaddr, nat->vport);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_FALLBACK_REVNAT;
	return TC_ACT_OK;
}

#endif /* XLB_TC_FALLBACK_H */
