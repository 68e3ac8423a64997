/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * policy.h: NetworkPolicy at a pod's host veth (#11; maps and their rules in
 * xlb_abi.h). Called where a packet leaves its source pod (egress, in
 * xlb_pod_from before any forwarding: the packet already carries the
 * backend's address, service translation having happened at the socket or
 * in the load balancer) and where it is handed to its destination pod
 * (ingress: the local redirect, overlay decap, the host stack's delivery).
 *
 *   1. endpoint without an xlb_policy_ep entry: pass (one hash lookup)
 *   2. xlb_policy_ct has the flow with this direction's flag, or its
 *      reverse with the other direction's (a reply): pass, refresh
 *   3. not isolated in this direction (isolated in the other): record the
 *      flow so its replies pass the other direction's check
 *   4. peer identity: given (a local pod's, the overlay option's) or from
 *      xlb_ip_identity (pods' addresses, ipBlock prefixes; else WORLD);
 *      XLB_ID_HOST (this node) always passes, as upstream says
 *   5. xlb_policy_exact (single ports), then (if the endpoint has such
 *      entries) xlb_policy (LPM over the port bits) for the peer's
 *      identity, its ipBlock prefix, and any peer: found: record, pass; else
 *      DROP_POLICY_INGRESS / DROP_POLICY_EGRESS
 * A new connection's verdict (4-5) is sent up the event stream as
 * XLB_EV_POLICY when a listener wants it (policy logs): one ARRAY lookup
 * otherwise, and nothing for established flows.
 *
 * Established connections outlive a policy change that would deny them
 * (until idle for XLB_POLICY_CT_*_IDLE_S): the choice #11 documents.
 *
 * API
 *   int xlb_policy_check(skb, &pkt, ifindex, dir, peer_identity, hook)
 *       0 or -XLB_DROP_POLICY_*; peer_identity 0: look it up by address.
 */
#ifndef XLB_TC_POLICY_H
#define XLB_TC_POLICY_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "events.h"

/* The transport ports of TCP, UDP and SCTP (the first four bytes of each)
 * into pkt->tuple; other protocols and later fragments keep 0. */
static __always_inline void xlb_policy_ports(struct __sk_buff *skb, struct xlb_pkt *pkt)
{
	__be16 ports[2];

	if (pkt->frag & XLB_FRAG_LATER)
		return;
	xlb_parse_ext(skb, pkt);
	if (pkt->tuple.proto != IPPROTO_TCP && pkt->tuple.proto != IPPROTO_UDP &&
	    pkt->tuple.proto != IPPROTO_SCTP)
		return;
	if (bpf_skb_load_bytes(skb, xlb_l4_off(pkt), ports, sizeof(ports)))
		return;
	pkt->tuple.sport = ports[0];
	pkt->tuple.dport = ports[1];
}

static __always_inline void xlb_policy_addr(const __u8 *addr, __u8 family,
					    struct xlb_addr_identity *out)
{
	struct xlb_cidr_key k = {};
	const struct xlb_addr_identity *v;

	k.prefixlen = 32 + (family == XLB_FAMILY_V4 ? 32 : 128);
	k.family = family;
	xlb_addr_copy(k.addr, addr);
	v = bpf_map_lookup_elem(&xlb_ip_identity, &k);
	if (v) {
		*out = *v;
	} else {
		out->identity = XLB_ID_WORLD;
		out->cidr_identity = 0;
	}
}

/* xlb_policy_exact (single ports: one hash lookup whatever the rule
 * count), then, if the endpoint has any in this direction, xlb_policy (the
 * trie: ranges, any port, any protocol). */
static __always_inline const struct xlb_policy_entry *
xlb_policy_lookup(__u32 ep, __u8 dir, __u32 identity, __u8 proto, __be16 port, __u32 lpm)
{
	const struct xlb_policy_entry *e;
	struct xlb_policy_key k = {
	    .prefixlen = XLB_POLICY_KEY_BITS,
	    .ep = ep,
	    .identity = identity,
	    .dir = dir,
	    .proto = proto,
	    .port = port,
	};

	e = bpf_map_lookup_elem(&xlb_policy_exact, &k);
	if (e || !lpm)
		return e;
	return bpf_map_lookup_elem(&xlb_policy, &k);
}

static __always_inline int xlb_policy_ct_fresh(const struct xlb_policy_ct *ct, __u8 proto,
					       __u64 now)
{
	__u64 idle = proto == IPPROTO_TCP ? XLB_POLICY_CT_TCP_IDLE_S : XLB_POLICY_CT_OTHER_IDLE_S;

	return now - ct->last_ns < idle * 1000000000ULL;
}

static __always_inline void xlb_policy_event(const struct xlb_pkt *pkt, __u32 ifindex, __u8 dir,
					     __u32 peer, __u32 policy, __u32 reason, __u8 hook,
					     __u32 len)
{
	struct xlb_event *ev;

	if (!xlb_ev_wanted(XLB_EV_F_POLICY))
		return;
	ev = xlb_ev_reserve(XLB_EV_POLICY, hook, ifindex, len);
	if (!ev)
		return;
	ev->reason = reason;   /* 0: allowed; else DROP_POLICY_* */
	ev->svc_id = dir;      /* XLB_POLICY_DIR_* */
	ev->backend_id = peer; /* the peer's identity */
	ev->policy_id = policy;
	ev->tuple = pkt->tuple;
	bpf_ringbuf_submit(ev, 0);
	xlb_ev_count(XLB_EV_STAT_SENT);
}

static __always_inline int xlb_policy_check(struct __sk_buff *skb, struct xlb_pkt *pkt,
					    __u32 ifindex, __u8 dir, __u32 peer_identity, __u8 hook)
{
	const struct xlb_policy_ep *pe = bpf_map_lookup_elem(&xlb_policy_ep, &ifindex);
	const struct xlb_policy_entry *e;
	struct xlb_addr_identity peer;
	struct xlb_policy_ct *ct, fresh = {};
	struct xlb_flow_key rev = {};
	__u32 mine, theirs, isolated, lpm, policy = 0;
	__u64 now;

	if (!pe)
		return 0;
	xlb_policy_ports(skb, pkt);
	mine = dir == XLB_POLICY_DIR_INGRESS ? XLB_PCT_F_INGRESS : XLB_PCT_F_EGRESS;
	theirs = dir == XLB_POLICY_DIR_INGRESS ? XLB_PCT_F_EGRESS : XLB_PCT_F_INGRESS;
	isolated = pe->flags &
		   (dir == XLB_POLICY_DIR_INGRESS ? XLB_POLICY_F_INGRESS : XLB_POLICY_F_EGRESS);
	lpm = pe->flags &
	      (dir == XLB_POLICY_DIR_INGRESS ? XLB_POLICY_F_INGRESS_LPM : XLB_POLICY_F_EGRESS_LPM);
	now = bpf_ktime_get_ns();

	ct = bpf_map_lookup_elem(&xlb_policy_ct, &pkt->tuple);
	if (ct && xlb_policy_ct_fresh(ct, pkt->tuple.proto, now) && (ct->flags & mine)) {
		ct->last_ns = now;
		return 0;
	}
	xlb_addr_copy(rev.saddr, pkt->tuple.daddr);
	xlb_addr_copy(rev.daddr, pkt->tuple.saddr);
	rev.sport = pkt->tuple.dport;
	rev.dport = pkt->tuple.sport;
	rev.proto = pkt->tuple.proto;
	rev.family = pkt->tuple.family;
	{
		struct xlb_policy_ct *r = bpf_map_lookup_elem(&xlb_policy_ct, &rev);

		if (r && xlb_policy_ct_fresh(r, rev.proto, now) && (r->flags & theirs)) {
			r->last_ns = now;
			return 0;
		}
	}

	if (isolated) {
		xlb_policy_addr(dir == XLB_POLICY_DIR_INGRESS ? pkt->tuple.saddr : pkt->tuple.daddr,
				pkt->tuple.family, &peer);
		if (peer_identity)
			peer.identity = peer_identity;
		if (peer.identity != XLB_ID_HOST) {
			e = xlb_policy_lookup(ifindex, dir, peer.identity, pkt->tuple.proto,
					      pkt->tuple.dport, lpm);
			if (!e && peer.cidr_identity)
				e = xlb_policy_lookup(ifindex, dir, peer.cidr_identity,
						      pkt->tuple.proto, pkt->tuple.dport, lpm);
			if (!e)
				e = xlb_policy_lookup(ifindex, dir, XLB_ID_UNKNOWN,
						      pkt->tuple.proto, pkt->tuple.dport, lpm);
			if (!e) {
				__u32 reason = dir == XLB_POLICY_DIR_INGRESS
						   ? XLB_DROP_POLICY_INGRESS
						   : XLB_DROP_POLICY_EGRESS;

				xlb_policy_event(pkt, ifindex, dir, peer.identity, 0, reason, hook,
						 skb->len);
				return -(int)reason;
			}
			policy = e->policy;
		}
		xlb_policy_event(pkt, ifindex, dir, peer.identity, policy, 0, hook, skb->len);
	}

	/* Record the flow: later packets and replies pass on it. */
	if (ct) {
		if (!xlb_policy_ct_fresh(ct, pkt->tuple.proto, now))
			ct->flags = 0;
		ct->flags |= mine;
		ct->last_ns = now;
		if (policy)
			ct->policy = policy;
		return 0;
	}
	fresh.last_ns = now;
	fresh.flags = mine;
	fresh.policy = policy;
	bpf_map_update_elem(&xlb_policy_ct, &pkt->tuple, &fresh, BPF_ANY);
	return 0;
}

#endif /* XLB_TC_POLICY_H */
