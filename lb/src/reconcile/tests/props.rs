//! The reconcilers' invariants over random sequences of desired states:
//! services over a small universe of frontends, endpoints, nodes, weights,
//! states, table sizes and settings, applied in full or incrementally, with
//! a write failing now and then. After every step the maps hold exactly the
//! desired state (Maglev shares included), every write kept the datapath
//! consistent, only changed services were written, re-applying and
//! restoring find nothing to write, backends kept their ids and indices,
//! generations only grew, and the tunnel endpoints are the backends' nodes.
use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

const OWN: &str = "10.0.0.2";
const NODES: [&str; 4] = ["10.0.0.11", "10.0.0.12", "10.0.0.13", OWN];
const KEYS: usize = 4;
const ENDPOINTS: u8 = 8;

fn fe(addr: &str, port: u16, proto: Proto, kind: FrontendKind) -> Frontend {
    Frontend { addr: ip(addr), port, proto, kind }
}

/// The frontends service `i` may have (no two services share one).
fn frontend_pool(i: usize) -> [Frontend; 4] {
    [
        fe(&format!("10.100.0.{}", i + 1), 80, Proto::Tcp, FrontendKind::LoadBalancer),
        fe(&format!("10.100.0.{}", i + 1), 443, Proto::Tcp, FrontendKind::ExternalIp),
        fe(OWN, 30000 + i as u16, Proto::Tcp, FrontendKind::NodePort),
        fe(&format!("fd00::{}", i + 1), 53, Proto::Udp, FrontendKind::LoadBalancer),
    ]
}

/// The socket frontends service `i` may have: its ClusterIP, the in-cluster
/// copy of its LoadBalancer IP, its NodePort on loopback.
fn sock_frontend_pool(i: usize) -> [Frontend; 3] {
    [
        fe(&format!("10.96.0.{}", i + 1), 80, Proto::Tcp, FrontendKind::ClusterIp),
        fe(&format!("10.100.0.{}", i + 1), 80, Proto::Tcp, FrontendKind::LoadBalancer),
        fe("127.0.0.1", 30000 + i as u16, Proto::Tcp, FrontendKind::NodePort),
    ]
}

fn arb_backend(n: u8) -> impl Strategy<Value = Option<Backend>> {
    proptest::option::weighted(
        0.5,
        (0..NODES.len(), 1..=3u32, prop::bool::weighted(0.2)).prop_map(
            move |(node, weight, terminating)| {
                let mut b = backend(&format!("10.244.0.{}", n + 1), NODES[node]);
                b.weight = weight;
                if terminating {
                    b.state = BackendState::Terminating;
                }
                b
            },
        ),
    )
}

fn arb_service(i: usize) -> impl Strategy<Value = Option<Service>> {
    let backends: Vec<_> = (0..ENDPOINTS).map(arb_backend).collect();
    proptest::option::weighted(
        0.8,
        (
            prop::bits::u8::between(0, 7),
            backends,
            // 11 and 13 share a size class, 211 has another, 0 is chosen from the
            // active backends (one class for 1, another from 2).
            prop::sample::select(vec![11u32, 13, 211, crate::model::MAGLEV_SIZE_AUTO]),
            proptest::option::of(prop::sample::select(vec![60u64, 600])),
            prop::bool::ANY,
            prop::bits::u8::between(0, 2),
        )
            .prop_map(move |(fe_mask, backends, size, affinity, ipip, ranges)| {
                let mut s = Service::new(ServiceKey::new("default", &format!("s{i}"), "p"));
                s.frontends = frontend_pool(i)
                    .into_iter()
                    .enumerate()
                    .filter(|(n, _)| fe_mask & (1 << n) != 0)
                    .map(|(_, f)| f)
                    .collect();
                s.sock_frontends = sock_frontend_pool(i)
                    .into_iter()
                    .enumerate()
                    .filter(|(n, _)| fe_mask & (1 << (n + 4)) != 0)
                    .map(|(_, f)| f)
                    .collect();
                s.backends = backends.into_iter().flatten().collect();
                s.maglev_size = size;
                s.affinity = affinity.map(|t| Affinity { timeout: Duration::from_secs(t) });
                s.encap = if ipip { Encap::Ipip } else { Encap::Geneve };
                s.source_ranges = ["192.0.2.0/24", "2001:db8::/32"]
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| ranges & (1 << n) != 0)
                    .map(|(_, c)| c.parse().unwrap())
                    .collect();
                s
            }),
    )
}

fn arb_desired() -> impl Strategy<Value = Desired> {
    let services: Vec<_> = (0..KEYS).map(arb_service).collect();
    (services, prop::bool::weighted(0.2)).prop_map(|(services, v6)| {
        let mut d = desired(services.into_iter().flatten());
        if v6 {
            d.node.tunnel_v6 = Some("fd00::2".parse().unwrap());
        }
        d
    })
}

/// How a step is applied.
#[derive(Clone, Debug)]
struct Step {
    desired: Desired,
    /// Full diff, or only the services that changed plus these (by number).
    full: bool,
    extra: u8,
    /// The step's write with this number fails (then it is retried).
    fail: Option<usize>,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        arb_desired(),
        prop::bool::ANY,
        prop::bits::u8::between(0, KEYS),
        proptest::option::weighted(0.25, 0..40usize),
    )
        .prop_map(|(desired, full, extra, fail)| Step { desired, full, extra, fail })
}

/// What the maps must hold for `d`, in the form of [`content`].
fn expected(d: &Desired) -> String {
    let mut out = String::new();
    for s in d.services.values() {
        let active: Vec<&Backend> =
            s.backends.iter().filter(|b| b.state == BackendState::Active).collect();
        let has_frontends = !s.frontends.is_empty() || !s.sock_frontends.is_empty();
        let table = has_frontends && !active.is_empty();
        // Slots per backend name: the Maglev build of the active backends.
        let mut slots: HashMap<&str, usize> = HashMap::new();
        if table {
            let input: Vec<(&str, u32)> = active.iter().map(|b| (&*b.name, b.weight)).collect();
            for i in Maglev::new(s.table_size()).unwrap().build(&input).unwrap() {
                *slots.entry(input[usize::from(i)].0).or_default() += 1;
            }
        }
        let mut ranges: Vec<String> = s.source_ranges.iter().map(|c| c.to_string()).collect();
        ranges.sort();
        out += &format!(
            "{} m={} table={} active={} enc={} aff={:?} ranges={:?}\n",
            s.key,
            if has_frontends { s.table_size() } else { 0 },
            if table { s.table_size() as usize } else { 0 },
            if has_frontends { active.len() } else { 0 },
            if !has_frontends || s.encap == Encap::Geneve { "geneve" } else { "ipip" },
            s.affinity.filter(|_| has_frontends).map(|a| a.timeout.as_secs() as u32),
            ranges,
        );
        let mut fes: Vec<(bool, IpAddr, u16, String, bool, bool)> = [false, true]
            .into_iter()
            .flat_map(|sock| {
                let list = if sock { &s.sock_frontends } else { &s.frontends };
                list.iter().map(move |f| {
                    let np = f.kind == FrontendKind::NodePort;
                    let cip = f.kind == FrontendKind::ClusterIp;
                    (sock, f.addr, f.port, f.proto.to_string(), np, cip)
                })
            })
            .collect();
        fes.sort();
        for (sock, a, p, proto, np, cip) in fes {
            out += &format!("  fe {a}:{p}/{proto} np={np} cip={cip} sock={sock}\n");
        }
        let mut bes: Vec<&Backend> = s.backends.iter().collect();
        bes.sort_by_key(|b| (b.addr, b.port));
        for b in bes {
            out += &format!(
                "  be {}:{} node={:?} term={} {:?}/{:?} slots={}\n",
                b.addr,
                b.port,
                Some(b.node),
                b.state == BackendState::Terminating,
                &*b.name,
                b.weight,
                slots.get(&*b.name).copied().unwrap_or(0)
            );
        }
    }
    out
}

/// Which services each id, frontend and backend id belongs to.
#[derive(Default)]
struct Owners {
    svc: HashMap<u32, String>,
    frontend: HashMap<(bool, IpAddr, u16), String>,
    backend: HashMap<u32, String>,
}

fn owners(list: &[ServiceListing]) -> Owners {
    let mut o = Owners::default();
    for s in list {
        o.svc.insert(s.id, s.name.clone());
        for f in &s.frontends {
            o.frontend.insert((f.socket, f.addr, f.port), s.name.clone());
        }
        for b in &s.backends {
            o.backend.insert(b.id, s.name.clone());
        }
    }
    o
}

/// The service a write touched, by what the maps said before or after it.
fn touched(w: &WriteRecord, before: &Owners, after: &Owners) -> Option<String> {
    let by = |m: &dyn Fn(&Owners) -> Option<String>| m(before).or_else(|| m(after));
    match w.target {
        Target::Frontend(k) | Target::SockFrontend(k) => {
            let sock = matches!(w.target, Target::SockFrontend(_));
            let a = abi::addr_from_abi(&k.addr, k.family)?;
            by(&|o| o.frontend.get(&(sock, a, u16::from_be(k.port))).cloned())
        }
        Target::Backend(id) | Target::BackendStats(id) | Target::BackendMeta(id) => {
            by(&|o| o.backend.get(&id).cloned())
        }
        t => {
            let id = t.svc_id()?;
            by(&|o| o.svc.get(&id).cloned())
        }
    }
}

fn run(steps: Vec<Step>) {
    let mut dp = checked();
    let mut prev = Desired::default();
    let mut gens: HashMap<u32, u32> = HashMap::new();
    let mut placed: HashMap<(String, IpAddr), (u32, u32)> = HashMap::new();
    for (n, step) in steps.iter().enumerate() {
        let d = &step.desired;
        let changed: BTreeSet<&ServiceKey> = prev
            .services
            .keys()
            .chain(d.services.keys())
            .filter(|k| prev.services.get(*k) != d.services.get(*k))
            .collect();
        let before = owners(&dp.list().unwrap());
        let log_start = dp.store().log().len();
        if let Some(k) = step.fail {
            dp.store_mut().fail_at = Some(dp.store().writes + k);
        }
        let result = if step.full {
            dp.apply(d)
        } else {
            let extra = (0..KEYS)
                .filter(|i| step.extra & (1 << i) != 0)
                .map(|i| ServiceKey::new("default", &format!("s{i}"), "p"));
            let keys: BTreeSet<ServiceKey> =
                changed.iter().map(|k| (*k).clone()).chain(extra).collect();
            dp.apply_services(&d.node, keys.iter().map(|k| (k, d.services.get(k))))
        };
        dp.store_mut().fail_at = None;
        if let Err(e) = result {
            assert!(step.fail.is_some(), "step {n}: {e}");
            assert_eq!(mirror(&dp), mirror(&restored(dp.store())), "step {n}: after {e}");
            dp.apply(d).unwrap_or_else(|e| panic!("step {n}: retry: {e}"));
        }
        let list = dp.list().unwrap();
        assert_eq!(content(&dp), expected(d), "step {n}");

        // Only the services that changed were written.
        let after = owners(&list);
        for w in &dp.store().log()[log_start..] {
            match w.target {
                Target::Node => assert_ne!(prev.node, d.node, "step {n}: {w:?}"),
                // Shared by every service (a word holds many frontends'
                // bits); the Checked store checks each frontend has its bit.
                Target::ConfigGen | Target::FeFilter(_) => {}
                _ => {
                    let owner = touched(w, &before, &after);
                    assert!(
                        owner.as_ref().is_some_and(|o| changed.iter().any(|k| k.0 == *o)),
                        "step {n}: {w:?} of {owner:?}, changed: {changed:?}"
                    );
                }
            }
        }

        // Ids, indices and generations.
        let mut now: HashMap<(String, IpAddr), (u32, u32)> = HashMap::new();
        for s in &list {
            for b in &s.backends {
                let at = (b.id, b.index);
                let key = (s.name.clone(), b.addr);
                if let Some(was) = placed.get(&key) {
                    assert_eq!(*was, at, "step {n}: {key:?} moved");
                }
                if let Some(&g) = gens.get(&b.id) {
                    assert!(b.gen >= g, "step {n}: backend {} generation {g} then {}", b.id, b.gen);
                    if placed.get(&key) != Some(&at) {
                        assert!(b.gen > g, "step {n}: id {} reused with generation {g}", b.id);
                    }
                }
                gens.insert(b.id, b.gen);
                now.insert(key, at);
            }
        }
        // An id freed and reused within one step keeps its slot's key in
        // `placed` only if the same backend holds it.
        placed = now;

        // Tunnel endpoints: the backends' nodes, this node's own excluded.
        let nodes: BTreeSet<IpAddr> = d
            .services
            .values()
            .flat_map(|s| s.backends.iter().map(|b| b.node))
            .filter(|a| *a != ip(OWN))
            .collect();
        assert_eq!(dp.tunnel_endpoints(), nodes, "step {n}");

        // Nothing left to write, now or after a restart.
        let again = dp.apply(d).unwrap();
        assert_eq!((again.writes(), again.tables_built), (0, 0), "step {n}: {again:?}");
        let mut back = restored(dp.store());
        assert_eq!(mirror(&back), mirror(&dp), "step {n}");
        assert_eq!(back.apply(d).unwrap().writes(), 0, "step {n}");
        prev = d.clone();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_of_desired_states(steps in prop::collection::vec(arb_step(), 1..6)) {
        run(steps);
    }
}
