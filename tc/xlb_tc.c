/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_tc: DSR termination on a backend node, attached to the node's uplink.
 * Ingress decapsulates the Geneve packets the load balancer sends and
 * remembers each flow's service address; egress rewrites the endpoints'
 * replies back to that service address. The logic is in lb/bpf/dsr.h; this
 * file holds the entry points and their single counted exit.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"
#include "dsr.h"
#include "counters.h"
#include "events.h"

/* The one exit of both programs: counts the packet under `counter` in
 * xlb_counters (counters.h), emits a drop event when a listener wants one
 * (events.h) and turns the counter into the tc verdict. `len` is the
 * frame length as received, before any decapsulation. */
static __always_inline int xlb_tc_exit(struct __sk_buff *skb, int counter, __u32 len, __u8 hook)
{
	if (xlb_reason_is_drop(counter))
		xlb_ev_drop(xlb_ctx_data(skb), xlb_ctx_data_end(skb), counter, hook, skb->ifindex,
			    len);
	return xlb_count_exit(counter, len, dsr_verdict(counter));
}

SEC("classifier")
int xlb_tc_ingress(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	return xlb_tc_exit(skb, dsr_ingress(skb), len, XLB_EV_HOOK_TC_INGRESS);
}

SEC("classifier")
int xlb_tc_egress(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	return xlb_tc_exit(skb, dsr_egress(skb), len, XLB_EV_HOOK_TC_EGRESS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
