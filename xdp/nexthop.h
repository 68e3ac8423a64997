/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * nexthop.h (XDP only): the outer Ethernet header of a tunnel packet — the
 * next hop towards a node address from bpf_fib_lookup, behind a per-CPU
 * cache, and the coarse clock that ages it.
 *
 * API
 *   int xlb_nexthop(ctx, in_ifindex, family, src, dst, l3_len, &nh, &mtu)
 *       0 and *nh (output port, MACs, MTU); XLB_NH_NO_NEIGH when the route
 *       is known but its neighbour is not resolved; or -XLB_DROP_TOO_BIG
 *       (with the route's MTU in *mtu) / -XLB_DROP_FIB.
 */
#ifndef XLB_XDP_NEXTHOP_H
#define XLB_XDP_NEXTHOP_H

#include "maps.h"
#include "parse.h"

#define XLB_AF_INET  2
#define XLB_AF_INET6 10

/*
 * Next-hop cache: the result of bpf_fib_lookup (output port, MACs, MTU) per
 * (tunnel destination, ingress port), per CPU, for XLB_NH_TTL_NS. A FIB and
 * neighbour lookup costs ~150 ns per packet (kernel 6.18, measured with
 * BPF_PROG_TEST_RUN), more than the rest of the fast path together; the
 * cache hit costs a few ns. Staleness is bounded by the TTL: a route, MTU or
 * neighbour change is seen within XLB_NH_TTL_NS. One next hop per tunnel
 * destination: ECMP between several next hops towards one node address is
 * not spread per flow. Private to this program (not pinned, not ABI): it is
 * rebuilt from the kernel tables after every load.
 *
 * The slot is a multiplicative hash of all address words: the first word's
 * low byte is the address's first octet (little-endian loads), the same for
 * every node of a fabric, so it must not decide the slot alone.
 */
#define XLB_NH_SLOT_BITS 8
#define XLB_NH_SLOTS	 (1u << XLB_NH_SLOT_BITS)
#define XLB_NH_TTL_NS	 (200ull * 1000 * 1000)

struct nh_cache_entry {
	__u8 addr[16]; /* tunnel destination */
	__u32 in_ifindex;
	__u32 out_ifindex;
	__u64 expires_ns; /* bpf_ktime_get_coarse_ns() clock */
	__u8 dmac[6];
	__u8 smac[6];
	__u16 mtu; /* route MTU (bpf_fib_lookup mtu_result) */
	__u8 family;
	__u8 pad;
};

/* xlb_put_eth_macs reads dmac and smac as three aligned words. */
_Static_assert(__builtin_offsetof(struct nh_cache_entry, dmac) % 4 == 0 &&
		   __builtin_offsetof(struct nh_cache_entry, smac) ==
		       __builtin_offsetof(struct nh_cache_entry, dmac) + ETH_ALEN,
	       "nh_cache_entry: dmac then smac, 4-byte aligned");

/* Sizes instead of __type(): the entry is not ABI, so it stays out of the
 * object's BTF and out of lb/tests/abi_btf.rs, which requires every map type
 * in BTF to be mirrored in Rust. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct nh_cache_entry));
	__uint(max_entries, XLB_NH_SLOTS);
} xlb_nh_cache SEC(".maps");

/*
 * The TTL clock, per CPU. bpf_ktime_get_coarse_ns() is a helper call, ~16 ns
 * per packet on the benchmark machine (kernel 6.18 with the SRSO "safe RET"
 * mitigation makes every kernel call and return expensive); bpf_jiffies64()
 * is inlined by the verifier into one load. The coarse clock only moves on a
 * tick, so it is read once per jiffy per CPU and reused until jiffies moves:
 * the same values, one helper call per tick instead of one per packet.
 */
struct nh_clock {
	__u64 jiffies;
	__u64 ns; /* bpf_ktime_get_coarse_ns() at `jiffies` */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct nh_clock));
	__uint(max_entries, 1);
} xlb_nh_clock SEC(".maps");

static __always_inline __u64 xlb_nh_now(void)
{
	__u64 j = bpf_jiffies64();
	struct nh_clock *c;
	__u32 zero = 0;

	c = bpf_map_lookup_elem(&xlb_nh_clock, &zero);
	if (!c)
		return bpf_ktime_get_coarse_ns();
	if (c->jiffies != j) {
		c->jiffies = j;
		c->ns = bpf_ktime_get_coarse_ns();
	}
	return c->ns;
}

/* The next hop towards `dst` (a node address of `family`) for a packet of
 * outer IP length `l3_len`, leaving from `src`: 0 and *nhp (*mtu set when
 * the packet is too big); XLB_NH_NO_NEIGH
 * when the route is known but its neighbour is not resolved (XDP cannot
 * resolve it: the caller hands the encapsulated packet to the kernel, which
 * forwards it and resolves the neighbour; not cached, so the next packets
 * look again); or -XLB_DROP_TOO_BIG / -XLB_DROP_FIB. */
#define XLB_NH_NO_NEIGH 1

static __always_inline int xlb_nexthop(struct xdp_md *ctx, __u32 in_ifindex, __u8 family,
				       const __u8 *src, const __u8 *dst, __u16 l3_len,
				       struct nh_cache_entry **nhp, __u32 *mtu)
{
	const __u32 *d = (const __u32 *)dst;
	__u32 slot =
	    ((d[0] ^ d[1] ^ d[2] ^ d[3] ^ in_ifindex) * 0x9e3779b1u) >> (32 - XLB_NH_SLOT_BITS);
	struct bpf_fib_lookup fib = {};
	struct nh_cache_entry *nh;
	__u64 now;
	int rc;

	nh = bpf_map_lookup_elem(&xlb_nh_cache, &slot);
	if (!nh)
		return -XLB_DROP_FIB;
	*nhp = nh;
	now = xlb_nh_now();
	if (nh->family == family && nh->in_ifindex == in_ifindex && now < nh->expires_ns &&
	    xlb_addr_eq(nh->addr, dst)) {
		*mtu = nh->mtu;
		return l3_len > nh->mtu ? -XLB_DROP_TOO_BIG : 0;
	}

	fib.ifindex = in_ifindex;
	fib.tot_len = l3_len; /* checked against the route's MTU */
	if (family == XLB_FAMILY_V6) {
		fib.family = XLB_AF_INET6;
		xlb_addr_copy(fib.ipv6_src, src);
		xlb_addr_copy(fib.ipv6_dst, dst);
	} else {
		fib.family = XLB_AF_INET;
		fib.ipv4_src = *(const __u32 *)src;
		fib.ipv4_dst = *(const __u32 *)dst;
	}
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		*mtu = fib.mtu_result;
		return -XLB_DROP_TOO_BIG;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return XLB_NH_NO_NEIGH;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -XLB_DROP_FIB;

	xlb_addr_copy(nh->addr, dst);
	nh->family = family;
	nh->in_ifindex = in_ifindex;
	nh->out_ifindex = fib.ifindex;
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
	/* On success the kernel reports the route MTU in mtu_result. */
	nh->mtu = fib.mtu_result;
	nh->expires_ns = now + XLB_NH_TTL_NS;
	return 0;
}

#endif /* XLB_XDP_NEXTHOP_H */
