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
 *   It is Maglev's input (slot = hash % M) and the outer-header entropy
 *   (Geneve UDP source port, IPv6 flow label). It is computed for new flows
 *   only; established flows read it back from their xlb_ct entry.
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
 *   struct xlb_backend *xlb_backend_get(__u32 id)
 *   struct xlb_backend *xlb_ct_lookup(key, svc_id, &backend_id, &hash)
 *       the backend of a valid xlb_ct entry for `key` owned by svc_id, or NULL
 *   void xlb_ct_insert(key, svc_id, backend_id, gen, hash, now)
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

#define XLB_NSEC_PER_SEC 1000000000ull

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

static __always_inline struct xlb_backend *
xlb_ct_lookup(const struct xlb_flow_key *key, __u32 svc_id, __u32 *backend_id, __u32 *hash)
{
	struct xlb_ct_entry *ct = bpf_map_lookup_elem(&xlb_ct, key);
	struct xlb_backend *be;

	/* svc_id: a frontend handed to another service re-selects. */
	if (!ct || ct->svc_id != svc_id)
		return NULL;
	be = xlb_backend_get(ct->backend_id);
	if (!be || !xlb_backend_flow_ok(be, ct->backend_gen))
		return NULL;
	*backend_id = ct->backend_id;
	*hash = ct->hash;
	return be;
}

static __always_inline void xlb_ct_insert(const struct xlb_flow_key *key, __u32 svc_id,
					  __u32 backend_id, __u32 gen, __u32 hash, __u64 now)
{
	struct xlb_ct_entry ct = {
	    .backend_id = backend_id,
	    .backend_gen = gen,
	    .svc_id = svc_id,
	    .hash = hash,
	    .created_ns = now,
	};

	/* A failed insert (LRU contention) only costs a Maglev lookup on the
	 * next packet, which picks the same backend: nothing to report. */
	bpf_map_update_elem(&xlb_ct, key, &ct, BPF_ANY);
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
