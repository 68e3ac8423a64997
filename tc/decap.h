/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * decap.h: tunnel termination on a node's uplink, tc ingress. One UDP port
 * and VNI carry the load balancer's DSR dispatch and the pod overlay; the
 * Geneve option tells them apart (encap.h reads it). Geneve that is not
 * xlb's (another VNI, version or option class) passes untouched
 * (XLB_PASS_FOREIGN_TUNNEL): another overlay may share the port. xlb's own
 * tunnel traffic is accepted only from the underlay addresses in
 * xlb_tunnel_peers (the nodes, the load balancers): anything else could put
 * packets into pods and plant reverse translations (XLB_DROP_TUNNEL_PEER).
 *
 *   - Geneve, DSR option: the client packet inside was already DNAT'd to
 *     the endpoint by the load balancer; the option names the service
 *     address and port the client used. (client -> endpoint) => service is
 *     remembered in xlb_dsr_nat and the outer headers are stripped. An ICMP
 *     error the load balancer forwards (quoting service -> client) carries an
 *     endpoint option (EP4/EP6) instead and is translated so the endpoint's
 *     socket gets it. Either goes straight into the endpoint's pod when it
 *     runs here (podnet.h: redirect_peer), else to the kernel (an endpoint
 *     on the node itself).
 *   - Geneve, IDENTITY option: the pod overlay. The inner packet goes into
 *     its pod on this node (XLB_OK_POD_DECAP); there is no other place for
 *     it (XLB_DROP_NO_ENDPOINT). The option's identity is the source's
 *     (NetworkPolicy's ingress check, #11, goes before the redirect).
 *   - IPIP / IP6IP6 / IPv6-in-IPv4: the inner packet is as the client sent
 *     it; the node picks the backend with the shared tables (service.h,
 *     maglev.h: conntrack, affinity, Maglev) and accepts only its own.
 *   - A TCP SYN made straight to an endpoint takes over its 4-tuple from an
 *     older load-balanced flow (xlb_decap_forget_direct).
 *
 * API
 *   int xlb_decap(ctx, &reason)   the stage: sets *reason and returns the tc
 *                                 verdict (XLB_PASS_NOT_TUNNEL: not for us)
 */
#ifndef XLB_TC_DECAP_H
#define XLB_TC_DECAP_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "nat.h"
#include "encap.h"
#include "maglev.h"
#include "service.h"
#include "podnet.h"
#include "policy.h"

/* bpf_skb_adjust_room flags (uapi since Linux 6.3, missing from the Debian
 * 12 headers): the L3 family of the packet after the outer header is
 * removed, when it differs. */
#define XLB_ADJ_DECAP_L3_IPV4 (1ULL << 7)
#define XLB_ADJ_DECAP_L3_IPV6 (1ULL << 8)

/* Linear bytes wanted before the outer headers are parsed: Ethernet + IPv4
 * with options + UDP. */
#define XLB_DECAP_PULL_OUTER (ETH_HLEN + 60 + 8)

/* Remembers (client -> endpoint) => service. The entry is written only when
 * it is new or changed, so an established flow costs one lookup. */
static __always_inline int xlb_decap_remember(const struct xlb_flow_key *key,
					      const struct xlb_tunnel *t)
{
	struct xlb_dsr_nat_entry *cur = bpf_map_lookup_elem(&xlb_dsr_nat, key);
	struct xlb_dsr_nat_entry e = {};

	if (cur && cur->vport == t->port && cur->family == t->family &&
	    xlb_addr_eq(cur->vaddr, t->addr))
		return 0;
	xlb_addr_copy(e.vaddr, t->addr);
	e.vport = t->port;
	e.family = t->family;
	e.created_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&xlb_dsr_nat, key, &e, BPF_ANY))
		return -XLB_DROP_NAT;
	return 0;
}

/* Removes everything between the Ethernet header and the inner IP header. */
static __always_inline int xlb_decap_strip(struct __sk_buff *skb, __u32 inner_off,
					   __u8 outer_family, __u8 inner_family)
{
	/* FIXED_GSO: the inner segments keep their size; the kernel would
	 * otherwise grow gso_size by the removed length. */
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	__be16 proto;

	if (outer_family != inner_family)
		flags |=
		    inner_family == XLB_FAMILY_V4 ? XLB_ADJ_DECAP_L3_IPV4 : XLB_ADJ_DECAP_L3_IPV6;
	if (bpf_skb_adjust_room(skb, -(__s32)(inner_off - ETH_HLEN), BPF_ADJ_ROOM_MAC, flags))
		return -XLB_DROP_DECAP;
	if (outer_family != inner_family) {
		/* adjust_room fixed skb->protocol; the frame's EtherType is ours */
		proto = bpf_htons(inner_family == XLB_FAMILY_V4 ? ETH_P_IP : ETH_P_IPV6);
		if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2, 0))
			return -XLB_DROP_DECAP;
	}
	return 0;
}

/* The inner IP header at off, of EtherType `proto`, checked to end within
 * `limit`: an inner packet xlb takes apart. */
static __always_inline int xlb_decap_inner(struct __sk_buff *skb, __u32 off, __be16 proto,
					   __u32 limit, struct xlb_pkt *in)
{
	int rc = xlb_parse_ip(skb, off, proto, in);

	if (rc == -XLB_DROP_BAD_VERSION)
		return -XLB_DROP_BAD_TUNNEL;
	if (!rc)
		rc = xlb_check_l3_len(in, limit);
	if (!rc)
		rc = xlb_parse_ext(skb, in);
	return rc;
}

/* Whether the outer source is a node or load balancer xlb knows. */
static __always_inline int xlb_tunnel_peer_known(const struct xlb_pkt *out)
{
	struct xlb_addr_key k;

	xlb_addr_key_of(&k, out->tuple.saddr, out->tuple.family);
	return bpf_map_lookup_elem(&xlb_tunnel_peers, &k) != NULL;
}

/* After decapsulation: into the pod of `addr` when it runs here, else to
 * the kernel (an endpoint on the node itself). */
static __always_inline int xlb_decap_deliver(struct __sk_buff *skb, const __u8 *addr, __u8 family)
{
	const struct xlb_endpoint *ep = xlb_endpoint_of(addr, family);

	return ep ? xlb_to_endpoint(skb, ep) : TC_ACT_OK;
}

/* The pod overlay: the inner packet for a pod of this node. */
static __always_inline int xlb_decap_overlay(struct __sk_buff *skb, const struct xlb_pkt *out,
					     const struct xlb_tunnel *t, __u32 udp_end,
					     __u32 *reason)
{
	const struct xlb_endpoint *ep;
	struct xlb_pkt in = {};
	int rc;

	rc = xlb_decap_inner(skb, t->inner_off, bpf_htons(t->inner_proto), udp_end, &in);
	if (rc)
		return xlb_fail(rc, reason);
	ep = xlb_endpoint_of(in.tuple.daddr, in.tuple.family);
	if (!ep)
		return xlb_fail(-XLB_DROP_NO_ENDPOINT, reason);
	/* NetworkPolicy: the destination's ingress, the source identity from
	 * the option (policy.h). */
	rc = xlb_policy_check(skb, &in, ep->ifindex, XLB_POLICY_DIR_INGRESS, t->identity,
			      XLB_HOOK_TC_INGRESS);
	if (rc)
		return xlb_fail(rc, reason);
	rc = xlb_decap_strip(skb, t->inner_off, out->tuple.family, in.tuple.family);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_POD_DECAP;
	return xlb_to_endpoint(skb, ep);
}

/* An ICMP error the load balancer forwarded with an EP4/EP6 option, about a
 * reply it saw leave as the service (quoting service -> client): the
 * error's destination and the quoted source become the endpoint
 * t->addr:t->port, so the endpoint's socket gets it. */
static __always_inline int xlb_decap_icmp(struct __sk_buff *skb, struct xlb_pkt *in,
					  const struct xlb_tunnel *t)
{
	struct xlb_icmp_quote q;

	if (in->frag ||
	    in->tuple.proto != (in->tuple.family == XLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
		return -XLB_DROP_BAD_TUNNEL;
	if (xlb_parse_l4(skb, in) || !xlb_icmp_is_error(in->tuple.family, in->icmp_type) ||
	    xlb_parse_icmp_quote(skb, in, &q))
		return -XLB_DROP_BAD_TUNNEL;
	/* the quoted packet must have left from where the error was sent to */
	if (!xlb_addr_eq(in->tuple.daddr, q.tuple.saddr))
		return -XLB_DROP_BAD_TUNNEL;
	return xlb_nat_icmp(skb, in, &q, XLB_NAT_SRC, 1, t->addr, t->port);
}

static __always_inline int xlb_decap_geneve(struct __sk_buff *skb, const struct xlb_node_cfg *node,
					    const struct xlb_pkt *out, __u32 udp_end, __u32 *reason)
{
	struct xlb_tunnel t = {};
	struct xlb_pkt in = {};
	int rc;

	rc = xlb_geneve_parse(skb, xlb_l4_off(out) + sizeof(struct udphdr), udp_end, node->vni, &t);
	if (rc)
		return xlb_fail(rc, reason);
	if (!xlb_tunnel_peer_known(out))
		return xlb_fail(-XLB_DROP_TUNNEL_PEER, reason);
	if (t.inner_proto != ETH_P_IP && t.inner_proto != ETH_P_IPV6)
		return xlb_fail(-XLB_DROP_BAD_TUNNEL, reason);
	if (t.opt == XLB_GENEVE_OPT_IDENTITY)
		return xlb_decap_overlay(skb, out, &t, udp_end, reason);
	rc = xlb_decap_inner(skb, t.inner_off, bpf_htons(t.inner_proto), udp_end, &in);
	if (rc)
		return xlb_fail(rc, reason);
	/* The LB translates within a family: option and packet agree. */
	if (in.tuple.family != t.family)
		return xlb_fail(-XLB_DROP_BAD_TUNNEL, reason);

	if (t.opt == XLB_GENEVE_OPT_DSR4 || t.opt == XLB_GENEVE_OPT_DSR6) {
		/* A later fragment has no ports to remember; the first did. */
		if (in.frag != XLB_FRAG_LATER) {
			if (in.tuple.proto != IPPROTO_TCP && in.tuple.proto != IPPROTO_UDP &&
			    in.tuple.proto != IPPROTO_SCTP)
				return xlb_fail(-XLB_DROP_BAD_TUNNEL, reason);
			rc = xlb_parse_l4(skb, &in);
			if (!rc)
				rc = xlb_decap_remember(&in.tuple, &t);
			if (rc)
				return xlb_fail(rc, reason);
		}
		/* NetworkPolicy: a pod of this node as the backend checks its
		 * ingress, the client by its address (policy.h). */
		{
			const struct xlb_endpoint *ep =
			    xlb_endpoint_of(in.tuple.daddr, in.tuple.family);

			if (ep) {
				rc = xlb_policy_check(skb, &in, ep->ifindex, XLB_POLICY_DIR_INGRESS,
						      0, XLB_HOOK_TC_INGRESS);
				if (rc)
					return xlb_fail(rc, reason);
			}
		}
		*reason = XLB_OK_TC_DECAP;
	} else {
		rc = xlb_decap_icmp(skb, &in, &t);
		if (rc)
			return xlb_fail(rc, reason);
		*reason = XLB_OK_ICMP_FORWARD;
		/* the error now goes to the endpoint */
		xlb_addr_copy(in.tuple.daddr, t.addr);
	}
	rc = xlb_decap_strip(skb, t.inner_off, out->tuple.family, in.tuple.family);
	return rc ? xlb_fail(rc, reason) : xlb_decap_deliver(skb, in.tuple.daddr, in.tuple.family);
}

/* IPIP / IP6IP6 / mixed: the inner packet is as the client sent it (to the
 * service address). The node picks the backend itself with the tables every
 * node shares: the frontend, then xlb_select (the same hash and table as
 * the load balancer, so the same backend). Only a backend on this node is
 * accepted; the packet is then DNAT'd to it and handled as Geneve. */
static __always_inline int xlb_decap_ipip(struct __sk_buff *skb, const struct xlb_node_cfg *node,
					  const struct xlb_pkt *out, __u32 *reason)
{
	__be16 proto = bpf_htons(out->tuple.proto == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6);
	struct xlb_tunnel t = {};
	struct xlb_service *svc;
	struct xlb_sel sel = {};
	struct xlb_pkt in = {};
	int rc;

	if (!xlb_tunnel_peer_known(out))
		return xlb_fail(-XLB_DROP_TUNNEL_PEER, reason);
	xlb_ctx_pull(skb, xlb_l4_off(out) + 60 + 20);
	rc = xlb_decap_inner(skb, xlb_l4_off(out), proto, out->l3_off + out->l3_len, &in);
	if (rc)
		return xlb_fail(rc, reason);
	/* The load balancer passes fragments to its own kernel: none come. */
	if (in.frag)
		return xlb_fail(-XLB_PASS_FRAGMENT, reason);
	if (in.tuple.proto != IPPROTO_TCP && in.tuple.proto != IPPROTO_UDP &&
	    in.tuple.proto != IPPROTO_SCTP)
		return xlb_fail(-XLB_DROP_BAD_TUNNEL, reason);
	rc = xlb_parse_l4(skb, &in);
	if (rc)
		return xlb_fail(rc, reason);
	svc = xlb_frontend_lookup(&in.tuple);
	if (!svc)
		return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);
	/* new_conn 0: the IPIP path keeps an existing entry's backend even
	 * for a SYN (it decides only for flows the LB already sent here). */
	rc = xlb_select(svc, &in.tuple, 0, &sel);
	if (rc)
		return xlb_fail(rc, reason);
	if (sel.be->family != in.tuple.family) /* no NAT64 */
		return xlb_fail(-XLB_DROP_BACKEND_MISSING, reason);
	if (!xlb_backend_is_local(sel.be, xlb_node_src(node, sel.be->node_family)))
		return xlb_fail(-XLB_DROP_NOT_LOCAL, reason);
	/* remembered as delivered: client -> endpoint => service */
	xlb_addr_copy(t.addr, in.tuple.daddr);
	t.port = in.tuple.dport;
	t.family = in.tuple.family;
	rc = xlb_nat(skb, &in, XLB_NAT_DST, sel.be->addr, sel.be->port);
	if (!rc)
		rc = xlb_decap_remember(&in.tuple, &t);
	if (!rc)
		rc = xlb_decap_strip(skb, xlb_l3_off(&in), out->tuple.family, in.tuple.family);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_TC_DECAP;
	return xlb_decap_deliver(skb, sel.be->addr, sel.be->family);
}

/* A TCP connection opened directly to an endpoint (not through the
 * tunnel) takes its 4-tuple over: a reverse translation left by an earlier
 * load-balanced connection with the same 4-tuple must not rewrite this one's
 * replies to the service address. Only bare SYNs pay the delete. */
static __always_inline void xlb_decap_forget_direct(struct __sk_buff *skb, struct xlb_pkt *pkt)
{
	if (pkt->tuple.proto != IPPROTO_TCP || pkt->frag == XLB_FRAG_LATER)
		return;
	if (xlb_parse_l4(skb, pkt) || (pkt->tcp_flags & 0x12) != 0x02)
		return;
	bpf_map_delete_elem(&xlb_dsr_nat, &pkt->tuple);
}

static __always_inline int xlb_decap(struct __sk_buff *skb, __u32 *reason)
{
	const struct xlb_node_cfg *node = xlb_this_node();
	const __u8 *own;
	struct udphdr *udp;
	struct xlb_pkt out = {};
	__u32 udp_end;
	int rc;

	*reason = XLB_PASS_NOT_TUNNEL;
	if (!node) /* an array of one: never, but the verifier asks */
		return TC_ACT_OK;
	xlb_ctx_pull(skb, XLB_DECAP_PULL_OUTER);
	rc = xlb_parse_eth_ip(skb, &out);
	if (rc)
		return xlb_fail(rc, reason);
	own = xlb_node_src(node, out.tuple.family);
	if (!own || (out.tuple.family == XLB_FAMILY_V4 ? *(__u32 *)out.tuple.daddr != *(__u32 *)own
						       : !xlb_addr_eq(out.tuple.daddr, own))) {
		xlb_decap_forget_direct(skb, &out);
		return TC_ACT_OK;
	}
	if (out.tuple.proto != IPPROTO_UDP && out.tuple.proto != IPPROTO_IPIP &&
	    out.tuple.proto != IPPROTO_IPV6)
		return TC_ACT_OK;
	if (out.frag)
		return xlb_fail(-XLB_PASS_FRAGMENT, reason);
	if (out.tuple.proto != IPPROTO_UDP) {
		rc = xlb_check_l3_len(&out, skb->len);
		return rc ? xlb_fail(rc, reason) : xlb_decap_ipip(skb, node, &out, reason);
	}
	udp = xlb_ctx_data(skb) + xlb_l4_off(&out);
	if ((void *)(udp + 1) > xlb_ctx_data_end(skb))
		return xlb_fail(-XLB_DROP_TRUNCATED, reason);
	if (udp->dest != node->geneve_port)
		return TC_ACT_OK;
	udp_end = out.l4_off + bpf_ntohs(udp->len);
	rc = xlb_check_l3_len(&out, skb->len);
	if (rc)
		return xlb_fail(rc, reason);
	if (udp_end < out.l4_off + sizeof(*udp) + sizeof(struct xlb_geneve_hdr) ||
	    udp_end > out.l3_off + out.l3_len)
		return xlb_fail(-XLB_DROP_BAD_LEN, reason);
	return xlb_decap_geneve(skb, node, &out, udp_end, reason);
}

#endif /* XLB_TC_DECAP_H */
