/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_sock_iter: terminates sockets the socket programs connected to a
 * backend that is gone, so that no stale flow ever reaches a reused
 * address. Socket iterators (iter/udp, iter/tcp), run by the agent in every
 * network namespace of the hooked cgroup after an apply removed backends
 * (xlb_sock_kill lists them: address, port, protocol). A socket is
 * destroyed (bpf_sock_destroy, Linux 6.5) when its peer is listed AND its
 * records (xlb_sock_cookie by its cookie, then its storage xlb_sock_state)
 * say xlb translated it to that backend:
 * connections made straight to the address are left alone.
 *
 *   iter/udp  connected UDP sockets (state ESTABLISHED): the application
 *             gets ECONNABORTED and connects again (to a live backend)
 *   iter/tcp  TCP sockets still connecting (SYN_SENT); established TCP
 *             connections are left to TCP itself, as kube-proxy does
 *
 * For each socket destroyed, the 4-byte result of bpf_sock_destroy is
 * written to the iterator's output (the agent counts them). The same
 * walk, with xlb_sock_live_*, lists the sockets that hold a record (the
 * sweep of records left behind, below).
 *
 * Kernel types are read with CO-RE (preserve_access_index: the loader
 * relocates the field offsets against the running kernel's BTF). The
 * kfunc is called through a raw instruction (see xlb_sock_destroy): the
 * loader (lb/src/sockdestroy.rs) writes the kernel's BTF id of
 * bpf_sock_destroy into it before loading, because aya 0.14 does not
 * resolve __ksym externs.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "addr.h"
#include "rec.h"

#define XLB_AF_INET	    2
#define XLB_AF_INET6	    10
#define XLB_TCP_ESTABLISHED 1
#define XLB_TCP_SYN_SENT    2
/* The imm of the placeholder kfunc call: "dksx" (little-endian). */
#define XLB_KFUNC_PLACEHOLDER 0x78736b64

struct seq_file;
struct udp_sock;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct xlb_in6 {
	__u32 w[4];
};

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	unsigned char skc_state;
	struct xlb_in6 skc_v6_daddr;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

/* bpf_sock_destroy(sk): a kfunc call (src_reg BPF_PSEUDO_KFUNC_CALL = 2)
 * whose imm, XLB_KFUNC_PLACEHOLDER here, the loader replaces with the
 * kfunc's BTF id in vmlinux. Arguments and clobbers as for any call. */
static __always_inline int xlb_sock_destroy(struct sock_common *sk)
{
	register struct sock_common *r1 asm("r1") = sk;
	register long r0 asm("r0");

	asm volatile(".byte 0x85, 0x20, 0x00, 0x00, 0x64, 0x6b, 0x73, 0x78"
		     : "=r"(r0)
		     : "r"(r1)
		     : "r2", "r3", "r4", "r5", "memory");
	return r0;
}

/* The socket's peer as a kill key (an IPv4-mapped peer of an IPv6 socket
 * as IPv4, the family its translation record has); 0 if not IP. */
static __always_inline int xlb_sock_peer(struct sock_common *sk, __u8 proto,
					 struct xlb_frontend_key *k)
{
	unsigned short family = sk->skc_family;
	const __u32 *v6;

	__builtin_memset(k, 0, sizeof(*k));
	k->port = sk->skc_dport;
	k->proto = proto;
	if (family == XLB_AF_INET) {
		*(__u32 *)k->addr = sk->skc_daddr;
		k->family = XLB_FAMILY_V4;
		return 1;
	}
	if (family != XLB_AF_INET6)
		return 0;
	v6 = (const __u32 *)&sk->skc_v6_daddr;
	((__u32 *)k->addr)[0] = v6[0];
	((__u32 *)k->addr)[1] = v6[1];
	((__u32 *)k->addr)[2] = v6[2];
	((__u32 *)k->addr)[3] = v6[3];
	k->family = XLB_FAMILY_V6;
	if (!v6[0] && !v6[1] && v6[2] == bpf_htonl(0xffff)) {
		*(__u32 *)k->addr = v6[3];
		((__u32 *)k->addr)[1] = 0;
		((__u32 *)k->addr)[2] = 0;
		((__u32 *)k->addr)[3] = 0;
		k->family = XLB_FAMILY_V4;
	}
	return 1;
}

/* Whether xlb translated this socket to the backend k: its xlb_sock_cookie
 * record, or one in its storage. */
static __always_inline int xlb_sock_translated_to(struct sock_common *sk,
						  const struct xlb_frontend_key *k)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct xlb_sock_rec *cr = bpf_map_lookup_elem(&xlb_sock_cookie, &cookie);
	struct xlb_sock_state *st;

	if (cr && xlb_sock_rec_of(cr, k->addr, k->port, k->family, k->proto))
		return 1;
	st = bpf_sk_storage_get(&xlb_sock_state, sk, 0, 0);
	if (!st)
		return 0;
#pragma unroll
	for (int i = 0; i < XLB_SOCK_RECS; i++) {
		if (xlb_sock_rec_of(&st->rec[i], k->addr, k->port, k->family, k->proto))
			return 1;
	}
	return 0;
}

static __always_inline int xlb_sock_reap(struct bpf_iter_meta *meta, struct sock_common *sk,
					 __u8 proto, unsigned char state)
{
	struct xlb_frontend_key k;
	int rc;

	if (!sk || sk->skc_state != state)
		return 0;
	if (!xlb_sock_peer(sk, proto, &k) || !bpf_map_lookup_elem(&xlb_sock_kill, &k))
		return 0;
	if (!xlb_sock_translated_to(sk, &k))
		return 0;
	rc = xlb_sock_destroy(sk);
	bpf_seq_write(meta->seq, &rc, sizeof(rc));
	return 0;
}

SEC("iter/udp")
int xlb_sock_iter_udp(struct bpf_iter__udp *ctx)
{
	return xlb_sock_reap(ctx->meta, (struct sock_common *)ctx->udp_sk, IPPROTO_UDP,
			     XLB_TCP_ESTABLISHED);
}

SEC("iter/tcp")
int xlb_sock_iter_tcp(struct bpf_iter__tcp *ctx)
{
	return xlb_sock_reap(ctx->meta, ctx->sk_common, IPPROTO_TCP, XLB_TCP_SYN_SENT);
}

/* The sweep: the cookie of every socket with an xlb_sock_cookie record,
 * written to the output (8 bytes each). The agent deletes the records no
 * live socket claims: those of sockets released while no sock_release
 * program was attached (an agent stopped with --detach-on-exit). */
static __always_inline int xlb_sock_live(struct bpf_iter_meta *meta, struct sock_common *sk)
{
	__u64 cookie;

	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	if (bpf_map_lookup_elem(&xlb_sock_cookie, &cookie))
		bpf_seq_write(meta->seq, &cookie, sizeof(cookie));
	return 0;
}

SEC("iter/udp")
int xlb_sock_live_udp(struct bpf_iter__udp *ctx)
{
	return xlb_sock_live(ctx->meta, (struct sock_common *)ctx->udp_sk);
}

SEC("iter/tcp")
int xlb_sock_live_tcp(struct bpf_iter__tcp *ctx)
{
	return xlb_sock_live(ctx->meta, ctx->sk_common);
}

char _license[] SEC("license") = "Dual BSD/GPL";
