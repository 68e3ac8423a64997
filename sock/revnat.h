/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * revnat.h: the reverse translation at the socket. recvmsg() of a UDP
 * socket and getpeername() of any socket report the peer the kernel knows,
 * the backend; a socket translated by xlate.h shows the service address its
 * application used instead, read from the socket's own storage
 * (xlb_sock_state): a datagram from a backend this socket was given, for
 * the same protocol and family, gets that record's service address and
 * port (xlb_sock_cookie first, looked up only when the socket's mark says
 * it may hold a record (mark.h), then the socket's storage). The records
 * leave with their socket (socket storage is freed with it; sock_release
 * deletes the cookie's entry, and a cookie is never reused), so a reused
 * backend address can never be shown as a service to a socket that did
 * not talk to it.
 *
 * API
 *   int xlb_sock_rev(ctx, &addr, &port, family, proto, &svc_id)
 *       0: addr/port (16-byte ABI address, network-order port) rewritten to
 *       the service address; or -XLB_PASS_SOCK_NO_REVNAT / _HOST_ONLY.
 */
#ifndef XLB_SOCK_REVNAT_H
#define XLB_SOCK_REVNAT_H

#include "xlate.h"
#include "rec.h"

static __always_inline void xlb_sock_rev_put(const struct xlb_sock_rec *r, __u8 *addr, __be16 *port,
					     __u32 *svc_id)
{
	xlb_addr_copy(addr, r->vaddr);
	*port = r->vport;
	*svc_id = r->svc_id;
}

static __always_inline int xlb_sock_rev(struct bpf_sock_addr *ctx, __u8 *addr, __be16 *port,
					__u8 family, __u8 proto, __u32 *svc_id)
{
	struct xlb_sock_state *st;
	struct xlb_sock_rec *r;
	__u64 cookie;

	if (xlb_sock_skip(ctx))
		return -XLB_PASS_SOCK_HOST_ONLY;
	if (xlb_sock_cookie_on) {
		cookie = bpf_get_socket_cookie(ctx);
		r = xlb_sock_marked(cookie) ? bpf_map_lookup_elem(&xlb_sock_cookie, &cookie) : NULL;
		if (r && xlb_sock_rec_of(r, addr, *port, family, proto)) {
			xlb_sock_rev_put(r, addr, port, svc_id);
			return 0;
		}
	}
	st = bpf_sk_storage_get(&xlb_sock_state, ctx->sk, 0, 0);
	if (!st)
		return -XLB_PASS_SOCK_NO_REVNAT;
#pragma unroll
	for (int i = 0; i < XLB_SOCK_RECS; i++) {
		if (xlb_sock_rec_of(&st->rec[i], addr, *port, family, proto)) {
			xlb_sock_rev_put(&st->rec[i], addr, port, svc_id);
			return 0;
		}
	}
	return -XLB_PASS_SOCK_NO_REVNAT;
}

#endif /* XLB_SOCK_REVNAT_H */
