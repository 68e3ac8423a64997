/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * frag.h (XDP only): IPv4 fragments to a frontend, balanced like the rest
 * of their datagram (Cilium's fragment tracking). Only the first fragment
 * carries the L4 header: when it goes to a frontend its ports are recorded
 * in xlb_frag4 under (source, destination, IP id, protocol); a later
 * fragment takes its ports from there and follows the same flow (the same
 * xlb_ct entry, so the same backend) with its address translated only (it
 * has no L4 header: nat.h). A later fragment whose first was not recorded
 * (lost, reordered ahead of it, or not to a frontend) is passed to the
 * kernel and counted (XLB_PASS_FRAG_UNTRACKED). The map is an LRU of fixed
 * size: a flood of first fragments evicts the oldest entries, never grows
 * it. IPv6 fragments are not followed (XLB_PASS_FRAGMENT).
 *
 * API
 *   int xlb_frag_follow(&pkt)    a later fragment: its ports from the map
 *                                into pkt->tuple, or -XLB_PASS_FRAG_UNTRACKED
 *   int xlb_frag_admit(&pkt, svc)
 *       a fragment to a frontend of svc: a first one is recorded; 0, or
 *       -XLB_PASS_FRAGMENT for an IPIP service (its backend node picks the
 *       backend again from the inner packet, which a fragment cannot give)
 */
#ifndef XLB_XDP_FRAG_H
#define XLB_XDP_FRAG_H

#include "maps.h"
#include "parse.h"

static __always_inline void xlb_frag_key(const struct xlb_pkt *pkt, struct xlb_frag_key *k)
{
	k->saddr = *(const __u32 *)pkt->tuple.saddr;
	k->daddr = *(const __u32 *)pkt->tuple.daddr;
	k->id = pkt->ip_id;
	k->proto = pkt->tuple.proto;
	k->pad = 0;
}

static __always_inline int xlb_frag_follow(struct xlb_pkt *pkt)
{
	struct xlb_frag_ports *p;
	struct xlb_frag_key k;

	xlb_frag_key(pkt, &k);
	p = bpf_map_lookup_elem(&xlb_frag4, &k);
	if (!p)
		return -XLB_PASS_FRAG_UNTRACKED;
	pkt->tuple.sport = p->sport;
	pkt->tuple.dport = p->dport;
	return 0;
}

static __always_inline void xlb_frag_record(const struct xlb_pkt *pkt)
{
	struct xlb_frag_ports p = {.sport = pkt->tuple.sport, .dport = pkt->tuple.dport};
	struct xlb_frag_key k;

	xlb_frag_key(pkt, &k);
	/* A failed update (LRU contention) loses this datagram's later
	 * fragments, which are counted as untracked: nothing more to do. */
	bpf_map_update_elem(&xlb_frag4, &k, &p, BPF_ANY);
}

static __always_inline int xlb_frag_admit(const struct xlb_pkt *pkt, const struct xlb_service *svc)
{
	if (svc->encap == XLB_ENCAP_IPIP)
		return -XLB_PASS_FRAGMENT;
	if (pkt->frag == XLB_FRAG_FIRST)
		xlb_frag_record(pkt);
	return 0;
}

#endif /* XLB_XDP_FRAG_H */
