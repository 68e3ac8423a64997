/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_pass: the trivial XDP_PASS program. The benchmark baseline (same
 * harness, no work) and the program the lab puts on veth peers so that
 * XDP_TX frames are accepted (veth needs NAPI on the receiving peer).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xlb_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
