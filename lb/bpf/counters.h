/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * counters.h: the single exit of every xlb program and the per-service and
 * per-backend statistics. A program computes one enum xlb_counter reason and
 * one verdict, then returns xlb_count_exit(reason, bytes, verdict), which
 * adds {1 packet, bytes} to xlb_counters[reason] on this CPU.
 *
 * Reason ranges (xlb_abi.h): 0-15 OK_*, 16-31 PASS_*, 32-63 DROP_*. Helpers
 * return 0 or a negative reason; xlb_reason_is_drop() tells the two error
 * ranges apart so that each program maps them onto its own verdicts
 * (XDP_PASS/XDP_DROP, TC_ACT_OK/TC_ACT_SHOT).
 *
 * API
 *   int  xlb_count_exit(__u32 reason, __u32 bytes, int verdict)
 *   int  xlb_reason_is_drop(__u32 reason)
 *   void xlb_count_svc(__u32 svc_id, __u32 bytes, __u32 new_flow, __u32 affinity_hit)
 *   void xlb_count_backend(__u32 backend_id, __u32 bytes)
 * "bytes" is the frame length as the program received it.
 */
#ifndef XLB_COUNTERS_H
#define XLB_COUNTERS_H

#include "maps.h"

static __always_inline int xlb_reason_is_drop(__u32 reason)
{
	return reason >= XLB_DROP_TRUNCATED;
}

static __always_inline int xlb_count_exit(__u32 reason, __u32 bytes, int verdict)
{
	struct xlb_count *c = bpf_map_lookup_elem(&xlb_counters, &reason);

	/* Per-CPU value: plain adds, no atomics needed. */
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	return verdict;
}

static __always_inline void xlb_count_svc(__u32 svc_id, __u32 bytes, __u32 new_flow,
					  __u32 affinity_hit)
{
	struct xlb_svc_stats *s = bpf_map_lookup_elem(&xlb_svc_stats, &svc_id);

	if (s) {
		s->packets++;
		s->bytes += bytes;
		s->new_flows += new_flow;
		s->affinity_hits += affinity_hit;
	}
}

static __always_inline void xlb_count_backend(__u32 backend_id, __u32 bytes)
{
	struct xlb_count *c = bpf_map_lookup_elem(&xlb_backend_stats, &backend_id);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

#endif /* XLB_COUNTERS_H */
