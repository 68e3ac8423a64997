/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * addr.h: the 16-byte addresses of the ABI (xlb_abi.h: IPv4 in the first 4
 * bytes, the rest zero) copied, compared and tested. Needs no packet: shared
 * by the packet programs (through parse.h) and the socket programs (sock/).
 *
 * Addresses in ABI structs are u8[16]; their containers (xlb_pkt, map
 * values, keys on the stack) are at least 4-byte aligned, so moving them as
 * words is safe and saves the byte-by-byte code clang emits for a u8[16]
 * memcpy.
 *
 * API
 *   xlb_addr_copy(dst, src), xlb_addr_eq(a, b), xlb_addr_zero(a)
 */
#ifndef XLB_ADDR_H
#define XLB_ADDR_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

static __always_inline void xlb_addr_copy(void *dst, const void *src)
{
	((__u32 *)dst)[0] = ((const __u32 *)src)[0];
	((__u32 *)dst)[1] = ((const __u32 *)src)[1];
	((__u32 *)dst)[2] = ((const __u32 *)src)[2];
	((__u32 *)dst)[3] = ((const __u32 *)src)[3];
}

static __always_inline int xlb_addr_eq(const void *a, const void *b)
{
	const __u32 *x = a, *y = b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

static __always_inline int xlb_addr_zero(const void *a)
{
	const __u32 *x = a;

	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

#endif /* XLB_ADDR_H */
