/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* xlb_tc: placeholder until DSR termination lands. */
#include <linux/pkt_cls.h>
#include "maps.h"

SEC("classifier")
int xlb_tc_ingress(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("classifier")
int xlb_tc_egress(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
