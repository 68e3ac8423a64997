/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * maglev.h: backend choice for a flow of a service. xlb_maglev_pick() maps a
 * flow hash to a backend through the service's Maglev table; xlb_select()
 * is the whole per-packet decision shared by XDP and tc (IPIP mode): the
 * established flow in xlb_ct if still valid, else session affinity, else
 * Maglev, then the xlb_ct (and affinity) entry is written. No loop over
 * backends anywhere: one table read, one xlb_svc_backend_ids read (an
 * ARRAY: inlined by the verifier, no helper call; xlb_svc_backends, a
 * HASH, only for indexes past its XLB_SVC_IDS), one xlb_backends read.
 *
 * API
 *   int xlb_maglev_pick(svc, hash, &be, &backend_id)
 *       0, or -XLB_DROP_NO_BACKEND (backend_count 0), -XLB_DROP_NO_MAGLEV (no
 *       table in the map of its size class nor in xlb_maglev, or
 *       maglev_size 0 / > XLB_MAGLEV_MAX), -XLB_DROP_BACKEND_MISSING
 *       (slot names an index with no id in xlb_svc_backend_ids nor
 *       xlb_svc_backends, or a backend that is missing, inactive or
 *       terminating)
 *   int xlb_select(svc, key, new_conn, &sel)
 *       key: the flow in packet direction (client -> frontend), 4-byte
 *       aligned, the xlb_ct key as is. new_conn: the packet opens a
 *       connection (a TCP SYN without ACK): an xlb_ct entry left by an
 *       earlier connection of the same 4-tuple is reused only if its backend
 *       may take new flows (not terminating); otherwise a backend is chosen
 *       anew. Fills struct xlb_sel; returns 0 or the
 *       negative reason of xlb_maglev_pick. Reads the clock only for new
 *       flows: CLOCK_MONOTONIC at tick resolution (bpf_ktime_get_coarse_ns)
 *       for the xlb_ct way's created_s, the affinity entry's last_ns and
 *       the insert budget.
 *
 * Flood guard: a new flow's xlb_ct entry is written only within the per-CPU
 * budget of xlb_ct_insert_rate entries per second (bursts of a tenth of a
 * second; 0: no limit). Beyond it the flow is served by Maglev alone, which
 * picks the same backend for every packet while the table stands, and no
 * established entry is evicted by a flood of new ones (Katran's
 * max_conn_rate does the same). Counted in xlb_ct_guard. Such a flow is
 * marked sel->unpinned: XDP does not put it in its flow cache either
 * (xdp/xlb_xdp.c), so its next packet takes this path again.
 */
#ifndef XLB_MAGLEV_H
#define XLB_MAGLEV_H

#include "addr.h"
#include "conntrack.h"
#include "bucket.h"

/* The clock of new flows: CLOCK_MONOTONIC at tick resolution. A program
 * may define xlb_flow_clock() to a cheaper source of the same values before
 * including this header (XDP: nexthop.h's per-CPU copy, refreshed once per
 * jiffy: a helper call per tick instead of one per new flow, which a SYN
 * flood pays per packet). */
#ifndef xlb_flow_clock
#define xlb_flow_clock() bpf_ktime_get_coarse_ns()
#endif

/* Set by the loader (LoadOptions::ct_insert_rate). */
volatile const __u32 xlb_ct_insert_rate = 0;

/* This CPU's insert budget, or NULL when there is none (rate 0: no limit). */
static __always_inline struct xlb_ct_guard *xlb_ct_guard_of(void)
{
	__u32 zero = 0;

	return xlb_ct_insert_rate ? bpf_map_lookup_elem(&xlb_ct_guard, &zero) : NULL;
}

/* 1 if a new flow may take an xlb_ct entry now (and counts it either way). */
static __always_inline int xlb_ct_admit(__u64 now)
{
	__u32 rate = xlb_ct_insert_rate;
	struct xlb_ct_guard *g = xlb_ct_guard_of();

	if (!g)
		return 1;
	if (xlb_bucket_take(&g->credit_ns, &g->last_ns, now, rate, rate / 10)) {
		g->inserted++;
		return 1;
	}
	g->skipped++;
	return 0;
}

/* 1 unless the insert budget is spent: its bucket held no whole token when
 * last taken from (no clock read, nothing taken; a bucket that refilled
 * since reads as spent until its next take). xlb_select warms the set of a
 * flow it may insert, not a flood's past the budget. */
static __always_inline int xlb_ct_budget_left(void)
{
	struct xlb_ct_guard *g = xlb_ct_guard_of();

	return !g || g->credit_ns >= XLB_BUCKET_NSEC_PER_SEC / xlb_ct_insert_rate;
}

struct xlb_sel {
	struct xlb_backend *be;
	__u32 backend_id;
	__u32 hash;	    /* flow hash (xlb_flow_hash of the key) */
	__u32 new_flow;	    /* 1: chosen now */
	__u32 affinity_hit; /* 1: chosen from xlb_affinity */
	__u32 unpinned;	    /* 1: chosen now past the insert budget: no
			     * xlb_ct entry (the flood guard below) */
};

/* slot[idx] of the table of `svc_id` in `map`, whose values hold `cap`
 * slots. Inlined per class with `map` and `cap` constant.
 * Verifier workaround (clang 14, kernel 6.18): the verifier learns nothing
 * from a modulo by a runtime value, so slot[idx] needs an explicit bound.
 * The empty asm hides idx's origin from clang, which could otherwise prove
 * idx < size and drop the check when size was compared before; the
 * verifier then rejects the access as out of the map value. */
static __always_inline int xlb_maglev_read(void *map, __u32 cap, __u32 svc_id, __u32 idx,
					   __u32 *slot)
{
	const __u16 *t = bpf_map_lookup_elem(map, &svc_id);

	if (!t)
		return -XLB_DROP_NO_MAGLEV;
	asm volatile("" : "+r"(idx));
	if (idx >= cap)
		return -XLB_DROP_NO_MAGLEV;
	*slot = t[idx];
	return 0;
}

/* The table's slot for `idx` (< size): from the map of the smallest class
 * holding `size` (xlb_abi.h, enum xlb_maglev_class), else from xlb_maglev
 * (M above every class, or a table written before the classes). */
static __always_inline int xlb_maglev_slot(__u32 svc_id, __u32 size, __u32 idx, __u32 *slot)
{
	int rc = -XLB_DROP_NO_MAGLEV;

	if (size <= XLB_MAGLEV_C1993) {
		if (size <= XLB_MAGLEV_C199)
			rc = xlb_maglev_read(&xlb_maglev_199, XLB_MAGLEV_C199, svc_id, idx, slot);
		else if (size <= XLB_MAGLEV_C457)
			rc = xlb_maglev_read(&xlb_maglev_457, XLB_MAGLEV_C457, svc_id, idx, slot);
		else if (size <= XLB_MAGLEV_C971)
			rc = xlb_maglev_read(&xlb_maglev_971, XLB_MAGLEV_C971, svc_id, idx, slot);
		else
			rc = xlb_maglev_read(&xlb_maglev_1993, XLB_MAGLEV_C1993, svc_id, idx, slot);
	} else if (size <= XLB_MAGLEV_C4027) {
		rc = xlb_maglev_read(&xlb_maglev_4027, XLB_MAGLEV_C4027, svc_id, idx, slot);
	} else if (size <= XLB_MAGLEV_C8123) {
		rc = xlb_maglev_read(&xlb_maglev_8123, XLB_MAGLEV_C8123, svc_id, idx, slot);
	} else if (size <= XLB_MAGLEV_C16319) {
		rc = xlb_maglev_read(&xlb_maglev_16319, XLB_MAGLEV_C16319, svc_id, idx, slot);
	}
	if (rc)
		rc = xlb_maglev_read(&xlb_maglev, XLB_MAGLEV_MAX, svc_id, idx, slot);
	return rc;
}

/* The backend id of service-local `index` of `svc_id`, 0 if none: from
 * xlb_svc_backend_ids (an ARRAY lookup the verifier inlines) for the first
 * XLB_SVC_IDS indexes, else, or if 0 there, from the xlb_svc_backends HASH
 * (a helper call, a jhash and a bucket walk: ~40 ns of a new flow). */
static __always_inline __u32 xlb_svc_backend_id(__u32 svc_id, __u32 index)
{
	struct xlb_svc_backend_key sk = {.svc_id = svc_id, .index = index};
	struct xlb_svc_backend_ids *ids;
	__u32 *id;

	/* Verifier workaround (clang 14): a 64-bit copy hidden from clang
	 * (as in xlb_maglev_read), so that the register compared with the
	 * bound is the one that indexes ids->id; with the u32 clang compared
	 * a zero-extended copy and indexed with another. */
	__u64 i = index;

	asm volatile("" : "+r"(i));
	if (i < XLB_SVC_IDS) {
		ids = bpf_map_lookup_elem(&xlb_svc_backend_ids, &svc_id);
		if (ids && ids->id[i])
			return ids->id[i];
	}
	id = bpf_map_lookup_elem(&xlb_svc_backends, &sk);
	return id ? *id : 0;
}

static __always_inline int xlb_maglev_pick(const struct xlb_service *svc, __u32 hash,
					   struct xlb_backend **bep, __u32 *backend_id)
{
	struct xlb_backend *be;
	__u32 size = svc->maglev_size, index, id;
	int rc;

	if (!svc->backend_count)
		return -XLB_DROP_NO_BACKEND;
	if (!size || size > XLB_MAGLEV_MAX)
		return -XLB_DROP_NO_MAGLEV;
	rc = xlb_maglev_slot(svc->id, size, hash % size, &index);
	if (rc)
		return rc;
	id = xlb_svc_backend_id(svc->id, index);
	if (!id)
		return -XLB_DROP_BACKEND_MISSING;
	be = xlb_backend_get(id);
	if (!be || !xlb_backend_new_ok(be))
		return -XLB_DROP_BACKEND_MISSING;
	*bep = be;
	*backend_id = id;
	return 0;
}

static __always_inline int xlb_select(const struct xlb_service *svc, const struct xlb_flow_key *key,
				      int new_conn, struct xlb_sel *sel)
{
	struct xlb_affinity_entry *ae = NULL;
	struct xlb_affinity_key ak;
	struct xlb_backend *be;
	__u64 now;
	int rc;

	sel->new_flow = 0;
	sel->affinity_hit = 0;
	sel->unpinned = 0;
	sel->hash = xlb_flow_hash(key);
	/* The lookup reads only the set's tags. A new flow that will be
	 * inserted reads the set's 4 lines anyway: loaded now, they arrive
	 * while the tags, the frontend's Maglev lookups and the budget are
	 * read, instead of after them in the insert (+40-70 ns of a new flow
	 * at a full table, xlb-perf compare --ct-insert-rate 0). Past the
	 * budget (a flood) no set is read. */
	if (xlb_ct_budget_left())
		xlb_ct_warm(sel->hash);
	be = xlb_ct_lookup(key, sel->hash, svc->id, &sel->backend_id);
	if (be && (!new_conn || xlb_backend_new_ok(be))) {
		sel->be = be;
		return 0;
	}

	if (!svc->backend_count)
		return -XLB_DROP_NO_BACKEND;
	/* The tick-resolution clock: no clocksource read (bpf_ktime_get_ns
	 * cost ~60 ns of a new flow under virtualisation); the affinity
	 * timeout, the entry's age and the insert budget need no better. */
	now = xlb_flow_clock();
	be = NULL;
	if (svc->flags & XLB_SVC_F_AFFINITY) {
		__builtin_memset(&ak, 0, sizeof(ak));
		xlb_addr_copy(ak.client, key->saddr);
		ak.svc_id = svc->id;
		ak.family = key->family;
		be = xlb_affinity_lookup(svc, &ak, now, &ae, &sel->backend_id);
		sel->affinity_hit = be != NULL;
	}
	if (!be) {
		rc = xlb_maglev_pick(svc, sel->hash, &be, &sel->backend_id);
		if (rc)
			return rc;
	}
	if (xlb_ct_admit(now))
		xlb_ct_insert(key, sel->hash, svc->id, sel->backend_id, be->gen, now);
	else
		sel->unpinned = 1;
	if (svc->flags & XLB_SVC_F_AFFINITY)
		xlb_affinity_touch(&ak, ae, sel->backend_id, be->gen, now);
	sel->be = be;
	sel->new_flow = 1;
	return 0;
}

#endif /* XLB_MAGLEV_H */
