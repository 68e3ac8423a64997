/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_tc: the node pipeline (tc, TCX): a node's uplink and its pods' host
 * veths. Each entry point runs its stages in packet order and ends in one
 * counted exit (counters.h) under its own hook:
 *
 *   uplink ingress   decap (decap.h): Geneve / IPIP from the load balancer
 *                    and the pod overlay from other nodes, terminated and
 *                    delivered into the pod; fallback revnat (fallback.h):
 *                    a reply to service traffic this node DNAT'd per packet
 *                    leaves as from the service; masquerade replies
 *                    (uplink.h) [policy: ingress of the destination pod]
 *   uplink egress    fallback (fallback.h): service traffic no hooked
 *                    socket translated (ClusterIP, ...) DNAT'd to a
 *                    backend; revnat (revnat.h): endpoint replies leave as
 *                    the service; the node's own packets to other nodes'
 *                    pods into the overlay, pods' packets leaving the
 *                    cluster masqueraded (uplink.h)
 *   pod from         (a pod's host veth, ingress; pod.h): source check,
 *                    local redirect, overlay, or the host stack
 *   pod to           (a pod's host veth, egress; pod.h): what the stack
 *                    delivers to the pod
 *
 * A stage that does not handle the packet says why in its reason (PASS_*)
 * and the next stage may take it. NetworkPolicy (policy.h) runs inside
 * the stages: the bracketed one and both pod hooks.
 */
#define XLB_CTX_SKB
#include "maps.h"
#include "ctx.h"
#include "counters.h"
#include "decap.h"
#include "revnat.h"
#include "uplink.h"
#include "pod.h"
#include "fallback.h"

/* The uplink stages behind their own call frames: each chain (decap,
 * fallback revnat, uplink ingress; fallback, revnat, uplink egress) inlined
 * whole exceeds the 512-byte stack that a program and the subprograms it
 * calls share. */
static __attribute__((noinline)) int xlb_tc_decap(struct __sk_buff *skb, __u32 *reason)
{
	return xlb_decap(skb, reason);
}

static __attribute__((noinline)) int xlb_tc_uplink_ingress(struct __sk_buff *skb, __u32 *reason)
{
	return xlb_uplink_ingress(skb, reason);
}

static __attribute__((noinline)) int xlb_tc_revnat(struct __sk_buff *skb, __u32 *reason)
{
	return xlb_revnat(skb, reason);
}

static __attribute__((noinline)) int xlb_tc_uplink_egress(struct __sk_buff *skb, __u32 *reason)
{
	return xlb_uplink_egress(skb, reason);
}

SEC("classifier")
int xlb_tc_ingress(struct __sk_buff *skb)
{
	__u32 len = skb->len, reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_tc_decap(skb, &reason);

	if (reason == XLB_PASS_NOT_TUNNEL)
		verdict = xlb_fallback_revnat(skb, &reason);
	if (reason == XLB_PASS_NOT_TUNNEL)
		verdict = xlb_tc_uplink_ingress(skb, &reason);
	return xlb_exit(skb, XLB_HOOK_TC_INGRESS, reason, len, verdict);
}

SEC("classifier")
int xlb_tc_egress(struct __sk_buff *skb)
{
	__u32 len = skb->len, reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_fallback_nat(skb, &reason);

	if (reason == XLB_PASS_NOT_FRONTEND)
		verdict = xlb_tc_revnat(skb, &reason);

	if (reason == XLB_PASS_NO_NAT || reason == XLB_PASS_L4_PROTO || reason == XLB_PASS_FRAGMENT)
		verdict = xlb_tc_uplink_egress(skb, &reason);
	return xlb_exit(skb, XLB_HOOK_TC_EGRESS, reason, len, verdict);
}

SEC("classifier")
int xlb_pod_from(struct __sk_buff *skb)
{
	__u32 len = skb->len, reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_pod_from_stage(skb, &reason);

	return xlb_exit(skb, XLB_HOOK_TC_POD_FROM, reason, len, verdict);
}

SEC("classifier")
int xlb_pod_to(struct __sk_buff *skb)
{
	__u32 len = skb->len, reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_pod_to_stage(skb, &reason);

	return xlb_exit(skb, XLB_HOOK_TC_POD_TO, reason, len, verdict);
}

char _license[] SEC("license") = "Dual BSD/GPL";
