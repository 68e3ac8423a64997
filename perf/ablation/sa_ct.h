/* Prototype (ablation only): a 4-way set-associative connection table in an
 * ARRAY map (inlined lookup, no helper call, no lock, one page per set). */
#define XLB_SA_WAYS 4
#define XLB_SA_SETS (1u << 17)
struct xlb_sa_way {
	struct xlb_flow_key key;
	__u32 backend_id;
	__u32 backend_gen;
	__u32 svc_id;
	__u32 hash;
	__u64 stamp;
};
struct xlb_sa_set {
	struct xlb_sa_way w[XLB_SA_WAYS];
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct xlb_sa_set);
	__uint(max_entries, XLB_SA_SETS);
} xlb_ct_sa SEC(".maps");

static __always_inline int xlb_sa_eq(const struct xlb_flow_key *a, const struct xlb_flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}
