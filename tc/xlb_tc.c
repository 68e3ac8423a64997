/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_tc: the node pipeline on a node's uplink (tc, TCX). Each entry point
 * runs its stages in packet order and ends in one counted exit (counters.h)
 * under its own hook:
 *
 *   ingress  decap (decap.h): Geneve / IPIP from the load balancer is
 *            terminated and delivered to the endpoint
 *            fallback revnat (fallback.h): a reply to service traffic this
 *            node DNAT'd per packet leaves as from the service
 *            [routing: pod traffic from other nodes]
 *            [policy: ingress of the destination pod]
 *   egress   [policy / routing of pod traffic leaving the node]
 *            fallback (fallback.h): service traffic no hooked socket
 *            translated (ClusterIP, ...) DNAT'd to a backend
 *            revnat (revnat.h): endpoint replies leave as the service
 *
 * A stage that does not handle the packet says why in its reason (PASS_*)
 * and the next stage may take it; the bracketed stages are where pod
 * routing and NetworkPolicy go.
 */
#define XLB_CTX_SKB
#include "maps.h"
#include "ctx.h"
#include "counters.h"
#include "decap.h"
#include "revnat.h"
#include "fallback.h"

SEC("classifier")
int xlb_tc_ingress(struct __sk_buff *skb)
{
	__u32 len = skb->len, reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_decap(skb, &reason);

	if (reason == XLB_PASS_NOT_TUNNEL)
		verdict = xlb_fallback_revnat(skb, &reason);
	return xlb_exit(skb, XLB_HOOK_TC_INGRESS, reason, len, verdict);
}

SEC("classifier")
int xlb_tc_egress(struct __sk_buff *skb)
{
	__u32 len = skb->len, reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_fallback_nat(skb, &reason);

	if (reason == XLB_PASS_NOT_FRONTEND)
		verdict = xlb_revnat(skb, &reason);

	return xlb_exit(skb, XLB_HOOK_TC_EGRESS, reason, len, verdict);
}

char _license[] SEC("license") = "Dual BSD/GPL";
