/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * conntrack.h: the flow hash, backend validity rules, the connection table
 * (xlb_ct) and ClientIP session affinity (xlb_affinity). Shared by XDP and
 * by tc (IPIP mode picks the same backend from the same hash).
 *
 * Flow hash (xlb_flow_hash), the one definition both sides must compute:
 *   words are the flow key's bytes read as native (little-endian on x86-64
 *   and arm64) 32-bit integers;
 *     s    = saddr[0..4) ^ saddr[4..8) ^ saddr[8..12) ^ saddr[12..16)
 *     d    = the same over daddr            (IPv4: just the address word)
 *     p    = the 4 bytes sport,dport as one word
 *     init = 0xdeadbeef + 12 + (XLB_HASH_SEED ^ proto)   (xlb_abi.h)
 *     a = init + s; b = init + d; c = init + p;
 *   then Bob Jenkins' lookup3 final(a, b, c) mix:
 *     c ^= b; c -= rol32(b, 14);  a ^= c; a -= rol32(c, 11);
 *     b ^= a; b -= rol32(a, 25);  c ^= b; c -= rol32(b, 16);
 *     a ^= c; a -= rol32(c, 4);   b ^= a; b -= rol32(a, 14);
 *     c ^= b; c -= rol32(b, 24);
 *   and the hash is c. Direction matters (client -> frontend is the input).
 *   It is Maglev's input (slot = hash % M), the connection table's set index
 *   and the outer-header entropy (Geneve UDP source port, IPv6 flow label).
 *   Every packet that reaches xlb_select computes it (~20 ALU instructions;
 *   the flow cache in front of it keeps it for established flows).
 *
 * Connection table (xlb_ct), set-associative (issue #14 item 1)
 *   An ARRAY of xlb_ct_sets sets (the loader sets it: MapSizes::ct entries
 *   rounded up to whole sets) of XLB_CT_WAYS = 4 ways of 64 bytes
 *   (struct xlb_ct_way: the 40-byte flow key, IPv4 and IPv6 alike, and
 *   struct xlb_ct_entry). BPF_F_MMAPABLE makes the values page-aligned, so
 *   a set is 4 whole cache lines in one page (the array's values otherwise
 *   start 56 bytes into a line and every way straddles two).
 *     set    = (hash * xlb_ct_sets) >> 32      (one hash, one set)
 *     lookup = compare the key of the ways whose tag matches (Tags,
 *              below; inlined array lookups: no helper call, no lock, no
 *              bucket chain, no LRU list);
 *     insert = the flow's own way if its key is there (an entry no longer
 *              valid is rewritten in place), else an empty way (check 0),
 *              else one whose backend is gone or has a new generation,
 *              else the oldest way not hit (below), and only when all 4
 *              are hit, the oldest way.
 *   It replaced an LRU_HASH whose insert with eviction (a lock, the LRU
 *   lists, the bucket chain and the entry in different pages) was ~80 % of
 *   a new flow's cost at a full table.
 *
 *   Tags (issue #14 item 4). xlb_ct_tags, an ARRAY with one struct
 *   xlb_ct_tags per set (same index), holds a 16-bit tag of each way:
 *     tag = (hash & 0xffff) | 1     (xlb_ct_tag; 0: a way never written)
 *   (the set index comes from the hash's high bits, the tag from its low
 *   ones). A lookup loads the set's 8 bytes of tags and compares the key of
 *   only the ways whose tag matches: a flow absent from the table (every
 *   packet of a SYN flood) costs one 8-byte read in a 1 MiB array (at 131k
 *   sets; 8 sets per cache line, mostly cache-resident) instead of the
 *   set's 4 cache lines in a 32 MiB one. A false match (4 ways x 2^-15)
 *   only costs the way's key compare. A new flow that will be inserted
 *   reads its set anyway: xlb_select loads it ahead (xlb_ct_warm) unless
 *   the insert budget is spent, so the insert does not wait for it.
 *   Invariant: a valid way whose tag does not match reads as a miss, like
 *   a torn way (below), so every writer of a way writes its tag: the insert
 *   writes it after clearing the check word and before the key, and
 *   lb::maps::CtTable::insert after the set. Two CPUs inserting into the
 *   same way at once may leave one's key with the other's tag: the flow
 *   reads as a miss, Maglev picks its backend again (the same while the
 *   table is unchanged) and the insert finds its own key and rewrites the
 *   tag — the torn way's cost, as rare. A stale tag on a way whose key
 *   changed or whose check was cleared only costs a key compare. An xlb_ct
 *   kept from an agent without tags gets them rebuilt from its valid ways
 *   at load (lb::loader, CtTable::rebuild_tags); ways the old programs
 *   insert until they are replaced read as misses once (re-picked, the
 *   same backend unless the service changed meanwhile).
 *   Measured (xlb-perf compare --ct-insert-rate 1: every new flow past
 *   the budget, load 4-6, with XDP no longer caching such flows): a SYN
 *   flood packet 319-376 -> 203-234 ns net; with every flow inserted
 *   (--ct-insert-rate 0) +2 and +24 ns, within the noise.
 *   Test (lb/tests/xdp_select.rs):
 *   a_connection_table_way_is_found_through_its_tag; lb/tests/counters.rs:
 *   connection_table_tags_are_rebuilt_for_a_table_kept_without_them.
 *
 *   Torn ways. No locks on the fast path: two CPUs may write the same way
 *   at once, and a reader may see a way half written. The check word
 *     check = xlb_final_mix(hash + svc_id, backend_id, backend_gen) | 1
 *   (hash: the flow hash of the way's key) is a function of the key and the
 *   entry, written last (after a compiler barrier) and verified by every
 *   lookup against the values it read once: a way whose key, service,
 *   backend or generation come from different writes reads as a miss
 *   (short of a 2^-31 coincidence), on weakly ordered CPUs too, since it
 *   checks content rather than write order. A miss costs only Maglev's pick
 *   of the same backend (while the table is unchanged) and the way is then
 *   rewritten by the insert (own key first). The stamp and created_s are
 *   outside the check: a torn stamp (its hit bit included) only changes
 *   which way is evicted.
 *   Test (lb/tests/xdp_select.rs):
 *   a_torn_connection_table_way_reads_as_a_miss_and_is_replaced.
 *
 *   Recency. The LRU hash learnt recency from lookups. Established XDP
 *   flows are served by the per-CPU flow cache (xdp/flowcache.h), whose
 *   entries live XLB_FC_TTL_JIFFIES (~1 s); the packet after that takes
 *   xlb_select, whose xlb_ct_lookup rewrites the way's stamp when it is
 *   XLB_CT_REFRESH_JIFFIES or more behind (at most a few writes per second
 *   per flow). (tc's fallback has no flow cache: it refreshes on its
 *   lookups, under the same rate limit.) The flood guard (xlb_ct_admit,
 *   maglev.h) still bounds inserts per CPU.
 *
 *   Hit bit. Recency alone let a sustained flood at the insert budget
 *   evict a live flow once 4 new flows landed in its set between two of
 *   its refreshes (~1 s): 12.7 %/s of live flows at 250k/s on 2 CPUs.
 *   Bit 0 of the stamp (XLB_CT_HIT) says the flow came back after its
 *   insert: set by a lookup that finds the way valid and, on XDP, by the
 *   flow cache's first hit of a fill (xlb_ct_seen_again: a new flow's
 *   second packet, so no flow waits the cache's ~1 s for it); the insert
 *   clears it. A flood's SYNs from spoofed sources never come back, so
 *   its ways stay unhit and are evicted before any hit way: a live flow
 *   is lost only when its set's other 3 ways hold live flows too (or in
 *   its first packet's round trip). At 250k/s on 2 CPUs that is 0 %/s of
 *   2k live flows, 0.26 %/s of 50k, 2 %/s of 100k (before: 12.8, 20,
 *   28 %/s; perf/sim/ct_flood.py). The bit is outside the check, written
 *   with the stamp (one store, rate-limited once set). Ages ignore it
 *   (xlb_ct_age). An attacker who sends each spoofed flow twice gets hit
 *   ways, which then compete by age as before the bit: no worse.
 *   Test (lb/tests/xdp_select.rs):
 *   established_flows_keep_their_backends_across_a_flood_that_overfills_the_table.
 *
 *   Cost of a new flow at a full table (#14 item 1). Ablation: variants of
 *   xlb_xdp with one part changed, timed in one interleaved run (xlb-perf
 *   scale --ct-fill 100 --variant, 15 rounds x 2 loads; AMD EPYC VM, load
 *   5-8; SYN, net ns; ACK miss, UDP and IPv6 within 10 ns of it):
 *     as is                                                  420
 *     no insert, no warm                                     257
 *     every flow inserted into set 0 (its lines cached)       285
 *     victim always way 0 (no victim reads or compares)       380
 *     no xlb_svc_backends lookup (HASH: a kernel call; id
 *     cached, so every flow to one backend)                   379
 *     no flow cache fill / no counters / Maglev slot 0   414 / 409 / 417
 *     warm after the Maglev pick instead of before           540
 *     warm before the flow cache too (SYNs)                  522
 *     victim chosen before the Maglev pick                   449
 *     Maglev pick before the lookup (SYNs; its run: as is 441) 537
 *     insert after the forward, at the program's end         420
 *     lookup comparing the 4 keys instead of the tags        510
 *     victim compares keys of tagged ways only               420
 *   Kept: the victim's scores compared without a jump (xlb_max_u64), -9
 *   ns (compare 58b28bc: 416 -> 407; scale: 415-425 -> 410-412).
 *   So ~140 ns are the set's miss (a TLB and cache miss in 32 MiB) and
 *   the order warm, tags, Maglev's kernel calls, insert matters more than
 *   any work removed (each reordering tried costs 25-115 ns). Not kept:
 *   keys compared only for tagged ways (-0 to -6 ns; a cleared tag then no
 *   longer heals in place); the 4 ways' check, stamp and backend in the
 *   set's first line so the victim reads one line (-10 ns, an ABI change).
 *   Done since: the xlb_svc_backends lookup (a HASH: helper call through
 *   a retpoline, jhash, bucket walk) replaced for a service's first
 *   XLB_SVC_IDS indexes by xlb_svc_backend_ids, an ARRAY the verifier
 *   inlines (maglev.h, xlb_svc_backend_id): xlb-perf scale --ct-fill 100
 *   --variant base=<a0c2d4c xlb_xdp.o>, 31 rounds x 3 loads, load 4:
 *   SYN 424 -> 386, ACK miss 420 -> 386, UDP 422 -> 382, IPv6 SYN 424 ->
 *   389 ns (-34 to -40); xlb-perf compare a0c2d4c: new flow 411 -> 394.
 *
 * Backend rules
 *   xlb_backend_flow_ok(be, gen)  an existing flow keeps its backend while it
 *                                 is ACTIVE with the same generation, even if
 *                                 it is TERMINATING;
 *   xlb_backend_new_ok(be)        new flows only go to ACTIVE and not
 *                                 TERMINATING backends.
 *
 * API
 *   __u32 xlb_flow_hash(const struct xlb_flow_key *k)   (k 4-byte aligned)
 *   int xlb_flow_key_eq(a, b)                           (both 8-byte aligned)
 *   struct xlb_backend *xlb_backend_get(__u32 id)
 *   struct xlb_backend *xlb_ct_lookup(key, hash, svc_id, &backend_id)
 *       the backend of a valid xlb_ct way for `key` (hash = its flow hash)
 *       owned by svc_id, or NULL; marks the way hit, refreshes its stamp
 *   void xlb_ct_seen_again(key, hash)   marks key's way hit (flow cache)
 *   void xlb_ct_insert(key, hash, svc_id, backend_id, gen, now)
 *   struct xlb_backend *xlb_affinity_lookup(svc, client_key, now, &ae, &backend_id)
 *       the backend remembered for this client while the entry is younger
 *       than the service's affinity timeout and the backend is new_ok; `ae`
 *       gets the entry (or NULL) for xlb_affinity_touch
 *   void xlb_affinity_touch(ak, ae, backend_id, gen, now)
 *       refresh (in place when the entry already names this backend)
 */
#ifndef XLB_CONNTRACK_H
#define XLB_CONNTRACK_H

#include "maps.h"
#include "verifier.h"

#define XLB_NSEC_PER_SEC       1000000000ull
#define XLB_CT_REFRESH_JIFFIES 32

/* Sets of xlb_ct: set by the loader (LoadOptions' MapSizes::ct); the
 * default matches maps.h's max_entries. */
volatile const __u32 xlb_ct_sets = 131072;

#define XLB_READ_ONCE_U32(x) (*(volatile const __u32 *)&(x))

static __always_inline __u32 xlb_rol32(__u32 w, unsigned int s)
{
	return (w << s) | (w >> (32 - s));
}

/* lookup3's final mix of three words: the flow hash's and the socket
 * hash's (sock/xlate.h) last step. */
static __always_inline __u32 xlb_final_mix(__u32 a, __u32 b, __u32 c)
{
	c ^= b;
	c -= xlb_rol32(b, 14);
	a ^= c;
	a -= xlb_rol32(c, 11);
	b ^= a;
	b -= xlb_rol32(a, 25);
	c ^= b;
	c -= xlb_rol32(b, 16);
	a ^= c;
	a -= xlb_rol32(c, 4);
	b ^= a;
	b -= xlb_rol32(a, 14);
	c ^= b;
	c -= xlb_rol32(b, 24);
	return c;
}

static __always_inline __u32 xlb_flow_hash(const struct xlb_flow_key *k)
{
	const __u32 *s = (const __u32 *)k->saddr, *d = (const __u32 *)k->daddr;
	__u32 init = 0xdeadbeef + 12 + (XLB_HASH_SEED ^ k->proto);
	__u32 a = init + (s[0] ^ s[1] ^ s[2] ^ s[3]);
	__u32 b = init + (d[0] ^ d[1] ^ d[2] ^ d[3]);
	__u32 c = init + *(const __u32 *)&k->sport;

	return xlb_final_mix(a, b, c);
}

static __always_inline struct xlb_backend *xlb_backend_get(__u32 id)
{
	return bpf_map_lookup_elem(&xlb_backends, &id);
}

static __always_inline int xlb_backend_flow_ok(const struct xlb_backend *be, __u32 gen)
{
	return (be->flags & XLB_BE_F_ACTIVE) && be->gen == gen;
}

static __always_inline int xlb_backend_new_ok(const struct xlb_backend *be)
{
	return (be->flags & (XLB_BE_F_ACTIVE | XLB_BE_F_TERMINATING)) == XLB_BE_F_ACTIVE;
}

/* Keys are 8-byte aligned: struct xlb_pkt, the ICMP quote, map values. */
static __always_inline int xlb_flow_key_eq(const struct xlb_flow_key *a,
					   const struct xlb_flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* The check word of a way holding a key whose flow hash is `hash`. */
static __always_inline __u32 xlb_ct_check(__u32 hash, __u32 svc_id, __u32 backend_id, __u32 gen)
{
	return xlb_final_mix(hash + svc_id, backend_id, gen) | 1;
}

/* The set of a flow hash: its index in xlb_ct and in xlb_ct_tags. */
static __always_inline __u32 xlb_ct_index(__u32 hash)
{
	return ((__u64)hash * xlb_ct_sets) >> 32;
}

/* The tag of a way holding a key whose flow hash is `hash`: its low 16 bits
 * (the set index comes from the high ones), never 0 (a way never written). */
static __always_inline __u16 xlb_ct_tag(__u32 hash)
{
	return (__u16)hash | 1;
}

/* Jiffies since the stamp `s` (bit 0, XLB_CT_HIT, ignored). */
static __always_inline __u32 xlb_ct_age(__u32 s, __u32 now)
{
	return (now | XLB_CT_HIT) - (s | XLB_CT_HIT);
}

/* The flow of way `w` came back: mark it hit and refresh its stamp (one
 * write, at most every XLB_CT_REFRESH_JIFFIES once hit). */
static __always_inline void xlb_ct_touch(struct xlb_ct_way *w, __u32 now)
{
	__u32 s = XLB_READ_ONCE_U32(w->e.stamp);

	if (!(s & XLB_CT_HIT) || xlb_ct_age(s, now) >= XLB_CT_REFRESH_JIFFIES)
		w->e.stamp = now | XLB_CT_HIT;
}

/* The way of `key` (flow hash `hash`) in its set, or NULL. Only ways whose
 * tag matches are read: a key absent from its set (a new flow) costs the
 * set's 8 bytes of tags (the two array lookups are inlined address
 * computations), not its 4 cache lines. */
static __always_inline struct xlb_ct_way *xlb_ct_find(const struct xlb_flow_key *key, __u32 hash)
{
	__u32 idx = xlb_ct_index(hash);
	struct xlb_ct_tags *tags = bpf_map_lookup_elem(&xlb_ct_tags, &idx);
	struct xlb_ct_set *set = bpf_map_lookup_elem(&xlb_ct, &idx);
	__u16 t = xlb_ct_tag(hash);
	__u64 all;
	int i;

	if (!tags || !set)
		return NULL;
	all = *(volatile const __u64 *)tags; /* the 4 tags in one load */
#pragma unroll
	for (i = 0; i < XLB_CT_WAYS; i++)
		if ((__u16)(all >> (16 * i)) == t && xlb_flow_key_eq(&set->way[i].key, key))
			goto found;
	return NULL;
found:
	/* One state for the 4 ways (verifier.h): with the way a constant,
	 * the verifier walked the callers' code after a hit once per way. */
	return &set->way[xlb_opaque_u32(i) & (XLB_CT_WAYS - 1)];
}

static __always_inline struct xlb_backend *xlb_ct_lookup(const struct xlb_flow_key *key, __u32 hash,
							 __u32 svc_id, __u32 *backend_id)
{
	struct xlb_ct_way *w = xlb_ct_find(key, hash);
	struct xlb_backend *be;
	__u32 id, gen, svc, check;

	if (!w)
		return NULL;
	/* Each field read once, then checked together (torn ways: above). */
	id = XLB_READ_ONCE_U32(w->e.backend_id);
	gen = XLB_READ_ONCE_U32(w->e.backend_gen);
	svc = XLB_READ_ONCE_U32(w->e.svc_id);
	check = XLB_READ_ONCE_U32(w->e.check);
	/* svc_id: a frontend handed to another service re-selects. */
	if (check != xlb_ct_check(hash, svc, id, gen) || svc != svc_id)
		return NULL;
	be = xlb_backend_get(id);
	if (!be || !xlb_backend_flow_ok(be, gen))
		return NULL;
	xlb_ct_touch(w, bpf_jiffies64());
	*backend_id = id;
	return be;
}

/* The flow cache's second packet of `key` (XDP: the packets after a new
 * flow's first are served by the flow cache, which would otherwise let
 * xlb_ct see the flow again only ~1 s later): mark its way hit. */
static __always_inline void xlb_ct_seen_again(const struct xlb_flow_key *key, __u32 hash)
{
	struct xlb_ct_way *w = xlb_ct_find(key, hash);

	if (w)
		xlb_ct_touch(w, bpf_jiffies64());
}

/* Loads the 4 cache lines of the set of `hash` (one word of each way),
 * values unused: an insert coming later then finds them in cache. */
static __always_inline void xlb_ct_warm(__u32 hash)
{
	__u32 idx = xlb_ct_index(hash);
	struct xlb_ct_set *set = bpf_map_lookup_elem(&xlb_ct, &idx);

	if (!set)
		return;
#pragma unroll
	for (int i = 0; i < XLB_CT_WAYS; i++)
		(void)XLB_READ_ONCE_U32(set->way[i].e.check);
}

/* How much way `w` is worth evicting for `key` (higher first). */
static __always_inline __u32 xlb_ct_victim_score(const struct xlb_ct_way *w,
						 const struct xlb_flow_key *key, __u32 now)
{
	struct xlb_backend *be;
	__u32 age, stamp;

	if (xlb_flow_key_eq(&w->key, key))
		return 0xffffffff;
	if (!w->e.check)
		return 0xfffffffe;
	be = xlb_backend_get(w->e.backend_id);
	if (!be || !xlb_backend_flow_ok(be, w->e.backend_gen))
		return 0xfffffffd;
	/* Ways never seen again (a flood's SYNs from spoofed sources) score
	 * above every hit way (bit 31), each group by age (even: halved). */
	stamp = w->e.stamp;
	age = (~stamp << 31) | (xlb_ct_age(stamp, now) >> 1);
	return age < 0xfffffffd ? age : 0xfffffffc;
}

/* max(a, b) for a, b < 2^63, without a branch: the JIT has no conditional
 * move, and clang turns the usual max into a jump (the empty asm keeps it
 * from seeing one), which a victim's scores, data the predictor cannot
 * learn, mispredict. */
static __always_inline __u64 xlb_max_u64(__u64 a, __u64 b)
{
	__s64 d = (__s64)(a - b);

	asm volatile("" : "+r"(d));
	return a - (d & (d >> 63));
}

static __always_inline void xlb_ct_insert(const struct xlb_flow_key *key, __u32 hash, __u32 svc_id,
					  __u32 backend_id, __u32 gen, __u64 now_ns)
{
	__u32 idx = xlb_ct_index(hash);
	struct xlb_ct_set *set = bpf_map_lookup_elem(&xlb_ct, &idx);
	struct xlb_ct_tags *tags = bpf_map_lookup_elem(&xlb_ct_tags, &idx);
	struct xlb_ct_way *w;
	__u32 now = bpf_jiffies64(), v;
	__u64 best = 0;

	/* A failed insert only costs a Maglev lookup on the next packet,
	 * which picks the same backend: nothing to report. */
	if (!set || !tags)
		return;
#pragma unroll
	for (int i = 0; i < XLB_CT_WAYS; i++)
		best = xlb_max_u64(best, (__u64)xlb_ct_victim_score(&set->way[i], key, now) << 2 |
					     (XLB_CT_WAYS - 1 - i));
	/* best: the highest score over 2 bits of 3 - way, so of equal scores
	 * the first way wins. Opaque to the verifier (verifier.h): the way
	 * indexes the set, and precise it kept every combination of the 4
	 * scores' branches apart through the rest of the program (xlb_xdp
	 * 481k -> 352k verified insns). */
	v = XLB_CT_WAYS - 1 - (xlb_opaque_u32(best) & (XLB_CT_WAYS - 1));
	w = &set->way[v];
	w->e.check = 0;
	asm volatile("" ::: "memory");
	tags->tag[v] = xlb_ct_tag(hash);
	w->key = *key;
	w->e.backend_id = backend_id;
	w->e.backend_gen = gen;
	w->e.svc_id = svc_id;
	w->e.stamp = now & ~XLB_CT_HIT;
	w->e.created_s = now_ns / XLB_NSEC_PER_SEC;
	asm volatile("" ::: "memory");
	w->e.check = xlb_ct_check(hash, svc_id, backend_id, gen);
}

static __always_inline struct xlb_backend *
xlb_affinity_lookup(const struct xlb_service *svc, const struct xlb_affinity_key *ak, __u64 now,
		    struct xlb_affinity_entry **aep, __u32 *backend_id)
{
	struct xlb_affinity_entry *ae = bpf_map_lookup_elem(&xlb_affinity, ak);
	struct xlb_backend *be;

	*aep = ae;
	if (!ae || now - ae->last_ns >= (__u64)svc->affinity_timeout_s * XLB_NSEC_PER_SEC)
		return NULL;
	be = xlb_backend_get(ae->backend_id);
	if (!be || !xlb_backend_new_ok(be) || be->gen != ae->backend_gen)
		return NULL;
	*backend_id = ae->backend_id;
	return be;
}

static __always_inline void xlb_affinity_touch(const struct xlb_affinity_key *ak,
					       struct xlb_affinity_entry *ae, __u32 backend_id,
					       __u32 gen, __u64 now)
{
	struct xlb_affinity_entry n = {
	    .backend_id = backend_id,
	    .backend_gen = gen,
	    .last_ns = now,
	};

	if (ae && ae->backend_id == backend_id && ae->backend_gen == gen) {
		ae->last_ns = now;
		return;
	}
	bpf_map_update_elem(&xlb_affinity, ak, &n, BPF_ANY);
}

#endif /* XLB_CONNTRACK_H */
