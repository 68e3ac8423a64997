/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_xdp: the north-south fast path on a frontend node's NIC.
 *
 *   parse (parse.h) -> per-CPU flow cache hit (established flows: skips
 *   the next three steps, see "Flow cache") or frontend lookup ->
 *   loadBalancerSourceRanges -> xlb_ct / affinity / Maglev (maglev.h) ->
 *   one of
 *     - backend on this node: DNAT in place (nat.h), remember the reverse
 *       translation in xlb_dsr_nat, XDP_PASS            (OK_LOCAL_DELIVER)
 *     - Geneve: DNAT the inner packet to the endpoint, add Ethernet + IP +
 *       UDP + Geneve + DSR option (encap.h)              (OK_XDP_TX/REDIRECT)
 *     - IPIP: inner packet untouched, add Ethernet + IP  (OK_XDP_TX/REDIRECT)
 *   ICMP "fragmentation needed" / "packet too big" quoting a DSR reply
 *   (frontend -> client) go, unchanged, to the node of the flow's backend
 *   with the Geneve EP option naming the endpoint (OK_ICMP_FORWARD).
 *
 * Every path ends in xlb_count_exit() (counters.h) with exactly one reason.
 * Packets that are not ours are passed unchanged; malformed ones are passed
 * or dropped with their reason (see parse.h).
 */
#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "conntrack.h"
#include "maglev.h"
#include "nat.h"
#include "encap.h"
#include "counters.h"
#include "events.h"

#define XLB_AF_INET  2
#define XLB_AF_INET6 10

/* Source-range LPM key: svc_id, family and pad are matched whole. */
#define XLB_SRC_RANGE_FIXED_BITS 64

/* An error reason from a helper (negative) as this program's verdict. */
static __always_inline int xlb_fail(int rc, __u32 *reason)
{
	*reason = -rc;
	return xlb_reason_is_drop(-rc) ? XDP_DROP : XDP_PASS;
}

static __always_inline int xlb_source_allowed(const struct xlb_service *svc,
					      const struct xlb_flow_key *ft)
{
	struct xlb_src_range_key k = {
	    .prefixlen = XLB_SRC_RANGE_FIXED_BITS + (ft->family == XLB_FAMILY_V6 ? 128 : 32),
	    .svc_id = bpf_htonl(svc->id),
	    .family = ft->family,
	};

	xlb_addr_copy(k.addr, ft->saddr);
	return bpf_map_lookup_elem(&xlb_source_ranges, &k) != NULL;
}

/* The outer source address of this node for a tunnel of `family`, or NULL. */
static __always_inline const __u8 *xlb_node_src(const struct xlb_node_cfg *node, __u8 family)
{
	if (family == XLB_FAMILY_V4)
		return *(const __u32 *)node->addr4 ? node->addr4 : NULL;
	if (family == XLB_FAMILY_V6) {
		const __u32 *a = (const __u32 *)node->addr6;

		return (a[0] | a[1] | a[2] | a[3]) ? node->addr6 : NULL;
	}
	return NULL;
}

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
 * outer IP length `l3_len`, leaving from `src`: 0 and *nhp; XLB_NH_NO_NEIGH
 * when the route is known but its neighbour is not resolved (XDP cannot
 * resolve it: the caller hands the encapsulated packet to the kernel, which
 * forwards it and resolves the neighbour; not cached, so the next packets
 * look again); or -XLB_DROP_TOO_BIG / -XLB_DROP_FIB. */
#define XLB_NH_NO_NEIGH 1

static __always_inline int xlb_nexthop(struct xdp_md *ctx, __u32 in_ifindex, __u8 family,
				       const __u8 *src, const __u8 *dst, __u16 l3_len,
				       struct nh_cache_entry **nhp)
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
	    xlb_addr_eq(nh->addr, dst))
		return l3_len > nh->mtu ? -XLB_DROP_TOO_BIG : 0;

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
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return -XLB_DROP_TOO_BIG;
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

/* Backend on this node: its node address is our own tunnel address. */
static __always_inline int xlb_is_local(const struct xlb_backend *be, const __u8 *src)
{
	if (be->node_family == XLB_FAMILY_V4)
		return *(const __u32 *)be->node == *(const __u32 *)src;
	return xlb_addr_eq(be->node, src);
}

/* Local delivery: DNAT to the endpoint and record the reverse translation
 * for the reply (tc egress rewrites the endpoint source back to the
 * frontend). Looked up first so established flows do not rewrite the LRU
 * entry on every packet. */
static __always_inline int xlb_local_deliver(struct xdp_md *ctx, struct xlb_pkt *pkt,
					     const struct xlb_backend *be, __u32 *reason)
{
	struct xlb_dsr_nat_entry nat = {};
	int rc;

	if (be->family != pkt->tuple.family)
		return xlb_fail(-XLB_DROP_BACKEND_MISSING, reason);
	xlb_addr_copy(nat.vaddr, pkt->tuple.daddr);
	nat.vport = pkt->tuple.dport;
	nat.family = pkt->tuple.family;
	rc = xlb_nat_rewrite(xlb_ctx_data(ctx), xlb_ctx_data_end(ctx), pkt, XLB_NAT_DST, be->addr,
			     be->port);
	if (rc)
		return xlb_fail(rc, reason);
	if (!bpf_map_lookup_elem(&xlb_dsr_nat, &pkt->tuple)) {
		nat.created_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&xlb_dsr_nat, &pkt->tuple, &nat, BPF_ANY);
	}
	*reason = XLB_OK_LOCAL_DELIVER;
	return XDP_PASS;
}

/*
 * Sends the packet to the backend's node. Geneve: a client packet is DNAT'd
 * to the endpoint and carries the DSR option with vaddr/vport (the frontend
 * the client used); an ICMP error (icmp = 1) is left untranslated and carries
 * the EP option with the endpoint address and target port, from which the
 * backend node's tc program translates it. IPIP: the inner packet as is.
 * ok: the reason of a successful send (0: by transmit path, OK_XDP_TX or
 * OK_XDP_REDIRECT).
 */
static __always_inline int xlb_tunnel(struct xdp_md *ctx, struct xlb_pkt *pkt,
				      const struct xlb_service *svc, const struct xlb_backend *be,
				      const struct xlb_node_cfg *node, const __u8 *src, __u32 hash,
				      const __u8 *vaddr, __be16 vport, int icmp, __u32 ok,
				      __u32 *reason)
{
	__u8 outer = be->node_family, inner = pkt->tuple.family, encap = svc->encap, opt_type;
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct nh_cache_entry *nh;
	__u32 hlen, inner_len = pkt->l3_len, frame, l3_off = pkt->l3_off & XLB_L3_OFF_MASK;
	/* Read once: clang 14 otherwise keeps &ctx->ingress_ifindex in a spilled
	 * register and reloads through it, which the verifier rejects
	 * ("dereference of modified ctx ptr"). */
	__u32 in_ifindex = ctx->ingress_ifindex;
	__u16 outer_l3_len;
	__u8 own_mac[ETH_ALEN], peer_mac[ETH_ALEN];
	int rc, no_neigh;

	if (encap != XLB_ENCAP_IPIP)
		encap = XLB_ENCAP_GENEVE; /* unknown values: the default */
	if (encap == XLB_ENCAP_GENEVE) {
		/* The inner packet keeps its family: an endpoint of the other
		 * family cannot be reached without NAT64. */
		if (be->family != inner)
			return xlb_fail(-XLB_DROP_BACKEND_MISSING, reason);
		if (icmp) {
			opt_type = inner == XLB_FAMILY_V6 ? XLB_GENEVE_OPT_EP6 : XLB_GENEVE_OPT_EP4;
			vaddr = be->addr;
			vport = be->port;
		} else {
			opt_type =
			    inner == XLB_FAMILY_V6 ? XLB_GENEVE_OPT_DSR6 : XLB_GENEVE_OPT_DSR4;
			rc = xlb_nat_rewrite(data, data_end, pkt, XLB_NAT_DST, be->addr, be->port);
			if (rc)
				return xlb_fail(rc, reason);
		}
	}

	hlen = xlb_encap_hlen(encap, outer, inner);
	outer_l3_len = hlen - ETH_HLEN + inner_len;

	rc = xlb_nexthop(ctx, in_ifindex, outer, src, be->node, outer_l3_len, &nh);
	if (rc < 0)
		return xlb_fail(rc, reason);
	no_neigh = rc == XLB_NH_NO_NEIGH;
	if (no_neigh) {
		/* Handed to the kernel: the frame must stay addressed to this
		 * port, so the outer Ethernet header keeps the MACs it came with. */
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return xlb_fail(-XLB_DROP_TRUNCATED, reason);
		__builtin_memcpy(own_mac, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(peer_mac, eth->h_source, ETH_ALEN);
	}

	/* Bytes after the IP packet (Ethernet padding) must not travel inside
	 * the tunnel: the outer lengths count the IP packet only. */
	frame = data_end - data;
	if (frame > l3_off + inner_len &&
	    bpf_xdp_adjust_tail(ctx, (int)(l3_off + inner_len) - (int)frame))
		return xlb_fail(-XLB_DROP_ENCAP, reason);
	/* The old L2 header (Ethernet, VLAN tag) is replaced by the outer
	 * headers; the inner packet starts at the IP header. */
	if (bpf_xdp_adjust_head(ctx, (int)l3_off - (int)hlen))
		return xlb_fail(-XLB_DROP_ENCAP, reason);
	data = xlb_ctx_data(ctx);
	data_end = xlb_ctx_data_end(ctx);

	rc = xlb_write_eth(data, data_end, no_neigh ? own_mac : nh->dmac,
			   no_neigh ? peer_mac : nh->smac,
			   bpf_htons(outer == XLB_FAMILY_V6 ? ETH_P_IPV6 : ETH_P_IP));
	if (rc)
		return xlb_fail(rc, reason);
	if (encap == XLB_ENCAP_GENEVE) {
		__u8 proto = IPPROTO_UDP;

		if (outer == XLB_FAMILY_V6)
			rc = xlb_write_ip6(data + ETH_HLEN, data_end, src, be->node, proto,
					   outer_l3_len - XLB_IP6_HLEN, hash);
		else
			rc = xlb_write_ip4(data + ETH_HLEN, data_end, *(const __u32 *)src,
					   *(const __u32 *)be->node, proto, outer_l3_len);
		if (rc)
			return xlb_fail(rc, reason);
		rc = xlb_write_geneve(
		    data + ETH_HLEN + (outer == XLB_FAMILY_V6 ? XLB_IP6_HLEN : XLB_IP4_HLEN),
		    data_end, bpf_htons(XLB_GENEVE_SPORT_BASE + (hash & 0x3fff)), node->geneve_port,
		    inner_len, inner, node->vni, opt_type, vaddr, vport);
	} else {
		__u8 proto = inner == XLB_FAMILY_V6 ? IPPROTO_IPV6 : IPPROTO_IPIP;

		if (outer == XLB_FAMILY_V6)
			rc = xlb_write_ip6(data + ETH_HLEN, data_end, src, be->node, proto,
					   inner_len, hash);
		else
			rc = xlb_write_ip4(data + ETH_HLEN, data_end, *(const __u32 *)src,
					   *(const __u32 *)be->node, proto, outer_l3_len);
	}
	if (rc)
		return xlb_fail(rc, reason);

	if (no_neigh) {
		*reason = XLB_OK_NEIGH_PASS;
		return XDP_PASS;
	}
	if (nh->out_ifindex == in_ifindex) {
		*reason = ok ? ok : XLB_OK_XDP_TX;
		return XDP_TX;
	}
	/* Flags 0: a port missing from xlb_tx_ports returns XDP_ABORTED. */
	if (bpf_redirect_map(&xlb_tx_ports, nh->out_ifindex, 0) != XDP_REDIRECT)
		return xlb_fail(-XLB_DROP_NO_TX_PORT, reason);
	*reason = ok ? ok : XLB_OK_XDP_REDIRECT;
	return XDP_REDIRECT;
}

/* Common tail: local delivery or tunnel, plus service/backend statistics. */
static __always_inline int xlb_forward(struct xdp_md *ctx, struct xlb_pkt *pkt,
				       const struct xlb_service *svc, const struct xlb_sel *sel,
				       const __u8 *vaddr, __be16 vport, int icmp, __u32 bytes,
				       __u32 *reason)
{
	const struct xlb_backend *be = sel->be;
	const struct xlb_node_cfg *node;
	const __u8 *src;
	__u32 zero = 0;
	int verdict;

	node = bpf_map_lookup_elem(&xlb_node, &zero);
	if (!node)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);
	src = xlb_node_src(node, be->node_family);
	if (!src)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);

	if (xlb_is_local(be, src)) {
		if (icmp) {
			/* Not DNAT'd (the quoted packet would have to be rewritten
			 * too); given to the kernel as is. */
			*reason = XLB_OK_LOCAL_DELIVER;
			verdict = XDP_PASS;
		} else {
			verdict = xlb_local_deliver(ctx, pkt, be, reason);
		}
	} else {
		verdict = xlb_tunnel(ctx, pkt, svc, be, node, src, sel->hash, vaddr, vport, icmp,
				     icmp ? XLB_OK_ICMP_FORWARD : 0, reason);
	}
	if (xlb_reason_is_drop(*reason))
		return verdict;
	xlb_count_svc(svc->id, bytes, sel->new_flow, sel->affinity_hit);
	xlb_count_backend(sel->backend_id, bytes);
	if (sel->new_flow)
		xlb_ev_new_flow(&pkt->tuple, vaddr, vport, svc->id, sel->backend_id,
				ctx->ingress_ifindex, bytes);
	return verdict;
}

/*
 * ICMPv4 destination unreachable / ICMPv6 packet too big sent to a frontend
 * address about a DSR reply (frontend -> client): the flow is the quoted
 * tuple reversed (client -> frontend). The ICMP packet goes unchanged to
 * that flow's backend node. The inner packet is NOT DNAT'd (its quote would
 * need rewriting too): for Geneve the option is EP4/EP6 naming the endpoint
 * address and target port instead of the frontend, and the backend node's
 * tc program translates the ICMP packet from it.
 */
static __always_inline int xlb_icmp(struct xdp_md *ctx, struct xlb_pkt *pkt, __u32 bytes,
				    __u32 *reason)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct xlb_frontend_key fk = {};
	struct xlb_flow_key q;
	struct xlb_service *svc;
	struct xlb_sel sel = {};
	__u32 w;
	__be16 port;
	int rc;

	if (pkt->tuple.family == XLB_FAMILY_V4 ? pkt->icmp_type != XLB_ICMP_DEST_UNREACH
					       : pkt->icmp_type != XLB_ICMPV6_PKT_TOOBIG)
		return xlb_fail(-XLB_PASS_L4_PROTO, reason);
	rc = xlb_parse_icmp_quote(data, data_end, pkt, &q);
	if (rc)
		return xlb_fail(rc, reason);
	/* The quote is frontend -> client; it must have been sent to the
	 * frontend address it quotes as source. */
	if (!xlb_addr_eq(q.saddr, pkt->tuple.daddr))
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);

		/* Reverse in place: q becomes the client -> frontend flow key. */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		w = ((__u32 *)q.saddr)[i];
		((__u32 *)q.saddr)[i] = ((__u32 *)q.daddr)[i];
		((__u32 *)q.daddr)[i] = w;
	}
	port = q.sport;
	q.sport = q.dport;
	q.dport = port;

	xlb_addr_copy(fk.addr, q.daddr);
	fk.port = q.dport;
	fk.proto = q.proto;
	fk.family = q.family;
	svc = bpf_map_lookup_elem(&xlb_frontends, &fk);
	if (!svc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	sel.be = xlb_ct_lookup(&q, svc->id, &sel.backend_id, &sel.hash);
	if (!sel.be)
		return xlb_fail(-XLB_PASS_ICMP_NO_FLOW, reason);
	return xlb_forward(ctx, pkt, svc, &sel, q.daddr, q.dport, 1, bytes, reason);
}

/*
 * Flow cache: per CPU, direct-mapped, in front of the frontend and xlb_ct
 * lookups. An established flow's packets otherwise pay two hash-map lookups
 * (~33 ns for xlb_frontends, ~36 ns for xlb_ct on the benchmark machine:
 * each is a kernel call, and every kernel call/return is expensive under
 * the SRSO mitigation) although only the backend id, the flow hash and the
 * service's fields are used; the cache keeps exactly those per flow key and
 * costs one inlined array lookup and a 40-byte compare.
 *
 * Validity, checked on every hit:
 *   - the backend, from xlb_backends (inlined ARRAY): still ACTIVE with the
 *     generation the flow chose it under (xlb_backend_flow_ok), so backend
 *     removal and id reuse are seen at once, as on the xlb_ct path;
 *   - the configuration generation (xlb_config_gen, inlined ARRAY), which
 *     the agent bumps after any change of frontends, service settings or
 *     source ranges: an established flow sees a service's new settings
 *     (encapsulation, source ranges, a frontend moved to another service or
 *     removed while its backends stay) with its next packet;
 *   - age: an entry serves XLB_FC_TTL_JIFFIES ticks (bpf_jiffies64(), one
 *     inlined load; about 1 s at HZ 250), then the packet takes the full
 *     path and refreshes it, which touches the flow's xlb_ct entry so the
 *     LRU keeps seeing the flow as active.
 * Entries are written after xlb_select() succeeds, so new flows are cached
 * from their second packet. Private to this program (not pinned, not ABI);
 * 96 bytes x 4096 slots per CPU.
 */
#define XLB_FC_SLOT_BITS   12
#define XLB_FC_TTL_JIFFIES 250

struct fc_entry {
	struct xlb_flow_key key; /* client -> frontend, as parsed */
	struct xlb_service svc;	 /* the frontend's xlb_frontends value */
	__u32 backend_id;
	__u32 backend_gen;
	__u32 hash; /* flow hash, from xlb_ct */
	__u32 pad;
	__u64 expires;	  /* jiffies */
	__u64 config_gen; /* xlb_config_gen when filled */
};

/* The current configuration generation (0 before the agent's first bump). */
static __always_inline __u64 xlb_config_gen_now(void)
{
	__u32 zero = 0;
	struct xlb_config_gen *g = bpf_map_lookup_elem(&xlb_config_gen, &zero);

	return g ? g->gen : 0;
}

/* Sizes instead of __type(), as for xlb_nh_cache: not ABI, not in BTF. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct fc_entry));
	__uint(max_entries, 1u << XLB_FC_SLOT_BITS);
} xlb_flow_cache SEC(".maps");

/* A cheap slot hash (not xlb_flow_hash: a miss, which every non-frontend
 * packet is, should cost as little as possible). */
static __always_inline __u32 xlb_fc_slot(const struct xlb_flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = w[0] ^ w[1] ^ w[2] ^ w[3];

	h = xlb_rol32(h, 13) ^ w[4] ^ w[5] ^ w[6] ^ w[7] ^ w[8] ^ w[9];
	return (h * 0x9e3779b1u) >> (32 - XLB_FC_SLOT_BITS);
}

/* Keys are 8-byte aligned: struct xlb_pkt and map values. */
static __always_inline int xlb_fc_key_eq(const struct xlb_flow_key *a, const struct xlb_flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

static __always_inline int xlb_process(struct xdp_md *ctx, __u32 bytes, __u32 *reason)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct xlb_frontend_key fk;
	struct xlb_service *svc;
	struct fc_entry *fc;
	struct xlb_sel sel;
	struct xlb_pkt pkt;
	__u64 now, gen;
	__u32 slot;
	int rc, new_conn;

	rc = xlb_parse(data, data_end, &pkt);
	if (rc)
		return xlb_fail(rc, reason);
	if (pkt.tuple.proto == IPPROTO_ICMP || pkt.tuple.proto == IPPROTO_ICMPV6)
		return xlb_icmp(ctx, &pkt, bytes, reason);

	slot = xlb_fc_slot(&pkt.tuple);
	fc = bpf_map_lookup_elem(&xlb_flow_cache, &slot);
	now = bpf_jiffies64();
	gen = xlb_config_gen_now();
	/* A bare SYN opens a connection: a 4-tuple reused from an earlier one
	 * must not follow it to a terminating backend. */
	new_conn = pkt.tuple.proto == IPPROTO_TCP && (pkt.tcp_flags & 0x12) == 0x02;
	if (fc && now < fc->expires && fc->config_gen == gen &&
	    xlb_fc_key_eq(&fc->key, &pkt.tuple)) {
		sel.be = xlb_backend_get(fc->backend_id);
		if (sel.be && xlb_backend_flow_ok(sel.be, fc->backend_gen) &&
		    (!new_conn || xlb_backend_new_ok(sel.be))) {
			sel.backend_id = fc->backend_id;
			sel.hash = fc->hash;
			sel.new_flow = 0;
			sel.affinity_hit = 0;
			/* fc->key keeps the frontend: pkt.tuple is DNAT'd. */
			return xlb_forward(ctx, &pkt, &fc->svc, &sel, fc->key.daddr, fc->key.dport,
					   0, bytes, reason);
		}
	}

	xlb_addr_copy(fk.addr, pkt.tuple.daddr);
	fk.port = pkt.tuple.dport;
	fk.proto = pkt.tuple.proto;
	fk.family = pkt.tuple.family;
	svc = bpf_map_lookup_elem(&xlb_frontends, &fk);
	if (!svc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	if ((svc->flags & XLB_SVC_F_SOURCE_RANGES) && !xlb_source_allowed(svc, &pkt.tuple))
		return xlb_fail(-XLB_DROP_SOURCE_RANGE, reason);

	rc = xlb_select(svc, &pkt.tuple, new_conn, &sel);
	if (rc)
		return xlb_fail(rc, reason);
	if (fc) {
		fc->key = pkt.tuple;
		fc->svc = *svc;
		fc->backend_id = sel.backend_id;
		fc->backend_gen = sel.be->gen;
		fc->hash = sel.hash;
		fc->expires = now + XLB_FC_TTL_JIFFIES;
		fc->config_gen = gen;
	}
	/* vaddr/vport: the frontend, read from fk because pkt.tuple is
	 * rewritten by the DNAT. */
	return xlb_forward(ctx, &pkt, svc, &sel, fk.addr, fk.port, 0, bytes, reason);
}

SEC("xdp")
int xlb_xdp(struct xdp_md *ctx)
{
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	__u32 bytes = data_end - data, reason = XLB_DROP_TRUNCATED;
	int verdict;

	verdict = xlb_process(ctx, bytes, &reason);
	if (xlb_reason_is_drop(reason))
		xlb_ev_drop(xlb_ctx_data(ctx), xlb_ctx_data_end(ctx), reason, XLB_EV_HOOK_XDP,
			    ctx->ingress_ifindex, bytes);
	return xlb_count_exit(reason, bytes, verdict);
}

char _license[] SEC("license") = "Dual BSD/GPL";
