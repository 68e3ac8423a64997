/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * pod.h: the stages on a pod's host-side veth (xlb-cni attaches them with
 * TCX; the agent keeps them current).
 *
 *   from the pod (tc ingress, XLB_HOOK_TC_POD_FROM)
 *     1. not IP (ARP), IPv6 link-local and unspecified sources (neighbour
 *        and router discovery): the host stack answers   PASS_POD_LINK_LOCAL
 *     2. source check: the source must be an address of this very pod (the
 *        endpoint of the address, on this veth)         DROP_POD_SPOOF
 *     3. to a pod on this node: one router hop (TTL), its MACs,
 *        bpf_redirect_peer into it                        OK_POD_REDIRECT
 *     4. to a pod range of another node (xlb_pod_routes): Geneve with the
 *        pod's identity to that node (podnet.h)           OK_POD_ENCAP
 *        (too big: ICMP back to the pod                   OK_ICMP_TOO_BIG)
 *     5. to this node's pod range, no such pod            DROP_NO_ENDPOINT
 *     6. anything else (the node, outside, services): the host stack
 *        routes it; leaving the uplink it is masqueraded (masq.h)
 *                                                         PASS_POD_TO_STACK
 *   to the pod (tc egress, XLB_HOOK_TC_POD_TO): what the host stack
 *     delivers (the node's own traffic, packets routed by the kernel);
 *     counted. Pod-to-pod and overlay traffic arrive by redirect_peer and
 *     do not pass here. NetworkPolicy (policy.h): the source's egress and
 *     a local destination's ingress in "from", the destination's ingress
 *     here for what the stack delivers (the peer by its address), and in
 *     decap.h for the overlay (the peer by the option's identity).
 *
 * API
 *   int xlb_pod_from_stage(skb, &reason), int xlb_pod_to_stage(skb, &reason)
 */
#ifndef XLB_TC_POD_H
#define XLB_TC_POD_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "podnet.h"
#include "policy.h"

/* Linear bytes wanted before parsing: Ethernet + IPv4 with options + TCP. */
#define XLB_POD_PULL (ETH_HLEN + 60 + 20)

/* An IPv6 source the host stack must see as is: link-local (fe80::/10) or
 * unspecified (duplicate address detection). */
static __always_inline int xlb_ip6_link_scope(const __u8 *a)
{
	return (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || xlb_addr_zero(a);
}

static __always_inline int xlb_pod_from_stage(struct __sk_buff *skb, __u32 *reason)
{
	const struct xlb_endpoint *src, *dst;
	const struct xlb_route *rt;
	struct xlb_pkt pkt = {};
	int rc;

	xlb_ctx_pull(skb, XLB_POD_PULL);
	rc = xlb_parse_eth_ip(skb, &pkt);
	if (rc == -XLB_PASS_NOT_IP) {
		*reason = XLB_PASS_POD_LINK_LOCAL; /* ARP: the host answers */
		return TC_ACT_OK;
	}
	if (rc)
		return xlb_fail(rc, reason);
	if (pkt.tuple.family == XLB_FAMILY_V6 && xlb_ip6_link_scope(pkt.tuple.saddr)) {
		*reason = XLB_PASS_POD_LINK_LOCAL;
		return TC_ACT_OK;
	}
	src = xlb_endpoint_of(pkt.tuple.saddr, pkt.tuple.family);
	if (!src || src->ifindex != skb->ifindex)
		return xlb_fail(-XLB_DROP_POD_SPOOF, reason);
	if (pkt.tuple.family == XLB_FAMILY_V6 && pkt.tuple.daddr[0] == 0xff) {
		*reason = XLB_PASS_POD_LINK_LOCAL; /* multicast: neighbour discovery */
		return TC_ACT_OK;
	}

	dst = xlb_endpoint_of(pkt.tuple.daddr, pkt.tuple.family);
	/* NetworkPolicy: the source's egress, then a local destination's
	 * ingress (policy.h). */
	rc = xlb_policy_check(skb, &pkt, src->ifindex, XLB_POLICY_DIR_EGRESS,
			      dst ? dst->identity : 0, XLB_HOOK_TC_POD_FROM);
	if (!rc && dst)
		rc = xlb_policy_check(skb, &pkt, dst->ifindex, XLB_POLICY_DIR_INGRESS,
				      src->identity, XLB_HOOK_TC_POD_FROM);
	if (rc)
		return xlb_fail(rc, reason);
	if (dst) {
		rc = xlb_ttl_dec(skb, &pkt);
		if (rc)
			return xlb_fail(rc, reason);
		*reason = XLB_OK_POD_REDIRECT;
		return xlb_to_endpoint(skb, dst);
	}
	rt = xlb_route_of(pkt.tuple.daddr, pkt.tuple.family);
	if (!rt) {
		*reason = XLB_PASS_POD_TO_STACK;
		return TC_ACT_OK;
	}
	if (rt->flags & XLB_ROUTE_F_LOCAL)
		return xlb_fail(-XLB_DROP_NO_ENDPOINT, reason);
	/* The transport header, when there is one, for GSO segment sizes. */
	if (!pkt.frag)
		xlb_parse_ext(skb, &pkt);
	return xlb_overlay_send(skb, &pkt, rt, src->identity, XLB_AT_POD, reason);
}

static __always_inline int xlb_pod_to_stage(struct __sk_buff *skb, __u32 *reason)
{
	struct xlb_pkt pkt = {};
	__u32 ifindex = skb->ifindex;
	int rc;

	/* Pods no policy selects: one lookup, nothing parsed. */
	if (!bpf_map_lookup_elem(&xlb_policy_ep, &ifindex)) {
		*reason = XLB_OK_TO_POD;
		return TC_ACT_OK;
	}
	xlb_ctx_pull(skb, XLB_POD_PULL);
	if (!xlb_parse_eth_ip(skb, &pkt)) {
		rc = xlb_policy_check(skb, &pkt, ifindex, XLB_POLICY_DIR_INGRESS, 0,
				      XLB_HOOK_TC_POD_TO);
		if (rc)
			return xlb_fail(rc, reason);
	}
	*reason = XLB_OK_TO_POD;
	return TC_ACT_OK;
}

#endif /* XLB_TC_POD_H */
