/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_xdp: the north-south fast path on a frontend node's NIC.
 *
 *   parse (parse.h; a later IPv4 fragment takes the ports its first
 *   fragment recorded, frag.h) -> frontend filter (a clear bit: no
 *   frontend, passed at once; service.h) -> per-CPU flow cache hit (established
 *   flows: skips the next three steps, flowcache.h) or frontend lookup
 *   (service.h) -> loadBalancerSourceRanges (LoadBalancer frontends) ->
 *   xlb_ct / affinity / Maglev (maglev.h); no endpoint: a TCP RST or an
 *   ICMP unreachable (reply.h) unless the service says drop -> one of
 *     - backend on this node: DNAT in place (nat.h), remember the reverse
 *       translation in xlb_dsr_nat, XDP_PASS            (OK_LOCAL_DELIVER)
 *     - Geneve: DNAT the inner packet to the endpoint, add Ethernet + IP +
 *       UDP + Geneve + DSR option (encap.h), MACs from the next hop
 *       (nexthop.h)                                      (OK_XDP_TX/REDIRECT)
 *     - IPIP: inner packet untouched, add Ethernet + IP  (OK_XDP_TX/REDIRECT)
 *     - too big for the tunnel: an ICMP fragmentation needed / packet too
 *       big back to the client (reply.h)                 (OK_ICMP_TOO_BIG)
 *   ICMP "fragmentation needed" / "packet too big" quoting a DSR reply
 *   (frontend -> client) go, unchanged, to the node of the flow's backend
 *   with the Geneve EP option naming the endpoint (OK_ICMP_FORWARD).
 *
 * Every path ends in xlb_exit() (counters.h) with exactly one reason, at
 * hook XLB_HOOK_XDP. Packets that are not ours are passed unchanged;
 * malformed ones are passed or dropped with their reason (see parse.h).
 */
#define XLB_CTX_XDP
#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "csum.h"
#include "conntrack.h"
#include "nexthop.h"
/* New flows read the clock through nexthop.h's per-CPU copy (maglev.h). */
#define xlb_flow_clock() xlb_nh_now()
#include "maglev.h"
#include "service.h"
#include "nat.h"
#include "encap.h"
#include "counters.h"
#include "events.h"
#include "flowcache.h"
#include "frag.h"
#include "reply.h"

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
	rc = xlb_nat(ctx, pkt, XLB_NAT_DST, be->addr, be->port);
	if (rc)
		return xlb_fail(rc, reason);
	if (!bpf_map_lookup_elem(&xlb_dsr_nat, &pkt->tuple)) {
		nat.created_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&xlb_dsr_nat, &pkt->tuple, &nat, BPF_ANY);
	}
	*reason = XLB_OK_LOCAL_DELIVER;
	return XDP_PASS;
}

/* The outer headers at data: Ethernet, IP and the tunnel's, after one
 * bounds check for all of them (the length is a constant per combination). */
static __always_inline int xlb_write_outer_as(void *data, void *data_end, __u8 encap, __u8 outer,
					      __u8 inner, const __u8 *macs, const __u8 *src,
					      const __u8 *dst, __u16 outer_l3_len, __u16 inner_len,
					      __u32 hash, const struct xlb_node_cfg *node, int icmp,
					      const __u8 *vaddr, __be16 vport)
{
	void *ip = data + ETH_HLEN;
	__u8 proto = IPPROTO_UDP, opt_type;
	struct xlb_geneve_out g = {
	    .addr = vaddr,
	    .sport = bpf_htons(XLB_GENEVE_SPORT_BASE + (hash & 0x3fff)),
	    .dport = node->geneve_port,
	    .vni = node->vni,
	    .port = vport,
	    .inner_len = inner_len,
	    .inner_family = inner,
	};

	/* Constants here (icmp is one per inlined caller): an ICMP error
	 * names the endpoint (EP), a client packet its frontend (DSR). */
	if (icmp)
		opt_type = inner == XLB_FAMILY_V6 ? XLB_GENEVE_OPT_EP6 : XLB_GENEVE_OPT_EP4;
	else
		opt_type = inner == XLB_FAMILY_V6 ? XLB_GENEVE_OPT_DSR6 : XLB_GENEVE_OPT_DSR4;
	g.opt_type = opt_type;
	if (data + xlb_encap_hlen(encap, outer, inner) > data_end)
		return -XLB_DROP_ENCAP;
	if (encap != XLB_ENCAP_GENEVE)
		proto = inner == XLB_FAMILY_V6 ? IPPROTO_IPV6 : IPPROTO_IPIP;
	xlb_put_eth_macs(data, macs, bpf_htons(outer == XLB_FAMILY_V6 ? ETH_P_IPV6 : ETH_P_IP));
	if (outer == XLB_FAMILY_V6)
		xlb_put_ip6(ip, src, dst, proto, outer_l3_len - XLB_IP6_HLEN, hash);
	else
		xlb_put_ip4(ip, *(const __u32 *)src, *(const __u32 *)dst, proto, outer_l3_len);
	if (encap == XLB_ENCAP_GENEVE)
		xlb_put_geneve(ip + (outer == XLB_FAMILY_V6 ? XLB_IP6_HLEN : XLB_IP4_HLEN), &g);
	return 0;
}

/* xlb_write_outer_as with the encapsulation and both families as
 * constants, one copy per combination: every length, protocol and option
 * field folds to a constant and the headers are written without branching
 * on the three again (a few ns per tunnelled packet, xlb-perf encap). */
static __always_inline int xlb_write_outer(void *data, void *data_end, __u8 encap, __u8 outer,
					   __u8 inner, const __u8 *macs, const __u8 *src,
					   const __u8 *dst, __u16 outer_l3_len, __u16 inner_len,
					   __u32 hash, const struct xlb_node_cfg *node, int icmp,
					   const __u8 *vaddr, __be16 vport)
{
#define XLB_OUTER(e, o, i)                                                                         \
	xlb_write_outer_as(data, data_end, e, o, i, macs, src, dst, outer_l3_len, inner_len, hash, \
			   node, icmp, vaddr, vport)
#define XLB_OUTER_FAMILIES(e)                                                                      \
	(outer == XLB_FAMILY_V6                                                                    \
	     ? (inner == XLB_FAMILY_V6 ? XLB_OUTER(e, XLB_FAMILY_V6, XLB_FAMILY_V6)                \
				       : XLB_OUTER(e, XLB_FAMILY_V6, XLB_FAMILY_V4))               \
	     : (inner == XLB_FAMILY_V6 ? XLB_OUTER(e, XLB_FAMILY_V4, XLB_FAMILY_V6)                \
				       : XLB_OUTER(e, XLB_FAMILY_V4, XLB_FAMILY_V4)))
	if (encap == XLB_ENCAP_GENEVE)
		return XLB_OUTER_FAMILIES(XLB_ENCAP_GENEVE);
	return XLB_OUTER_FAMILIES(XLB_ENCAP_IPIP);
#undef XLB_OUTER_FAMILIES
#undef XLB_OUTER
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
	__u8 outer = be->node_family, inner = pkt->tuple.family, encap = svc->encap;
	void *data = xlb_ctx_data(ctx), *data_end = xlb_ctx_data_end(ctx);
	struct nh_cache_entry *nh;
	__u32 hlen, inner_len = pkt->l3_len, frame, l3_off = xlb_l3_off(pkt);
	/* Read once: clang 14 otherwise keeps &ctx->ingress_ifindex in a spilled
	 * register and reloads through it, which the verifier rejects
	 * ("dereference of modified ctx ptr"). */
	__u32 in_ifindex = ctx->ingress_ifindex, mtu = 0;
	__u16 outer_l3_len;
	const __u8 *macs;
	int rc, no_neigh;

	if (encap != XLB_ENCAP_IPIP)
		encap = XLB_ENCAP_GENEVE; /* unknown values: the default */
	/* The inner packet keeps its family: an endpoint of the other family
	 * cannot be reached without NAT64. */
	if (encap == XLB_ENCAP_GENEVE && be->family != inner)
		return xlb_fail(-XLB_DROP_BACKEND_MISSING, reason);

	hlen = xlb_encap_hlen(encap, outer, inner);
	outer_l3_len = hlen - ETH_HLEN + inner_len;

	/* Before the DNAT: a packet too big is answered quoting it as the
	 * client sent it. An ICMP error is never answered with another. */
	rc = xlb_nexthop(ctx, in_ifindex, outer, src, be->node, outer_l3_len, &nh, &mtu);
	if (rc == -XLB_DROP_TOO_BIG && !icmp)
		return xlb_reply_too_big(ctx, pkt, mtu - (hlen - ETH_HLEN), reason);
	if (rc < 0)
		return xlb_fail(rc, reason);
	no_neigh = rc == XLB_NH_NO_NEIGH;

	if (encap == XLB_ENCAP_GENEVE && icmp) {
		vaddr = be->addr;
		vport = be->port;
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

	macs = nh->dmac;
	if (no_neigh) {
		/* Handed to the kernel: the frame must stay addressed to this
		 * port, so the outer Ethernet header keeps the MACs it came
		 * with. They are still in the packet where its old Ethernet
		 * header began, hlen - l3_off >= 16 bytes past the new start:
		 * moved down word by word (no stack copy: the program's stack
		 * is at its limit). */
		__u32 *to = data, *from = data + ((hlen - l3_off) & 0x7f);

		if ((void *)(to + 3) > data_end || (void *)(from + 3) > data_end)
			return xlb_fail(-XLB_DROP_ENCAP, reason);
		to[0] = from[0];
		to[1] = from[1];
		to[2] = from[2];
		macs = data;
	}
	rc = xlb_write_outer(data, data_end, encap, outer, inner, macs, src, be->node, outer_l3_len,
			     inner_len, hash, node, icmp, vaddr, vport);
	if (rc)
		return xlb_fail(rc, reason);
	if (encap == XLB_ENCAP_GENEVE && !icmp) {
		/* Geneve carries the client packet DNAT'd to the endpoint:
		 * done last, on the inner packet now at hlen, after the
		 * helper calls (adjust_tail/head), so nothing it computes has
		 * to be kept across them (the program's stack 464 -> 376
		 * bytes). pkt->tuple is not read again on this path (new-flow
		 * events name the client and vaddr/vport). */
		pkt->l4_off = xlb_l4_off(pkt) - l3_off + hlen;
		pkt->l3_off = hlen;
		rc = xlb_nat_fwd(ctx, pkt, be->addr, be->port);
		if (rc)
			return xlb_fail(rc, reason);
	}

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
	const struct xlb_node_cfg *node = xlb_this_node();
	const __u8 *src;
	int verdict;

	if (!node)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);
	src = xlb_node_src(node, be->node_family);
	if (!src)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);

	if (xlb_backend_is_local(be, src)) {
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
	/* Dropped, or answered (too big) instead of forwarded. */
	if (verdict == XDP_DROP || *reason == XLB_OK_ICMP_TOO_BIG)
		return verdict;
	xlb_count_svc(svc->id, bytes, sel->new_flow, sel->affinity_hit);
	xlb_count_backend(sel->backend_id, bytes);
	if (sel->new_flow)
		xlb_ev_new_flow(&pkt->tuple, vaddr, vport, svc->id, sel->backend_id, XLB_HOOK_XDP,
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
	struct xlb_icmp_quote quote;
	struct xlb_flow_key *q = &quote.tuple;
	struct xlb_service *svc;
	struct xlb_sel sel = {};
	__u32 w;
	__be16 port;
	int rc;

	if (pkt->tuple.family == XLB_FAMILY_V4 ? pkt->icmp_type != XLB_ICMP_DEST_UNREACH
					       : pkt->icmp_type != XLB_ICMPV6_PKT_TOOBIG)
		return xlb_fail(-XLB_PASS_L4_PROTO, reason);
	rc = xlb_parse_icmp_quote(ctx, pkt, &quote);
	if (rc)
		return xlb_fail(rc, reason);
	/* The quote is frontend -> client; it must have been sent to the
	 * frontend address it quotes as source. */
	if (!xlb_addr_eq(q->saddr, pkt->tuple.daddr))
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);

		/* Reverse in place: q becomes the client -> frontend flow key. */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		w = ((__u32 *)q->saddr)[i];
		((__u32 *)q->saddr)[i] = ((__u32 *)q->daddr)[i];
		((__u32 *)q->daddr)[i] = w;
	}
	port = q->sport;
	q->sport = q->dport;
	q->dport = port;

	svc = xlb_frontend_lookup(q);
	if (!svc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	sel.hash = xlb_flow_hash(q);
	sel.be = xlb_ct_lookup(q, sel.hash, svc->id, &sel.backend_id);
	if (!sel.be)
		return xlb_fail(-XLB_PASS_ICMP_NO_FLOW, reason);
	return xlb_forward(ctx, pkt, svc, &sel, q->daddr, q->dport, 1, bytes, reason);
}

static __always_inline int xlb_process(struct xdp_md *ctx, __u32 bytes, __u32 *reason)
{
	const struct xlb_service *svc;
	struct fc_entry *fc;
	struct xlb_sel sel;
	struct xlb_pkt pkt;
	__u8 vaddr_buf[16] __attribute__((aligned(4)));
	const __u8 *vaddr;
	__be16 vport;
	__u64 now, gen;
	int rc, new_conn;

	rc = xlb_parse(ctx, &pkt);
	if (rc)
		return xlb_fail(rc, reason);
	if (pkt.frag) {
		/* Only fragments of what a frontend serves are followed. */
		if (pkt.tuple.proto != IPPROTO_TCP && pkt.tuple.proto != IPPROTO_UDP &&
		    pkt.tuple.proto != IPPROTO_SCTP)
			return xlb_fail(-XLB_PASS_FRAGMENT, reason);
		if (pkt.frag == XLB_FRAG_LATER) {
			rc = xlb_frag_follow(&pkt);
			if (rc)
				return xlb_fail(rc, reason);
		}
	}
	if (pkt.tuple.proto == IPPROTO_ICMP || pkt.tuple.proto == IPPROTO_ICMPV6)
		return xlb_icmp(ctx, &pkt, bytes, reason);

	/* A clear bit in the frontend filter: certainly no frontend. */
	if (!xlb_fe_filter_maybe(&pkt.tuple))
		return xlb_fail(-XLB_PASS_NOT_FRONTEND_FILTERED, reason);
	fc = xlb_fc_get(&pkt.tuple);
	/* Never taken (flowcache.h). Tested here rather than in xlb_fc_hit
	 * and xlb_fc_fill: a NULL fc carried to the fill was another state
	 * for the whole frontend and Maglev path (xlb_xdp 184k -> 153k
	 * verified insns). */
	if (!fc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	now = bpf_jiffies64();
	gen = xlb_config_gen_now();
	/* A bare SYN opens a connection: a 4-tuple reused from an earlier one
	 * must not follow it to a terminating backend. */
	new_conn = pkt.tuple.proto == IPPROTO_TCP && (pkt.tcp_flags & 0x12) == 0x02;
	if (xlb_fc_hit(fc, &pkt.tuple, now, gen)) {
		if (!fc->used) {
			fc->used = 1;
			/* The flow's second packet (or its first after a
			 * refill): its xlb_ct way is hit (conntrack.h). */
			xlb_ct_seen_again(&pkt.tuple, fc->hash);
		}
		sel.be = xlb_backend_get(fc->backend_id);
		if (sel.be && xlb_backend_flow_ok(sel.be, fc->backend_gen) &&
		    (!new_conn || xlb_backend_new_ok(sel.be))) {
			sel.backend_id = fc->backend_id;
			sel.hash = fc->hash;
			sel.new_flow = 0;
			sel.affinity_hit = 0;
			svc = &fc->svc;
			/* fc->key keeps the frontend: pkt.tuple is DNAT'd. */
			vaddr = fc->key.daddr;
			vport = fc->key.dport;
			goto forward;
		}
	}

	svc = xlb_fe_cached(&pkt.tuple, gen);
	if (!svc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	/* Set on LoadBalancer ingress frontends only (per frontend, as
	 * kube-proxy: a NodePort of the same service is not filtered). */
	if ((svc->flags & XLB_SVC_F_SOURCE_RANGES) && !xlb_source_allowed(svc, &pkt.tuple))
		return xlb_fail(-XLB_DROP_SOURCE_RANGE, reason);

	rc = xlb_select(svc, &pkt.tuple, new_conn, &sel);
	if (rc == -XLB_DROP_NO_BACKEND && !(svc->flags & XLB_SVC_F_DROP_NO_BACKEND))
		return xlb_reply_reject(ctx, &pkt, reason);
	if (rc)
		return xlb_fail(rc, reason);
	/* Not for a flow served past the insert budget: a flood would
	 * otherwise overwrite the slots of established flows with flows that
	 * never come back (flowcache.h). */
	if (!sel.unpinned)
		xlb_fc_fill(fc, &pkt.tuple, svc, sel.backend_id, sel.be->gen, sel.hash, now, gen);
	/* vaddr/vport: the frontend, kept because pkt.tuple is rewritten by
	 * the DNAT. */
	xlb_addr_copy(vaddr_buf, pkt.tuple.daddr);
	vaddr = vaddr_buf;
	vport = pkt.tuple.dport;
forward:
	/* One copy of the forwarding tail for cached and looked-up flows. */
	if (pkt.frag && (rc = xlb_frag_admit(&pkt, svc)))
		return xlb_fail(rc, reason);
	return xlb_forward(ctx, &pkt, svc, &sel, vaddr, vport, 0, bytes, reason);
}

SEC("xdp")
int xlb_xdp(struct xdp_md *ctx)
{
	__u32 bytes = xlb_ctx_len(ctx), reason = XLB_DROP_TRUNCATED;
	int verdict = xlb_process(ctx, bytes, &reason);

	return xlb_exit(ctx, XLB_HOOK_XDP, reason, bytes, verdict);
}

char _license[] SEC("license") = "Dual BSD/GPL";
