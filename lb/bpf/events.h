/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * events.h: the datapath event stream (`xlb monitor`). Events are struct
 * xlb_event records in the xlb_events ring buffer (xlb_abi.h), emitted at
 * two kinds of points:
 *
 *   new flow  xlb_ev_new_flow(): a backend was chosen for a flow that had
 *             no xlb_ct entry (client -> frontend tuple, service, backend);
 *             sampled one in xlb_events_cfg.flow_sample.
 *   drop      xlb_ev_drop(): at a program's single exit, when its reason is
 *             a DROP_*; the tuple is read best-effort from the frame as it is
 *             at the exit (a frame dropped after encapsulation shows its
 *             outer headers; a truncated one as much as it holds).
 *
 * Policy verdicts (XLB_EV_POLICY) will use the same record and ring;
 * socket translations (XLB_EV_SOCK) are emitted by sock/ through
 * xlb_ev_wanted/xlb_ev_reserve/xlb_ev_submit.
 *
 * Cost: nothing is built unless a listener asked for that kind of event in
 * xlb_events_cfg.mask (written by `xlb monitor`, which renews a lease; the
 * agent clears the mask when the lease runs out, so a killed monitor does
 * not leave events on). With no listener a new flow costs one ARRAY lookup
 * (inlined by the verifier into a few instructions) and a branch; a packet
 * that is neither a new flow nor a drop costs nothing. The load-time
 * constant xlb_events_enabled = 0 removes the event points altogether (the
 * verifier prunes the dead branches): that is the benchmark's baseline.
 *
 * API
 *   void xlb_ev_new_flow(client, vaddr, vport, svc_id, backend_id, hook, ifindex, len)
 *   void xlb_ev_drop(data, data_end, reason, hook, ifindex, len)
 * Both are __always_inline and never fail the packet: a full ring buffer
 * counts XLB_EV_STAT_LOST in xlb_event_stats.
 */
#ifndef XLB_EVENTS_H
#define XLB_EVENTS_H

#include "maps.h"
#include "addr.h"

/* Set by the loader before load (.rodata); 0: no event code at all. */
volatile const __u32 xlb_events_enabled = 1;

/* The listener configuration when a listener wants `flag`, else NULL. */
static __always_inline const struct xlb_events_cfg *xlb_ev_wanted(__u32 flag)
{
	const struct xlb_events_cfg *cfg;
	__u32 zero = 0;

	if (!xlb_events_enabled)
		return NULL;
	cfg = bpf_map_lookup_elem(&xlb_events_cfg, &zero);
	if (!cfg || !(cfg->mask & flag))
		return NULL;
	return cfg;
}

static __always_inline void xlb_ev_count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&xlb_event_stats, &stat);

	if (n)
		*n += 1;
}

/* A zeroed record with its header filled in, or NULL (ring full: counted). */
static __always_inline struct xlb_event *xlb_ev_reserve(__u8 type, __u8 hook, __u32 ifindex,
							__u32 len)
{
	struct xlb_event *ev = bpf_ringbuf_reserve(&xlb_events, sizeof(*ev), 0);

	if (!ev) {
		xlb_ev_count(XLB_EV_STAT_LOST);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = type;
	ev->hook = hook;
	ev->ifindex = ifindex;
	ev->len = len;
	return ev;
}

static __always_inline void xlb_ev_submit(struct xlb_event *ev)
{
	bpf_ringbuf_submit(ev, 0);
	xlb_ev_count(XLB_EV_STAT_SENT);
}

/* New flow: `client` is the flow key in packet direction (its source is the
 * client); vaddr/vport the frontend it was sent to (the key's destination
 * may already be DNAT'd to the endpoint). */
static __always_inline void xlb_ev_new_flow(const struct xlb_flow_key *client, const __u8 *vaddr,
					    __be16 vport, __u32 svc_id, __u32 backend_id, __u8 hook,
					    __u32 ifindex, __u32 len)
{
	const struct xlb_events_cfg *cfg = xlb_ev_wanted(XLB_EV_F_NEW_FLOW);
	struct xlb_event *ev;
	__u32 sample;

	if (!cfg)
		return;
	sample = cfg->flow_sample;
	if (sample > 1 && bpf_get_prandom_u32() % sample)
		return;
	ev = xlb_ev_reserve(XLB_EV_NEW_FLOW, hook, ifindex, len);
	if (!ev)
		return;
	ev->svc_id = svc_id;
	ev->backend_id = backend_id;
	xlb_addr_copy(ev->tuple.saddr, client->saddr);
	xlb_addr_copy(ev->tuple.daddr, vaddr);
	ev->tuple.sport = client->sport;
	ev->tuple.dport = vport;
	ev->tuple.proto = client->proto;
	ev->tuple.family = client->family;
	xlb_ev_submit(ev);
}

/* Drop events read the frame: packet programs only (the socket programs
 * have no packet; ctx.h says which context a program is). */
#if defined(XLB_CTX_XDP) || defined(XLB_CTX_SKB)
#include "parse.h"

/* Addresses, protocol and ports of a frame, as far as it holds them. Not
 * xlb_parse(): that one stops at the first problem, and problems are what
 * drop events are about. */
static __always_inline void xlb_ev_tuple(void *data, void *data_end, struct xlb_flow_key *t)
{
	struct ethhdr *eth = data;
	__u32 off = ETH_HLEN, l4;
	__be16 *ports;
	__be16 proto;
	__u8 l4proto;

	if ((void *)(eth + 1) > data_end)
		return;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct xlb_vlan_hdr *vh = data + ETH_HLEN;

		if ((void *)(vh + 1) > data_end)
			return;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end)
			return;
		t->family = XLB_FAMILY_V4;
		__builtin_memcpy(t->saddr, &ip->saddr, 4);
		__builtin_memcpy(t->daddr, &ip->daddr, 4);
		l4proto = ip->protocol;
		t->proto = l4proto;
		if (ip->ihl < 5 || (ip->frag_off & bpf_htons(XLB_IP_OFFSET)))
			return;
		l4 = off + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return;
		t->family = XLB_FAMILY_V6;
		xlb_addr_copy(t->saddr, &ip6->saddr);
		xlb_addr_copy(t->daddr, &ip6->daddr);
		l4proto = ip6->nexthdr;
		t->proto = l4proto;
		l4 = off + sizeof(*ip6);
	} else {
		return;
	}
	if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP)
		return;
	ports = data + (l4 & 0xff);
	if ((void *)(ports + 2) > data_end)
		return;
	t->sport = ports[0];
	t->dport = ports[1];
}

/* Drop: called at a program's exit with its reason (a DROP_* counter). */
static __always_inline void xlb_ev_drop(void *data, void *data_end, __u32 reason, __u8 hook,
					__u32 ifindex, __u32 len)
{
	struct xlb_event *ev;

	if (!xlb_ev_wanted(XLB_EV_F_DROP))
		return;
	ev = xlb_ev_reserve(XLB_EV_DROP, hook, ifindex, len);
	if (!ev)
		return;
	ev->reason = reason;
	xlb_ev_tuple(data, data_end, &ev->tuple);
	xlb_ev_submit(ev);
}

#endif /* packet contexts */

#endif /* XLB_EVENTS_H */
