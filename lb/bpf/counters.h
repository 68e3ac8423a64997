/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * counters.h: the single exit of every xlb program and the per-service and
 * per-backend statistics.
 *
 * One return convention everywhere: a helper returns 0 (go on) or a negative
 * enum xlb_counter reason (a PASS_* or DROP_*: why it stopped); a stage that
 * ends the packet sets its reason (any class, OK_* included) through a
 * `__u32 *reason` and returns the verdict, and xlb_fail() (ctx.h) turns a
 * helper's negative reason into one. The program's entry point then calls
 * xlb_exit() once with the final reason and verdict.
 *
 * API
 *   void xlb_count(hook, reason, bytes)
 *       counts {1, bytes} in xlb_counters[hook][reason] on this CPU.
 *   int  xlb_exit(ctx, hook, reason, bytes, verdict)     (packet programs)
 *       counts {1 packet, bytes} in xlb_counters[hook][reason] on this CPU,
 *       emits a drop event when the reason is a DROP_* and a listener wants
 *       one (events.h), and returns the verdict. `bytes` is the frame length
 *       as the program received it; `hook` is a constant of the program.
 *   void xlb_count_svc(svc_id, bytes, new_flow, affinity_hit)
 *   void xlb_count_backend(backend_id, bytes)
 *       counts in this CPU's row of xlb_backend_stats (xlb_abi.h).
 */
#ifndef XLB_COUNTERS_H
#define XLB_COUNTERS_H

#include "maps.h"
#include "events.h"

static __always_inline void xlb_count(__u32 hook, __u32 reason, __u32 bytes)
{
	__u32 key = hook * XLB_REASON_MAX + (reason & (XLB_REASON_MAX - 1));
	struct xlb_count *c = bpf_map_lookup_elem(&xlb_counters, &key);

	/* Per-CPU value: plain adds, no atomics needed. */
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* The packet programs' exit (the socket programs, with no packet, count
 * through xlb_count in sock/). */
#if defined(XLB_CTX_XDP) || defined(XLB_CTX_SKB)
#include "ctx.h"

static __always_inline int xlb_exit(struct xlb_ctx *ctx, __u32 hook, __u32 reason, __u32 bytes,
				    int verdict)
{
	/* Counted before the event: with the event first, clang 14 emitted code
	 * for xlb_tc_ingress that the 6.18 verifier rejects ("R7 pointer
	 * arithmetic on pkt_end prohibited"). */
	xlb_count(hook, reason, bytes);
	if (xlb_reason_is_drop(reason))
		xlb_ev_drop(xlb_ctx_data(ctx), xlb_ctx_data_end(ctx), reason, hook,
			    xlb_ctx_ifindex(ctx), bytes);
	return verdict;
}
#endif

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

/* Backend ids per CPU row of xlb_backend_stats (MapSizes::backends; the
 * loader sets it). */
volatile const __u32 xlb_backend_slots = 262144;

static __always_inline void xlb_count_backend(__u32 backend_id, __u32 bytes)
{
	__u32 slots = xlb_backend_slots;
	__u32 key = bpf_get_smp_processor_id() * slots + backend_id;
	struct xlb_count *c;

	/* An id past a row would count in the next CPU's row. */
	if (backend_id >= slots)
		return;
	c = bpf_map_lookup_elem(&xlb_backend_stats, &key);
	/* This CPU's own row: plain adds, as in a per-CPU map. */
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

#endif /* XLB_COUNTERS_H */
