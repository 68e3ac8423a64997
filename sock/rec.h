/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * rec.h: what a socket's translation record (struct xlb_sock_rec,
 * xlb_abi.h) says about its backend, shared by the reverse translation
 * (revnat.h: a datagram from this backend?) and the socket iterators
 * (xlb_sock_iter.c: was this socket translated to a removed backend?).
 *
 * API
 *   int xlb_sock_rec_of(r, addr, port, family, proto)
 *       record r is in use and names the backend addr/port (16-byte ABI
 *       address, network-order port) of that family and protocol.
 */
#ifndef XLB_SOCK_REC_H
#define XLB_SOCK_REC_H

#include <linux/bpf.h>
#include "xlb_abi.h"
#include "addr.h"

static __always_inline int xlb_sock_rec_of(const struct xlb_sock_rec *r, const __u8 *addr,
					   __be16 port, __u8 family, __u8 proto)
{
	return r->backend_id && r->bport == port && r->family == family && r->proto == proto &&
	       xlb_addr_eq(r->baddr, addr);
}

#endif /* XLB_SOCK_REC_H */
