/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_sock: east-west service translation at the socket, cgroup sock_addr
 * programs attached at a node's cgroup2 root (or a lab node's cgroup): every
 * process below it, in any network namespace, reaches a ClusterIP (and the
 * node's other service addresses) through a backend chosen once per
 * connection, with no per-packet NAT.
 *
 *   connect4/6    TCP and connected UDP: destination translated (xlate.h)
 *   sendmsg4/6    unconnected UDP: each datagram's destination translated
 *   recvmsg4/6    UDP: a backend's datagram shown from the service (revnat.h)
 *   getpeername4/6  the service address, not the backend
 *   sock_release  a socket's xlb_sock_cookie entry deleted with it (only
 *                 looked for when its mark, mark.h, is up)
 *
 * IPv6 programs handle IPv4-mapped addresses (::ffff:a.b.c.d) of dual-stack
 * sockets as IPv4. Each program ends in one counted exit at hook
 * XLB_HOOK_SOCK (xlb_sock_exit); a refusal (no usable backend) fails the
 * call with its errno (bpf_set_retval; connect/sendmsg only: the others
 * cannot fail a call and always allow it).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "counters.h"
#include "events.h"
#include "xlate.h"
#include "revnat.h"

_Static_assert((XLB_SOCK_RECS & (XLB_SOCK_RECS - 1)) == 0, "XLB_SOCK_RECS: a power of two");

/* What an exit reports beside its reason. */
struct xlb_sock_ev {
	const struct xlb_frontend_key *vip; /* the service address (NULL: none) */
	const struct xlb_frontend_key *be;  /* the backend given (NULL: none) */
	struct xlb_sock_out out;
};

static __always_inline void xlb_sock_stat(__u32 svc_id, __u32 reason, __u32 affinity_hit)
{
	struct xlb_sock_stats *s = bpf_map_lookup_elem(&xlb_sock_stats, &svc_id);

	if (!s)
		return;
	switch (reason) {
	case XLB_OK_SOCK_CONNECT:
		s->connect++;
		break;
	case XLB_OK_SOCK_SENDMSG:
		s->sendmsg++;
		break;
	case XLB_OK_SOCK_REVNAT:
		s->revnat++;
		return;
	default:
		s->refused++;
		return;
	}
	s->affinity_hits += affinity_hit;
}

/* A translation (new backend chosen) or a refusal, for `xlb monitor`. */
static __always_inline void xlb_sock_event(__u32 reason, const struct xlb_sock_ev *e)
{
	const struct xlb_events_cfg *cfg;
	struct xlb_event *ev;
	__u32 sample;

	cfg = xlb_ev_wanted(XLB_EV_F_SOCK);
	if (!cfg)
		return;
	sample = cfg->flow_sample;
	if (sample > 1 && reason < 128 && bpf_get_prandom_u32() % sample)
		return;
	ev = xlb_ev_reserve(XLB_EV_SOCK, XLB_HOOK_SOCK, 0, 0);
	if (!ev)
		return;
	ev->reason = reason;
	ev->svc_id = e->out.svc_id;
	ev->backend_id = e->out.backend_id;
	if (e->be) {
		xlb_addr_copy(ev->tuple.saddr, e->be->addr);
		ev->tuple.sport = e->be->port;
	}
	xlb_addr_copy(ev->tuple.daddr, e->vip->addr);
	ev->tuple.dport = e->vip->port;
	ev->tuple.proto = e->vip->proto;
	ev->tuple.family = e->vip->family;
	xlb_ev_submit(ev);
}

/* The one exit of the forward programs: counts, tells, and allows (1) or
 * refuses (0, with the errno set) the call. rc: xlb_sock_fwd's. */
static __always_inline int xlb_sock_exit(struct bpf_sock_addr *ctx, int rc, __u32 ok,
					 const struct xlb_sock_ev *e)
{
	__u32 reason = rc ? -rc : ok;

	xlb_count(XLB_HOOK_SOCK, reason, 0);
	if (reason >= XLB_PASS_NOT_IP && reason < XLB_DROP_TRUNCATED)
		return 1; /* PASS_* (16-31): not ours */
	if (reason >= 96 && reason < 128)
		return 1; /* PASS_* (96-127) */
	xlb_sock_stat(e->out.svc_id, reason, e->out.affinity_hit);
	if (rc || e->out.new_flow)
		xlb_sock_event(reason, e);
	if (!rc)
		return 1;
	bpf_set_retval(xlb_sock_errno(reason));
	return 0;
}

/* The destination of an IPv4 call as a frontend key. */
static __always_inline void xlb_sock_key4(struct bpf_sock_addr *ctx, struct xlb_frontend_key *fk)
{
	*(__u32 *)fk->addr = ctx->user_ip4;
	fk->port = (__be16)ctx->user_port;
	fk->proto = ctx->protocol;
	fk->family = XLB_FAMILY_V4;
}

/* The destination of an IPv6 call: an IPv4-mapped address as IPv4 (returns
 * 1), else IPv6 (0). */
static __always_inline int xlb_sock_key6(struct bpf_sock_addr *ctx, struct xlb_frontend_key *fk)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];

	fk->port = (__be16)ctx->user_port;
	fk->proto = ctx->protocol;
	if (!w0 && !w1 && w2 == bpf_htonl(0xffff)) {
		*(__u32 *)fk->addr = ctx->user_ip6[3];
		fk->family = XLB_FAMILY_V4;
		return 1;
	}
	((__u32 *)fk->addr)[0] = w0;
	((__u32 *)fk->addr)[1] = w1;
	((__u32 *)fk->addr)[2] = w2;
	((__u32 *)fk->addr)[3] = ctx->user_ip6[3];
	fk->family = XLB_FAMILY_V6;
	return 0;
}

/* Writes an address back into an IPv6 call (mapped: the last word only). */
static __always_inline void xlb_sock_put6(struct bpf_sock_addr *ctx,
					  const struct xlb_frontend_key *fk, int mapped)
{
	const __u32 *a = (const __u32 *)fk->addr;

	if (mapped) {
		ctx->user_ip6[3] = a[0];
	} else {
		ctx->user_ip6[0] = a[0];
		ctx->user_ip6[1] = a[1];
		ctx->user_ip6[2] = a[2];
		ctx->user_ip6[3] = a[3];
	}
	ctx->user_port = fk->port;
}

static __always_inline int xlb_sock_fwd4(struct bpf_sock_addr *ctx, int connect, __u32 ok)
{
	struct xlb_frontend_key fk = {}, vip;
	struct xlb_sock_ev e = {.vip = &vip, .be = &fk};
	int rc;

	xlb_sock_key4(ctx, &fk);
	vip = fk;
	rc = xlb_sock_fwd(ctx, &fk, connect, &e.out);
	if (!rc) {
		ctx->user_ip4 = *(__u32 *)fk.addr;
		ctx->user_port = fk.port;
	} else {
		e.be = NULL;
	}
	return xlb_sock_exit(ctx, rc, ok, &e);
}

static __always_inline int xlb_sock_fwd6(struct bpf_sock_addr *ctx, int connect, __u32 ok)
{
	struct xlb_frontend_key fk = {}, vip;
	struct xlb_sock_ev e = {.vip = &vip, .be = &fk};
	int rc, mapped;

	mapped = xlb_sock_key6(ctx, &fk);
	vip = fk;
	rc = xlb_sock_fwd(ctx, &fk, connect, &e.out);
	if (!rc)
		xlb_sock_put6(ctx, &fk, mapped);
	else
		e.be = NULL;
	return xlb_sock_exit(ctx, rc, ok, &e);
}

/* recvmsg/getpeername: count, and always allow. */
static __always_inline int xlb_sock_rev_exit(int rc, __u32 svc_id)
{
	__u32 reason = rc ? -rc : XLB_OK_SOCK_REVNAT;

	xlb_count(XLB_HOOK_SOCK, reason, 0);
	if (!rc)
		xlb_sock_stat(svc_id, reason, 0);
	return 1;
}

static __always_inline int xlb_sock_rev4(struct bpf_sock_addr *ctx)
{
	struct xlb_frontend_key fk = {};
	__u32 svc_id = 0;
	int rc;

	xlb_sock_key4(ctx, &fk);
	rc = xlb_sock_rev(ctx, fk.addr, &fk.port, XLB_FAMILY_V4, fk.proto, &svc_id);
	if (!rc) {
		ctx->user_ip4 = *(__u32 *)fk.addr;
		ctx->user_port = fk.port;
	}
	return xlb_sock_rev_exit(rc, svc_id);
}

static __always_inline int xlb_sock_rev6(struct bpf_sock_addr *ctx)
{
	struct xlb_frontend_key fk = {};
	__u32 svc_id = 0;
	int rc, mapped;

	mapped = xlb_sock_key6(ctx, &fk);
	rc = xlb_sock_rev(ctx, fk.addr, &fk.port, fk.family, fk.proto, &svc_id);
	if (!rc)
		xlb_sock_put6(ctx, &fk, mapped);
	return xlb_sock_rev_exit(rc, svc_id);
}

SEC("cgroup/connect4")
int xlb_sock_connect4(struct bpf_sock_addr *ctx)
{
	return xlb_sock_fwd4(ctx, 1, XLB_OK_SOCK_CONNECT);
}

SEC("cgroup/connect6")
int xlb_sock_connect6(struct bpf_sock_addr *ctx)
{
	return xlb_sock_fwd6(ctx, 1, XLB_OK_SOCK_CONNECT);
}

SEC("cgroup/sendmsg4")
int xlb_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return xlb_sock_fwd4(ctx, 0, XLB_OK_SOCK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int xlb_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return xlb_sock_fwd6(ctx, 0, XLB_OK_SOCK_SENDMSG);
}

SEC("cgroup/recvmsg4")
int xlb_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return xlb_sock_rev4(ctx);
}

SEC("cgroup/recvmsg6")
int xlb_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return xlb_sock_rev6(ctx);
}

SEC("cgroup/getpeername4")
int xlb_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return xlb_sock_rev4(ctx);
}

SEC("cgroup/getpeername6")
int xlb_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return xlb_sock_rev6(ctx);
}

/* A socket of the hooked cgroup is released (closed): its xlb_sock_cookie
 * entry, if it has one, goes with it (socket storage goes by itself). Runs
 * for every socket below the cgroup: a socket whose mark is zero has no
 * entry and costs one array read (mark.h); a marked one is almost always
 * translated, so the entry is deleted without a lookup first, and its
 * counter comes down only if this call deleted it. Not counted (no exit
 * reason: nothing decided here). */
SEC("cgroup/sock_release")
int xlb_sock_release(struct bpf_sock *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 *m = xlb_sock_mark_of(cookie);

	if (m && !*(volatile __u32 *)m)
		return 1;
	if (!bpf_map_delete_elem(&xlb_sock_cookie, &cookie) && m)
		xlb_sock_mark_down(m);
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
