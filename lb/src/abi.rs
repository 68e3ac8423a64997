//! Rust mirrors of lb/bpf/xlb_abi.h, the datapath ABI. Each struct is
//! `#[repr(C)]` with explicit padding and a size assertion; `LAYOUTS` lists
//! every field's offset so that lb/tests/abi_btf.rs can compare them with the
//! BTF of the compiled objects: one truth (the C header), checked, not trusted.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Declares the constants of xlb_abi.h (each a member of a named
/// `enum xlb_*` there) and [`CONSTANTS`], the table lb/tests/abi_btf.rs
/// compares with the header's BTF: a constant added, removed or changed on
/// either side fails that test.
macro_rules! abi_consts {
    ($($(#[$m:meta])* $name:ident : $t:ty = $v:expr;)*) => {
        $($(#[$m])* pub const $name: $t = $v;)*
        /// Every constant of xlb_abi.h by its C name (`XLB_` + the Rust name).
        pub const CONSTANTS: &[(&str, i64)] =
            &[$((concat!("XLB_", stringify!($name)), $name as i64)),*];
    };
}

abi_consts! {
    ABI_VERSION: u32 = 1;
    FAMILY_V4: u8 = 4;
    FAMILY_V6: u8 = 6;
    /// Largest Maglev table (a prime); every service's M is at most this.
    MAGLEV_MAX: usize = 16381;
    /// Seed of the flow hash (lb/bpf/conntrack.h).
    HASH_SEED: u32 = 0x786c_6221;
    /// Ways per xlb_ct set (conntrack.h).
    CT_WAYS: u32 = 4;
    /// Service-local indexes whose backend id xlb_svc_backend_ids caches
    /// (xlb_svc_backends holds every index).
    SVC_IDS: u32 = 16;
    /// Bit 0 of an xlb_ct way's stamp: the flow came back after its insert
    /// (eviction takes ways without it first, conntrack.h).
    CT_HIT: u32 = 1;
    SVC_F_AFFINITY: u32 = 1 << 0;
    SVC_F_SOURCE_RANGES: u32 = 1 << 1;
    SVC_F_NODEPORT: u32 = 1 << 2;
    SVC_F_CLUSTER_IP: u32 = 1 << 3;
    SVC_F_HOST_PORT: u32 = 1 << 4;
    ENCAP_GENEVE: u8 = 0;
    ENCAP_IPIP: u8 = 1;
    BE_F_ACTIVE: u32 = 1 << 0;
    BE_F_TERMINATING: u32 = 1 << 1;
    GENEVE_PORT: u16 = 6081;
    GENEVE_OPT_CLASS: u16 = 0xFF58;
    /// Outer UDP source port of Geneve: this + (flow hash & 0x3fff).
    GENEVE_SPORT_BASE: u16 = 49152;
    GENEVE_OPT_DSR4: u8 = 1;
    GENEVE_OPT_DSR6: u8 = 2;
    GENEVE_OPT_EP4: u8 = 3;
    GENEVE_OPT_EP6: u8 = 4;
    HOOK_XDP: u8 = 0;
    HOOK_TC_INGRESS: u8 = 1;
    HOOK_TC_EGRESS: u8 = 2;
    HOOK_SOCK: u8 = 3;
    HOOK_TC_POD_FROM: u8 = 4;
    HOOK_TC_POD_TO: u8 = 5;
    HOOK_MAX: u32 = 8;
    /// Reasons per hook in xlb_counters.
    REASON_MAX: u32 = 256;
    /// Size of xlb_counters: one slot per (hook, reason).
    COUNTER_MAX: u32 = HOOK_MAX * REASON_MAX;
    EV_NEW_FLOW: u8 = 1;
    EV_DROP: u8 = 2;
    EV_POLICY: u8 = 3;
    EV_F_NEW_FLOW: u32 = 1 << EV_NEW_FLOW;
    EV_F_DROP: u32 = 1 << EV_DROP;
    EV_F_POLICY: u32 = 1 << EV_POLICY;
    /// Indices of xlb_event_stats.
    EV_STAT_SENT: u32 = 0;
    EV_STAT_LOST: u32 = 1;
    EV_STAT_MAX: u32 = 4;
    // #14 performance: Maglev size classes (enum xlb_maglev_class).
    MAGLEV_C199: usize = 199;
    MAGLEV_C457: usize = 457;
    MAGLEV_C971: usize = 971;
    MAGLEV_C1993: usize = 1993;
    MAGLEV_C4027: usize = 4027;
    MAGLEV_C8123: usize = 8123;
    MAGLEV_C16319: usize = 16319;
    // ---- pod networking (#10)
    /// Geneve option of the pod overlay: the source's security identity.
    GENEVE_OPT_IDENTITY: u8 = 5;
    ID_UNKNOWN: u32 = 0;
    /// A node itself (its own traffic into the overlay).
    ID_HOST: u32 = 1;
    ID_WORLD: u32 = 2;
    /// Pods' identities start here.
    ID_POD_MIN: u32 = 256;
    EP_F_ACTIVE: u32 = 1 << 0;
    PEER_F_NODE: u32 = 1 << 0;
    PEER_F_LB: u32 = 1 << 1;
    ROUTE_F_LOCAL: u8 = 1 << 0;
    PODNET_F_MASQ: u32 = 1 << 0;
    SNAT_TRIES: u32 = 16;
    SNAT_TCP_IDLE_S: u32 = 21600;
    SNAT_OTHER_IDLE_S: u32 = 60;
    SNAT_PORT_MIN: u16 = 61000;
    SNAT_PORT_MAX: u16 = 65535;
    EV_SOCK: u8 = 4;
    EV_F_SOCK: u32 = 1 << EV_SOCK;
    /// Services one socket's storage remembers (xlb_sock_state).
    SOCK_RECS: usize = 4;
    /// Entries of xlb_sock_kill.
    SOCK_KILL_MAX: u32 = 4096;
    // ---- hardening (#12) ----
    /// No usable backend: drop instead of rejecting (per frontend).
    SVC_F_DROP_NO_BACKEND: u32 = 1 << 8;
    // ---- NetworkPolicy (#11)
    /// ipBlock prefixes' identities start here.
    ID_CIDR_MIN: u32 = 1 << 24;
    POLICY_DIR_INGRESS: u32 = 1;
    POLICY_DIR_EGRESS: u32 = 2;
    POLICY_KEY_BITS: u32 = 96;
    POLICY_PROTO_BITS: u32 = 80;
    POLICY_ANY_PROTO_BITS: u32 = 72;
    POLICY_CT_TCP_IDLE_S: u32 = 21600;
    POLICY_CT_OTHER_IDLE_S: u32 = 120;
    POLICY_F_INGRESS: u32 = 1 << 0;
    POLICY_F_EGRESS: u32 = 1 << 1;
    POLICY_F_INGRESS_LPM: u32 = 1 << 2;
    POLICY_F_EGRESS_LPM: u32 = 1 << 3;
    PCT_F_EGRESS: u32 = 1 << 0;
    PCT_F_INGRESS: u32 = 1 << 1;
    // #14 performance: the frontend filter (xlb_fe_filter)
    /// log2 of the filter's bits.
    FE_FILTER_BITS: u32 = 20;
    /// 64-bit words of the filter.
    FE_FILTER_WORDS: u32 = 1 << (FE_FILTER_BITS - 6);
    /// Index of the armed flag (after the words).
    FE_FILTER_ARMED: u32 = FE_FILTER_WORDS;
}

/// The bit of a frontend key in xlb_fe_filter: lb/bpf/service.h's
/// xlb_fe_filter_bit (change both; lb/tests/xdp_select.rs checks that no
/// frontend is filtered).
pub fn fe_filter_bit(k: &FrontendKey) -> u32 {
    let d: [u32; 4] =
        std::array::from_fn(|i| u32::from_ne_bytes(k.addr[i * 4..i * 4 + 4].try_into().unwrap()));
    let h = d[0]
        ^ d[1].rotate_left(8)
        ^ d[2].rotate_left(16)
        ^ d[3].rotate_left(24)
        ^ (u32::from(k.port) << 16)
        ^ u32::from(k.proto);
    h.wrapping_mul(0x9e37_79b1) >> (32 - FE_FILTER_BITS)
}

/// The xlb_service flags that describe one frontend (what it is), not its service.
pub const SVC_F_PER_FRONTEND: u32 =
    SVC_F_NODEPORT | SVC_F_CLUSTER_IP | SVC_F_HOST_PORT | SVC_F_SOURCE_RANGES;

/// xlb_event.hook values (the same numbers as HOOK_*).
pub const EV_HOOK_XDP: u8 = HOOK_XDP;
pub const EV_HOOK_TC_INGRESS: u8 = HOOK_TC_INGRESS;
pub const EV_HOOK_TC_EGRESS: u8 = HOOK_TC_EGRESS;
pub const EV_HOOK_SOCK: u8 = HOOK_SOCK;

/// Where a program ran (enum xlb_hook): the first index of xlb_counters and
/// the `hook` label of the counter metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
    Sock,
    TcPodFrom,
    TcPodTo,
}

impl Hook {
    pub const ALL: &'static [Hook] =
        &[Hook::Xdp, Hook::TcIngress, Hook::TcEgress, Hook::Sock, Hook::TcPodFrom, Hook::TcPodTo];

    /// The HOOK_* number.
    pub fn number(self) -> u8 {
        match self {
            Hook::Xdp => HOOK_XDP,
            Hook::TcIngress => HOOK_TC_INGRESS,
            Hook::TcEgress => HOOK_TC_EGRESS,
            Hook::Sock => HOOK_SOCK,
            Hook::TcPodFrom => HOOK_TC_POD_FROM,
            Hook::TcPodTo => HOOK_TC_POD_TO,
        }
    }

    pub fn from_number(n: u8) -> Option<Hook> {
        Hook::ALL.iter().copied().find(|h| h.number() == n)
    }

    /// The label value: "xdp", "tc_ingress", ...
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::Sock => "sock",
            Hook::TcPodFrom => "tc_pod_from",
            Hook::TcPodTo => "tc_pod_to",
        }
    }

    /// The xlb_counters slot of `counter` at this hook.
    pub fn slot(self, counter: Counter) -> u32 {
        u32::from(self.number()) * REASON_MAX + counter as u32
    }
}

/// The ABI key of one address (xlb_endpoints, xlb_tunnel_peers).
pub fn addr_key(ip: IpAddr) -> AddrKey {
    let (addr, family) = addr_to_abi(ip);
    AddrKey { addr, family, pad: [0; 3] }
}

/// A 16-byte ABI address and its family byte.
pub fn addr_to_abi(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address an ABI (bytes, family) pair stands for; None for an unknown family.
pub fn addr_from_abi(bytes: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

macro_rules! abi_struct {
    ($(#[$m:meta])* $name:ident = $c:literal, $size:literal { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        // SAFETY: repr(C), integer fields only, no implicit padding (size asserted).
        unsafe impl aya::Pod for $name {}
        impl $name {
            pub const LAYOUT: StructLayout = StructLayout {
                c_name: $c,
                size: $size,
                fields: &[$((stringify!($f), core::mem::offset_of!($name, $f))),*],
            };
        }
    };
}

/// Size and field offsets of one mirrored C struct.
#[derive(Debug, Clone, Copy)]
pub struct StructLayout {
    pub c_name: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

abi_struct!(
    /// Key of xlb_frontends.
    FrontendKey = "xlb_frontend_key", 20 {
    addr: [u8; 16], port: u16 /* network order */, proto: u8, family: u8,
});
abi_struct!(
    /// Value of xlb_frontends: the service a frontend belongs to.
    Service = "xlb_service", 24 {
    id: u32, maglev_size: u32, flags: u32, affinity_timeout_s: u32,
    backend_count: u16, encap: u8, pad: u8, pad2: u32,
});
abi_struct!(
    /// Value of xlb_maglev.
    MaglevTable = "xlb_maglev_table", 32764 { slot: [u16; MAGLEV_MAX], pad: u16 });
abi_struct!(
    /// Value of xlb_svc_backend_ids: the backend ids of a service's first
    /// [`SVC_IDS`] indexes, each 0 or its xlb_svc_backends entry's id (0:
    /// the datapath reads the hash).
    SvcBackendIds = "xlb_svc_backend_ids", 64 { id: [u32; SVC_IDS as usize] });
abi_struct!(
    /// Key of xlb_svc_backends (an entry for every index a service holds).
    SvcBackendKey = "xlb_svc_backend_key", 8 { svc_id: u32, index: u32 });
abi_struct!(
    /// Value of xlb_backends.
    Backend = "xlb_backend", 48 {
    addr: [u8; 16], node: [u8; 16], port: u16 /* network order */, family: u8, node_family: u8,
    flags: u32, svc_id: u32, gen: u32,
});
abi_struct!(
    /// Key of xlb_ct and xlb_dsr_nat: a 5-tuple in packet direction.
    FlowKey = "xlb_flow_key", 40 {
    saddr: [u8; 16], daddr: [u8; 16], sport: u16, dport: u16, proto: u8, family: u8, pad: u16,
});
abi_struct!(
    /// The entry of one xlb_ct way (lb/bpf/conntrack.h): valid while `check`
    /// is [`ct_check`] of its key and fields.
    CtEntry = "xlb_ct_entry", 24 {
    backend_id: u32, backend_gen: u32, svc_id: u32, check: u32, stamp: u32, created_s: u32,
});
abi_struct!(
    /// One way of an xlb_ct set: a flow key and its entry.
    CtWay = "xlb_ct_way", 64 { key: FlowKey, e: CtEntry });
abi_struct!(
    /// Value of xlb_ct (an ARRAY of sets, conntrack.h).
    CtSet = "xlb_ct_set", 256 { way: [CtWay; CT_WAYS as usize] });

impl FlowKey {
    /// The key of the flow `src`:`sport` -> `dst`:`dport` (ports in host
    /// order; the family is `src`'s).
    pub fn of(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
        let ((saddr, family), (daddr, _)) = (addr_to_abi(src), addr_to_abi(dst));
        FlowKey { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, family, pad: 0 }
    }
}

impl CtEntry {
    /// An entry naming a backend (id, generation) of service `svc_id`, its
    /// check, clock stamp and creation time zero (CtTable::insert seals it).
    pub fn to(svc_id: u32, backend_id: u32, backend_gen: u32) -> CtEntry {
        CtEntry { backend_id, backend_gen, svc_id, check: 0, stamp: 0, created_s: 0 }
    }
}

/// The flow hash of `k` (lb/bpf/conntrack.h xlb_flow_hash).
pub fn flow_hash(k: &FlowKey) -> u32 {
    let w = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let fold = |b: &[u8; 16]| w(b, 0) ^ w(b, 4) ^ w(b, 8) ^ w(b, 12);
    let ports = {
        let (s, d) = (k.sport.to_ne_bytes(), k.dport.to_ne_bytes());
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
    };
    let init = 0xdeadbeefu32.wrapping_add(12).wrapping_add(HASH_SEED ^ u32::from(k.proto));
    final_mix(
        init.wrapping_add(fold(&k.saddr)),
        init.wrapping_add(fold(&k.daddr)),
        init.wrapping_add(ports),
    )
}

/// lookup3's final mix (conntrack.h xlb_final_mix).
pub fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// The check word of an xlb_ct way (conntrack.h xlb_ct_check).
pub fn ct_check(hash: u32, e: &CtEntry) -> u32 {
    final_mix(hash.wrapping_add(e.svc_id), e.backend_id, e.backend_gen) | 1
}

/// The tag of an xlb_ct way holding a key whose flow hash is `hash`
/// (conntrack.h xlb_ct_tag): its low 16 bits, never 0.
pub fn ct_tag(hash: u32) -> u16 {
    hash as u16 | 1
}

impl CtWay {
    /// The way holds a whole entry (written, not torn).
    pub fn valid(&self) -> bool {
        self.e.check != 0 && self.e.check == ct_check(flow_hash(&self.key), &self.e)
    }
}
abi_struct!(
    /// Key of xlb_affinity.
    AffinityKey = "xlb_affinity_key", 24 { client: [u8; 16], svc_id: u32, family: u8, pad: [u8; 3] });
abi_struct!(
    /// Value of xlb_affinity.
    AffinityEntry = "xlb_affinity_entry", 16 { backend_id: u32, backend_gen: u32, last_ns: u64 });
abi_struct!(
    /// Value of xlb_node (one entry).
    NodeCfg = "xlb_node_cfg", 28 {
    addr4: [u8; 4], addr6: [u8; 16], geneve_port: u16 /* network order */, pad: u16, vni: u32,
});
abi_struct!(
    /// Value of xlb_dsr_nat.
    DsrNatEntry = "xlb_dsr_nat_entry", 32 {
    vaddr: [u8; 16], vport: u16 /* network order */, family: u8, pad: u8, pad2: u32, created_ns: u64,
});
abi_struct!(
    /// Per-CPU value of xlb_counters and xlb_backend_stats.
    Count = "xlb_count", 16 { packets: u64, bytes: u64 });
abi_struct!(
    /// Per-CPU value of xlb_svc_stats.
    SvcStats = "xlb_svc_stats", 32 { packets: u64, bytes: u64, new_flows: u64, affinity_hits: u64 });
abi_struct!(
    /// Key of xlb_source_ranges (LPM trie).
    SrcRangeKey = "xlb_src_range_key", 28 {
    prefixlen: u32, svc_id: u32 /* network order */, family: u8, pad: [u8; 3], addr: [u8; 16],
});
abi_struct!(
    /// Geneve base header.
    GeneveHdr = "xlb_geneve_hdr", 8 { ver_optlen: u8, flags: u8, proto: u16, vni: [u8; 3], rsvd: u8 });
abi_struct!(
    /// Geneve option header.
    GeneveOptHdr = "xlb_geneve_opt_hdr", 4 { opt_class: u16, r#type: u8, len: u8 });
abi_struct!(
    /// DSR option data, IPv4.
    DsrOpt4 = "xlb_dsr_opt4", 8 { vaddr: [u8; 4], vport: u16, pad: u16 });
abi_struct!(
    /// DSR option data, IPv6.
    DsrOpt6 = "xlb_dsr_opt6", 20 { vaddr: [u8; 16], vport: u16, pad: u16 });

abi_struct!(
    /// Value of xlb_svc_names (userspace only).
    SvcName = "xlb_svc_name", 128 { name: [u8; 128] });

abi_struct!(
    /// Value of xlb_events_cfg (one entry): what a listener wants, and its lease.
    EventsCfg = "xlb_events_cfg", 16 { mask: u32, flow_sample: u32, lease_ns: u64 });
abi_struct!(
    /// A record of the xlb_events ring buffer.
    Event = "xlb_event", 72 {
    ts_ns: u64, r#type: u8, hook: u8, reason: u16, ifindex: u32, svc_id: u32, backend_id: u32,
    policy_id: u32, len: u32, tuple: FlowKey,
});

abi_struct!(
    /// Value of xlb_config_gen (one entry).
    ConfigGen = "xlb_config_gen", 8 { gen: u64 });

/// Longest backend name xlb_backend_meta holds.
pub const BACKEND_NAME_MAX: usize = 60;

abi_struct!(
    /// Value of xlb_backend_meta (userspace only): a backend's name and weight.
    BackendMeta = "xlb_backend_meta", 64 { weight: u32, name: [u8; BACKEND_NAME_MAX] });

// ---- pod networking (#10) ----
abi_struct!(
    /// Data of the overlay's Geneve option.
    IdentityOpt = "xlb_identity_opt", 4 { identity: u32 /* network order */ });
abi_struct!(
    /// Key of xlb_endpoints and xlb_tunnel_peers: one address.
    AddrKey = "xlb_addr_key", 20 { addr: [u8; 16], family: u8, pad: [u8; 3] });
abi_struct!(
    /// Value of xlb_endpoints: a pod of this node.
    Endpoint = "xlb_endpoint", 24 {
    ifindex: u32, identity: u32, mac: [u8; 6], host_mac: [u8; 6], flags: u32,
});
abi_struct!(
    /// Key of the LPM tries xlb_pod_routes and xlb_nonmasq.
    CidrKey = "xlb_cidr_key", 24 { prefixlen: u32, family: u8, pad: [u8; 3], addr: [u8; 16] });
abi_struct!(
    /// Value of xlb_pod_routes: the node owning a pod range.
    Route = "xlb_route", 20 { node: [u8; 16], node_family: u8, flags: u8, pad: u16 });
abi_struct!(
    /// Value of xlb_podnet (one entry).
    PodnetCfg = "xlb_podnet_cfg", 16 {
    flags: u32, masq_port_min: u16, masq_port_max: u16, icmp_rate: u32, pad: u32,
});
abi_struct!(
    /// Value of xlb_snat and xlb_snat_rev.
    SnatEntry = "xlb_snat_entry", 32 {
    addr: [u8; 16], port: u16 /* network order */, family: u8, pad: u8, pad2: u32, last_ns: u64,
});
abi_struct!(
    /// Per-CPU value of xlb_snat_stats.
    SnatStats = "xlb_snat_stats", 32 { allocated: u64, collisions: u64, exhausted: u64, reclaimed: u64 });
abi_struct!(
    /// One service a socket was translated to (xlb_sock_state; the value of
    /// xlb_sock_cookie, keyed by the socket's cookie).
    SockRec = "xlb_sock_rec", 52 {
    vaddr: [u8; 16], baddr: [u8; 16], vport: u16 /* network order */, bport: u16, family: u8,
    proto: u8, pad: u16, svc_id: u32, backend_id: u32, backend_gen: u32,
});
abi_struct!(
    /// Value of xlb_sock_state (socket storage).
    SockState = "xlb_sock_state", 216 { rec: [SockRec; SOCK_RECS], next: u32, pad: u32 });
abi_struct!(
    /// Key of xlb_sock_affinity.
    SockAffKey = "xlb_sock_aff_key", 16 { netns_cookie: u64, svc_id: u32, pad: u32 });
abi_struct!(
    /// Per-CPU value of xlb_sock_stats.
    SockStats = "xlb_sock_stats", 40 {
    connect: u64, sendmsg: u64, revnat: u64, refused: u64, affinity_hits: u64,
});
// ---- hardening (#12) ----
abi_struct!(
    /// Key of xlb_frag4: an IPv4 datagram whose first fragment went to a frontend.
    FragKey = "xlb_frag_key", 12 {
    saddr: [u8; 4], daddr: [u8; 4], id: u16 /* network order */, proto: u8, pad: u8,
});
abi_struct!(
    /// Value of xlb_frag4: the first fragment's ports (network order).
    FragPorts = "xlb_frag_ports", 4 { sport: u16, dport: u16 });

// ---- NetworkPolicy (#11) ----
abi_struct!(
    /// Key of xlb_policy (LPM trie) and xlb_policy_exact (hash, full length).
    PolicyKey = "xlb_policy_key", 16 {
    prefixlen: u32, ep: u32, identity: u32, dir: u8, proto: u8, port: u16 /* network order */,
});
abi_struct!(
    /// Value of xlb_policy.
    PolicyEntry = "xlb_policy_entry", 8 { policy: u32, pad: u32 });
abi_struct!(
    /// Value of xlb_policy_ep: an endpoint's isolation.
    PolicyEp = "xlb_policy_ep", 8 { flags: u32, pad: u32 });
abi_struct!(
    /// Value of xlb_ip_identity.
    AddrIdentity = "xlb_addr_identity", 8 { identity: u32, cidr_identity: u32 });
abi_struct!(
    /// Value of xlb_policy_ct.
    PolicyCt = "xlb_policy_ct", 16 { last_ns: u64, flags: u32, policy: u32 });
abi_struct!(
    /// Per-CPU value of xlb_ct_guard: the connection table's insert budget (#14).
    CtGuard = "xlb_ct_guard", 32 { credit_ns: u64, last_ns: u64, inserted: u64, skipped: u64 });

abi_struct!(
    /// Value of xlb_ct_tags: the tag ([`ct_tag`]) of each way of the xlb_ct
    /// set of the same index, 0 for a way never written (#14).
    CtTags = "xlb_ct_tags", 8 { tag: [u16; CT_WAYS as usize] });

/// Every mirrored struct.
pub const LAYOUTS: &[StructLayout] = &[
    FrontendKey::LAYOUT,
    Service::LAYOUT,
    MaglevTable::LAYOUT,
    SvcBackendIds::LAYOUT,
    SvcBackendKey::LAYOUT,
    Backend::LAYOUT,
    FlowKey::LAYOUT,
    CtEntry::LAYOUT,
    CtWay::LAYOUT,
    CtSet::LAYOUT,
    AffinityKey::LAYOUT,
    AffinityEntry::LAYOUT,
    NodeCfg::LAYOUT,
    DsrNatEntry::LAYOUT,
    Count::LAYOUT,
    SvcStats::LAYOUT,
    SrcRangeKey::LAYOUT,
    GeneveHdr::LAYOUT,
    GeneveOptHdr::LAYOUT,
    DsrOpt4::LAYOUT,
    DsrOpt6::LAYOUT,
    SvcName::LAYOUT,
    ConfigGen::LAYOUT,
    EventsCfg::LAYOUT,
    Event::LAYOUT,
    BackendMeta::LAYOUT,
    MaglevSlots::<MAGLEV_C199>::LAYOUT,
    MaglevSlots::<MAGLEV_C457>::LAYOUT,
    MaglevSlots::<MAGLEV_C971>::LAYOUT,
    MaglevSlots::<MAGLEV_C1993>::LAYOUT,
    MaglevSlots::<MAGLEV_C4027>::LAYOUT,
    MaglevSlots::<MAGLEV_C8123>::LAYOUT,
    MaglevSlots::<MAGLEV_C16319>::LAYOUT,
    IdentityOpt::LAYOUT,
    AddrKey::LAYOUT,
    Endpoint::LAYOUT,
    CidrKey::LAYOUT,
    Route::LAYOUT,
    PodnetCfg::LAYOUT,
    SnatEntry::LAYOUT,
    SnatStats::LAYOUT,
    SockRec::LAYOUT,
    SockState::LAYOUT,
    SockAffKey::LAYOUT,
    SockStats::LAYOUT,
    FragKey::LAYOUT,
    FragPorts::LAYOUT,
    PolicyKey::LAYOUT,
    PolicyEntry::LAYOUT,
    PolicyEp::LAYOUT,
    AddrIdentity::LAYOUT,
    PolicyCt::LAYOUT,
    CtGuard::LAYOUT,
    CtTags::LAYOUT,
];

// ---- #14 performance: Maglev tables by size class ----------------------------

/// The Maglev size classes, smallest first (enum xlb_maglev_class): a table
/// of M slots lives in `xlb_maglev_<C>` for the smallest class C >= M, or in
/// `xlb_maglev` when M is above every class.
pub const MAGLEV_CLASSES: [usize; 7] = [
    MAGLEV_C199,
    MAGLEV_C457,
    MAGLEV_C971,
    MAGLEV_C1993,
    MAGLEV_C4027,
    MAGLEV_C8123,
    MAGLEV_C16319,
];

/// The class of a table of `size` slots: its map's capacity in slots
/// ([`MAGLEV_MAX`] for `xlb_maglev`).
pub fn maglev_class(size: usize) -> usize {
    MAGLEV_CLASSES.iter().copied().find(|&c| size <= c).unwrap_or(MAGLEV_MAX)
}

/// The map holding tables of class `class` ([`maglev_class`]).
pub const fn maglev_map(class: usize) -> &'static str {
    match class {
        MAGLEV_C199 => "xlb_maglev_199",
        MAGLEV_C457 => "xlb_maglev_457",
        MAGLEV_C971 => "xlb_maglev_971",
        MAGLEV_C1993 => "xlb_maglev_1993",
        MAGLEV_C4027 => "xlb_maglev_4027",
        MAGLEV_C8123 => "xlb_maglev_8123",
        MAGLEV_C16319 => "xlb_maglev_16319",
        _ => "xlb_maglev",
    }
}

/// Value of `xlb_maglev_<M>` (`struct xlb_maglev_<M>`): M slots and a pad.
/// The store writes it as bytes (lb::maps::RawMap): the layout is what the
/// ABI test checks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevSlots<const M: usize> {
    pub slot: [u16; M],
    pub pad: u16,
}

impl<const M: usize> MaglevSlots<M> {
    pub const LAYOUT: StructLayout = StructLayout {
        c_name: maglev_map(M),
        size: 2 * M + 2,
        fields: &[("slot", 0), ("pad", 2 * M)],
    };
    const SIZE_OK: () = assert!(core::mem::size_of::<Self>() == 2 * M + 2);
}

const _: () = {
    let () = MaglevSlots::<MAGLEV_C199>::SIZE_OK;
    let () = MaglevSlots::<MAGLEV_C457>::SIZE_OK;
    let () = MaglevSlots::<MAGLEV_C971>::SIZE_OK;
    let () = MaglevSlots::<MAGLEV_C1993>::SIZE_OK;
    let () = MaglevSlots::<MAGLEV_C4027>::SIZE_OK;
    let () = MaglevSlots::<MAGLEV_C8123>::SIZE_OK;
    let () = MaglevSlots::<MAGLEV_C16319>::SIZE_OK;
};

macro_rules! counters {
    ($($v:ident = $n:literal => $name:literal),* $(,)?) => {
        /// enum xlb_counter: every exit of every program is counted under one.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Counter { $($v = $n),* }
        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$v),*];
            /// The C name without "XLB_", lower-cased: "pass_not_frontend".
            pub fn name(self) -> &'static str {
                match self { $(Counter::$v => $name),* }
            }
        }
    };
}

counters! {
    OkXdpTx = 0 => "ok_xdp_tx",
    OkXdpRedirect = 1 => "ok_xdp_redirect",
    OkTcDecap = 2 => "ok_tc_decap",
    OkTcRevnat = 3 => "ok_tc_revnat",
    OkIcmpForward = 4 => "ok_icmp_forward",
    OkLocalDeliver = 5 => "ok_local_deliver",
    OkNeighPass = 6 => "ok_neigh_pass",
    PassNotIp = 16 => "pass_not_ip",
    PassNotFrontend = 17 => "pass_not_frontend",
    PassFragment = 18 => "pass_fragment",
    PassL4Proto = 19 => "pass_l4_proto",
    PassIpv6Ext = 20 => "pass_ipv6_ext",
    PassIcmpNoFlow = 21 => "pass_icmp_no_flow",
    PassNotTunnel = 22 => "pass_not_tunnel",
    PassNoNat = 23 => "pass_no_nat",
    PassIpOptions = 24 => "pass_ip_options",
    DropTruncated = 32 => "drop_truncated",
    DropBadIhl = 33 => "drop_bad_ihl",
    DropBadLen = 34 => "drop_bad_len",
    DropNoBackend = 35 => "drop_no_backend",
    DropNoMaglev = 36 => "drop_no_maglev",
    DropBackendMissing = 37 => "drop_backend_missing",
    DropFib = 38 => "drop_fib",
    DropNoTxPort = 39 => "drop_no_tx_port",
    DropEncap = 40 => "drop_encap",
    DropTooBig = 41 => "drop_too_big",
    DropSourceRange = 42 => "drop_source_range",
    DropNoNodeAddr = 43 => "drop_no_node_addr",
    DropBadTunnel = 44 => "drop_bad_tunnel",
    DropNoDsrOpt = 45 => "drop_no_dsr_opt",
    DropDecap = 46 => "drop_decap",
    DropNat = 47 => "drop_nat",
    DropNotLocal = 48 => "drop_not_local",
    DropBadVersion = 128 => "drop_bad_version",
    // #10 pod networking
    OkPodRedirect = 72 => "ok_pod_redirect",
    OkPodEncap = 73 => "ok_pod_encap",
    OkPodDecap = 74 => "ok_pod_decap",
    OkMasq = 75 => "ok_masq",
    OkMasqReply = 76 => "ok_masq_reply",
    OkIcmpTooBig = 77 => "ok_icmp_too_big",
    OkToPod = 78 => "ok_to_pod",
    PassForeignTunnel = 104 => "pass_foreign_tunnel",
    PassPodToStack = 105 => "pass_pod_to_stack",
    PassPodLinkLocal = 106 => "pass_pod_link_local",
    PassNoMasq = 107 => "pass_no_masq",
    PassMasqNoState = 108 => "pass_masq_no_state",
    PassTtl = 109 => "pass_ttl",
    DropPodSpoof = 152 => "drop_pod_spoof",
    DropTunnelPeer = 153 => "drop_tunnel_peer",
    DropNoEndpoint = 154 => "drop_no_endpoint",
    DropSnatExhausted = 155 => "drop_snat_exhausted",
    DropPodTooBig = 156 => "drop_pod_too_big",
    OkSockConnect = 64 => "ok_sock_connect",
    OkSockSendmsg = 65 => "ok_sock_sendmsg",
    OkSockRevnat = 66 => "ok_sock_revnat",
    OkFallbackNat = 67 => "ok_fallback_nat",
    OkFallbackRevnat = 68 => "ok_fallback_revnat",
    PassSockNoRevnat = 96 => "pass_sock_no_revnat",
    PassSockHostOnly = 97 => "pass_sock_host_only",
    PassSockProto = 98 => "pass_sock_proto",
    DropSockState = 136 => "drop_sock_state",
    DropSockFamily = 137 => "drop_sock_family",
    OkSockStateSpill = 69 => "ok_sock_state_spill",
    // ---- hardening (#12) ----
    OkReject = 80 => "ok_reject",
    PassFragUntracked = 112 => "pass_frag_untracked",
    DropBadL4Len = 129 => "drop_bad_l4_len",
    DropReplyLimit = 130 => "drop_reply_limit",
    // #11 NetworkPolicy
    DropPolicyIngress = 216 => "drop_policy_ingress",
    DropPolicyEgress = 217 => "drop_policy_egress",
    // #14 performance
    PassNotFrontendFiltered = 120 => "pass_not_frontend_filtered",
}

impl Counter {
    pub fn from_u32(n: u32) -> Option<Counter> {
        Counter::ALL.iter().copied().find(|c| *c as u32 == n)
    }

    /// "ok", "pass" or "drop": from the number, by the ranges of
    /// xlb_abi.h (the programs' exits decide verdicts by them; a test checks
    /// every name's prefix agrees).
    pub fn class(self) -> &'static str {
        match self as u32 {
            0..=15 | 64..=95 => "ok",
            16..=31 | 96..=127 => "pass",
            _ => "drop",
        }
    }

    /// The reason label: the name without its class prefix ("not_frontend").
    pub fn reason(self) -> &'static str {
        let n = self.name();
        n.split_once('_').map_or(n, |(_, r)| r)
    }
}
