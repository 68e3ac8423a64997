/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * masq.h: masquerade of pods' traffic leaving the cluster — a source NAT
 * to the node's address with port allocation, done on the uplink (tc
 * egress), and its reverse for the replies (tc ingress, delivered straight
 * into the pod). Tables and limits: xlb_snat / xlb_snat_rev / xlb_snat_stats
 * in xlb_abi.h.
 *
 * What is masqueraded: TCP, UDP and ICMP echo requests from a pod of this
 * node (xlb_endpoints) to an address outside every pod range
 * (xlb_pod_routes) and outside the non-masquerade list (xlb_nonmasq), when
 * xlb_podnet has XLB_PODNET_F_MASQ. A mapping is made only by what opens a
 * flow: a TCP SYN without ACK, any UDP datagram, an echo request. A TCP
 * segment without a mapping is a reply to a connection made to the pod (a
 * routed underlay reaching pod addresses) or of a flow whose mapping was
 * evicted: it keeps its source (XLB_PASS_MASQ_NO_STATE).
 *
 * Ports: the first candidate comes from the flow hash, the next
 * XLB_SNAT_TRIES - 1 at random in [masq_port_min, masq_port_max] (default
 * 61000-65535, above Linux's ephemeral range so the node's own sockets never
 * meet them). A port is taken by inserting the reverse entry with
 * BPF_NOEXIST, atomic against other CPUs; a taken port is a collision
 * (xlb_snat_stats.collisions), unless its mapping has been idle longer than
 * XLB_SNAT_TCP_IDLE_S / XLB_SNAT_OTHER_IDLE_S: then it is taken over
 * (reclaimed). When every candidate is taken the packet is dropped
 * (XLB_DROP_SNAT_EXHAUSTED, xlb_snat_stats.exhausted). Ports are per remote
 * address, port and protocol: one remote endpoint can hold
 * max - min + 1 flows of a node at once. The tables are LRU: when full,
 * the least recently used mapping goes; a forward entry whose reverse one
 * went (or was reclaimed) gets a new port at its next packet.
 *
 * API
 *   int xlb_masq(skb, &pkt, &reason)        egress stage; pkt parsed to L4;
 *       leaves *reason alone for a packet it does not masquerade
 *   int xlb_masq_reply(skb, &pkt, &reason)  ingress stage: a reply to a
 *       mapping is translated back and redirected into its pod;
 *       XLB_PASS_NO_NAT when the packet is not one
 */
#ifndef XLB_TC_MASQ_H
#define XLB_TC_MASQ_H

#include "maps.h"
#include "ctx.h"
#include "parse.h"
#include "nat.h"
#include "conntrack.h"
#include "podnet.h"

#define XLB_ICMP_ECHO_REQUEST  128 /* ICMPv6 */
#define XLB_ICMP_ECHO_REPLY    129
#define XLB_ICMP4_ECHO_REQUEST 8
#define XLB_ICMP4_ECHO_REPLY   0
#define XLB_SNAT_REFRESH_NS    1000000000ull

static __always_inline struct xlb_snat_stats *xlb_snat_stats_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&xlb_snat_stats, &zero);
}

static __always_inline int xlb_is_icmp(const struct xlb_pkt *pkt)
{
	return pkt->tuple.proto ==
	       (pkt->tuple.family == XLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6);
}

/* An ICMP echo's identifier (network order); 0 for anything else. */
static __always_inline int xlb_echo_id(struct __sk_buff *skb, const struct xlb_pkt *pkt,
				       int request, __be16 *id)
{
	__u8 want = pkt->tuple.family == XLB_FAMILY_V4
			? (request ? XLB_ICMP4_ECHO_REQUEST : XLB_ICMP4_ECHO_REPLY)
			: (request ? XLB_ICMP_ECHO_REQUEST : XLB_ICMP_ECHO_REPLY);
	struct xlb_icmp_hdr *ih = xlb_ctx_data(skb) + xlb_l4_off(pkt);

	if (pkt->icmp_type != want || pkt->icmp_code != 0)
		return 0;
	if ((void *)(ih + 1) > xlb_ctx_data_end(skb))
		return 0;
	*id = *(__be16 *)&ih->rest;
	return 1;
}

static __always_inline __u64 xlb_snat_idle_ns(__u8 proto)
{
	return (proto == IPPROTO_TCP ? XLB_SNAT_TCP_IDLE_S : XLB_SNAT_OTHER_IDLE_S) * 1000000000ull;
}

/* Rewrites an ICMP echo's address (`which` side) and identifier. */
static __always_inline int xlb_nat_echo(struct __sk_buff *skb, struct xlb_pkt *pkt, int which,
					const __u8 *addr, __be16 old_id, __be16 id)
{
	__u8 *taddr = which == XLB_NAT_DST ? pkt->tuple.daddr : pkt->tuple.saddr;
	__u8 family = pkt->tuple.family;
	__u32 l4 = xlb_l4_off(pkt);
	__u64 pseudo;
	int rc;

	rc = xlb_nat_addr(skb, xlb_l3_off(pkt), xlb_ip_addr_off(family, which), family, taddr, addr,
			  &pseudo);
	if (rc)
		return rc;
	rc = xlb_ctx_store(skb, l4 + offsetof(struct xlb_icmp_hdr, rest), &id, 2);
	if (rc)
		return rc;
	/* ICMPv4's checksum does not cover the addresses, ICMPv6's does. */
	return xlb_ctx_l4_csum(skb, l4 + offsetof(struct xlb_icmp_hdr, checksum),
			       family == XLB_FAMILY_V6 ? pseudo : 0, xlb_csum_diff2(0, old_id, id),
			       family == XLB_FAMILY_V6 ? XLB_CSUM_V6 : 0);
}

/* The reply key of a mapping: outside -> node:port. */
static __always_inline void xlb_snat_rev_key(struct xlb_flow_key *rev,
					     const struct xlb_flow_key *fwd, const __u8 *nat_addr,
					     __be16 nat_port)
{
	__builtin_memset(rev, 0, sizeof(*rev));
	xlb_addr_copy(rev->saddr, fwd->daddr);
	xlb_addr_set(rev->daddr, nat_addr, fwd->family);
	rev->sport = fwd->dport;
	rev->dport = nat_port;
	rev->proto = fwd->proto;
	rev->family = fwd->family;
}

/* xlb_snat_alloc's reverse key and value, per CPU: off its stack, which
 * the 512 bytes a call chain may use leave too small for them under
 * xlb_tc_uplink_egress's frame. Sizes instead of __type(), as for
 * xlb_nh_cache: not ABI. */
struct xlb_snat_scratch {
	struct xlb_flow_key rev;
	struct xlb_snat_entry back;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct xlb_snat_scratch));
	__uint(max_entries, 1);
} xlb_snat_scratch SEC(".maps");

/* A port for the flow `fwd` (ICMP echo: sport is the identifier), mapping
 * written both ways; -XLB_DROP_SNAT_EXHAUSTED when none is free. `out`
 * comes with the node's address and family set (the rest zero) and gets
 * the port and time.
 *
 * A global function (not static, not inlined), as xlb_crc32c_port_delta:
 * the verifier checks it once, with unknown arguments, instead of walking
 * its 16 tries once per path of xlb_tc_egress that reaches it (45 paths):
 * xlb_tc_egress 212k -> 109k verified insns. The call (~20 ns) is paid once
 * per new masqueraded flow, next to 2-3 LRU hash updates. Its pointers are
 * to the caller's stack; the verifier lets a global function assume
 * nothing about them, hence the NULL test. */
__noinline int xlb_snat_alloc(const struct xlb_flow_key *fwd, struct xlb_snat_entry *out,
			      __u32 port_min, __u32 port_max)
{
	struct xlb_snat_stats *st = xlb_snat_stats_get();
	struct xlb_snat_scratch *sc;
	struct xlb_snat_entry *cur;
	__u32 range, cand, zero = 0;
	__u64 now, idle;
	__be16 port;

	sc = bpf_map_lookup_elem(&xlb_snat_scratch, &zero);
	if (!fwd || !out || !sc)
		return -XLB_DROP_NAT;
	if (port_max < port_min || !port_min)
		return -XLB_DROP_SNAT_EXHAUSTED;
	range = port_max - port_min + 1;
	now = bpf_ktime_get_ns();
	idle = xlb_snat_idle_ns(fwd->proto);
	__builtin_memset(&sc->back, 0, sizeof(sc->back));
	xlb_addr_copy(sc->back.addr, fwd->saddr);
	sc->back.port = fwd->sport;
	sc->back.family = fwd->family;
	sc->back.last_ns = now;
	cand = xlb_flow_hash(fwd);
	for (int i = 0; i < XLB_SNAT_TRIES; i++) {
		port = bpf_htons(port_min + cand % range);
		xlb_snat_rev_key(&sc->rev, fwd, out->addr, port);
		if (!bpf_map_update_elem(&xlb_snat_rev, &sc->rev, &sc->back, BPF_NOEXIST))
			goto found;
		cur = bpf_map_lookup_elem(&xlb_snat_rev, &sc->rev);
		if (cur && now - cur->last_ns > idle &&
		    !bpf_map_update_elem(&xlb_snat_rev, &sc->rev, &sc->back, BPF_EXIST)) {
			if (st)
				st->reclaimed++;
			goto found;
		}
		if (st)
			st->collisions++;
		cand = bpf_get_prandom_u32();
	}
	if (st)
		st->exhausted++;
	return -XLB_DROP_SNAT_EXHAUSTED;
found:
	out->port = port;
	out->last_ns = now;
	if (bpf_map_update_elem(&xlb_snat, fwd, out, BPF_ANY)) {
		bpf_map_delete_elem(&xlb_snat_rev, &sc->rev);
		return -XLB_DROP_NAT;
	}
	if (st)
		st->allocated++;
	return 0;
}

/* The mapping of `fwd` if both directions still hold it (refreshed once a
 * second), else NULL. */
static __always_inline struct xlb_snat_entry *xlb_snat_lookup(const struct xlb_flow_key *fwd)
{
	struct xlb_snat_entry *m = bpf_map_lookup_elem(&xlb_snat, fwd), *back;
	struct xlb_flow_key rev;
	__u64 now;

	if (!m)
		return NULL;
	xlb_snat_rev_key(&rev, fwd, m->addr, m->port);
	back = bpf_map_lookup_elem(&xlb_snat_rev, &rev);
	if (!back || back->port != fwd->sport || !xlb_addr_eq(back->addr, fwd->saddr))
		return NULL; /* evicted or taken over: a new port */
	now = bpf_ktime_get_ns();
	if (now - m->last_ns > XLB_SNAT_REFRESH_NS) {
		m->last_ns = now;
		back->last_ns = now;
	}
	return m;
}

static __always_inline int xlb_masq(struct __sk_buff *skb, struct xlb_pkt *pkt, __u32 *reason)
{
	const struct xlb_podnet_cfg *cfg = xlb_podnet_cfg_get();
	const struct xlb_node_cfg *node = xlb_this_node();
	struct xlb_snat_entry *m, fresh;
	struct xlb_flow_key fwd;
	struct xlb_cidr_key ck;
	const __u8 *nat_addr;
	__be16 id = 0;
	int rc, icmp = xlb_is_icmp(pkt);

	if (!cfg || !(cfg->flags & XLB_PODNET_F_MASQ) || !node)
		return TC_ACT_OK; /* the caller's reason stands */
	if (!xlb_endpoint_of(pkt->tuple.saddr, pkt->tuple.family))
		return TC_ACT_OK; /* not a pod of this node */
	if (xlb_route_of(pkt->tuple.daddr, pkt->tuple.family))
		return TC_ACT_OK; /* a pod range: not leaving the cluster */
	xlb_cidr_key_of(&ck, pkt->tuple.daddr, pkt->tuple.family);
	if (bpf_map_lookup_elem(&xlb_nonmasq, &ck)) {
		*reason = XLB_PASS_NO_MASQ;
		return TC_ACT_OK;
	}
	if (pkt->frag) {
		*reason = XLB_PASS_FRAGMENT; /* later fragments could not follow */
		return TC_ACT_OK;
	}
	nat_addr = xlb_node_src(node, pkt->tuple.family);
	if (!nat_addr)
		return xlb_fail(-XLB_DROP_NO_NODE_ADDR, reason);
	fwd = pkt->tuple;
	if (icmp) {
		if (!xlb_echo_id(skb, pkt, 1, &id))
			return TC_ACT_OK; /* only echo requests open a flow */
		fwd.sport = id;
	} else if (pkt->tuple.proto != IPPROTO_TCP && pkt->tuple.proto != IPPROTO_UDP) {
		return TC_ACT_OK;
	}
	m = xlb_snat_lookup(&fwd);
	if (!m) {
		if (pkt->tuple.proto == IPPROTO_TCP && (pkt->tcp_flags & 0x12) != 0x02) {
			*reason = XLB_PASS_MASQ_NO_STATE;
			return TC_ACT_OK;
		}
		__builtin_memset(&fresh, 0, sizeof(fresh));
		xlb_addr_set(fresh.addr, nat_addr, fwd.family);
		fresh.family = fwd.family;
		rc = xlb_snat_alloc(&fwd, &fresh, cfg->masq_port_min, cfg->masq_port_max);
		if (rc)
			return xlb_fail(rc, reason);
		m = &fresh;
	}
	rc = icmp ? xlb_nat_echo(skb, pkt, XLB_NAT_SRC, m->addr, id, m->port)
		  : xlb_nat(skb, pkt, XLB_NAT_SRC, m->addr, m->port);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_MASQ;
	return TC_ACT_OK;
}

/* An ICMP error to the node about a masqueraded flow (it quotes node:port
 * -> outside): back to the pod, quote and destination translated. */
static __always_inline int xlb_masq_reply_icmp(struct __sk_buff *skb, struct xlb_pkt *pkt,
					       __u32 *reason)
{
	const struct xlb_endpoint *ep;
	struct xlb_snat_entry *back;
	struct xlb_icmp_quote q;
	struct xlb_flow_key rev;
	int rc;

	*reason = XLB_PASS_NO_NAT;
	if (!xlb_icmp_is_error(pkt->tuple.family, pkt->icmp_type))
		return TC_ACT_OK;
	xlb_ctx_pull(skb, xlb_l4_off(pkt) + 8 + 60 + 8);
	if (xlb_parse_icmp_quote(skb, pkt, &q) || !xlb_addr_eq(q.tuple.saddr, pkt->tuple.daddr))
		return TC_ACT_OK;
	/* The quote reversed is the reply key. */
	xlb_flow_reverse(&rev, &q.tuple);
	back = bpf_map_lookup_elem(&xlb_snat_rev, &rev);
	if (!back)
		return TC_ACT_OK;
	ep = xlb_endpoint_of(back->addr, back->family);
	if (!ep)
		return xlb_fail(-XLB_DROP_NO_ENDPOINT, reason);
	rc = xlb_nat_icmp(skb, pkt, &q, XLB_NAT_SRC, 1, back->addr, back->port);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_MASQ_REPLY;
	return xlb_to_endpoint(skb, ep);
}

/* Ingress stage: pkt parsed to L3 (+ extension headers), addressed to this
 * node. Not a reply to a mapping: XLB_PASS_NO_NAT, the packet untouched. */
static __always_inline int xlb_masq_reply(struct __sk_buff *skb, struct xlb_pkt *pkt, __u32 *reason)
{
	const struct xlb_podnet_cfg *cfg = xlb_podnet_cfg_get();
	const struct xlb_endpoint *ep;
	struct xlb_snat_entry *back;
	struct xlb_flow_key rev;
	__be16 id = 0, port;
	int rc, icmp;

	*reason = XLB_PASS_NO_NAT;
	if (!cfg || !(cfg->flags & XLB_PODNET_F_MASQ) || pkt->frag)
		return TC_ACT_OK;
	rc = xlb_parse_l4(skb, pkt);
	if (rc == -XLB_DROP_TRUNCATED)
		return xlb_fail(rc, reason);
	if (rc)
		return TC_ACT_OK;
	icmp = xlb_is_icmp(pkt);
	rev = pkt->tuple;
	if (icmp) {
		if (!xlb_echo_id(skb, pkt, 0, &id))
			return xlb_masq_reply_icmp(skb, pkt, reason);
		rev.dport = id;
	} else if (pkt->tuple.proto != IPPROTO_TCP && pkt->tuple.proto != IPPROTO_UDP) {
		return TC_ACT_OK;
	}
	port = bpf_ntohs(rev.dport);
	if (port < cfg->masq_port_min || port > cfg->masq_port_max)
		return TC_ACT_OK;
	back = bpf_map_lookup_elem(&xlb_snat_rev, &rev);
	if (!back || back->family != pkt->tuple.family)
		return TC_ACT_OK;
	ep = xlb_endpoint_of(back->addr, back->family);
	if (!ep)
		return xlb_fail(-XLB_DROP_NO_ENDPOINT, reason);
	rc = icmp ? xlb_nat_echo(skb, pkt, XLB_NAT_DST, back->addr, id, back->port)
		  : xlb_nat(skb, pkt, XLB_NAT_DST, back->addr, back->port);
	if (rc)
		return xlb_fail(rc, reason);
	*reason = XLB_OK_MASQ_REPLY;
	return xlb_to_endpoint(skb, ep);
}

#endif /* XLB_TC_MASQ_H */
