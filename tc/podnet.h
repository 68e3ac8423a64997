/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * podnet.h: what every pod-network stage of tc shares — finding pods and
 * nodes, putting a packet into a local pod, sending it through the Geneve
 * overlay to another node, and telling a sender its packet is too big.
 *
 *   endpoints   xlb_endpoints: this node's pods by address (xlb-cni and the
 *               agent write them); xlb_pod_routes: every node's pod ranges
 *               (LPM) with the node's underlay address.
 *   delivery    xlb_to_endpoint(): Ethernet addresses of the pod's veth, then
 *               bpf_redirect_peer() into the pod's namespace: no backlog, no
 *               pass through the host stack.
 *   overlay     xlb_overlay_send(): route and MTU of the outer packet
 *               (bpf_fib_lookup before anything is changed), room made with
 *               bpf_skb_adjust_room (ENCAP_L3/L4_UDP flags, so GSO segments
 *               and checksum offload see the inner headers; FIXED_GSO: pods
 *               already send segments that fit with the overhead), headers
 *               written by encap.h (the writers XDP uses), then out of the
 *               uplink: bpf_redirect with the MACs the lookup gave, or
 *               bpf_redirect_neigh while the next hop resolves.
 *   too big     xlb_too_big(): an oversize packet (the outer packet over the
 *               route MTU) becomes an ICMP fragmentation-needed /
 *               packet-too-big, quoting its first XLB_PTB_QUOTE bytes, sent
 *               back to the sender; per-CPU token bucket (xlb_podnet
 *               icmp_rate). IPv4 without DF cannot be fragmented here: dropped
 *               and counted (XLB_DROP_POD_TOO_BIG), like one over the rate.
 *
 * API (0 or a negative reason; stages set *reason and return a verdict)
 *   const struct xlb_endpoint *xlb_endpoint_of(addr, family)
 *   const struct xlb_route *xlb_route_of(addr, family)
 *   const struct xlb_podnet_cfg *xlb_podnet_cfg_get(void)
 *   int xlb_ttl_dec(skb, &pkt)        -XLB_PASS_TTL when it would reach 0
 *   int xlb_to_endpoint(skb, ep)      the redirect verdict
 *   int xlb_overlay_send(skb, &pkt, rt, identity, site, &reason)
 *       site: XLB_AT_POD (a too-big answer goes back to the pod) or
 *       XLB_AT_UPLINK_EGRESS (the node's own packet: the answer goes to the
 *       node's stack, the uplink's ingress)
 */
#ifndef XLB_TC_PODNET_H
#define XLB_TC_PODNET_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "csum.h"
#include "encap.h"
#include "service.h"

#define XLB_AF_INET  2
#define XLB_AF_INET6 10

/* Bytes of the offending packet an ICMP too-big quotes: enough for any
 * IP + TCP header; a constant, so the checksum over it is one helper call. */
#define XLB_PTB_QUOTE 128

/* An address of `family` into a 16-byte ABI field: IPv4 takes 4 bytes and
 * the rest is zeroed (xlb_node's addr4 is followed by other fields). */
static __always_inline void xlb_addr_set(__u8 *dst, const __u8 *src, __u8 family)
{
	if (family == XLB_FAMILY_V6) {
		xlb_addr_copy(dst, src);
		return;
	}
	((__u32 *)dst)[0] = *(const __u32 *)src;
	((__u32 *)dst)[1] = ((__u32 *)dst)[2] = ((__u32 *)dst)[3] = 0;
}

static __always_inline void xlb_addr_key_of(struct xlb_addr_key *k, const __u8 *addr, __u8 family)
{
	__builtin_memset(k, 0, sizeof(*k));
	xlb_addr_set(k->addr, addr, family);
	k->family = family;
}

static __always_inline const struct xlb_endpoint *xlb_endpoint_of(const __u8 *addr, __u8 family)
{
	struct xlb_addr_key k;

	xlb_addr_key_of(&k, addr, family);
	return bpf_map_lookup_elem(&xlb_endpoints, &k);
}

static __always_inline void xlb_cidr_key_of(struct xlb_cidr_key *k, const __u8 *addr, __u8 family)
{
	k->prefixlen = 32 + (family == XLB_FAMILY_V6 ? 128 : 32);
	k->family = family;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	xlb_addr_copy(k->addr, addr);
}

static __always_inline const struct xlb_route *xlb_route_of(const __u8 *addr, __u8 family)
{
	struct xlb_cidr_key k;

	xlb_cidr_key_of(&k, addr, family);
	return bpf_map_lookup_elem(&xlb_pod_routes, &k);
}

static __always_inline const struct xlb_podnet_cfg *xlb_podnet_cfg_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&xlb_podnet, &zero);
}

/* One router hop: TTL / hop limit minus one (the IPv4 checksum follows). */
static __always_inline int xlb_ttl_dec(struct __sk_buff *skb, const struct xlb_pkt *pkt)
{
	__u32 l3 = xlb_l3_off(pkt);
	__be16 *w;

	if (pkt->tuple.family == XLB_FAMILY_V4) {
		struct iphdr *ip = xlb_ctx_data(skb) + l3;
		__be16 old, new;

		if ((void *)(ip + 1) > xlb_ctx_data_end(skb))
			return -XLB_DROP_TRUNCATED;
		if (ip->ttl <= 1)
			return -XLB_PASS_TTL;
		/* ttl and protocol are one 16-bit word of the header */
		w = (__be16 *)&ip->ttl;
		old = *w;
		ip->ttl--;
		new = *w;
		return xlb_ctx_l3_csum(skb, l3 + offsetof(struct iphdr, check),
				       xlb_csum_diff2(0, old, new));
	}
	struct ipv6hdr *ip6 = xlb_ctx_data(skb) + l3;

	if ((void *)(ip6 + 1) > xlb_ctx_data_end(skb))
		return -XLB_DROP_TRUNCATED;
	if (ip6->hop_limit <= 1)
		return -XLB_PASS_TTL;
	ip6->hop_limit--;
	return 0;
}

/* Into the pod `ep`: its veth's MAC addresses, then its namespace. */
static __always_inline int xlb_to_endpoint(struct __sk_buff *skb, const struct xlb_endpoint *ep)
{
	struct ethhdr *eth = xlb_ctx_data(skb);

	if ((void *)(eth + 1) > xlb_ctx_data_end(skb))
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* ---- ICMP too big -------------------------------------------------------- */

/* Private to tc (not ABI): the per-CPU token bucket of ICMP errors. Sizes
 * instead of __type() keep it out of BTF, so lb/tests/abi_btf.rs does not
 * ask for a Rust mirror. */
struct icmp_bucket {
	__u64 last_ns;
	__u64 tokens;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct icmp_bucket));
	__uint(max_entries, 1);
} xlb_icmp_bucket SEC(".maps");

/* One token of `rate` per second, at most `rate` saved. */
static __always_inline int xlb_icmp_allowed(__u32 rate)
{
	struct icmp_bucket *b;
	__u32 zero = 0;
	__u64 now, add;

	b = bpf_map_lookup_elem(&xlb_icmp_bucket, &zero);
	if (!b || !rate)
		return 0;
	now = bpf_ktime_get_ns();
	add = (now - b->last_ns) / (1000000000ull / rate);
	if (add) {
		b->tokens = b->tokens + add > rate ? rate : b->tokens + add;
		b->last_ns = now;
	}
	if (!b->tokens)
		return 0;
	b->tokens--;
	return 1;
}

/* The 16 bytes of an address as four 32-bit words of a checksum sum. */
static __always_inline __u64 xlb_addr_sum(const void *a)
{
	const __u32 *w = a;

	return (__u64)w[0] + w[1] + w[2] + w[3];
}

/* The one's-complement sum of the quote, read from the packet. */
static __always_inline int xlb_quote_sum(struct __sk_buff *skb, __u32 off, __u64 *sum)
{
	void *q = xlb_ctx_data(skb) + off;
	__s64 s;

	if (q + XLB_PTB_QUOTE > xlb_ctx_data_end(skb))
		return -XLB_DROP_TRUNCATED;
	s = bpf_csum_diff(NULL, 0, q, XLB_PTB_QUOTE, 0);
	if (s < 0)
		return -XLB_DROP_TRUNCATED;
	*sum = (__u32)s;
	return 0;
}

/*
 * Turns the packet into an ICMP error telling its sender that `mtu` is the
 * most that passes: [eth][IP from `from` to the sender][ICMP][the first
 * XLB_PTB_QUOTE bytes of the packet], Ethernet addresses swapped, then
 * redirected to `ifindex` (flags: 0 egress, BPF_F_INGRESS). The checksum is
 * computed over the whole message; the skb's checksum state is left as it
 * was (CHECKSUM_PARTIAL offsets point into the quote, which no one
 * finishes on the way back: a veth does not).
 */
static __always_inline int xlb_too_big(struct __sk_buff *skb, const struct xlb_pkt *pkt,
				       const __u8 *from, __u32 mtu, __u32 ifindex, __u64 flags,
				       __u32 *reason)
{
	const struct xlb_podnet_cfg *cfg = xlb_podnet_cfg_get();
	__u8 v4 = pkt->tuple.family == XLB_FAMILY_V4, dst[16] __attribute__((aligned(4)));
	__u32 hlen = (v4 ? XLB_IP4_HLEN : XLB_IP6_HLEN) + 8, l3 = ETH_HLEN;
	__u8 mac_to[ETH_ALEN], mac_from[ETH_ALEN];
	struct xlb_icmp_hdr *icmp;
	struct ethhdr *eth;
	__u64 sum;
	int rc;

	if (v4) {
		struct iphdr *ip = xlb_ctx_data(skb) + ETH_HLEN;

		if ((void *)(ip + 1) > xlb_ctx_data_end(skb))
			return xlb_fail(-XLB_DROP_TRUNCATED, reason);
		if (!(ip->frag_off & bpf_htons(0x4000))) /* not DF: it wanted fragmenting */
			return xlb_fail(-XLB_DROP_POD_TOO_BIG, reason);
	}
	if (!cfg || !xlb_icmp_allowed(cfg->icmp_rate) || skb->len < ETH_HLEN + XLB_PTB_QUOTE)
		return xlb_fail(-XLB_DROP_POD_TOO_BIG, reason);
	eth = xlb_ctx_data(skb);
	if ((void *)(eth + 1) > xlb_ctx_data_end(skb))
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	__builtin_memcpy(mac_to, eth->h_source, ETH_ALEN);
	__builtin_memcpy(mac_from, eth->h_dest, ETH_ALEN);
	xlb_addr_copy(dst, pkt->tuple.saddr);

	if (bpf_skb_change_tail(skb, ETH_HLEN + XLB_PTB_QUOTE, 0) ||
	    bpf_skb_adjust_room(skb, hlen, BPF_ADJ_ROOM_MAC, 0))
		return xlb_fail(-XLB_DROP_POD_TOO_BIG, reason);
	xlb_ctx_pull(skb, ETH_HLEN + hlen + XLB_PTB_QUOTE);
	rc = xlb_quote_sum(skb, l3 + hlen, &sum);
	if (rc)
		return xlb_fail(rc, reason);
	void *data = xlb_ctx_data(skb), *data_end = xlb_ctx_data_end(skb);

	rc = xlb_write_eth(data, data_end, mac_to, mac_from, bpf_htons(v4 ? ETH_P_IP : ETH_P_IPV6));
	if (!rc)
		rc = xlb_write_ip(data + l3, data_end, pkt->tuple.family, from, dst,
				  v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6, hlen + XLB_PTB_QUOTE, 0);
	if (rc)
		return xlb_fail(rc, reason);
	icmp = data + l3 + hlen - 8;
	if ((void *)(icmp + 1) > data_end)
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	if (v4) {
		struct iphdr *ip = data + l3;

		ip->ttl = 255;
		ip->frag_off = 0;
		ip->check = 0;
		ip->check = xlb_ipv4_csum(ip);
		icmp->type = XLB_ICMP_DEST_UNREACH;
		icmp->code = 4; /* fragmentation needed and DF set */
		icmp->rest = bpf_htonl(mtu & 0xffff);
	} else {
		struct ipv6hdr *ip6 = data + l3;

		ip6->hop_limit = 255;
		icmp->type = XLB_ICMPV6_PKT_TOOBIG;
		icmp->code = 0;
		icmp->rest = bpf_htonl(mtu);
		/* the pseudo-header: addresses, upper-layer length, next header */
		sum += xlb_addr_sum(from) + xlb_addr_sum(dst);
		sum += bpf_htonl(8 + XLB_PTB_QUOTE) + bpf_htonl(IPPROTO_ICMPV6);
	}
	icmp->checksum = 0;
	sum += *(__u32 *)icmp + icmp->rest;
	icmp->checksum = (__sum16)~xlb_csum_fold(sum);
	*reason = XLB_OK_ICMP_TOO_BIG;
	return bpf_redirect(ifindex, flags);
}

/* ---- the overlay --------------------------------------------------------- */

/* Where the outer packet goes: 0 with fib filled (MACs resolved), 1 when the
 * neighbour is not resolved yet (fib.ifindex is the port), or a negative
 * reason; -XLB_DROP_TOO_BIG with fib.mtu_result when it does not fit. */
static __always_inline int xlb_overlay_route(struct __sk_buff *skb, struct bpf_fib_lookup *fib,
					     __u8 family, const __u8 *src, const __u8 *dst,
					     __u32 tot_len)
{
	int rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = skb->ifindex;
	fib->tot_len = tot_len; /* 0: no MTU check (GSO, checked by the caller) */
	if (family == XLB_FAMILY_V6) {
		fib->family = XLB_AF_INET6;
		xlb_addr_copy(fib->ipv6_src, src);
		xlb_addr_copy(fib->ipv6_dst, dst);
	} else {
		fib->family = XLB_AF_INET;
		fib->ipv4_src = *(const __u32 *)src;
		fib->ipv4_dst = *(const __u32 *)dst;
	}
	rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return 1;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return -XLB_DROP_TOO_BIG;
	return -XLB_DROP_FIB;
}

/* The IP length of the largest packet this one becomes on the wire: a GSO
 * packet's segments (network and transport headers + gso_size), else the
 * packet itself. */
static __always_inline __u32 xlb_wire_l3_len(struct __sk_buff *skb, const struct xlb_pkt *pkt)
{
	__u32 l3_len = skb->len - ETH_HLEN;

	if (skb->gso_size) {
		__u32 thlen = 8; /* UDP */

		if (pkt->tuple.proto == IPPROTO_TCP) {
			struct tcphdr *th = xlb_ctx_data(skb) + xlb_l4_off(pkt);

			if ((void *)(th + 1) > xlb_ctx_data_end(skb))
				return l3_len;
			thlen = th->doff * 4;
		}
		l3_len = xlb_l4_off(pkt) - xlb_l3_off(pkt) + thlen + skb->gso_size;
	}
	return l3_len;
}

/* Where an overlay stage runs: what it sends to, and where its ICMP
 * too-big answers go. */
enum xlb_site {
	XLB_AT_POD = 0,		  /* a pod's host veth, tc ingress: answers go back to it */
	XLB_AT_UPLINK_EGRESS = 1, /* the uplink, tc egress: the node's own packets */
};

/*
 * Sends the packet (parsed into pkt, IP header at ETH_HLEN) in Geneve to the
 * node `rt` names, with `identity` in the option; a pod's packet loses one
 * TTL (this node routes it). An oversize packet is
 * answered by xlb_too_big: to a pod from this node's address, to the node's
 * own stack from the tunnel's far end (an address it does not own).
 */
static __always_inline int xlb_overlay_send(struct __sk_buff *skb, const struct xlb_pkt *pkt,
					    const struct xlb_route *rt, __u32 identity,
					    enum xlb_site site, __u32 *reason)
{
	const struct xlb_node_cfg *node = xlb_this_node();
	__u8 outer = rt->node_family, inner = pkt->tuple.family;
	struct bpf_redir_neigh nh = {};
	struct bpf_fib_lookup fib;
	const __u8 *src, *from;
	__u32 inner_len = skb->len - ETH_HLEN, hlen, ifindex = skb->ifindex;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	__u8 from_addr[16] __attribute__((aligned(4)));
	struct xlb_geneve_out g = {
	    .identity = identity,
	    .inner_len = inner_len,
	    .inner_family = inner,
	    .opt_type = XLB_GENEVE_OPT_IDENTITY,
	};
	void *data, *data_end;
	int rc, no_neigh;

	if (!node)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);
	src = xlb_node_src(node, outer);
	if (!src)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);
	hlen = (outer == XLB_FAMILY_V6 ? XLB_IP6_HLEN : XLB_IP4_HLEN) +
	       xlb_geneve_hlen(XLB_GENEVE_OPT_IDENTITY, inner);
	rc = xlb_overlay_route(skb, &fib, outer, src, rt->node, xlb_wire_l3_len(skb, pkt) + hlen);
	if (rc == -XLB_DROP_TOO_BIG) {
		if (site == XLB_AT_POD)
			from = xlb_node_src(node, inner);
		else
			from = inner == outer ? rt->node : NULL;
		if (!from)
			return xlb_fail(-XLB_DROP_POD_TOO_BIG, reason);
		xlb_addr_set(from_addr, from, inner);
		return xlb_too_big(skb, pkt, from_addr, fib.mtu_result - hlen, ifindex,
				   site == XLB_AT_POD ? 0 : BPF_F_INGRESS, reason);
	}
	if (rc < 0)
		return xlb_fail(rc, reason);
	no_neigh = rc;
	/* A pod's packet is routed: one hop, after the MTU check (an ICMP too
	 * big quotes the packet as it came). */
	if (site == XLB_AT_POD) {
		rc = xlb_ttl_dec(skb, pkt);
		if (rc)
			return xlb_fail(rc, reason);
	}

	flags |=
	    outer == XLB_FAMILY_V6 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV4;
	if (bpf_skb_adjust_room(skb, hlen, BPF_ADJ_ROOM_MAC, flags))
		return xlb_fail(-XLB_DROP_ENCAP, reason);
	/* The outer headers must be in the linear head for direct writes. */
	xlb_ctx_pull(skb, ETH_HLEN + hlen);
	data = xlb_ctx_data(skb);
	data_end = xlb_ctx_data_end(skb);
	g.sport = bpf_htons(XLB_GENEVE_SPORT_BASE + (bpf_get_hash_recalc(skb) & 0x3fff));
	g.dport = node->geneve_port;
	g.vni = node->vni;
	rc = xlb_write_eth(data, data_end, fib.dmac, fib.smac,
			   bpf_htons(outer == XLB_FAMILY_V6 ? ETH_P_IPV6 : ETH_P_IP));
	if (!rc)
		rc = xlb_write_ip(data + ETH_HLEN, data_end, outer, src, rt->node, IPPROTO_UDP,
				  hlen + inner_len, bpf_get_hash_recalc(skb));
	if (!rc)
		rc = xlb_write_geneve(data + ETH_HLEN +
					  (outer == XLB_FAMILY_V6 ? XLB_IP6_HLEN : XLB_IP4_HLEN),
				      data_end, &g);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_POD_ENCAP;
	if (no_neigh) {
		/* The kernel resolves the next hop (the lookup put it in the
		 * destination) and queues the packet meanwhile. */
		nh.nh_family = fib.family;
		if (fib.family == XLB_AF_INET6)
			xlb_addr_copy(nh.ipv6_nh, fib.ipv6_dst);
		else
			nh.ipv4_nh = fib.ipv4_dst;
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	/* Already leaving by the right port: no second pass through it. */
	if (site == XLB_AT_UPLINK_EGRESS && fib.ifindex == ifindex)
		return TC_ACT_OK;
	return bpf_redirect(fib.ifindex, 0);
}

#endif /* XLB_TC_PODNET_H */
