/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * xlb datapath ABI: every map key and value, flag, reason code and protocol
 * constant shared by the BPF programs (xdp/, tc/) and the Rust control plane
 * (lb/src/abi.rs). Types and constants only, no code.
 *
 * Rules (checked by lb/tests/abi_btf.rs against the compiled objects' BTF):
 *   - no implicit padding: every hole is an explicit, zeroed `pad` field;
 *   - no bool, no bitfields, no enums as struct members (u8/u16/u32 instead);
 *   - sizes asserted here and in Rust;
 *   - every constant is a member of a named `enum xlb_*` (never a bare
 *     #define), so that it is in the BTF and the test compares each one
 *     with its Rust mirror (lb::abi::CONSTANTS);
 *   - numbers in this file are never reassigned: new ones are appended.
 *
 * Addresses are 16 bytes in every key and value: an IPv6 address as is, an
 * IPv4 address in the first 4 bytes with the other 12 zero, and a `family`
 * byte (XLB_FAMILY_*) beside it. One code path serves both families.
 */
#ifndef XLB_ABI_H
#define XLB_ABI_H

#include <linux/types.h>

enum xlb_abi_version {
	XLB_ABI_VERSION = 1,
};

enum xlb_family {
	XLB_FAMILY_V4 = 4,
	XLB_FAMILY_V6 = 6,
};

/* Largest Maglev table the datapath holds (a prime). Each service chooses its
 * own prime M <= this; a table costs 2 * XLB_MAGLEV_MAX bytes = 32,762 bytes. */
enum xlb_maglev_limits {
	XLB_MAGLEV_MAX = 16381,
};

/* The flow hash (conntrack.h, xlb_flow_hash) mixes this seed with the
 * protocol; every node and the Rust mirror compute the same hash. */
enum xlb_hash_consts {
	XLB_HASH_SEED = 0x786c6221, /* "xlb!" */
};

/* ---- frontends ------------------------------------------------------------
 * xlb_frontends: HASH, struct xlb_frontend_key -> struct xlb_service.
 * One entry per (address, port, protocol) the node answers for: LoadBalancer
 * ingress IPs, ExternalIPs, NodePorts on the node's own addresses. All
 * frontends of one service port carry the same service id. */
struct xlb_frontend_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 family;
};
_Static_assert(sizeof(struct xlb_frontend_key) == 20, "xlb_frontend_key size");

/* xlb_service.flags */
enum xlb_svc_flags {
	XLB_SVC_F_AFFINITY = 1 << 0,	  /* sessionAffinity: ClientIP */
	XLB_SVC_F_SOURCE_RANGES = 1 << 1, /* loadBalancerSourceRanges apply (LB frontends) */
	XLB_SVC_F_NODEPORT = 1 << 2,	  /* frontend is a NodePort */
	/* #9: what a frontend is, for listings (the programs do not read them) */
	XLB_SVC_F_CLUSTER_IP = 1 << 3, /* frontend is a ClusterIP */
	XLB_SVC_F_HOST_PORT = 1 << 4,  /* frontend is a pod's hostPort */
};

/* xlb_service.encap */
enum xlb_encap {
	XLB_ENCAP_GENEVE = 0, /* Geneve + DSR option (default) */
	XLB_ENCAP_IPIP = 1,   /* IPIP / IP6IP6 / IPv6-in-IPv4 and back */
};

struct xlb_service {
	__u32 id;		  /* dense service id: stats index, Maglev key */
	__u32 maglev_size;	  /* M: prime, <= XLB_MAGLEV_MAX */
	__u32 flags;		  /* XLB_SVC_F_* */
	__u32 affinity_timeout_s; /* with XLB_SVC_F_AFFINITY */
	__u16 backend_count;	  /* backends in the Maglev table; 0: no backend */
	__u8 encap;		  /* XLB_ENCAP_* */
	__u8 pad;
	__u32 pad2;
};
_Static_assert(sizeof(struct xlb_service) == 24, "xlb_service size");

/* ---- Maglev ---------------------------------------------------------------
 * xlb_maglev: HASH (no prealloc), __u32 service id -> struct xlb_maglev_table.
 * slot[hash % M] is the service-local index of a backend, resolved through
 * xlb_svc_backend_ids or xlb_svc_backends (below). Only slot[0..M) is
 * meaningful. The whole table is
 * replaced with one map update, so readers never see half a table. */
struct xlb_maglev_table {
	__u16 slot[XLB_MAGLEV_MAX];
	__u16 pad; /* keeps the value a multiple of 4 bytes */
};
_Static_assert(sizeof(struct xlb_maglev_table) == 2 * XLB_MAGLEV_MAX + 2, "xlb_maglev_table size");

/* A Maglev slot's service-local index resolves to a backend id through
 * xlb_svc_backend_ids for the first XLB_SVC_IDS indexes, else (and for an
 * id 0 there) through xlb_svc_backends. A backend keeps its service-local
 * index for as long as it belongs to the service: its id is written (the
 * hash entry, then the array word) before any table slot points at the
 * index and cleared (the word, then the entry) only after no slot does.
 * The agent gives a service the lowest free indexes, so a service of up to
 * XLB_SVC_IDS backends (and a rolling update of it) is read from the array.
 *
 * xlb_svc_backends holds every index, also those the array caches: an agent
 * from before the array (a rollback) reads only the hash and finds every
 * backend. Agents of 8c29de7..aa2347d wrote indexes below XLB_SVC_IDS to
 * the array only; the agent's restore gives those their hash entries.
 *
 * xlb_svc_backend_ids: ARRAY, __u32 service id -> struct xlb_svc_backend_ids
 * (as many entries as xlb_svc_stats: service ids are dense below it).
 * id[index] is 0 (id 0 is never a backend: look in xlb_svc_backends) or
 * the id xlb_svc_backends holds for that index. The agent writes a
 * service's whole value at once (one update per service per apply); an
 * ARRAY update is a plain copy, not atomic as a whole, which is safe
 * because each word a reader may follow resolves to the same backend
 * before and after: the words of indexes some slot names are rewritten
 * with the same bytes or go 0 -> the hash's id (a value whose write had
 * failed, or an older agent's hash-only index), a word goes id -> 0 only
 * after no slot names its index, never id -> another id. The one
 * exception is the agent's restore after a rollback: an older agent may
 * have freed or reused an index behind the array's back, and the restore
 * rewrites such a stale word to the hash's id (or 0) before its programs
 * attach; the program attached meanwhile (the older agent's) reads only
 * the hash. */
enum xlb_svc_ids_consts {
	XLB_SVC_IDS = 16, /* one 64-byte cache line */
};

struct xlb_svc_backend_ids {
	__u32 id[XLB_SVC_IDS];
};
_Static_assert(sizeof(struct xlb_svc_backend_ids) == 64, "xlb_svc_backend_ids size");

/* xlb_svc_backends: HASH, struct xlb_svc_backend_key -> __u32 backend id,
 * an entry for every index a service holds (read by XDP for indexes >=
 * XLB_SVC_IDS and where the array's word is 0). */
struct xlb_svc_backend_key {
	__u32 svc_id;
	__u32 index;
};
_Static_assert(sizeof(struct xlb_svc_backend_key) == 8, "xlb_svc_backend_key size");

/* ---- backends -------------------------------------------------------------
 * xlb_backends: ARRAY, __u32 backend id -> struct xlb_backend. Id 0 is never
 * used. An entry with flags == 0 is free. */
enum xlb_backend_flags {
	XLB_BE_F_ACTIVE = 1 << 0,      /* in use */
	XLB_BE_F_TERMINATING = 1 << 1, /* keeps its flows, gets no new ones */
};

struct xlb_backend {
	__u8 addr[16];	  /* endpoint address */
	__u8 node[16];	  /* tunnel endpoint: the address of the endpoint's node */
	__be16 port;	  /* endpoint (target) port */
	__u8 family;	  /* of addr */
	__u8 node_family; /* of node */
	__u32 flags;	  /* XLB_BE_F_* */
	__u32 svc_id;	  /* the service this backend belongs to */
	__u32 gen;	  /* bumped each time the id is given to a new backend */
};
_Static_assert(sizeof(struct xlb_backend) == 48, "xlb_backend size");

/* ---- connection tracking --------------------------------------------------
 * xlb_ct: ARRAY (BPF_F_MMAPABLE: page-aligned values) of struct xlb_ct_set,
 * a set-associative table (lb/bpf/conntrack.h): the flow hash picks one set
 * of XLB_CT_WAYS ways, each a flow key (XDP: client to frontend, in packet
 * direction) and its entry. The entry is used only while its check word
 * matches and the backend it names still has the same generation and
 * XLB_BE_F_ACTIVE. */
struct xlb_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_flow_key) == 40, "xlb_flow_key size");

struct xlb_ct_entry {
	__u32 backend_id;
	__u32 backend_gen;
	__u32 svc_id;
	__u32 check;	 /* xlb_ct_check(): written last; 0 = empty way */
	__u32 stamp;	 /* low 32 bits of bpf_jiffies64() at insert/refresh;
			  * bit 0: XLB_CT_HIT */
	__u32 created_s; /* CLOCK_MONOTONIC seconds at insert */
};
_Static_assert(sizeof(struct xlb_ct_entry) == 24, "xlb_ct_entry size");

enum xlb_ct_geometry {
	XLB_CT_WAYS = 4, /* ways per set: 4 x 64 B, one set in 4 cache lines */
	XLB_CT_HIT = 1,	 /* stamp bit: the flow came back after its insert */
};

struct xlb_ct_way {
	struct xlb_flow_key key;
	struct xlb_ct_entry e;
};
_Static_assert(sizeof(struct xlb_ct_way) == 64, "xlb_ct_way size");

struct xlb_ct_set {
	struct xlb_ct_way way[XLB_CT_WAYS];
};
_Static_assert(sizeof(struct xlb_ct_set) == 256, "xlb_ct_set size");

/* xlb_affinity: LRU_HASH, struct xlb_affinity_key -> struct xlb_affinity_entry.
 * sessionAffinity: ClientIP; the entry is honoured while
 * now - last_ns < affinity_timeout_s and the backend is still valid. */
struct xlb_affinity_key {
	__u8 client[16];
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
};
_Static_assert(sizeof(struct xlb_affinity_key) == 24, "xlb_affinity_key size");

struct xlb_affinity_entry {
	__u32 backend_id;
	__u32 backend_gen;
	__u64 last_ns;
};
_Static_assert(sizeof(struct xlb_affinity_entry) == 16, "xlb_affinity_entry size");

/* ---- node ---------------------------------------------------------------
 * xlb_node: ARRAY of one entry, this node's tunnel identity. */
struct xlb_node_cfg {
	__u8 addr4[4];	    /* outer source for IPv4 underlay; 0: none */
	__u8 addr6[16];	    /* outer source for IPv6 underlay; :: : none */
	__be16 geneve_port; /* UDP destination port of Geneve, network order */
	__u16 pad;
	__u32 vni; /* Geneve VNI, host order, < 2^24 */
};
_Static_assert(sizeof(struct xlb_node_cfg) == 28, "xlb_node_cfg size");

/* ---- DSR termination (tc) -------------------------------------------------
 * xlb_dsr_nat: LRU_HASH, struct xlb_flow_key (client -> endpoint, as delivered
 * to the endpoint) -> struct xlb_dsr_nat_entry (the service address the
 * client used). Replies from the endpoint get their source rewritten back. */
struct xlb_dsr_nat_entry {
	__u8 vaddr[16];
	__be16 vport;
	__u8 family;
	__u8 pad;
	__u32 pad2;
	__u64 created_ns;
};
_Static_assert(sizeof(struct xlb_dsr_nat_entry) == 32, "xlb_dsr_nat_entry size");

/* ---- Geneve DSR option ----------------------------------------------------
 * Geneve (RFC 8926) carries the inner IP packet directly (protocol type
 * 0x0800 / 0x86DD) and one option, class XLB_GENEVE_OPT_CLASS, with the
 * service address and port the client used. The inner packet is already
 * DNAT'd to the endpoint by the load balancer. */
enum xlb_geneve_consts {
	XLB_GENEVE_PORT = 6081,
	XLB_GENEVE_OPT_CLASS = 0xFF58, /* experimental range */
	/* Outer UDP source port: XLB_GENEVE_SPORT_BASE + (flow hash & 0x3fff),
	 * entropy for RSS/ECMP on the way to the node. */
	XLB_GENEVE_SPORT_BASE = 49152,
};

/* Option types of class XLB_GENEVE_OPT_CLASS. */
enum xlb_geneve_opt_type {
	XLB_GENEVE_OPT_DSR4 = 0x01, /* data: struct xlb_dsr_opt4 */
	XLB_GENEVE_OPT_DSR6 = 0x02, /* data: struct xlb_dsr_opt6 */
	/* On an ICMP error the load balancer forwards (the inner packet
	 * untranslated: sent to the service address, quoting service:port ->
	 * client:port), in place of DSR4/DSR6: the ENDPOINT address and target
	 * port of the quoted flow, so the backend node translates the error
	 * without a reverse lookup. Data: struct xlb_dsr_opt4 / xlb_dsr_opt6
	 * holding the endpoint. */
	XLB_GENEVE_OPT_EP4 = 0x03,
	XLB_GENEVE_OPT_EP6 = 0x04,
};

struct xlb_geneve_hdr {
	__u8 ver_optlen; /* version (2 bits, 0) | option length in 4-byte words */
	__u8 flags;	 /* O | C | reserved */
	__be16 proto;	 /* EtherType of the inner packet */
	__u8 vni[3];
	__u8 rsvd;
};
_Static_assert(sizeof(struct xlb_geneve_hdr) == 8, "xlb_geneve_hdr size");

struct xlb_geneve_opt_hdr {
	__be16 opt_class;
	__u8 type;
	__u8 len; /* reserved (3 bits) | data length in 4-byte words */
};
_Static_assert(sizeof(struct xlb_geneve_opt_hdr) == 4, "xlb_geneve_opt_hdr size");

struct xlb_dsr_opt4 {
	__u8 vaddr[4];
	__be16 vport;
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_dsr_opt4) == 8, "xlb_dsr_opt4 size");

struct xlb_dsr_opt6 {
	__u8 vaddr[16];
	__be16 vport;
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_dsr_opt6) == 20, "xlb_dsr_opt6 size");

/* ---- counters -------------------------------------------------------------
 * xlb_counters: PERCPU_ARRAY, key = hook * XLB_REASON_MAX + reason ->
 * struct xlb_count. Every exit of every program is counted under exactly one
 * reason, in the slot of the hook it ran at (enum xlb_hook): the same reason
 * at XDP and at tc egress are two series. The names (lower-cased, prefix
 * removed) are the `reason` label values of xlb_drops_total /
 * xlb_passes_total / xlb_handled_total; the hook is the `hook` label.
 *
 * Classes by number range (the single exit decides verdicts by them):
 *     0- 15, 64- 95   OK_*    the packet was handled
 *    16- 31, 96-127   PASS_*  given to the kernel unchanged
 *    32- 63, 128-255  DROP_*  dropped
 * Never renumber; append within a range. */
enum xlb_hook {
	XLB_HOOK_XDP = 0,	  /* XDP on a NIC */
	XLB_HOOK_TC_INGRESS = 1,  /* tc ingress of a node NIC */
	XLB_HOOK_TC_EGRESS = 2,	  /* tc egress of a node NIC */
	XLB_HOOK_SOCK = 3,	  /* cgroup socket hooks (sock/) */
	XLB_HOOK_TC_POD_FROM = 4, /* tc ingress of a pod's host-side veth: from the pod */
	XLB_HOOK_TC_POD_TO = 5,	  /* tc egress of a pod's host-side veth: to the pod */
	XLB_HOOK_MAX = 8,
};

enum xlb_counter {
	XLB_OK_XDP_TX = 0,	    /* encapsulated, sent back out the same port */
	XLB_OK_XDP_REDIRECT = 1,    /* encapsulated, redirected to another port */
	XLB_OK_TC_DECAP = 2,	    /* tunnel packet decapsulated and delivered */
	XLB_OK_TC_REVNAT = 3,	    /* reply source rewritten to the service */
	XLB_OK_ICMP_FORWARD = 4,    /* ICMP error quoting a flow sent to its backend */
	XLB_OK_LOCAL_DELIVER = 5,   /* backend on this node: DNAT'd in place, XDP_PASS */
	XLB_OK_NEIGH_PASS = 6,	    /* encapsulated, given to the kernel to resolve the next hop */
	XLB_PASS_NOT_IP = 16,	    /* not IPv4/IPv6 (ARP, LLDP, ...) */
	XLB_PASS_NOT_FRONTEND = 17, /* destination is not a frontend */
	XLB_PASS_FRAGMENT = 18,	    /* IP fragment */
	XLB_PASS_L4_PROTO = 19,	    /* not TCP, UDP, ICMP error */
	XLB_PASS_IPV6_EXT = 20,	    /* IPv6 extension chain not followed */
	XLB_PASS_ICMP_NO_FLOW = 21, /* ICMP not quoting a known flow */
	XLB_PASS_NOT_TUNNEL = 22,   /* tc: not a tunnel packet for this node */
	XLB_PASS_NO_NAT = 23,	    /* tc: reply with no DSR translation */
	XLB_PASS_IP_OPTIONS = 24,   /* IPv4 options on a packet we must not touch */
	XLB_DROP_TRUNCATED = 32,    /* a header runs past the frame */
	XLB_DROP_BAD_IHL = 33,	    /* IPv4 IHL < 5 or past the frame */
	XLB_DROP_BAD_LEN = 34,	    /* IP length field inconsistent with frame */
	XLB_DROP_NO_BACKEND = 35,   /* service has no usable backend */
	XLB_DROP_NO_MAGLEV = 36,    /* service has no Maglev table */
	XLB_DROP_BACKEND_MISSING = 37, /* table names a backend that is gone */
	XLB_DROP_FIB = 38,	       /* no route/neighbour to the backend's node */
	XLB_DROP_NO_TX_PORT = 39,      /* route leaves by a port not in xlb_tx_ports */
	XLB_DROP_ENCAP = 40,	       /* could not grow the frame */
	XLB_DROP_TOO_BIG = 41,	       /* encapsulated frame exceeds the MTU */
	XLB_DROP_SOURCE_RANGE = 42,    /* client outside loadBalancerSourceRanges */
	XLB_DROP_NO_NODE_ADDR = 43,    /* no tunnel source address for the family */
	XLB_DROP_BAD_TUNNEL = 44,      /* tc: malformed Geneve/IPIP packet */
	XLB_DROP_NO_DSR_OPT = 45,      /* tc: Geneve packet without the DSR option */
	XLB_DROP_DECAP = 46,	       /* tc: could not remove the outer headers */
	XLB_DROP_NAT = 47,	       /* tc: could not rewrite the packet */
	XLB_DROP_NOT_LOCAL = 48,       /* tc: IPIP flow whose backend is on another node */
	XLB_DROP_BAD_VERSION = 128,    /* IP version field disagrees with the EtherType */
	/* #10 pod networking */
	XLB_OK_POD_REDIRECT = 72,      /* pod to a pod on this node: bpf_redirect_peer */
	XLB_OK_POD_ENCAP = 73,	       /* to a pod on another node: Geneve, sent out */
	XLB_OK_POD_DECAP = 74,	       /* overlay packet decapsulated into a local pod */
	XLB_OK_MASQ = 75,	       /* pod to outside: source masqueraded to the node */
	XLB_OK_MASQ_REPLY = 76,	       /* reply to a masqueraded flow delivered to its pod */
	XLB_OK_ICMP_TOO_BIG = 77,      /* oversize: ICMP frag-needed / too-big sent back */
	XLB_OK_TO_POD = 78,	       /* delivered to a pod by the host stack */
	XLB_PASS_FOREIGN_TUNNEL = 104, /* Geneve that is not xlb's (VNI, class, version) */
	XLB_PASS_POD_TO_STACK = 105,   /* from a pod to the host stack (node, outside) */
	XLB_PASS_POD_LINK_LOCAL = 106, /* pod's link-local / neighbour discovery traffic */
	XLB_PASS_NO_MASQ = 107,	       /* to a non-masquerade destination: source kept */
	XLB_PASS_MASQ_NO_STATE = 108,  /* TCP without SYN and no mapping: source kept */
	XLB_PASS_TTL = 109,	       /* TTL / hop limit exhausted: the kernel answers */
	XLB_DROP_POD_SPOOF = 152,      /* a pod sent from an address that is not its own */
	XLB_DROP_TUNNEL_PEER = 153,    /* xlb tunnel traffic from an unknown sender */
	XLB_DROP_NO_ENDPOINT = 154,    /* to this node's pod range: no such pod */
	XLB_DROP_SNAT_EXHAUSTED = 155, /* masquerade: no free port for the flow */
	XLB_DROP_POD_TOO_BIG = 156,    /* oversize: no ICMP (not DF, or rate limit) */
	/* #9 east-west (sock/, hook SOCK; the fallback in tc/) */
	XLB_OK_SOCK_CONNECT = 64,     /* connect(): service address translated to a backend */
	XLB_OK_SOCK_SENDMSG = 65,     /* sendmsg() of unconnected UDP: destination translated */
	XLB_OK_SOCK_REVNAT = 66,      /* recvmsg()/getpeername(): backend shown as the service */
	XLB_OK_FALLBACK_NAT = 67,     /* tc: a packet no hooked socket translated, DNAT'd */
	XLB_OK_FALLBACK_REVNAT = 68,  /* tc: its reply's source rewritten back to the service */
	XLB_PASS_SOCK_NO_REVNAT = 96, /* recvmsg/getpeername: not an address the socket was given */
	XLB_PASS_SOCK_HOST_ONLY = 97, /* host-only mode: a socket outside the host netns */
	XLB_PASS_SOCK_PROTO = 98,     /* not TCP or UDP (SCTP, raw, ...) */
	XLB_DROP_SOCK_STATE = 136,    /* no socket storage for the translation: refused */
	XLB_DROP_SOCK_FAMILY = 137,   /* backend of another family than the socket can reach */
	XLB_OK_SOCK_STATE_SPILL = 69, /* xlb_sock_cookie full: the record went to socket storage */
	/* #12 hardening: OK 80-87, PASS 112-119, DROP 129-135 and 176-199 */
	XLB_OK_REJECT = 80, /* no backend: TCP RST / ICMP unreachable sent to the client */
	XLB_PASS_FRAG_UNTRACKED = 112, /* IPv4 later fragment: no first seen */
	XLB_DROP_BAD_L4_LEN = 129,     /* TCP data offset or UDP length disagrees with the packet */
	XLB_DROP_REPLY_LIMIT = 130,    /* a reject or too-big reply suppressed by its rate limit */
	/* #11 NetworkPolicy */
	XLB_DROP_POLICY_INGRESS = 216, /* no policy allows it into the isolated pod */
	XLB_DROP_POLICY_EGRESS = 217,  /* no policy allows it out of the isolated pod */
	/* #14 performance: OK 88-95, PASS 120-127, DROP 200-215 */
	XLB_PASS_NOT_FRONTEND_FILTERED = 120, /* no frontend: its bit in xlb_fe_filter is clear */
};

enum xlb_counter_limits {
	XLB_REASON_MAX = 256,				 /* reasons per hook */
	XLB_COUNTER_MAX = XLB_HOOK_MAX * XLB_REASON_MAX, /* slots of xlb_counters */
};

struct xlb_count {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct xlb_count) == 16, "xlb_count size");

/* ---- per-service and per-backend statistics ------------------------------
 * xlb_svc_stats: PERCPU_ARRAY, __u32 service id -> struct xlb_svc_stats.
 * xlb_backend_stats: ARRAY, __u32 cpu * xlb_backend_slots + backend id ->
 * struct xlb_count: each CPU's counters contiguous, one row per possible CPU
 * (the agent sums a backend's column). */
struct xlb_svc_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 affinity_hits;
};
_Static_assert(sizeof(struct xlb_svc_stats) == 32, "xlb_svc_stats size");

/* ---- loadBalancerSourceRanges ---------------------------------------------
 * xlb_source_ranges: LPM_TRIE (no prealloc), struct xlb_src_range_key -> __u32
 * (1). A service with XLB_SVC_F_SOURCE_RANGES admits a client only when
 * (svc_id, family, client address) matches an entry; prefixlen counts the
 * 64 bits of svc_id/family/pad plus the CIDR's own prefix length. */
struct xlb_src_range_key {
	__u32 prefixlen;
	__be32 svc_id; /* big-endian so that the trie compares it bytewise */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct xlb_src_range_key) == 28, "xlb_src_range_key size");

/* ---- service names (userspace only) ---------------------------------------
 * xlb_svc_names: HASH, __u32 service id -> struct xlb_svc_name. No program
 * reads it: it keeps the service key ("namespace/name:port") beside the
 * pinned datapath so listings and a restarted agent can name what they find. */
struct xlb_svc_name {
	char name[128]; /* NUL-padded */
};
_Static_assert(sizeof(struct xlb_svc_name) == 128, "xlb_svc_name size");

/* ---- event stream ---------------------------------------------------------
 * xlb_events: RINGBUF (size in bytes set at load) of struct xlb_event.
 * xlb_events_cfg: ARRAY of one struct xlb_events_cfg, written by `xlb
 * monitor` (a lease it renews) and cleared by the agent when the lease
 * expires. The programs read only `mask`: with no listener an event point
 * costs one inlined array lookup and a branch, and no event is built.
 * xlb_event_stats: PERCPU_ARRAY, XLB_EV_STAT_* -> __u64. */
enum xlb_event_type {
	XLB_EV_NEW_FLOW = 1, /* a backend was chosen for a new flow */
	XLB_EV_DROP = 2,     /* a packet was dropped: reason = enum xlb_counter */
	XLB_EV_POLICY = 3,   /* reserved: NetworkPolicy verdict (tc); policy_id, reason = verdict */
	XLB_EV_SOCK = 4,     /* a socket's destination translated (sock/): see below */
};

/* xlb_events_cfg.mask: 1 << type. */
enum xlb_event_flags {
	XLB_EV_F_NEW_FLOW = 1 << XLB_EV_NEW_FLOW,
	XLB_EV_F_DROP = 1 << XLB_EV_DROP,
	XLB_EV_F_POLICY = 1 << XLB_EV_POLICY,
	XLB_EV_F_SOCK = 1 << XLB_EV_SOCK,
};

/* xlb_event.hook: enum xlb_hook. */

struct xlb_events_cfg {
	__u32 mask;	   /* XLB_EV_F_*: the kinds a listener wants; 0: none */
	__u32 flow_sample; /* new-flow events: one in N (0 and 1: every one) */
	__u64 lease_ns;	   /* CLOCK_MONOTONIC (bpf_ktime_get_ns) expiry of the listener's lease;
			      userspace only */
};
_Static_assert(sizeof(struct xlb_events_cfg) == 16, "xlb_events_cfg size");

struct xlb_event {
	__u64 ts_ns;	  /* bpf_ktime_get_ns() */
	__u8 type;	  /* XLB_EV_* */
	__u8 hook;	  /* enum xlb_hook */
	__u16 reason;	  /* XLB_EV_DROP: enum xlb_counter */
	__u32 ifindex;	  /* ingress (XDP, tc ingress) or egress interface */
	__u32 svc_id;	  /* XLB_EV_NEW_FLOW */
	__u32 backend_id; /* XLB_EV_NEW_FLOW */
	__u32 policy_id;  /* XLB_EV_POLICY (reserved, 0) */
	__u32 len;	  /* frame length as received */
	/* XLB_EV_NEW_FLOW: client -> frontend (before DNAT). XLB_EV_DROP: the
	 * packet's own addresses and ports as far as they could be read
	 * (family 0: not IP or truncated before the addresses). XLB_EV_SOCK
	 * (sampled like new flows, ifindex 0, len 0, reason the OK_SOCK_* or
	 * DROP_* counter it was counted under): backend <- service, i.e.
	 * saddr/sport the backend the socket was given (zero when refused),
	 * daddr/dport the service address the application used. */
	struct xlb_flow_key tuple;
};
_Static_assert(sizeof(struct xlb_event) == 72, "xlb_event size");

/* Indices of xlb_event_stats. */
enum xlb_event_stat {
	XLB_EV_STAT_SENT = 0, /* events written to xlb_events */
	XLB_EV_STAT_LOST = 1, /* events lost: ring buffer full */
	XLB_EV_STAT_MAX = 4,
};

/* ---- configuration generation ---------------------------------------------
 * xlb_config_gen: ARRAY of one struct xlb_config_gen. The agent bumps `gen`
 * after every apply that changed frontends, source ranges or services, so
 * per-CPU caches of service settings (the XDP flow cache) drop what they
 * hold at once instead of after a timeout. */
struct xlb_config_gen {
	__u64 gen;
};
_Static_assert(sizeof(struct xlb_config_gen) == 8, "xlb_config_gen size");

/* ---- backend annotations ---------------------------------------------------
 * xlb_backend_meta: HASH (no prealloc), __u32 backend id -> struct
 * xlb_backend_meta. No program reads it: it keeps the part of a backend's
 * Maglev input the datapath entries do not hold (its stable name and its
 * weight), so a restarted agent restores exactly what was applied. Only a
 * backend whose name or weight differs from its endpoint's default ("addr:port",
 * weight 1) has an entry: absent means the default. */
struct xlb_backend_meta {
	__u32 weight;  /* Maglev weight, >= 1 */
	char name[60]; /* stable cluster-wide name, NUL-padded (not terminated when 60 bytes) */
};
_Static_assert(sizeof(struct xlb_backend_meta) == 64, "xlb_backend_meta size");

/* ---- #14 performance: Maglev tables by size class --------------------------
 * A service's table lives in the map of the smallest class holding its M:
 * xlb_maglev_<C>: HASH (no prealloc), __u32 service id -> struct
 * xlb_maglev_<C>, for C in enum xlb_maglev_class; M above the largest class
 * (up to XLB_MAGLEV_MAX) stays in xlb_maglev. Each class is the largest prime
 * whose map element (value, key and the kernel's ~100 bytes of element and
 * allocator headers) fits one kmalloc size (512 B ... 32 KiB), so a table
 * costs what its M needs, not 32 KiB (64 KiB of pages for xlb_maglev's
 * 32,8xx-byte elements). Only slot[0..M) is meaningful. A table found in no
 * class map is looked up in xlb_maglev (tables written before the classes
 * existed keep serving until the agent moves them). */
enum xlb_maglev_class {
	XLB_MAGLEV_C199 = 199,	   /* 512 B */
	XLB_MAGLEV_C457 = 457,	   /* 1 KiB */
	XLB_MAGLEV_C971 = 971,	   /* 2 KiB */
	XLB_MAGLEV_C1993 = 1993,   /* 4 KiB */
	XLB_MAGLEV_C4027 = 4027,   /* 8 KiB */
	XLB_MAGLEV_C8123 = 8123,   /* 16 KiB */
	XLB_MAGLEV_C16319 = 16319, /* 32 KiB */
};

struct xlb_maglev_199 {
	__u16 slot[XLB_MAGLEV_C199];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_199) == 2 * XLB_MAGLEV_C199 + 2, "xlb_maglev_199 size");

struct xlb_maglev_457 {
	__u16 slot[XLB_MAGLEV_C457];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_457) == 2 * XLB_MAGLEV_C457 + 2, "xlb_maglev_457 size");

struct xlb_maglev_971 {
	__u16 slot[XLB_MAGLEV_C971];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_971) == 2 * XLB_MAGLEV_C971 + 2, "xlb_maglev_971 size");

struct xlb_maglev_1993 {
	__u16 slot[XLB_MAGLEV_C1993];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_1993) == 2 * XLB_MAGLEV_C1993 + 2, "xlb_maglev_1993 size");

struct xlb_maglev_4027 {
	__u16 slot[XLB_MAGLEV_C4027];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_4027) == 2 * XLB_MAGLEV_C4027 + 2, "xlb_maglev_4027 size");

struct xlb_maglev_8123 {
	__u16 slot[XLB_MAGLEV_C8123];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_8123) == 2 * XLB_MAGLEV_C8123 + 2, "xlb_maglev_8123 size");

struct xlb_maglev_16319 {
	__u16 slot[XLB_MAGLEV_C16319];
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_maglev_16319) == 2 * XLB_MAGLEV_C16319 + 2,
	       "xlb_maglev_16319 size");
/* ==== pod networking (#10) =================================================
 * xlb is the node's network: pods get a veth pair from xlb-cni (cni/), the
 * host side runs xlb_pod_from (tc ingress: what the pod sends) and
 * xlb_pod_to (tc egress: what the host stack delivers to it). Pods on this
 * node are reached by bpf_redirect_peer; pods on other nodes through a
 * Geneve overlay done in BPF (one UDP port and VNI with the DSR dispatch,
 * told apart by the option: XLB_GENEVE_OPT_IDENTITY carries the source's
 * security identity); traffic leaving the cluster is masqueraded to the
 * node's address on the uplink (tc egress), its replies translated back on
 * ingress. */

/* Option types of class XLB_GENEVE_OPT_CLASS, continued (5-7 are #10's). */
enum xlb_geneve_pod_opt {
	XLB_GENEVE_OPT_IDENTITY = 0x05, /* overlay: data struct xlb_identity_opt */
};

struct xlb_identity_opt {
	__be32 identity; /* the source's security identity (enum xlb_identity) */
};
_Static_assert(sizeof(struct xlb_identity_opt) == 4, "xlb_identity_opt size");

/* Security identities: well-known ones below XLB_ID_POD_MIN, pods from it
 * (NetworkPolicy, #11, reads them; the overlay carries them across nodes). */
enum xlb_identity {
	XLB_ID_UNKNOWN = 0,
	XLB_ID_HOST = 1,  /* a node itself (not a pod) */
	XLB_ID_WORLD = 2, /* outside the cluster */
	XLB_ID_POD_MIN = 256,
};

/* Key of xlb_endpoints and xlb_tunnel_peers: one address. */
struct xlb_addr_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};
_Static_assert(sizeof(struct xlb_addr_key) == 20, "xlb_addr_key size");

/* xlb_endpoints: HASH, struct xlb_addr_key (a pod address) -> struct
 * xlb_endpoint: the pods of this node, one entry per address. Written by
 * xlb-cni on ADD (so the pod is reachable when ADD returns) and by the
 * agent's endpoints reconciler (which owns it: restores, repairs, removes). */
enum xlb_endpoint_flags {
	XLB_EP_F_ACTIVE = 1 << 0,
};

struct xlb_endpoint {
	__u32 ifindex;	  /* the host-side veth */
	__u32 identity;	  /* enum xlb_identity or a pod's */
	__u8 mac[6];	  /* the pod's interface (frames to it) */
	__u8 host_mac[6]; /* the host-side veth (frames from it) */
	__u32 flags;	  /* XLB_EP_F_* */
};
_Static_assert(sizeof(struct xlb_endpoint) == 24, "xlb_endpoint size");

/* xlb_tunnel_peers: HASH, struct xlb_addr_key -> __u32 XLB_PEER_F_*: the
 * underlay addresses xlb's tunnel traffic (DSR dispatch, overlay) is
 * accepted from: every Node's InternalIPs and the configured load
 * balancers. Others are dropped (XLB_DROP_TUNNEL_PEER). */
enum xlb_peer_flags {
	XLB_PEER_F_NODE = 1 << 0,
	XLB_PEER_F_LB = 1 << 1,
};

/* Key of the LPM tries xlb_pod_routes and xlb_nonmasq: prefixlen counts
 * the 32 bits of family and pad plus the CIDR's own length. */
struct xlb_cidr_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct xlb_cidr_key) == 24, "xlb_cidr_key size");

/* xlb_pod_routes: LPM_TRIE (no prealloc), struct xlb_cidr_key (a Node's
 * spec.podCIDRs entry) -> struct xlb_route: where that node is on the
 * underlay. xlb_nonmasq: LPM_TRIE, struct xlb_cidr_key -> __u32 (1):
 * destinations pods reach with their own address. */
enum xlb_route_flags {
	XLB_ROUTE_F_LOCAL = 1 << 0, /* this node's own pod range */
};

struct xlb_route {
	__u8 node[16];	  /* the node's underlay address (tunnel destination) */
	__u8 node_family; /* of node */
	__u8 flags;	  /* XLB_ROUTE_F_* */
	__u16 pad;
};
_Static_assert(sizeof(struct xlb_route) == 20, "xlb_route size");

/* xlb_podnet: ARRAY of one struct xlb_podnet_cfg, this node's pod network
 * settings. */
enum xlb_podnet_flags {
	XLB_PODNET_F_MASQ = 1 << 0, /* masquerade pods' traffic leaving the cluster */
};

struct xlb_podnet_cfg {
	__u32 flags;	     /* XLB_PODNET_F_* */
	__u16 masq_port_min; /* masquerade source ports, host order, inclusive */
	__u16 masq_port_max;
	__u32 icmp_rate; /* ICMP errors (too big) sent per second and CPU */
	__u32 pad;
};
_Static_assert(sizeof(struct xlb_podnet_cfg) == 16, "xlb_podnet_cfg size");

/* ---- masquerade -------------------------------------------------------------
 * xlb_snat: LRU_HASH, struct xlb_flow_key (pod -> outside, as the pod sent
 * it) -> struct xlb_snat_entry (the node address and port it leaves with).
 * xlb_snat_rev: LRU_HASH, struct xlb_flow_key (outside -> node:port, the
 * reply) -> struct xlb_snat_entry (the pod address and port). A port is
 * taken by inserting the reverse entry with BPF_NOEXIST: a taken port is a
 * collision and the next candidate is tried, at most XLB_SNAT_TRIES; an
 * idle mapping (XLB_SNAT_*_IDLE_S) may be taken over. ICMP echo uses the
 * identifier as the port (sport in the forward key, dport in the reverse). */
enum xlb_snat_limits {
	XLB_SNAT_TRIES = 16,
	XLB_SNAT_TCP_IDLE_S = 21600, /* a TCP mapping idle this long may be reused */
	XLB_SNAT_OTHER_IDLE_S = 60,  /* UDP, ICMP */
	XLB_SNAT_PORT_MIN = 61000,   /* default range: above Linux's ephemeral ports */
	XLB_SNAT_PORT_MAX = 65535,
};

struct xlb_snat_entry {
	__u8 addr[16]; /* forward: the node's address; reverse: the pod's */
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 pad2;
	__u64 last_ns; /* bpf_ktime_get_ns() of the last packet, within a second */
};
_Static_assert(sizeof(struct xlb_snat_entry) == 32, "xlb_snat_entry size");

/* xlb_snat_stats: PERCPU_ARRAY of one: what port allocation did. */
struct xlb_snat_stats {
	__u64 allocated;  /* mappings made */
	__u64 collisions; /* candidate ports found taken */
	__u64 exhausted;  /* flows dropped: every candidate taken */
	__u64 reclaimed;  /* idle mappings taken over */
};
_Static_assert(sizeof(struct xlb_snat_stats) == 32, "xlb_snat_stats size");

/* ==== east-west: socket-level load balancing (#9) ===========================
 * The cgroup sock_addr programs (sock/xlb_sock.c) translate a service
 * address once per connection, at connect() (TCP, connected UDP) and at
 * sendmsg() of unconnected UDP, and show the service address again at
 * recvmsg() and getpeername(). Backends are picked with the services' own
 * tables (xlb_maglev_pick, maglev.h) from a hash of the socket cookie.
 *
 * xlb_sock_frontends: HASH, struct xlb_frontend_key -> struct xlb_service.
 * The addresses in-cluster clients reach a service by: every ClusterIP, and
 * LoadBalancer IPs, externalIPs and NodePorts (on this node's addresses and
 * loopback) as seen from inside the node. Its own map, not a flag in
 * xlb_frontends: XDP never reads it (a ClusterIP is not answered from
 * outside), and one address may belong to two services (an
 * externalTrafficPolicy: Local LoadBalancer IP: node-local endpoints from
 * outside, all of them from inside). Written by the services reconciler
 * beside xlb_frontends.
 *
 * xlb_sock_state: SK_STORAGE, per socket: struct xlb_sock_state. The
 * services the socket was translated to, with the backend it was given
 * (socket-cookie affinity: unconnected UDP keeps sending to it while it is
 * valid) and the address to show for it (recvmsg, getpeername). Socket
 * storage lives and dies with its socket: nothing to age out, and a burst of
 * short connections cannot evict a long-lived socket's translation.
 *
 * xlb_sock_cookie: HASH (preallocated), __u64 socket cookie -> struct
 * xlb_sock_rec: a socket's FIRST record, where the programs look first.
 * Creating socket storage costs two allocations with memcg accounting per
 * socket (and their free at close): most of connect()'s cost; an entry of a
 * preallocated map costs neither. The cgroup/sock_release program deletes
 * the entry when its socket is released (socket cookies are never reused,
 * so an entry that outlives its socket is never matched: it only takes
 * room). Further records of one socket (an unconnected UDP socket talking
 * to a second service), and every record while the map is full
 * (XLB_OK_SOCK_STATE_SPILL counts those), go to xlb_sock_state as before.
 * Sized by MapSizes.sock_states.
 *
 * xlb_sock_mark: ARRAY, __u32 (socket cookie & size - 1) -> __u32: never
 * fewer than the xlb_sock_cookie records of cookies at that index; a zero
 * lets sock_release, getpeername and recvmsg skip the lookup (sock/mark.h).
 * Sized by the loader: MapSizes.sock_states rounded up to a power of two. */
enum xlb_sock_consts {
	XLB_SOCK_RECS = 4, /* services one socket remembers (round robin beyond) */
};

struct xlb_sock_rec {
	__u8 vaddr[16]; /* the service address the application used */
	__u8 baddr[16]; /* the backend address the socket was given */
	__be16 vport;
	__be16 bport;
	__u8 family; /* of both (an IPv4-mapped IPv6 socket's records are IPv4) */
	__u8 proto;
	__u16 pad;
	__u32 svc_id; /* 0 with backend_id 0: a free record */
	__u32 backend_id;
	__u32 backend_gen;
};
_Static_assert(sizeof(struct xlb_sock_rec) == 52, "xlb_sock_rec size");

struct xlb_sock_state {
	struct xlb_sock_rec rec[XLB_SOCK_RECS];
	__u32 next; /* the record the next new service replaces */
	__u32 pad;
};
_Static_assert(sizeof(struct xlb_sock_state) == 4 * 52 + 8, "xlb_sock_state size");

/* xlb_sock_affinity: LRU_HASH, struct xlb_sock_aff_key -> struct
 * xlb_affinity_entry. sessionAffinity: ClientIP for sockets: a pod's
 * client address is its network namespace, so the key is the namespace's
 * cookie (the host's processes share the node's). */
struct xlb_sock_aff_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};
_Static_assert(sizeof(struct xlb_sock_aff_key) == 16, "xlb_sock_aff_key size");

/* xlb_sock_stats: PERCPU_ARRAY, __u32 service id -> struct xlb_sock_stats:
 * socket translations per service (zeroed with the service's statistics). */
struct xlb_sock_stats {
	__u64 connect;	     /* connect() translated */
	__u64 sendmsg;	     /* unconnected UDP datagrams translated */
	__u64 revnat;	     /* recvmsg()/getpeername() shown the service address */
	__u64 refused;	     /* connect()/sendmsg() refused: no usable backend */
	__u64 affinity_hits; /* backend from ClientIP affinity */
};
_Static_assert(sizeof(struct xlb_sock_stats) == 40, "xlb_sock_stats size");

/* xlb_sock_kill: HASH, struct xlb_frontend_key (a removed backend's
 * address, port and protocol) -> __u32 (1). Written by the agent around a
 * run of the socket iterators (sock/xlb_sock_iter.c): connected UDP sockets
 * and connecting TCP sockets whose peer is listed are destroyed. */
enum xlb_sock_kill_limits {
	XLB_SOCK_KILL_MAX = 4096,
};
/* ---- hardening (issue #12) -------------------------------------------------
 * Numbers of this section: xlb_service.flags bits 8-15; reasons (in enum
 * xlb_counter) OK 80-87, PASS 112-119, DROP 129-135 and 176-199. */

/* xlb_service.flags: per frontend, like XLB_SVC_F_NODEPORT. (Note that
 * XLB_SVC_F_SOURCE_RANGES is per frontend too: set on LoadBalancer ingress
 * frontends only, as kube-proxy filters only those.) */
enum xlb_svc_flags_hardening {
	/* No usable backend: drop silently instead of rejecting (TCP RST,
	 * ICMP unreachable). Annotation xlb.io/no-endpoints: drop. */
	XLB_SVC_F_DROP_NO_BACKEND = 1 << 8,
};

/* xlb_frag4: LRU_HASH, struct xlb_frag_key -> struct xlb_frag_ports. The
 * ports of an IPv4 datagram's first fragment sent to a frontend, so that
 * its later fragments (which carry no L4 header) follow the same flow.
 * Written by XDP for every first fragment to a frontend; bounded by its
 * size (MapSizes.frags), the oldest entries evicted. */
struct xlb_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id; /* IPv4 identification */
	__u8 proto;
	__u8 pad;
};
_Static_assert(sizeof(struct xlb_frag_key) == 12, "xlb_frag_key size");

struct xlb_frag_ports {
	__be16 sport;
	__be16 dport;
};
_Static_assert(sizeof(struct xlb_frag_ports) == 4, "xlb_frag_ports size");
/* ==== NetworkPolicy (#11) ==================================================
 * Enforced in tc at the pods' host veths: the source's egress before it is
 * sent anywhere (xlb_pod_from), the destination's ingress where it is
 * delivered (redirect from a local pod, overlay decap, host stack). Only
 * pods with an xlb_policy_ep entry are isolated: any other pod costs one
 * hash lookup. A new connection (no xlb_policy_ct entry either way) is
 * checked against xlb_policy and recorded; later packets and replies pass
 * on the record until it idles out. Policy changes reach new connections;
 * established ones keep going until they end (idle timeout).
 *
 * Identities: pods' from XLB_ID_POD_MIN (labels + namespace), ipBlock
 * prefixes' from XLB_ID_CIDR_MIN; XLB_ID_UNKNOWN (0) in a policy key
 * stands for any peer. */
enum xlb_policy_ids {
	XLB_ID_CIDR_MIN = 1 << 24,
};

enum xlb_policy_dir {
	XLB_POLICY_DIR_INGRESS = 1,
	XLB_POLICY_DIR_EGRESS = 2,
};

enum xlb_policy_limits {
	/* Bits of struct xlb_policy_key after prefixlen: ep, identity, dir,
	 * proto, port. Every protocol: 72; one protocol: 80; a port: 96. */
	XLB_POLICY_KEY_BITS = 96,
	XLB_POLICY_PROTO_BITS = 80,
	XLB_POLICY_ANY_PROTO_BITS = 72,
	XLB_POLICY_CT_TCP_IDLE_S = 21600,
	XLB_POLICY_CT_OTHER_IDLE_S = 120,
};

/* xlb_policy: LPM_TRIE (no prealloc), struct xlb_policy_key -> struct
 * xlb_policy_entry: what an isolated endpoint allows, port ranges as
 * prefixes of the port bits. Single-port entries (prefixlen
 * XLB_POLICY_KEY_BITS) live in xlb_policy_exact instead: HASH, the same key
 * and value, looked up first; the trie (whose walk deepens with every entry
 * of every endpoint) only when the endpoint has range, any-port or
 * any-protocol entries in that direction (XLB_POLICY_F_*_LPM). */
struct xlb_policy_key {
	__u32 prefixlen;
	__u32 ep;	/* the endpoint's host veth ifindex */
	__u32 identity; /* the peer's, or XLB_ID_UNKNOWN: any peer */
	__u8 dir;	/* enum xlb_policy_dir */
	__u8 proto;	/* IPPROTO_* */
	__be16 port;	/* destination port */
};
_Static_assert(sizeof(struct xlb_policy_key) == 16, "xlb_policy_key size");

struct xlb_policy_entry {
	__u32 policy; /* the allowing NetworkPolicy's number (policy logs) */
	__u32 pad;
};
_Static_assert(sizeof(struct xlb_policy_entry) == 8, "xlb_policy_entry size");

/* xlb_policy_ep: HASH, __u32 ifindex -> struct xlb_policy_ep: the
 * endpoint's isolation. */
enum xlb_policy_ep_flags {
	XLB_POLICY_F_INGRESS = 1 << 0, /* some policy selects it for ingress */
	XLB_POLICY_F_EGRESS = 1 << 1,
	XLB_POLICY_F_INGRESS_LPM = 1 << 2, /* xlb_policy has its ingress entries */
	XLB_POLICY_F_EGRESS_LPM = 1 << 3,
};

struct xlb_policy_ep {
	__u32 flags; /* XLB_POLICY_F_* */
	__u32 pad;
};
_Static_assert(sizeof(struct xlb_policy_ep) == 8, "xlb_policy_ep size");

/* xlb_ip_identity: LPM_TRIE (no prealloc), struct xlb_cidr_key -> struct
 * xlb_addr_identity: pods' addresses (full length) and ipBlock prefixes. */
struct xlb_addr_identity {
	__u32 identity;	     /* a pod's, or XLB_ID_WORLD */
	__u32 cidr_identity; /* the most specific ipBlock prefix holding it, or 0 */
};
_Static_assert(sizeof(struct xlb_addr_identity) == 8, "xlb_addr_identity size");

/* xlb_policy_ct: LRU_HASH, struct xlb_flow_key (as the connection's first
 * packet had it) -> struct xlb_policy_ct: which checks it passed. */
enum xlb_policy_ct_flags {
	XLB_PCT_F_EGRESS = 1 << 0,  /* allowed out of its source */
	XLB_PCT_F_INGRESS = 1 << 1, /* allowed into its destination */
};

struct xlb_policy_ct {
	__u64 last_ns; /* bpf_ktime_get_ns() of the last packet */
	__u32 flags;   /* XLB_PCT_F_* */
	__u32 policy;  /* the allowing policy (0: not isolated) */
};
_Static_assert(sizeof(struct xlb_policy_ct) == 16, "xlb_policy_ct size");

/* ---- #14 connection table flood guard ------------------------------------
 * xlb_ct_guard: PERCPU_ARRAY of one entry. New xlb_ct entries are inserted
 * under a per-CPU budget (LoadOptions::ct_insert_rate, a load-time
 * constant of each object): a new flow beyond it is served by Maglev alone
 * (consistent anyway) and evicts no established entry. */
struct xlb_ct_guard {
	__u64 credit_ns; /* the budget's token bucket (bucket.h) */
	__u64 last_ns;
	__u64 inserted; /* new entries written */
	__u64 skipped;	/* new flows served without an entry (over budget) */
};
_Static_assert(sizeof(struct xlb_ct_guard) == 32, "xlb_ct_guard size");

/* ---- #14 frontend filter --------------------------------------------------
 * xlb_fe_filter: ARRAY of XLB_FE_FILTER_WORDS + 1 __u64: a Bloom filter
 * (one hash) of the keys of xlb_frontends. Bit xlb_fe_filter_bit(key)
 * (service.h; abi::fe_filter_bit in Rust: the same function) is set for
 * every frontend (address, port, protocol, family) the XDP program serves;
 * a clear bit means "no frontend" and the packet is passed without a
 * frontend lookup. The agent sets a bit before the frontend appears and
 * clears it only after the last frontend with that bit is gone. Entry
 * XLB_FE_FILTER_ARMED is nonzero once the agent has written the filter:
 * until then (maps created by another version) nothing is filtered. */
enum xlb_fe_filter_size {
	XLB_FE_FILTER_BITS = 20, /* log2 of the filter's bits (128 KiB) */
	XLB_FE_FILTER_WORDS = 1 << (XLB_FE_FILTER_BITS - 6),
	XLB_FE_FILTER_ARMED = XLB_FE_FILTER_WORDS, /* index of the armed flag */
};

/* ---- #14 connection table tags --------------------------------------------
 * xlb_ct_tags: ARRAY of struct xlb_ct_tags, as many entries as xlb_ct has
 * sets: entry i holds a 16-bit tag of the flow hash of each way of set i
 * (xlb_ct_tag() in conntrack.h, abi::ct_tag in Rust), 0 for a way never
 * written. A lookup reads the set's ways only where the tag matches: a
 * miss (a new flow) costs one 8-byte read of a 1 MiB array instead of the
 * set's 4 cache lines. Written with the way by every xlb_ct writer. */
struct xlb_ct_tags {
	__u16 tag[XLB_CT_WAYS];
};
_Static_assert(sizeof(struct xlb_ct_tags) == 8, "xlb_ct_tags size");

#endif /* XLB_ABI_H */
