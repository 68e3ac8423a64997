/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* xlb_xdp: placeholder until the north-south fast path lands. */
#include "maps.h"

SEC("xdp")
int xlb_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
