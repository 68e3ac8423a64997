/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * service.h: from a flow to its service and from a backend to its node — the
 * lookups XDP (the load balancer) and tc (IPIP termination on a node) share.
 *
 * API
 *   struct xlb_service *xlb_frontend_lookup(const struct xlb_flow_key *t)
 *       the service whose frontend is t's destination (address, port,
 *       protocol), or NULL.
 *   int xlb_fe_filter_maybe(const struct xlb_flow_key *t)
 *       0 when t's destination is certainly no frontend (its bit in
 *       xlb_fe_filter is clear and the filter is armed); 1: look it up.
 *   int xlb_source_allowed(svc, t)
 *       loadBalancerSourceRanges: whether t's source may use svc (call only
 *       when svc->flags has XLB_SVC_F_SOURCE_RANGES).
 *   const struct xlb_node_cfg *xlb_this_node(void)
 *       this node's tunnel identity (xlb_node[0]); NULL never happens but the
 *       verifier asks.
 *   const __u8 *xlb_node_src(node, family)
 *       this node's outer source address for a tunnel of `family`, or NULL
 *       when it has none.
 *   int xlb_backend_is_local(be, own)
 *       the backend runs on this node: its node address is `own`, this
 *       node's address of the backend node's family (xlb_node_src; NULL, an
 *       unset address, never matches).
 */
#ifndef XLB_SERVICE_H
#define XLB_SERVICE_H

#include "maps.h"
#include "parse.h"

/* Source-range LPM key: svc_id, family and pad are matched whole. */
#define XLB_SRC_RANGE_FIXED_BITS 64

static __always_inline struct xlb_service *xlb_frontend_lookup(const struct xlb_flow_key *t)
{
	struct xlb_frontend_key fk;

	xlb_addr_copy(fk.addr, t->daddr);
	fk.port = t->dport;
	fk.proto = t->proto;
	fk.family = t->family;
	return bpf_map_lookup_elem(&xlb_frontends, &fk);
}

/* The bit of a frontend key in xlb_fe_filter (abi::fe_filter_bit in Rust
 * computes the same: change both). Address words as stored (native order),
 * the port as in the key (network order). */
static __always_inline __u32 xlb_fe_filter_bit(const struct xlb_flow_key *t)
{
	const __u32 *d = (const __u32 *)t->daddr;
	__u32 h = d[0] ^ ((d[1] << 8) | (d[1] >> 24)) ^ ((d[2] << 16) | (d[2] >> 16)) ^
		  ((d[3] << 24) | (d[3] >> 8)) ^ ((__u32)t->dport << 16) ^ t->proto;

	return (h * 0x9e3779b1u) >> (32 - XLB_FE_FILTER_BITS);
}

/* Two inlined array lookups (the armed flag only when the bit is clear). */
static __always_inline int xlb_fe_filter_maybe(const struct xlb_flow_key *t)
{
	__u32 bit = xlb_fe_filter_bit(t), idx = bit >> 6, armed = XLB_FE_FILTER_ARMED;
	const __u64 *w = bpf_map_lookup_elem(&xlb_fe_filter, &idx);
	const __u64 *a;

	if (!w || ((*w >> (bit & 63)) & 1))
		return 1;
	a = bpf_map_lookup_elem(&xlb_fe_filter, &armed);
	return !a || !*a;
}

static __always_inline int xlb_source_allowed(const struct xlb_service *svc,
					      const struct xlb_flow_key *t)
{
	struct xlb_src_range_key k = {
	    .prefixlen = XLB_SRC_RANGE_FIXED_BITS + (t->family == XLB_FAMILY_V6 ? 128 : 32),
	    .svc_id = bpf_htonl(svc->id),
	    .family = t->family,
	};

	xlb_addr_copy(k.addr, t->saddr);
	return bpf_map_lookup_elem(&xlb_source_ranges, &k) != NULL;
}

static __always_inline const struct xlb_node_cfg *xlb_this_node(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&xlb_node, &zero);
}

static __always_inline const __u8 *xlb_node_src(const struct xlb_node_cfg *node, __u8 family)
{
	if (family == XLB_FAMILY_V4)
		return *(const __u32 *)node->addr4 ? node->addr4 : NULL;
	if (family == XLB_FAMILY_V6)
		return xlb_addr_zero(node->addr6) ? NULL : node->addr6;
	return NULL;
}

static __always_inline int xlb_backend_is_local(const struct xlb_backend *be, const __u8 *own)
{
	if (!own)
		return 0;
	if (be->node_family == XLB_FAMILY_V4)
		return *(const __u32 *)be->node == *(const __u32 *)own;
	return xlb_addr_eq(be->node, own);
}

#endif /* XLB_SERVICE_H */
