/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlate.h: the forward translation of a socket's destination, at connect()
 * (TCP, connected UDP) and at sendmsg() of unconnected UDP. The destination
 * the application gave (struct xlb_frontend_key: address, port, protocol,
 * family; an IPv4-mapped IPv6 address is looked up as IPv4) is looked up in
 * xlb_sock_frontends; a service address becomes one of its backends:
 *
 *   1. the backend this socket was given before for the same service
 *      address (its xlb_sock_state record), while it is valid: a connect()
 *      (a new connection) wants it able to take new flows, a datagram of an
 *      unconnected socket keeps it while it lives (terminating included);
 *   2. sessionAffinity: ClientIP: the backend remembered for this network
 *      namespace (xlb_sock_affinity), within the timeout;
 *   3. Maglev: the service's table at a hash of the socket cookie, through
 *      xlb_maglev_pick (maglev.h), so a change of the table layout stays
 *      behind that function.
 *
 * The record (service address, backend address, ids) is kept before the
 * destination is rewritten: the socket's first in xlb_sock_cookie (keyed
 * by its cookie, preallocated: no allocation; deleted at release by
 * cgroup/sock_release; its counter in xlb_sock_mark, mark.h, raised first),
 * a further one, or any while that map is full, in the socket's storage
 * (xlb_sock_state). A socket whose mark is zero has no xlb_sock_cookie
 * record: a new socket's connect() skips that lookup. recvmsg() and
 * getpeername() read the record back (revnat.h). No usable backend: the
 * call fails at once with ECONNREFUSED (bpf_set_retval), like kube-proxy's
 * REJECT.
 *
 * API
 *   int xlb_sock_fwd(ctx, &fk, connect, &out)
 *       0: fk holds the backend's address and port now (out says which);
 *       or a negative reason: -XLB_PASS_* (not a service address: leave the
 *       call alone) or -XLB_DROP_* (refuse it).
 *   int xlb_sock_errno(reason)   the errno a refusal returns
 */
#ifndef XLB_SOCK_XLATE_H
#define XLB_SOCK_XLATE_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "conntrack.h"
#include "maglev.h"
#include "mark.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EAFNOSUPPORT
#define EAFNOSUPPORT 97
#endif

/* Set by the loader (.rodata): in host-only mode (`xlb run
 * --socket-lb-host-only`) the cookie of the node's network namespace, and
 * sockets of other namespaces (pods: their sidecar proxies must see the
 * ClusterIP) are left to the per-packet path; 0: every socket is translated. */
volatile const __u64 xlb_sock_host_netns = 0;

/* Set by the loader (.rodata, LoadOptions::sock_cookie_records): 1 (the
 * default): a socket's first record in xlb_sock_cookie (the loader then
 * attaches sock_release, which deletes it); 0: every record in socket
 * storage (`xlb run --socket-lb-records=storage`). */
volatile const __u32 xlb_sock_cookie_on = 0;

/* What one translation chose. */
struct xlb_sock_out {
	__u32 svc_id;
	__u32 backend_id;
	__u32 new_flow;	    /* chosen now (not the socket's earlier backend) */
	__u32 affinity_hit; /* from ClientIP affinity */
};

static __always_inline int xlb_sock_errno(__u32 reason)
{
	switch (reason) {
	case XLB_DROP_SOCK_STATE:
		return -ENOMEM;
	case XLB_DROP_SOCK_FAMILY:
		return -EAFNOSUPPORT;
	default:
		return -ECONNREFUSED;
	}
}

/* Host-only mode: whether this socket's namespace is left alone. */
static __always_inline int xlb_sock_skip(void *ctx)
{
	return xlb_sock_host_netns && bpf_get_netns_cookie(ctx) != xlb_sock_host_netns;
}

/* The per-connection hash: the socket cookie (unique per socket, never
 * reused while the host runs) through lookup3's final mix, seeded like the
 * flow hash (conntrack.h). */
static __always_inline __u32 xlb_sock_hash(__u64 cookie)
{
	__u32 a = 0xdeadbeef + (__u32)cookie, b = 0xdeadbeef + (__u32)(cookie >> 32),
	      c = 0xdeadbeef + XLB_HASH_SEED;

	return xlb_final_mix(a, b, c);
}

/* The service fk names, if any. NodePorts answer on every loopback address:
 * 127.0.0.0/8 is looked up as 127.0.0.1 (the entry the agent writes). */
static __always_inline struct xlb_service *xlb_sock_frontend(struct xlb_frontend_key *fk)
{
	struct xlb_service *svc = bpf_map_lookup_elem(&xlb_sock_frontends, fk);
	__u32 a;

	if (svc || fk->family != XLB_FAMILY_V4)
		return svc;
	a = *(__u32 *)fk->addr;
	if ((a & bpf_htonl(0xff000000)) != bpf_htonl(0x7f000000) || a == bpf_htonl(0x7f000001))
		return NULL;
	*(__u32 *)fk->addr = bpf_htonl(0x7f000001);
	svc = bpf_map_lookup_elem(&xlb_sock_frontends, fk);
	*(__u32 *)fk->addr = a;
	return svc;
}

/* Whether record r is the socket's record of the service address fk. */
static __always_inline int xlb_sock_rec_is(const struct xlb_sock_rec *r, __u32 svc_id,
					   const struct xlb_frontend_key *fk)
{
	return r->svc_id == svc_id && r->backend_id && r->vport == fk->port &&
	       r->family == fk->family && r->proto == fk->proto && xlb_addr_eq(r->vaddr, fk->addr);
}

/* The socket's record of the service address fk in its storage, or NULL. */
static __always_inline struct xlb_sock_rec *
xlb_sock_rec_find(struct xlb_sock_state *st, __u32 svc_id, const struct xlb_frontend_key *fk)
{
#pragma unroll
	for (int i = 0; i < XLB_SOCK_RECS; i++) {
		if (xlb_sock_rec_is(&st->rec[i], svc_id, fk))
			return &st->rec[i];
	}
	return NULL;
}

/* The socket's earlier backend for this service address, if still usable. */
static __always_inline struct xlb_backend *xlb_sock_rec_backend(const struct xlb_sock_rec *r,
								int connect)
{
	struct xlb_backend *be = xlb_backend_get(r->backend_id);

	if (!be || !xlb_backend_flow_ok(be, r->backend_gen))
		return NULL;
	if (connect && !xlb_backend_new_ok(be))
		return NULL;
	return be;
}

static __always_inline struct xlb_backend *xlb_sock_affinity_get(const struct xlb_service *svc,
								 const struct xlb_sock_aff_key *ak,
								 __u64 now, __u32 *backend_id)
{
	struct xlb_affinity_entry *ae = bpf_map_lookup_elem(&xlb_sock_affinity, ak);
	struct xlb_backend *be;

	if (!ae || now - ae->last_ns >= (__u64)svc->affinity_timeout_s * XLB_NSEC_PER_SEC)
		return NULL;
	be = xlb_backend_get(ae->backend_id);
	if (!be || !xlb_backend_new_ok(be) || be->gen != ae->backend_gen)
		return NULL;
	*backend_id = ae->backend_id;
	return be;
}

/* Fills record r: service address fk given backend be. */
static __always_inline void xlb_sock_rec_fill(struct xlb_sock_rec *r,
					      const struct xlb_frontend_key *fk, __u32 svc_id,
					      const struct xlb_backend *be, __u32 backend_id)
{
	xlb_addr_copy(r->vaddr, fk->addr);
	xlb_addr_copy(r->baddr, be->addr);
	r->vport = fk->port;
	r->bport = be->port;
	r->family = fk->family;
	r->proto = fk->proto;
	r->pad = 0;
	r->svc_id = svc_id;
	r->backend_id = backend_id;
	r->backend_gen = be->gen;
}

/* Keeps the record of a new translation: the socket's first goes to
 * xlb_sock_cookie (no allocation); a further one, or any while that map is
 * full (counted), to the socket's storage (created here). r: the record
 * found earlier to overwrite in place, or NULL. skip_map: not in
 * xlb_sock_cookie (the socket has an entry there for another service
 * address, or the map is not used). */
static __always_inline int xlb_sock_rec_keep(struct bpf_sock_addr *ctx, __u64 cookie,
					     struct xlb_sock_rec *r, int skip_map,
					     const struct xlb_frontend_key *fk, __u32 svc_id,
					     const struct xlb_backend *be, __u32 backend_id)
{
	struct xlb_sock_state *st;
	struct xlb_sock_rec nr;
	__u32 idx, *m;

	if (r) {
		xlb_sock_rec_fill(r, fk, svc_id, be, backend_id);
		return 0;
	}
	/* No counter (a loader bug): no record in the map either, so that a
	 * zero counter keeps proving there is none. */
	m = skip_map ? NULL : xlb_sock_mark_of(cookie);
	if (m) {
		xlb_sock_rec_fill(&nr, fk, svc_id, be, backend_id);
		/* The mark before the record: whoever finds the record finds
		 * the mark up (mark.h's invariant). */
		xlb_sock_mark_up(m);
		if (!bpf_map_update_elem(&xlb_sock_cookie, &cookie, &nr, BPF_NOEXIST))
			return 0;
		xlb_sock_mark_down(m);
		/* Full (or, racing, another thread's record won: storage
		 * serves as well). */
		xlb_count(XLB_HOOK_SOCK, XLB_OK_SOCK_STATE_SPILL, 0);
	}
	st = bpf_sk_storage_get(&xlb_sock_state, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return -XLB_DROP_SOCK_STATE;
	r = xlb_sock_rec_find(st, svc_id, fk);
	if (!r) {
		idx = st->next & (XLB_SOCK_RECS - 1);
		st->next = idx + 1;
		r = &st->rec[idx];
	}
	xlb_sock_rec_fill(r, fk, svc_id, be, backend_id);
	return 0;
}

static __always_inline int xlb_sock_fwd(struct bpf_sock_addr *ctx, struct xlb_frontend_key *fk,
					int connect, struct xlb_sock_out *out)
{
	struct xlb_sock_aff_key ak = {};
	struct xlb_affinity_entry ae = {};
	struct xlb_sock_state *st;
	struct xlb_sock_rec *r = NULL, *cr = NULL;
	struct xlb_service *svc;
	struct xlb_backend *be = NULL;
	__u32 backend_id = 0;
	__u64 now = 0, cookie;
	int rc;

	if (fk->proto != IPPROTO_TCP && fk->proto != IPPROTO_UDP)
		return -XLB_PASS_SOCK_PROTO;
	if (xlb_sock_skip(ctx))
		return -XLB_PASS_SOCK_HOST_ONLY;
	svc = xlb_sock_frontend(fk);
	if (!svc)
		return -XLB_PASS_NOT_FRONTEND;
	out->svc_id = svc->id;
	out->new_flow = 0;
	out->affinity_hit = 0;
	cookie = bpf_get_socket_cookie(ctx);
	if (xlb_sock_cookie_on && xlb_sock_marked(cookie))
		cr = bpf_map_lookup_elem(&xlb_sock_cookie, &cookie);
	if (cr && xlb_sock_rec_is(cr, svc->id, fk)) {
		r = cr;
	} else {
		st = bpf_sk_storage_get(&xlb_sock_state, ctx->sk, 0, 0);
		if (st)
			r = xlb_sock_rec_find(st, svc->id, fk);
	}
	if (r) {
		be = xlb_sock_rec_backend(r, connect);
		backend_id = r->backend_id;
	}
	if (!be) {
		if (!svc->backend_count)
			return -XLB_DROP_NO_BACKEND;
		/* The clock only for ClientIP affinity (its timeout): a connect
		 * without affinity reads nothing it does not use. */
		if (svc->flags & XLB_SVC_F_AFFINITY) {
			now = bpf_ktime_get_ns();
			ak.netns_cookie = bpf_get_netns_cookie(ctx);
			ak.svc_id = svc->id;
			be = xlb_sock_affinity_get(svc, &ak, now, &backend_id);
			out->affinity_hit = be != NULL;
		}
		if (!be) {
			rc = xlb_maglev_pick(svc, xlb_sock_hash(cookie), &be, &backend_id);
			if (rc)
				return rc;
		}
		if (be->family != fk->family)
			return -XLB_DROP_SOCK_FAMILY;
		if (svc->flags & XLB_SVC_F_AFFINITY) {
			ae.backend_id = backend_id;
			ae.backend_gen = be->gen;
			ae.last_ns = now;
			bpf_map_update_elem(&xlb_sock_affinity, &ak, &ae, BPF_ANY);
		}
		rc = xlb_sock_rec_keep(ctx, cookie, r, cr || !xlb_sock_cookie_on, fk, svc->id, be,
				       backend_id);
		if (rc)
			return rc;
		out->new_flow = 1;
	}
	if (be->family != fk->family)
		return -XLB_DROP_SOCK_FAMILY;
	out->backend_id = backend_id;
	xlb_addr_copy(fk->addr, be->addr);
	fk->port = be->port;
	return 0;
}

#endif /* XLB_SOCK_XLATE_H */
