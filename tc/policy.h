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
 *      reverse with the other direction's (a reply): pass, refresh; an
 *      ICMP error quoting a flow found so: pass (related)
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

/* The connection tracked under `key` passed the check `flag` and is fresh:
 * refreshed, 1. */
static __always_inline int xlb_policy_ct_seen(const struct xlb_flow_key *key, __u32 flag, __u64 now)
{
	struct xlb_policy_ct *ct = bpf_map_lookup_elem(&xlb_policy_ct, key);

	if (!ct || !xlb_policy_ct_fresh(ct, key->proto, now) || !(ct->flags & flag))
		return 0;
	ct->last_ns = now;
	return 1;
}

/* Private to tc (not ABI): room for an ICMP error's quoted headers and
 * flow keys. The check runs inside stages whose frames leave little stack
 * (decap's is 432 of 512). Sizes instead of __type() keep it out of BTF (no
 * Rust mirror wanted). */
struct xlb_policy_scratch {
	struct xlb_flow_key quote;
	struct xlb_flow_key rev;
	struct iphdr ip;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct xlb_policy_scratch));
	__uint(max_entries, 1);
} xlb_policy_scratch SEC(".maps");

/* An ICMP(v6) error (destination unreachable, too big, time exceeded,
 * parameter problem; its header at `off`): the TCP/UDP/SCTP flow it quotes, in the quoted
 * packet's own direction, into k->quote; -1 for anything else. Read with
 * bpf_skb_load_bytes, as the ports are: the callers hold packet pointers a
 * pull would invalidate. */
static __always_inline int xlb_policy_icmp_quote(struct __sk_buff *skb, __u32 off, __u8 family,
						 struct xlb_policy_scratch *k)
{
	struct xlb_flow_key *q = &k->quote;
	__u8 b;

	if (bpf_skb_load_bytes(skb, off, &b, 1) || !xlb_icmp_is_error(family, b))
		return -1;
	off += sizeof(struct xlb_icmp_hdr);
	if (family == XLB_FAMILY_V4) {
		if (bpf_skb_load_bytes(skb, off, &k->ip, sizeof(k->ip)) || k->ip.version != 4 ||
		    k->ip.ihl < 5 || (k->ip.frag_off & bpf_htons(XLB_IP_OFFSET)))
			return -1;
		q->proto = k->ip.protocol;
		*(__u32 *)q->saddr = k->ip.saddr;
		*(__u32 *)q->daddr = k->ip.daddr;
		off += k->ip.ihl * 4;
	} else {
		if (bpf_skb_load_bytes(skb, off, &b, 1) || b >> 4 != 6 ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, nexthdr), &q->proto,
				       1) ||
		    bpf_skb_load_bytes(skb, off + offsetof(struct ipv6hdr, saddr), q->saddr, 32))
			return -1; /* saddr and daddr: adjacent in both */
		off += sizeof(struct ipv6hdr);
	}
	if ((q->proto != IPPROTO_TCP && q->proto != IPPROTO_UDP && q->proto != IPPROTO_SCTP) ||
	    bpf_skb_load_bytes(skb, off & XLB_L4_OFF_MASK, &q->sport, 4))
		return -1; /* sport and dport: adjacent in both */
	q->family = family;
	return 0;
}

/* An ICMP error about a tracked connection is part of it (path MTU
 * discovery, a closed port's answer): it quotes a packet of the flow the
 * endpoint sent, which the flow's first packet recorded in this packet's
 * other direction (`theirs`: the endpoint opened it) or, reversed, in this
 * one (`mine`: it answered). 1: related (passes unrecorded). Scalars for
 * arguments: a global function's types are in BTF, and xlb_pkt is not ABI. */
static __noinline int xlb_policy_icmp_related(struct __sk_buff *skb, __u32 l4_off, __u8 family,
					      __u32 mine, __u32 theirs)
{
	struct xlb_policy_scratch *k;
	__u32 zero = 0;
	__u64 now;

	k = bpf_map_lookup_elem(&xlb_policy_scratch, &zero);
	if (!k || !skb)
		return 0;
	__builtin_memset(k, 0, sizeof(*k));
	if (xlb_policy_icmp_quote(skb, l4_off, family, k))
		return 0;
	now = bpf_ktime_get_ns();
	if (xlb_policy_ct_seen(&k->quote, theirs, now))
		return 1;
	xlb_flow_reverse(&k->rev, &k->quote);
	return xlb_policy_ct_seen(&k->rev, mine, now);
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
	xlb_flow_reverse(&rev, &pkt->tuple);
	if (xlb_policy_ct_seen(&rev, theirs, now))
		return 0;
	if ((pkt->tuple.proto == IPPROTO_ICMP || pkt->tuple.proto == IPPROTO_ICMPV6) &&
	    !(pkt->frag & XLB_FRAG_LATER) &&
	    xlb_policy_icmp_related(skb, xlb_l4_off(pkt), pkt->tuple.family, mine, theirs))
		return 0;

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
