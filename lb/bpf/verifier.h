/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * verifier.h: tools that keep the verifier's work down (its processed
 * instructions: load time, and the margin under its 1M limit that
 * lb/tests/verifier_margin.rs holds). Context-free, no maps.
 *
 * Why states multiply. The verifier walks every path and prunes one only
 * when it reaches an instruction in a state no wider than one already
 * proven safe there. A scalar that later indexes memory (pointer
 * arithmetic, a bounded array index) is "precise": the verifier walks back
 * through everything it was computed from and marks those precise too, and
 * precise scalars must match for a prune. A value computed through
 * branches (a victim way chosen from 4 scores, each a branch of 5 cases)
 * then keeps every combination of the branches apart: up to 5^4 copies of
 * all the code after it.
 *
 * Other multipliers met so far: a pointer that may point into one of two
 * maps (or be NULL) carried down a long path (flowcache.h, xlb_xdp.c's
 * flow cache slot), a loop walked once per caller path (masq.h's
 * xlb_snat_alloc, now a global function), and `x & -(bit)`, at whose AND
 * the verifier (6.18) splits the state in two (crc32c.h).
 *
 * Finding them: load the program with log level 2 (every instruction
 * walked, with the verifier's state at each branch) and count the lines
 * "N: (" per instruction index N, grouped by the "; <source> @ file:line"
 * annotation before them: a line walked hundreds of times is behind a
 * multiplier; "from A to B: R..." lines for one B, compared register by
 * register, show what keeps the states at B apart. The level 4 stats
 * (total_states, peak_states) go with verified_insns.
 *
 * API
 *   __u32 xlb_opaque_u32(x)   x, with its history hidden from the
 *       verifier: an unknown 32-bit scalar to it, so precision stops here
 *       and the paths that computed x merge at the next prune point. One
 *       store and one load (store-forwarded, ~1 ns). Bound the result
 *       (mask it) before using it as an index.
 */
#ifndef XLB_VERIFIER_H
#define XLB_VERIFIER_H

#include <linux/types.h>

/* The verifier tracks a register spilled to the stack only in an 8-byte
 * aligned slot (check_stack_write_fixed_off, Linux 6.18; a narrower fill of
 * a spilled constant keeps the constant, so that does not hide it): a
 * 4-byte store at offset 4 of an aligned u64 marks its bytes STACK_MISC,
 * and a load from those reads as an unknown scalar. Written in asm so that
 * clang neither drops the round trip nor moves the slot to an aligned
 * offset. */
static __always_inline __u32 xlb_opaque_u32(__u32 x)
{
	__u64 box;

	asm volatile("*(u32 *)(%[p] + 4) = %[x]\n\t"
		     "%[x] = *(u32 *)(%[p] + 4)"
		     : [x] "+r"(x)
		     : [p] "r"(&box)
		     : "memory");
	return x;
}

#endif /* XLB_VERIFIER_H */
