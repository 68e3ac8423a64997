/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_probe: programs that ask the running kernel whether it has a feature
 * the datapath relies on (lb/src/features.rs runs them once, with
 * BPF_PROG_TEST_RUN, before the datapath objects are loaded). Each returns
 * the helper's result: 0 when the kernel takes the call as the datapath
 * makes it, a negative errno when it refuses it.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

/* BPF_F_IPV6 (Linux 6.16; not in the Debian 12 uapi headers), as ctx.h. */
#define XLB_F_CSUM_IPV6 (1ULL << 7)

/* bpf_l4_csum_replace with BPF_F_PSEUDO_HDR | BPF_F_IPV6, as tc's NAT of an
 * IPv6 packet calls it (ctx.h). Run on a frame of at least 72 bytes (the
 * TCP checksum of Ethernet + IPv6 + TCP is at 70). Older kernels answer
 * -EINVAL: unknown flag. */
SEC("classifier")
int xlb_probe_csum_ipv6(struct __sk_buff *skb)
{
	return bpf_l4_csum_replace(skb, 14 + 40 + 16, 0, 0, BPF_F_PSEUDO_HDR | XLB_F_CSUM_IPV6);
}

char _license[] SEC("license") = "Dual BSD/GPL";
