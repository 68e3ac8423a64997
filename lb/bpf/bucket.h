/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * bucket.h: a token bucket kept as nanoseconds of credit, one per CPU in the
 * callers' per-CPU map values (no atomics). Used by XDP's reply limit
 * (xdp/reply.h) and the connection table's insert budget (maglev.h).
 *
 * API
 *   int xlb_bucket_take(&credit_ns, &last_ns, now, rate, burst)
 *       1 and one token taken if the bucket holds one, else 0. `rate`
 *       tokens per second (0: never), at most `burst` (>= 1) held.
 */
#ifndef XLB_BUCKET_H
#define XLB_BUCKET_H

#include <linux/types.h>

#define XLB_BUCKET_NSEC_PER_SEC 1000000000ull

static __always_inline int xlb_bucket_take(__u64 *credit_ns, __u64 *last_ns, __u64 now, __u32 rate,
					   __u32 burst)
{
	__u64 cost, cap, credit;

	if (!rate)
		return 0;
	cost = XLB_BUCKET_NSEC_PER_SEC / rate;
	cap = cost * (burst ? burst : 1);
	credit = *credit_ns + (now - *last_ns);
	if (credit > cap || now < *last_ns)
		credit = cap;
	*last_ns = now;
	if (credit < cost) {
		*credit_ns = credit;
		return 0;
	}
	*credit_ns = credit - cost;
	return 1;
}

#endif /* XLB_BUCKET_H */
