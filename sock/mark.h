/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * mark.h: whether a socket may hold an xlb_sock_cookie record, answered
 * without the hash lookup. The hooks sit at the node's cgroup root, so
 * every socket there runs sock_release, and getpeername()/recvmsg() (and
 * the connect() of a new socket) of every socket would look its cookie up
 * in xlb_sock_cookie, though almost none was translated. The mark lets
 * them skip it.
 *
 * xlb_sock_mark: ARRAY of __u32 counters, indexed by the low bits of the
 * socket cookie (cookie & xlb_sock_mark_mask; the loader sizes the array
 * to MapSizes.sock_states rounded up to a power of two and sets the mask).
 * The invariant: a counter is never below the number of xlb_sock_cookie
 * records whose cookie has its index.
 *   - connect()/sendmsg() add 1 BEFORE inserting a record, and take it
 *     back if the insert fails (xlate.h);
 *   - sock_release takes 1 only for a record it deleted itself;
 *   - nothing else writes the counters. Records the agent's start-up sweep
 *     deletes (sockets released while no sock_release was attached) leave
 *     their counters up: a counter may be too high, never too low.
 * So a zero counter proves the socket has no record (a translated socket
 * is never skipped: no stale record, no missed reverse translation); a
 * non-zero one only says "look": another socket's record at the same index
 * (a false positive) costs the lookup the mark saves otherwise. With R
 * records live, at most R of the counters are non-zero.
 *
 * Why this mark. Measured (BPF_ENABLE_STATS run time per call of a
 * sock_release program over socket()+close(), kernel 6.18, the shared
 * 2-CPU machine, 200k sockets, two runs):
 *   empty program                                          44-48 ns
 *   bpf_get_socket_cookie                                  65-70
 *   cookie + xlb_sock_cookie lookup (65,536, preallocated) 195-223
 *   cookie + counter array at a HASH of the cookie, 1 MiB  207-224
 *   the same, 64 KiB                                       92-122
 *   cookie + counter array at the cookie's LOW BITS, 1 MiB 80-90
 *   the same, 64 KiB                                       73-79
 *   bpf_sk_storage_get of a socket without storage         51
 * The lookups cost their cache misses: a hash spreads consecutive sockets
 * over the whole bucket (or counter) array. Cookies are handed out
 * counting up (per-CPU batches of 4096), so at the low bits consecutive
 * sockets use consecutive counters, 16 to a cache line, and the line is
 * hot: the array's size barely matters, and a large one keeps false
 * positives rare. Socket storage's presence is cheaper to test, but
 * creating it at connect is the ~550 ns cookie records avoid; a bit of
 * sk->mark or sk->priority (bpf_setsockopt) belongs to the application,
 * routing and qdiscs.
 *
 * API
 *   __u32 *xlb_sock_mark_of(cookie)   the socket's counter (NULL: none,
 *                                     which the callers treat as marked)
 *   int xlb_sock_marked(cookie)       0: the socket holds no record
 *   xlb_sock_mark_up(m) / _down(m)    atomic +1 / -1
 */
#ifndef XLB_SOCK_MARK_H
#define XLB_SOCK_MARK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* Set by the loader (.rodata): xlb_sock_mark's size minus one (a power of
 * two minus one). */
volatile const __u32 xlb_sock_mark_mask = 0;

static __always_inline __u32 *xlb_sock_mark_of(__u64 cookie)
{
	__u32 idx = (__u32)cookie & xlb_sock_mark_mask;

	return bpf_map_lookup_elem(&xlb_sock_mark, &idx);
}

static __always_inline int xlb_sock_marked(__u64 cookie)
{
	__u32 *m = xlb_sock_mark_of(cookie);

	return !m || *(volatile __u32 *)m;
}

/* Raised before a record is inserted (xlate.h). */
static __always_inline void xlb_sock_mark_up(__u32 *m)
{
	__sync_fetch_and_add(m, 1);
}

/* Lowered for a record that was not inserted, or that was deleted by this
 * call. Adding -1: clang 14's BPF target (Debian 12) has no fetch-and-sub
 * below -mcpu=v3 ("Cannot select: AtomicLoadSub"); an atomic add it has. */
static __always_inline void xlb_sock_mark_down(__u32 *m)
{
	__sync_fetch_and_add(m, (__u32)-1);
}

#endif /* XLB_SOCK_MARK_H */
