/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * ctx.h: the context layer. Every shared header takes a `struct xlb_ctx *`
 * and reaches the packet only through the functions here, so one parser,
 * one NAT writer and one encapsulation serve XDP and tc alike. A program
 * defines which context it runs in before its first include:
 *
 *   #define XLB_CTX_XDP   struct xlb_ctx is struct xdp_md
 *   #define XLB_CTX_SKB   struct xlb_ctx is struct __sk_buff (tc)
 *
 * API
 *   xlb_ctx_data(ctx), xlb_ctx_data_end(ctx)
 *       the directly accessible bytes: the whole frame in XDP, the linear
 *       head of the skb in tc (headers may need xlb_ctx_pull first).
 *   __u32 xlb_ctx_len(ctx)
 *       the packet's length: what IP length fields are checked against (tc:
 *       skb->len, paged payload included; XDP: the frame).
 *   void xlb_ctx_pull(ctx, want)
 *       makes the first min(want, len) bytes directly accessible (tc); a
 *       no-op in XDP. Packet pointers must be reloaded afterwards.
 *   int xlb_ctx_store(ctx, off, from, len)     len: 2, 4 or 16 (a constant)
 *   int xlb_ctx_load(ctx, off, to, len)        len: 2, 4 or 16 (a constant)
 *   int xlb_ctx_l3_csum(ctx, off, diff)
 *       adds a one's-complement change (csum.h diff) to the IPv4 header
 *       checksum at off.
 *   int xlb_ctx_l4_csum(ctx, off, pseudo, plain, flags)
 *       updates the TCP/UDP/ICMPv6 checksum at off for a change of the
 *       pseudo-header (`pseudo`: addresses) and of bytes inside the L4
 *       header (`plain`: ports, quoted bytes). flags: XLB_CSUM_UDP (a zero
 *       checksum means none and stays 0, a computed 0 is sent as 0xffff),
 *       XLB_CSUM_V6. In tc the kernel's helpers keep CHECKSUM_PARTIAL and
 *       CHECKSUM_COMPLETE skbs right (they are why the two parts are
 *       separate); XDP patches the field once with their sum.
 *   int xlb_tc_l4_csum_once(ctx, off | flags << XLB_TC_CSUM_FLAGS_SHIFT,
 *                           before, pseudo, plain)                    (tc)
 *       the same for a packet whose addresses and ports the caller wrote
 *       directly (nat.h's xlb_nat_tc), `before` the field's old value,
 *       pseudo and plain reduced to 17 bits: one helper call where
 *       xlb_ctx_l4_csum makes two. A global function (verified once).
 *   xlb_ctx_ifindex(ctx)   the receiving (XDP, tc ingress) or sending port
 *   XLB_ACT_PASS, XLB_ACT_DROP, xlb_fail(rc, &reason)
 *       the verdicts of this context; xlb_fail turns a helper's negative
 *       reason into one (DROP_* drop, anything else passes).
 * Each returns 0 or -XLB_DROP_TRUNCATED / -XLB_DROP_NAT.
 *
 * Offsets are from the frame start and must be bounded for the verifier
 * (callers pass masked offsets, see parse.h).
 */
#ifndef XLB_CTX_H
#define XLB_CTX_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "xlb_abi.h"
#include "csum.h"

#if defined(XLB_CTX_XDP) == defined(XLB_CTX_SKB)
#error "define exactly one of XLB_CTX_XDP and XLB_CTX_SKB before including ctx.h"
#endif

#define XLB_CSUM_UDP (1u << 0)
#define XLB_CSUM_V6  (1u << 1)

#define xlb_ctx_data(ctx)     ((void *)(long)(ctx)->data)
#define xlb_ctx_data_end(ctx) ((void *)(long)(ctx)->data_end)

/* A helper's reason is a drop when its number says so (xlb_abi.h ranges). */
static __always_inline int xlb_reason_is_drop(__u32 reason)
{
	return (reason >= XLB_DROP_TRUNCATED && reason < 64) || reason >= 128;
}

/* Copies 2, 4 or 16 bytes as words: `len` is a constant at every call, so
 * the switch folds away. */
static __always_inline void xlb_ctx_copy(void *dst, const void *src, __u32 len)
{
	switch (len) {
	case 2:
		*(__u16 *)dst = *(const __u16 *)src;
		break;
	case 4:
		*(__u32 *)dst = *(const __u32 *)src;
		break;
	case 16:
		((__u32 *)dst)[0] = ((const __u32 *)src)[0];
		((__u32 *)dst)[1] = ((const __u32 *)src)[1];
		((__u32 *)dst)[2] = ((const __u32 *)src)[2];
		((__u32 *)dst)[3] = ((const __u32 *)src)[3];
		break;
	}
}

/* A 64-bit csum.h diff as the 32-bit partial sum the kernel's helpers take. */
static __always_inline __u32 xlb_csum_wsum(__u64 diff)
{
	diff = (diff & 0xffffffff) + (diff >> 32);
	return (__u32)((diff & 0xffffffff) + (diff >> 32));
}

#ifdef XLB_CTX_XDP
/* ---- XDP: the frame is all there; every write is a direct store ---------- */
#define xlb_ctx		   xdp_md
#define XLB_ACT_PASS	   XDP_PASS
#define XLB_ACT_DROP	   XDP_DROP
#define xlb_ctx_ifindex(c) ((c)->ingress_ifindex)

static __always_inline __u32 xlb_ctx_len(struct xdp_md *ctx)
{
	return xlb_ctx_data_end(ctx) - xlb_ctx_data(ctx);
}

static __always_inline void xlb_ctx_pull(struct xdp_md *ctx, __u32 want)
{
}

static __always_inline int xlb_ctx_store(struct xdp_md *ctx, __u32 off, const void *from, __u32 len)
{
	void *p = xlb_ctx_data(ctx) + off;

	if (p + len > xlb_ctx_data_end(ctx))
		return -XLB_DROP_TRUNCATED;
	xlb_ctx_copy(p, from, len);
	return 0;
}

static __always_inline int xlb_ctx_load(struct xdp_md *ctx, __u32 off, void *to, __u32 len)
{
	void *p = xlb_ctx_data(ctx) + off;

	if (p + len > xlb_ctx_data_end(ctx))
		return -XLB_DROP_TRUNCATED;
	xlb_ctx_copy(to, p, len);
	return 0;
}

static __always_inline int xlb_ctx_l3_csum(struct xdp_md *ctx, __u32 off, __u64 diff)
{
	__sum16 *c = xlb_ctx_data(ctx) + off;

	if ((void *)(c + 1) > xlb_ctx_data_end(ctx))
		return -XLB_DROP_TRUNCATED;
	*c = xlb_csum_apply(*c, diff);
	return 0;
}

static __always_inline int xlb_ctx_l4_csum(struct xdp_md *ctx, __u32 off, __u64 pseudo, __u64 plain,
					   __u32 flags)
{
	__sum16 *c = xlb_ctx_data(ctx) + off;

	if ((void *)(c + 1) > xlb_ctx_data_end(ctx))
		return -XLB_DROP_TRUNCATED;
	*c = (flags & XLB_CSUM_UDP) ? xlb_csum_apply_udp(*c, pseudo + plain)
				    : xlb_csum_apply(*c, pseudo + plain);
	return 0;
}

#else
/* ---- tc: the kernel's helpers keep the skb's checksum state right -------- */
#define xlb_ctx			__sk_buff
#define XLB_ACT_PASS		TC_ACT_OK
#define XLB_ACT_DROP		TC_ACT_SHOT
#define xlb_ctx_ifindex(c)	((c)->ifindex)

/* BPF_F_IPV6 for bpf_l4_csum_replace (uapi since Linux 6.16, missing from
 * the Debian 12 headers): with BPF_F_PSEUDO_HDR on an IPv6 packet it stops
 * the helper from adjusting skb->csum of a CHECKSUM_COMPLETE skb (IPv6 has
 * no header checksum to absorb the address change). Older kernels reject
 * the flag with -EINVAL, which would fail every IPv6 translation: the
 * loader probes the kernel (lb/src/features.rs) and sets xlb_csum_ipv6_flag
 * to the flag, or to 0 on a kernel without it (then a CHECKSUM_COMPLETE
 * skb's csum is adjusted needlessly: the stack reports a hardware checksum
 * fault and verifies the packet in software, which succeeds). */
#define XLB_F_CSUM_IPV6		(1ULL << 7)
volatile const __u64 xlb_csum_ipv6_flag = XLB_F_CSUM_IPV6;

static __always_inline __u32 xlb_ctx_len(struct __sk_buff *ctx)
{
	return ctx->len;
}

/* Costs nothing for the usual skb whose headers are already in the head. A
 * failed pull leaves the skb as it was: the bounds checks that follow then
 * report the header as truncated. */
static __always_inline void xlb_ctx_pull(struct __sk_buff *ctx, __u32 want)
{
	if (want > ctx->len)
		want = ctx->len;
	if (xlb_ctx_data(ctx) + want > xlb_ctx_data_end(ctx))
		bpf_skb_pull_data(ctx, want);
}

static __always_inline int xlb_ctx_store(struct __sk_buff *ctx, __u32 off, const void *from,
					 __u32 len)
{
	return bpf_skb_store_bytes(ctx, off, from, len, 0) ? -XLB_DROP_NAT : 0;
}

static __always_inline int xlb_ctx_load(struct __sk_buff *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, to, len) ? -XLB_DROP_TRUNCATED : 0;
}

static __always_inline int xlb_ctx_l3_csum(struct __sk_buff *ctx, __u32 off, __u64 diff)
{
	return bpf_l3_csum_replace(ctx, off, 0, xlb_csum_wsum(diff), 0) ? -XLB_DROP_NAT : 0;
}

static __always_inline int xlb_ctx_l4_csum(struct __sk_buff *ctx, __u32 off, __u64 pseudo,
					   __u64 plain, __u32 flags)
{
	__u64 f = (flags & XLB_CSUM_UDP) ? BPF_F_MARK_MANGLED_0 : 0;

	if (pseudo && bpf_l4_csum_replace(ctx, off, 0, xlb_csum_wsum(pseudo),
					  f | BPF_F_PSEUDO_HDR |
					      ((flags & XLB_CSUM_V6) ? xlb_csum_ipv6_flag : 0)))
		return -XLB_DROP_NAT;
	if (plain && bpf_l4_csum_replace(ctx, off, 0, xlb_csum_wsum(plain), f))
		return -XLB_DROP_NAT;
	return 0;
}

/* a and b (16-bit one's-complement values) are equal modulo 0xffff: 0 and
 * 0xffff are the same number. */
static __always_inline int xlb_csum16_eq(__u32 a, __u32 b)
{
	__u16 s = xlb_csum_fold((__u64)a + (__u16)~b);

	return s == 0 || s == 0xffff;
}

/*
 * xlb_ctx_l4_csum for a packet whose addresses and ports were written
 * directly (nat.h's xlb_nat_tc): one helper call where xlb_ctx_l4_csum
 * makes two. `before` is the field as the packet had it.
 *
 * A global function (not static, not inlined): the verifier checks it
 * once per program against its BTF prototype (the context and scalars;
 * at most 5 arguments, so the flags ride above the offset), instead of at
 * every tc NAT site. No packet pointer crosses the call: it derives its
 * own from skb->data. The offset is masked below 0x8000 for the verifier
 * (parse.h's workaround). It needs 24 bytes of stack: decap's call chain
 * has 32 left.
 *
 * What the field holds depends on the skb's ip_summed, which a tc program
 * cannot read (aya 0.14 loads no kfunc calls, so bpf_cast_to_kern_ctx is
 * out): CHECKSUM_PARTIAL (a packet from a local socket whose checksum a
 * device or the stack completes later) has the pseudo-header's sum there,
 * anything else the full checksum. The kernel's bpf_l4_csum_replace keeps
 * both right: with BPF_F_PSEUDO_HDR it adds the change to a PARTIAL field
 * and subtracts it from a full one (and moves a CHECKSUM_COMPLETE
 * skb->csum by the field's change, IPv4 only); without, it leaves a
 * PARTIAL field alone. So an address change alone takes one call, and a
 * port change alone one call.
 *
 * When both change, the first call tells which state the skb is in: the
 * field moved by +pseudo (PARTIAL) or by -pseudo (any other), and the two
 * differ unless pseudo is 0 modulo 0xffff (2 is invertible modulo the odd
 * 0xffff; a pseudo change of 0 is not made at all). A full checksum then
 * takes the port change directly: the port and the field move by opposite
 * amounts, so a CHECKSUM_COMPLETE skb->csum (which covers both) stays
 * right; a PARTIAL field keeps it out. An unexpected outcome (the field
 * gone from the linear head) takes the second call as xlb_ctx_l4_csum
 * does. A UDP field of 0 (no checksum) is left as the helper with
 * BPF_F_MARK_MANGLED_0 would leave it, without calling it.
 */
#define XLB_TC_CSUM_FLAGS_SHIFT 24

__noinline int xlb_tc_l4_csum_once(struct __sk_buff *ctx, __u32 off_flags, __u32 before,
				   __u32 pseudo, __u32 plain)
{
	__u32 off = off_flags & 0x7fff, flags = off_flags >> XLB_TC_CSUM_FLAGS_SHIFT;
	__u64 f = (flags & XLB_CSUM_UDP) ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 p = xlb_csum_fold(pseudo);
	__sum16 *c;

	if ((flags & XLB_CSUM_UDP) && !before)
		return 0;
	/* a change of 0 modulo 0xffff changes nothing */
	if (p != 0 && p != 0xffff) {
		if (bpf_l4_csum_replace(ctx, off, 0, xlb_csum_wsum(pseudo),
					f | BPF_F_PSEUDO_HDR |
					    ((flags & XLB_CSUM_V6) ? xlb_csum_ipv6_flag : 0)))
			return -XLB_DROP_NAT;
		if (!plain)
			return 0;
		c = xlb_ctx_data(ctx) + off;
		if ((void *)(c + 1) <= xlb_ctx_data_end(ctx)) {
			__u32 moved = xlb_csum_fold((__u64)*c + (__u16)~before);

			if (xlb_csum16_eq(moved, (__u16)~p)) {
				*c = (flags & XLB_CSUM_UDP) ? xlb_csum_apply_udp(*c, plain)
							    : xlb_csum_apply(*c, plain);
				return 0;
			}
			if (xlb_csum16_eq(moved, p))
				return 0;
		}
	}
	if (plain && bpf_l4_csum_replace(ctx, off, 0, xlb_csum_wsum(plain), f))
		return -XLB_DROP_NAT;
	return 0;
}
#endif

/* A helper's negative reason as this program's verdict. */
static __always_inline int xlb_fail(int rc, __u32 *reason)
{
	*reason = -rc;
	return xlb_reason_is_drop(-rc) ? XLB_ACT_DROP : XLB_ACT_PASS;
}

#endif /* XLB_CTX_H */
