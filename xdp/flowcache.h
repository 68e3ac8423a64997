/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * flowcache.h (XDP only): the per-CPU flow cache in front of the frontend
 * and connection-table lookups, the per-CPU frontend cache in front of
 * xlb_frontends for the packets the flow cache misses, and the
 * configuration generation that invalidates both.
 *
 * API
 *   struct fc_entry *xlb_fc_get(&key)   the slot for key (a hit only when
 *                                       xlb_fc_hit() says so); never NULL
 *                                       (the slot is below max_entries),
 *                                       but the verifier needs the test:
 *                                       the caller makes it once, before
 *                                       xlb_fc_hit and xlb_fc_fill
 *   int xlb_fc_hit(fc, &key, now, gen)  the slot holds key, fresh and of
 *                                       this configuration generation
 *   void xlb_fc_fill(fc, &key, svc, backend_id, gen, hash, now, gen)
 *   const struct xlb_service *xlb_fe_cached(&key, gen)
 *                                       xlb_frontend_lookup() through the
 *                                       frontend cache
 *   __u64 xlb_config_gen_now(void)
 */
#ifndef XLB_XDP_FLOWCACHE_H
#define XLB_XDP_FLOWCACHE_H

#include "maps.h"
#include "conntrack.h"
#include "service.h"

/*
 * Flow cache: per CPU, direct-mapped, in front of the frontend and xlb_ct
 * lookups. An established flow's packets otherwise pay two hash-map lookups
 * (~33 ns for xlb_frontends, ~36 ns for xlb_ct on the benchmark machine:
 * each is a kernel call, and every kernel call/return is expensive under
 * the SRSO mitigation) although only the backend id, the flow hash and the
 * service's fields are used; the cache keeps exactly those per flow key and
 * costs one inlined array lookup and a 40-byte compare.
 *
 * Validity, checked on every hit:
 *   - the backend, from xlb_backends (inlined ARRAY): still ACTIVE with the
 *     generation the flow chose it under (xlb_backend_flow_ok), so backend
 *     removal and id reuse are seen at once, as on the xlb_ct path;
 *   - the configuration generation (xlb_config_gen, inlined ARRAY), which
 *     the agent bumps after any change of frontends, service settings or
 *     source ranges: an established flow sees a service's new settings
 *     (encapsulation, source ranges, a frontend moved to another service or
 *     removed while its backends stay) with its next packet;
 *   - age: an entry serves XLB_FC_TTL_JIFFIES ticks (bpf_jiffies64(), one
 *     inlined load; about 1 s at HZ 250), then the packet takes the full
 *     path and refreshes it, which refreshes the stamp of the flow's xlb_ct
 *     way so a flood of new flows does not evict it (conntrack.h).
 * Entries are written after xlb_select() succeeds, so new flows are cached
 * from their second packet; an entry's first hit (used 0 -> 1) marks the
 * flow's xlb_ct way hit (xlb_ct_seen_again): a flood evicts ways never
 * seen again first. Private to this program (not pinned, not ABI);
 * 96 bytes x 4096 slots per CPU.
 *
 * Flows to no frontend are not cached (session 5 kept negative entries
 * here): the frontend filter (xlb_fe_filter, service.h) passes them before
 * the cache is read, at the cost of one inlined array lookup, and a
 * negative entry would only serve destinations that share a frontend's
 * bit, at the price of a 96-byte slot write per new flow among them.
 */
#define XLB_FC_SLOT_BITS   12
#define XLB_FC_TTL_JIFFIES 250

struct fc_entry {
	struct xlb_flow_key key; /* client -> frontend, as parsed */
	struct xlb_service svc;	 /* the frontend's xlb_frontends value */
	__u32 backend_id;
	__u32 backend_gen;
	__u32 hash;	  /* flow hash */
	__u32 used;	  /* 1 once a packet after the filling one hit it */
	__u64 expires;	  /* jiffies */
	__u64 config_gen; /* xlb_config_gen when filled */
};

/* The current configuration generation (0 before the agent's first bump). */
static __always_inline __u64 xlb_config_gen_now(void)
{
	__u32 zero = 0;
	struct xlb_config_gen *g = bpf_map_lookup_elem(&xlb_config_gen, &zero);

	return g ? g->gen : 0;
}

/* Sizes instead of __type(), as for xlb_nh_cache: not ABI, not in BTF. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct fc_entry));
	__uint(max_entries, 1u << XLB_FC_SLOT_BITS);
} xlb_flow_cache SEC(".maps");

/* A cheap slot hash (not xlb_flow_hash: a miss, which every non-frontend
 * packet is, should cost as little as possible). */
static __always_inline __u32 xlb_fc_slot(const struct xlb_flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = w[0] ^ w[1] ^ w[2] ^ w[3];

	h = xlb_rol32(h, 13) ^ w[4] ^ w[5] ^ w[6] ^ w[7] ^ w[8] ^ w[9];
	return (h * 0x9e3779b1u) >> (32 - XLB_FC_SLOT_BITS);
}

static __always_inline struct fc_entry *xlb_fc_get(const struct xlb_flow_key *k)
{
	__u32 slot = xlb_fc_slot(k);

	return bpf_map_lookup_elem(&xlb_flow_cache, &slot);
}

static __always_inline int xlb_fc_hit(const struct fc_entry *fc, const struct xlb_flow_key *k,
				      __u64 now, __u64 gen)
{
	return now < fc->expires && fc->config_gen == gen && xlb_flow_key_eq(&fc->key, k);
}

static __always_inline void xlb_fc_fill(struct fc_entry *fc, const struct xlb_flow_key *k,
					const struct xlb_service *svc, __u32 backend_id,
					__u32 backend_gen, __u32 hash, __u64 now, __u64 gen)
{
	fc->key = *k;
	fc->svc = *svc;
	fc->backend_id = backend_id;
	fc->backend_gen = backend_gen;
	fc->hash = hash;
	fc->used = 0;
	fc->expires = now + XLB_FC_TTL_JIFFIES;
	fc->config_gen = gen;
}

/*
 * Frontend cache: per CPU, direct-mapped, XLB_FE_CACHE_SLOTS copies of
 * xlb_frontends entries, read by every packet the flow cache misses (a new
 * flow, a SYN flood's every packet, an established flow once per
 * XLB_FC_TTL_JIFFIES). A hit is one inlined array lookup and a 20-byte
 * compare instead of the HASH lookup (a helper call, jhash of the key and
 * the bucket walk). Flows to no frontend are not cached (the frontend
 * filter passes most of them first, as for the flow cache).
 *
 * Validity: the configuration generation, as for the flow cache: the agent
 * bumps it after any change of a frontend's value except a change of the
 * backend count alone (endpoint churn), which only steers new flows.
 * That count is read here only as "none or some" (xlb_select,
 * xlb_maglev_pick: no backend, reject), so the agent also bumps the
 * generation when a service's count goes to or from 0
 * (lb::reconcile::services); other counts cached stale are never read.
 * Test (lb/tests/xdp_select.rs):
 * a_cached_frontend_sees_its_service_lose_and_regain_its_backends.
 */
#define XLB_FE_CACHE_SLOT_BITS 8

struct fe_cache_entry {
	struct xlb_frontend_key key;
	struct xlb_service svc;
	__u32 pad;
	__u64 config_gen; /* xlb_config_gen when filled */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct fe_cache_entry));
	__uint(max_entries, 1u << XLB_FE_CACHE_SLOT_BITS);
} xlb_fe_cache SEC(".maps");

static __always_inline const struct xlb_service *xlb_fe_cached(const struct xlb_flow_key *t,
							       __u64 gen)
{
	/* The frontend filter's hash: its low bits pick the slot. */
	__u32 slot = xlb_fe_filter_bit(t) & ((1u << XLB_FE_CACHE_SLOT_BITS) - 1);
	struct fe_cache_entry *e = bpf_map_lookup_elem(&xlb_fe_cache, &slot);
	const __u32 *d = (const __u32 *)t->daddr, *k;
	/* port, proto and family: one word in both keys' layout. */
	__u32 pw = *(const __u32 *)&t->dport;
	struct xlb_service *svc;

	/* Never NULL (the slot is below max_entries). Not a fallback to
	 * xlb_frontend_lookup(): a service pointer into another map is another
	 * state for every instruction after it (xlb_xdp 294k -> 184k verified
	 * insns without it). */
	if (!e)
		return NULL;
	k = (const __u32 *)&e->key;
	if (e->config_gen == gen &&
	    ((k[0] ^ d[0]) | (k[1] ^ d[1]) | (k[2] ^ d[2]) | (k[3] ^ d[3]) | (k[4] ^ pw)) == 0)
		return &e->svc;
	svc = xlb_frontend_lookup(t);
	if (!svc)
		return NULL;
	xlb_addr_copy(e->key.addr, t->daddr);
	e->key.port = t->dport;
	e->key.proto = t->proto;
	e->key.family = t->family;
	e->svc = *svc;
	e->config_gen = gen;
	return &e->svc;
}

#endif /* XLB_XDP_FLOWCACHE_H */
