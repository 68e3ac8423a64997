/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * csum.h: Internet checksum helpers for rewriting packets in place (RFC 1624
 * incremental update, HC' = ~(~HC + ~m + m')) and for computing the checksum
 * of a header we build (outer IPv4). Context-free: they work on values and on
 * plain pointers, from XDP and tc alike.
 *
 * One's-complement sums do not depend on byte order as long as every word is
 * read the same way, so all values are taken as they sit in the packet
 * (network order, loaded natively) and no byte swapping happens.
 *
 * API
 *   __u64 diff = 0;                       accumulate a change set:
 *   diff = xlb_csum_diff2(diff, old16, new16);
 *   diff = xlb_csum_diff4(diff, old32, new32);
 *   diff = xlb_csum_diff16(diff, old_addr, new_addr);   (16-byte addresses)
 *   __sum16 xlb_csum_apply(check, diff)      new checksum field value
 *   __sum16 xlb_csum_apply_udp(check, diff)  same, for UDP: a 0 field (no
 *                                            checksum, IPv4) stays 0 and a
 *                                            computed 0 is sent as 0xffff
 *   __u16 xlb_csum_fold(sum64)               fold to 16 bits (not inverted)
 *   __sum16 xlb_ipv4_csum(const struct iphdr *ip)   checksum of a 20-byte
 *                                            header (no options) whose check
 *                                            field is 0
 * A diff is simply a 64-bit sum of 16/32-bit words; up to 2^32 words can be
 * accumulated before it could overflow.
 */
#ifndef XLB_CSUM_H
#define XLB_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>

static __always_inline __u16 xlb_csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u64 xlb_csum_diff2(__u64 diff, __u16 from, __u16 to)
{
	return diff + (__u16)~from + to;
}

static __always_inline __u64 xlb_csum_diff4(__u64 diff, __u32 from, __u32 to)
{
	return diff + (__u32)~from + to;
}

static __always_inline __u64 xlb_csum_diff16(__u64 diff, const void *from, const void *to)
{
	const __u32 *f = from, *t = to;

	diff = xlb_csum_diff4(diff, f[0], t[0]);
	diff = xlb_csum_diff4(diff, f[1], t[1]);
	diff = xlb_csum_diff4(diff, f[2], t[2]);
	return xlb_csum_diff4(diff, f[3], t[3]);
}

static __always_inline __sum16 xlb_csum_apply(__sum16 check, __u64 diff)
{
	return (__sum16)~xlb_csum_fold((__u16)~check + diff);
}

static __always_inline __sum16 xlb_csum_apply_udp(__sum16 check, __u64 diff)
{
	__sum16 res;

	if (!check)
		return 0;
	res = xlb_csum_apply(check, diff);
	return res ? res : (__sum16)0xffff;
}

static __always_inline __sum16 xlb_ipv4_csum(const struct iphdr *ip)
{
	const __u32 *w = (const __u32 *)ip;
	__u64 sum = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];

	return (__sum16)~xlb_csum_fold(sum);
}

#endif /* XLB_CSUM_H */
