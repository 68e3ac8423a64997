/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * crc32c.h: the incremental update of SCTP's checksum (CRC32c, RFC 9260
 * appendix A) for a rewrite of its ports. Context-free, like csum.h.
 *
 * SCTP's CRC covers the SCTP packet only (no pseudo-header): an address
 * translation needs no work on it, a port translation does. Recomputing it
 * would read the whole packet; instead the change is folded in. A CRC with
 * its init and final XOR is affine in the message, so for two messages of
 * one length crc(M') = crc(M) ^ lin(M ^ M'), lin being the plain (linear)
 * CRC with init 0 and no final XOR. M ^ M' is zero except in the 4 port
 * bytes at the start, so lin of it is lin of those 4 bytes followed by n - 4
 * zero bytes: the register after the 4 bytes, multiplied by x^(8(n-4)) mod
 * P. The power comes from a table of x^(8 * 2^j) mod P (square and
 * multiply), the products from a 32-step carry-less multiplication: 17
 * multiplications for any packet length, no loop over the packet. The
 * representation is the reflected one of zlib's crc32_combine (bit 31 is
 * x^0); the constants were checked against a bitwise CRC32c in
 * lb/tests/xdp_sctp.rs, which also proves the result on real frames.
 *
 * The CRC sits in the packet little-endian (Linux: cpu_to_le32), so read as
 * a native __u32 on the little-endian BPF target it is the CRC value.
 *
 * API
 *   __u32 xlb_crc32c_port_delta(old_ports, new_ports, len)
 *       the value to XOR into the CRC field (read as a __u32) when the 4
 *       port bytes at the start of an SCTP packet of `len` bytes (common
 *       header included, len >= 12) change from old_ports to new_ports
 *       (each the 4 bytes read as a __u32).
 */
#ifndef XLB_CRC32C_H
#define XLB_CRC32C_H

#include <linux/types.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "crc32c.h reads the CRC field as a little-endian word"
#endif

#define XLB_CRC32C_POLY 0x82f63b78u /* Castagnoli, reflected */
#define XLB_CRC32C_ONE	0x80000000u /* the polynomial 1, reflected */

/* x^(8 * 2^j) mod P for j = 0..15: a length in bytes below 2^16. */
static const __u32 xlb_crc32c_x8n[16] = {
    0x00800000, 0x00008000, 0x82f63b78, 0x6ea2d55c, 0x18b8ea18, 0x510ac59a, 0xb82be955, 0xb8fdb1e7,
    0x88e56f72, 0x74c360a4, 0xe4172b16, 0x0d65762a, 0x35d73a62, 0x28461564, 0xbf455269, 0xe2ea32dc,
};

/* One register step: a shift by one bit, reduced modulo P. */
static __always_inline __u32 xlb_crc32c_step(__u32 s)
{
	return (s >> 1) ^ (XLB_CRC32C_POLY * (s & 1));
}

/* a * b mod P (reflected).
 *
 * Verifier workaround (kernel 6.18): every step here is branch-free, a
 * product by a bit instead of an if. With a branch per bit of the length or
 * of a factor, the verifier follows each combination with exact values (the
 * table is read-only: it knows every entry) and gives up after a million
 * instructions ("BPF program is too large"); without, it walks the loops
 * once: 16 x 32 steps. Not a mask -(bit) either: the verifier splits the
 * state at the AND with it (0 or all ones), and the steps were walked 2,492
 * times instead of 512 (61k verified insns of xlb_xdp's 481k; with the
 * product 13k). */
static __always_inline __u32 xlb_crc32c_mul(__u32 a, __u32 b)
{
	__u32 p = 0;

	for (int i = 0; i < 32; i++) {
		p ^= b * ((a >> (31 - i)) & 1);
		b = xlb_crc32c_step(b);
	}
	return p;
}

/* A global function (not static, not inlined): the verifier checks it
 * once, on its own, with unknown scalar arguments, instead of once per
 * path of the program that reaches a call (hundreds in XDP); and one copy
 * serves every caller, next to nothing on the stack (XDP's is nearly
 * full). Each object that includes this header has its own. */
__noinline __u32 xlb_crc32c_port_delta(__u32 old_ports, __u32 new_ports, __u32 len)
{
	__u32 s = old_ports ^ new_ports, k = (len - 4) & 0xffff, x = XLB_CRC32C_ONE;

	/* The 4 changed bytes through the register from 0 (least significant
	 * byte first: the packet's order, the word read little-endian). */
	for (int i = 0; i < 32; i++) {
		s = xlb_crc32c_step(s);
	}
	/* Then k zero bytes: multiply by x^(8k). Not unrolled: 16 inlined
	 * multiplications would cost ~3000 instructions of program. */
#pragma clang loop unroll(disable)
	for (int j = 0; j < 16; j++) {
		/* the factor for bit j: its power of x, or 1 (branch-free) */
		__u32 f = XLB_CRC32C_ONE ^ ((xlb_crc32c_x8n[j] ^ XLB_CRC32C_ONE) * ((k >> j) & 1));

		x = xlb_crc32c_mul(f, x);
	}
	return xlb_crc32c_mul(x, s);
}

#endif /* XLB_CRC32C_H */
