/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * uplink.h: the pod-network stages of a node's uplink, after the load
 * balancer's (decap.h on ingress, revnat.h on egress) have passed the
 * packet on.
 *
 *   ingress  a reply to a masqueraded flow, to this node's address: back to
 *            its pod (masq.h)                            OK_MASQ_REPLY
 *   egress   the node's own packets to another node's pods: into the
 *            overlay with the host identity (podnet.h)    OK_POD_ENCAP
 *            a pod's packet leaving the cluster: its source masqueraded
 *            (masq.h)                                     OK_MASQ
 *            xlb's own tunnel packets (from pods, on their way out) and
 *            everything else: as the previous stage said.
 *
 * API
 *   int xlb_uplink_ingress(skb, &reason)   after xlb_decap said PASS_NOT_TUNNEL
 *   int xlb_uplink_egress(skb, &reason)    after xlb_revnat passed the packet
 * Both keep *reason and return TC_ACT_OK for what they leave alone.
 */
#ifndef XLB_TC_UPLINK_H
#define XLB_TC_UPLINK_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "podnet.h"
#include "masq.h"

#define XLB_UPLINK_PULL (ETH_HLEN + 60 + 20)

/* Whether `a` is this node's own address of `family`. */
static __always_inline int xlb_is_node_addr(const struct xlb_node_cfg *node, const __u8 *a,
					    __u8 family)
{
	const __u8 *own = xlb_node_src(node, family);

	if (!own)
		return 0;
	return family == XLB_FAMILY_V4 ? *(const __u32 *)a == *(const __u32 *)own
				       : xlb_addr_eq(a, own);
}

static __always_inline int xlb_uplink_ingress(struct __sk_buff *skb, __u32 *reason)
{
	const struct xlb_node_cfg *node = xlb_this_node();
	struct xlb_pkt pkt = {};
	__u32 was = *reason;
	int verdict;

	if (!node)
		return TC_ACT_OK;
	xlb_ctx_pull(skb, XLB_UPLINK_PULL);
	if (xlb_parse_eth_ip(skb, &pkt) ||
	    !xlb_is_node_addr(node, pkt.tuple.daddr, pkt.tuple.family) || xlb_parse_ext(skb, &pkt))
		return TC_ACT_OK;
	verdict = xlb_masq_reply(skb, &pkt, reason);
	if (*reason == XLB_PASS_NO_NAT)
		*reason = was;
	return verdict;
}

static __always_inline int xlb_uplink_egress(struct __sk_buff *skb, __u32 *reason)
{
	const struct xlb_node_cfg *node = xlb_this_node();
	const struct xlb_route *rt;
	struct xlb_pkt pkt = {};

	if (!node)
		return TC_ACT_OK;
	xlb_ctx_pull(skb, XLB_UPLINK_PULL);
	if (xlb_parse_eth_ip(skb, &pkt) || xlb_parse_ext(skb, &pkt))
		return TC_ACT_OK;
	if (!pkt.frag && xlb_parse_l4(skb, &pkt) == 0 && pkt.tuple.proto == IPPROTO_UDP &&
	    pkt.tuple.dport == node->geneve_port)
		return TC_ACT_OK; /* a tunnel packet on its way out */
	if (xlb_is_node_addr(node, pkt.tuple.saddr, pkt.tuple.family)) {
		rt = xlb_route_of(pkt.tuple.daddr, pkt.tuple.family);
		if (rt && !(rt->flags & XLB_ROUTE_F_LOCAL))
			return xlb_overlay_send(skb, &pkt, rt, XLB_ID_HOST, XLB_AT_UPLINK_EGRESS,
						reason);
		return TC_ACT_OK;
	}
	return xlb_masq(skb, &pkt, reason);
}

#endif /* XLB_TC_UPLINK_H */
