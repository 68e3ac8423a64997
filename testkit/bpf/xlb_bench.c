/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb_bench: the timing wrapper of the datapath microbenchmark (perf/, `xlb-perf
 * micro`). BPF_PROG_TEST_RUN with repeat=N reuses one xdp_buff for all N
 * iterations, so a program that encapsulates would see its own output from
 * the second iteration on. This wrapper runs first in every iteration:
 *
 *   1. moves the frame start back to where the original frame started
 *      (bpf_xdp_adjust_head by the length difference: the programs under
 *      test grow or shrink frames at the head only; a failure is counted);
 *   2. writes the original bytes back (bpf_xdp_store_bytes from
 *      xlb_bench_frame);
 *   3. with XLB_BENCH_F_NEW_FLOW, writes a per-iteration sequence number
 *      (and the CPU) into the source port and the low 16 bits of the source
 *      address, with incremental checksum updates, so every iteration is a
 *      new flow;
 *   4. tail-calls the program under test (xlb_bench_progs[0]): xlb_xdp, or
 *      xlb_pass for the baseline, whose cost (this wrapper) is subtracted.
 *
 * Every step is counted in xlb_bench_stats so the harness can prove that N
 * iterations ran N times on the original frame.
 *
 * The same wrapper is the packet generator of `xlb-perf pps`: run with
 * BPF_F_TEST_XDP_LIVE_FRAMES it hands every frame to xlb_bench_tx, which
 * transmits it (XDP_TX) into the load balancer's veth. A mix of up to
 * XLB_BENCH_TEMPLATES frames is cycled through (entry 0's `count`). The
 * other programs here are the rest of that rig: xlb_bench_reflect, the
 * "physical limit" forwarder (swap MACs, XDP_TX, no lookups),
 * xlb_bench_reflect_grow (the same with xlb's Geneve frame growth), and
 * xlb_bench_sink, the receiving side's counter (counts, then drops).
 * Not part of the datapath.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define XLB_BENCH_FRAME_MAX 256
#define XLB_BENCH_TEMPLATES 16

/* xlb_bench_frame.flags */
#define XLB_BENCH_F_NEW_FLOW (1u << 0)

/* The original frame and, for XLB_BENCH_F_NEW_FLOW, where its varied
 * fields sit (byte offsets from the frame start; csum offsets 0: none). */
struct xlb_bench_frame {
	__u32 len;
	__u16 flags;
	__u16 count; /* entry 0: templates in use, cycled per frame */
	__u16 sport_off;
	__u16 saddr_lo_off; /* the last two bytes of the source address */
	__u16 ip_csum_off;  /* IPv4 header checksum; 0 for IPv6 */
	__u16 l4_csum_off;  /* TCP/UDP checksum */
	__u8 bytes[XLB_BENCH_FRAME_MAX];
};

/* Indices of xlb_bench_stats (per-CPU __u64). */
enum xlb_bench_stat {
	XLB_BENCH_ITERATIONS = 0, /* frames restored and handed on */
	XLB_BENCH_RESTORE_FAIL = 1,
	XLB_BENCH_TAIL_CALL_FAIL = 2,
	XLB_BENCH_SEQ = 3,	    /* sequence number of XLB_BENCH_F_NEW_FLOW */
	XLB_BENCH_SINK_PACKETS = 4, /* xlb_bench_sink */
	XLB_BENCH_SINK_BYTES = 5,
	XLB_BENCH_TEMPLATE_SEQ = 6, /* template cycling */
	XLB_BENCH_STAT_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct xlb_bench_frame);
	__uint(max_entries, XLB_BENCH_TEMPLATES);
} xlb_bench_frame SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, XLB_BENCH_STAT_MAX);
} xlb_bench_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1);
} xlb_bench_progs SEC(".maps");

static __always_inline __u64 *stat(__u32 idx)
{
	return bpf_map_lookup_elem(&xlb_bench_stats, &idx);
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = stat(idx);

	if (v)
		*v += 1;
}

/* RFC 1624 eqn. 3 on 16-bit words as stored (byte order cancels out). */
static __always_inline __u16 csum_replace2(__u16 csum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~csum + (__u16)~old + (__u32) new;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* Writes a 16-bit word at a masked offset; returns the old word, or -1. */
static __always_inline int put16(struct xdp_md *ctx, __u32 off, __u16 val)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 *p, old;

	off &= XLB_BENCH_FRAME_MAX - 1;
	p = data + off;
	if ((void *)(p + 1) > data_end)
		return -1;
	old = *p;
	*p = val;
	return old;
}

static __always_inline int vary_source(struct xdp_md *ctx, const struct xlb_bench_frame *f)
{
	__u64 *seqp = stat(XLB_BENCH_SEQ);
	__u16 port, addr, csum_l4, csum_ip;
	int old_port, old_addr, c;
	__u64 seq;

	if (!seqp)
		return -1;
	seq = ++*seqp;
	port = (__u16)seq;
	/* The counter is per CPU and a long test run may migrate (it yields
	 * when rescheduling is due): the CPU number in the top byte keeps the
	 * flows of different CPUs apart. 2^24 new flows per CPU. */
	addr = (__u16)(((seq >> 16) & 0xff) | (bpf_get_smp_processor_id() << 8));
	old_port = put16(ctx, f->sport_off, port);
	old_addr = put16(ctx, f->saddr_lo_off, addr);
	if (old_port < 0 || old_addr < 0)
		return -1;
	if (f->l4_csum_off) {
		c = put16(ctx, f->l4_csum_off, 0);
		if (c < 0)
			return -1;
		csum_l4 = csum_replace2((__u16)c, (__u16)old_port, port);
		csum_l4 = csum_replace2(csum_l4, (__u16)old_addr, addr);
		put16(ctx, f->l4_csum_off, csum_l4);
	}
	if (f->ip_csum_off) {
		c = put16(ctx, f->ip_csum_off, 0);
		if (c < 0)
			return -1;
		csum_ip = csum_replace2((__u16)c, (__u16)old_addr, addr);
		put16(ctx, f->ip_csum_off, csum_ip);
	}
	return 0;
}

SEC("xdp")
int xlb_bench(struct xdp_md *ctx)
{
	__u32 zero = 0, len;
	struct xlb_bench_frame *f = bpf_map_lookup_elem(&xlb_bench_frame, &zero);
	__u64 *tseq;
	long cur;

	if (!f)
		return XDP_ABORTED;
	if (f->count > 1) {
		tseq = stat(XLB_BENCH_TEMPLATE_SEQ);
		if (!tseq)
			return XDP_ABORTED;
		zero = (__u32)(*tseq)++ % f->count;
		f = bpf_map_lookup_elem(&xlb_bench_frame, &zero);
		if (!f)
			return XDP_ABORTED;
	}
	len = f->len;
	if (len < 14 || len > XLB_BENCH_FRAME_MAX)
		goto restore_fail;
	cur = (long)ctx->data_end - (long)ctx->data;
	if (cur != len && bpf_xdp_adjust_head(ctx, (int)(cur - (long)len)))
		goto restore_fail;
	if (bpf_xdp_store_bytes(ctx, 0, f->bytes, len))
		goto restore_fail;
	if ((f->flags & XLB_BENCH_F_NEW_FLOW) && vary_source(ctx, f))
		goto restore_fail;
	stat_inc(XLB_BENCH_ITERATIONS);
	bpf_tail_call(ctx, &xlb_bench_progs, 0);
	stat_inc(XLB_BENCH_TAIL_CALL_FAIL);
	return XDP_ABORTED;

restore_fail:
	stat_inc(XLB_BENCH_RESTORE_FAIL);
	return XDP_ABORTED;
}

/* The generator's program under test: transmit the restored frame. */
SEC("xdp")
int xlb_bench_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

/* The physical limit: send the frame back where it came from with swapped
 * MACs, no parsing beyond Ethernet, no map lookups. */
SEC("xdp")
int xlb_bench_reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 *eth = data, t0, t1, t2;

	if (data + 14 > data_end)
		return XDP_DROP;
	t0 = eth[0];
	t1 = eth[1];
	t2 = eth[2];
	eth[0] = eth[3];
	eth[1] = eth[4];
	eth[2] = eth[5];
	eth[3] = t0;
	eth[4] = t1;
	eth[5] = t2;
	return XDP_TX;
}

/* Bytes xlb_xdp adds at the head of an IPv4 packet it tunnels in Geneve
 * with the DSR4 option (outer IPv4 20 + UDP 8 + Geneve 8 + option 12). */
#define XLB_BENCH_GROW 48

/* The limit with xlb's frame growth: the frame grown at the head by
 * XLB_BENCH_GROW (bpf_xdp_adjust_head, as xlb_xdp does), a new Ethernet
 * header with the MACs swapped at the new start, XDP_TX. Sets apart what
 * a larger frame costs outside the program (veth, the sink) from the
 * program's own work (`xlb-perf pps --grow-reflector`). */
SEC("xdp")
int xlb_bench_reflect_grow(struct xdp_md *ctx)
{
	void *data, *data_end;
	__u16 *eth, *old;

	if (bpf_xdp_adjust_head(ctx, -XLB_BENCH_GROW))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + XLB_BENCH_GROW + 14 > data_end)
		return XDP_DROP;
	eth = data;
	old = data + XLB_BENCH_GROW;
	eth[0] = old[3];
	eth[1] = old[4];
	eth[2] = old[5];
	eth[3] = old[0];
	eth[4] = old[1];
	eth[5] = old[2];
	eth[6] = old[6];
	return XDP_TX;
}

/* The receiving side: count what arrives, then drop it. */
SEC("xdp")
int xlb_bench_sink(struct xdp_md *ctx)
{
	__u64 *p = stat(XLB_BENCH_SINK_PACKETS), *b = stat(XLB_BENCH_SINK_BYTES);

	if (p)
		*p += 1;
	if (b)
		*b += (long)ctx->data_end - (long)ctx->data;
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
