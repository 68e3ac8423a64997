//! The reconcilers' invariants, in memory (no root): diff minimality,
//! dependency order at every write, generations, service-local index
//! stability, tunnel refcounts, restore equals applied, repair by resync,
//! and convergence after a write fails half way; then the same properties
//! over random sequences of desired states ([`props`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io,
    net::IpAddr,
    ops::ControlFlow,
    time::Duration,
};

use super::*;
use crate::{
    abi,
    maglev::Maglev,
    model::{Affinity, Backend, BackendState, Cidr, Encap, Frontend, FrontendKind, Proto, Service},
    store::{
        BackendMeta, Capacity, MapStore, MemStore, SockTraffic, StoreError, SvcTraffic, Target,
        Traffic, WriteRecord,
    },
};

mod props;

// ---- fixtures (shared with the privileged tests: fixtures.rs) ---------------

use super::fixtures::{backend, ip, key, node};

/// `fixtures::service` with a small table (quick builds in memory).
fn service(name: &str, vip: &str, backends: Vec<Backend>) -> Service {
    Service { maglev_size: 251, ..super::fixtures::service(name, vip, backends) }
}

fn desired(services: impl IntoIterator<Item = Service>) -> Desired {
    Desired::new(node(), services)
}

/// `fixtures::two` with small tables.
fn two() -> Desired {
    let d = super::fixtures::two();
    desired(d.services.into_values().map(|s| Service { maglev_size: 251, ..s }))
}

// ---- a store that checks the datapath's invariants at every write ------------

/// [`MemStore`] that checks, after every write, what a packet relies on at
/// any instant; and that can fail its Nth write.
#[derive(Clone, Debug)]
struct Checked {
    inner: MemStore,
    /// Lengths of the tables written, by service id and size class
    /// (MemStore pads reads).
    tables: HashMap<(u32, usize), usize>,
    writes: usize,
    /// Fails the write with this number (once).
    fail_at: Option<usize>,
    /// Fails the first write this picks (once).
    fail_on: Option<fn(&Write<'_>) -> bool>,
    checking: bool,
}

impl Checked {
    fn new() -> Checked {
        Checked {
            inner: MemStore::default(),
            tables: HashMap::new(),
            writes: 0,
            fail_at: None,
            fail_on: None,
            checking: true,
        }
    }

    /// A write behind the reconcilers' back (not checked).
    fn damage(&mut self, w: Write<'_>) {
        self.inner.write(w).unwrap();
        self.shadow(&w);
    }

    fn shadow(&mut self, w: &Write<'_>) {
        match *w {
            Write::Maglev { svc_id, slots } => {
                self.tables.insert((svc_id, abi::maglev_class(slots.len())), slots.len());
            }
            Write::MaglevDelete { svc_id, size } => {
                self.tables.remove(&(svc_id, abi::maglev_class(size)));
                self.tables.remove(&(svc_id, abi::MAGLEV_MAX));
            }
            _ => {}
        }
    }

    fn log(&self) -> &[WriteRecord] {
        self.inner.log()
    }

    /// Breaks the invariants it names.
    fn check(&self) -> Result<(), String> {
        let s = &self.inner;
        let names: HashMap<u32, String> = s.svc_names().unwrap().into_iter().collect();
        let index: HashMap<(u32, u32), u32> = s
            .svc_backends()
            .unwrap()
            .into_iter()
            .map(|(k, id)| ((k.svc_id, k.index), id))
            .collect();
        // xlb_svc_backends holds every index (an agent from before the
        // array reads only it); a word of the array in front of it is 0
        // or the hash's id.
        let hash: HashMap<(u32, u32), u32> = s
            .svc_backends_hash()
            .unwrap()
            .into_iter()
            .map(|(k, id)| ((k.svc_id, k.index), id))
            .collect();
        for (svc, ids) in s.svc_ids_all().unwrap() {
            for (i, &id) in (0..).zip(&ids.id) {
                if id != 0 && hash.get(&(svc, i)) != Some(&id) {
                    return Err(format!(
                        "xlb_svc_backend_ids[{svc}] word {i} is {id}, xlb_svc_backends has {:?}",
                        hash.get(&(svc, i))
                    ));
                }
            }
        }
        let packet = s.frontends().unwrap().into_iter().map(|(k, v)| (Target::Frontend(k), v));
        let socket =
            s.sock_frontends().unwrap().into_iter().map(|(k, v)| (Target::SockFrontend(k), v));
        for (k, _) in s.frontends().unwrap() {
            // #14: the XDP program looks up only what the filter lets by.
            if !s.fe_filter_maybe(&k) {
                return Err(format!("{} is filtered out by xlb_fe_filter", Target::Frontend(k)));
            }
        }
        for (fe, v) in packet.chain(socket) {
            if !names.contains_key(&v.id) {
                return Err(format!("{fe} names service {} which has no name", v.id));
            }
            // The datapath reads slots below the frontend's M from its
            // class's map: a table must be there and cover them.
            let m = v.maglev_size as usize;
            let len = self.tables.get(&(v.id, abi::maglev_class(m)));
            if v.backend_count > 0 && len.is_none_or(|&l| l < m) {
                return Err(format!(
                    "{fe} counts {} backends with M = {m}, service {} has {}",
                    v.backend_count,
                    v.id,
                    len.map_or("no table in that class".into(), |l| format!("{l} slots there"))
                ));
            }
        }
        for (&(svc, _), &len) in &self.tables {
            let slots: BTreeSet<u16> = s.maglev(svc, len).unwrap().unwrap().into_iter().collect();
            for i in slots {
                if !hash.contains_key(&(svc, u32::from(i))) {
                    return Err(format!(
                        "table of service {svc} names index {i}, not in xlb_svc_backends"
                    ));
                }
            }
        }
        for ((svc, i), id) in index {
            let b = s.backend(id).unwrap();
            if b.flags & abi::BE_F_ACTIVE == 0 || b.svc_id != svc {
                return Err(format!("xlb_svc_backends[{svc} {i}] names backend {id}: {b:?}"));
            }
            // Absent means the default name and weight: an entry holds
            // another.
            if let Some(m) = s.backend_meta(id).unwrap() {
                let ep = (abi::addr_from_abi(&b.addr, b.family).unwrap(), u16::from_be(b.port));
                if BackendMeta::is_default(&m.name, m.weight, ep.0, ep.1) {
                    return Err(format!(
                        "backend {id} of service {svc} has an entry with the default {m:?}"
                    ));
                }
            }
            if !names.contains_key(&svc) {
                return Err(format!("service {svc} has backends but no name"));
            }
        }
        Ok(())
    }
}

impl MapStore for Checked {
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
    fn svc_names(&self) -> Result<Vec<(u32, String)>, StoreError> {
        self.inner.svc_names()
    }
    fn frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError> {
        self.inner.frontends()
    }
    fn sock_frontends(&self) -> Result<Vec<(abi::FrontendKey, abi::Service)>, StoreError> {
        self.inner.sock_frontends()
    }
    fn svc_backends_hash(&self) -> Result<Vec<(abi::SvcBackendKey, u32)>, StoreError> {
        self.inner.svc_backends_hash()
    }
    fn svc_ids_all(&self) -> Result<Vec<(u32, abi::SvcBackendIds)>, StoreError> {
        self.inner.svc_ids_all()
    }
    fn backend(&self, id: u32) -> Result<abi::Backend, StoreError> {
        self.inner.backend(id)
    }
    fn backend_meta(&self, id: u32) -> Result<Option<BackendMeta>, StoreError> {
        self.inner.backend_meta(id)
    }
    fn maglev(&self, svc_id: u32, size: usize) -> Result<Option<Vec<u16>>, StoreError> {
        self.inner.maglev(svc_id, size)
    }
    fn source_ranges(&self) -> Result<Vec<(u32, Cidr)>, StoreError> {
        self.inner.source_ranges()
    }
    fn node(&self) -> Result<abi::NodeCfg, StoreError> {
        self.inner.node()
    }
    fn svc_stats(&self, svc_id: u32) -> Result<SvcTraffic, StoreError> {
        self.inner.svc_stats(svc_id)
    }
    fn sock_stats(&self, svc_id: u32) -> Result<SockTraffic, StoreError> {
        self.inner.sock_stats(svc_id)
    }
    fn backend_stats(&self, id: u32) -> Result<Traffic, StoreError> {
        self.inner.backend_stats(id)
    }
    fn connections(
        &self,
        visit: &mut dyn FnMut(&abi::FlowKey, &abi::CtEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.inner.connections(visit)
    }
    fn endpoints(&self) -> Result<Vec<(std::net::IpAddr, abi::Endpoint)>, StoreError> {
        self.inner.endpoints()
    }
    fn tunnel_peers(&self) -> Result<Vec<(std::net::IpAddr, u32)>, StoreError> {
        self.inner.tunnel_peers()
    }
    fn pod_routes(&self) -> Result<Vec<(Cidr, abi::Route)>, StoreError> {
        self.inner.pod_routes()
    }
    fn nonmasq(&self) -> Result<Vec<Cidr>, StoreError> {
        self.inner.nonmasq()
    }
    fn podnet(&self) -> Result<abi::PodnetCfg, StoreError> {
        self.inner.podnet()
    }
    fn snat_stats(&self) -> Result<crate::store::SnatTotals, StoreError> {
        self.inner.snat_stats()
    }
    fn ct_guard(&self) -> Result<crate::store::CtGuardTotals, StoreError> {
        self.inner.ct_guard()
    }
    fn policy_eps(&self) -> Result<Vec<(u32, u32)>, StoreError> {
        self.inner.policy_eps()
    }
    fn policies(&self) -> Result<Vec<(crate::policy::EntryKey, u32)>, StoreError> {
        self.inner.policies()
    }
    fn addr_identities(&self) -> Result<Vec<(Cidr, abi::AddrIdentity)>, StoreError> {
        self.inner.addr_identities()
    }
    fn fe_filter(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.fe_filter()
    }

    fn write(&mut self, w: Write<'_>) -> Result<(), StoreError> {
        let n = self.writes;
        self.writes += 1;
        let picked = self.fail_on.is_some_and(|f| f(&w));
        if self.fail_at == Some(n) || picked {
            self.fail_at = None;
            self.fail_on = None;
            // What the kernel says when a map update fails.
            let io_error = io::Error::from_raw_os_error(libc::EIO);
            let e = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error,
            });
            return Err(crate::maps::MapsError::op(w.target().map(), w.op())(e).into());
        }
        self.inner.write(w)?;
        self.shadow(&w);
        if !self.checking {
            return Ok(());
        }
        if let Err(e) = self.check() {
            panic!(
                "after write #{n} ({}{}): {e}",
                if w.is_delete() { "delete " } else { "" },
                w.target()
            );
        }
        Ok(())
    }
}

// ---- what the reconcilers believe, comparable --------------------------------

#[derive(Debug, PartialEq, Eq)]
struct SvcMirror {
    id: u32,
    frontends: BTreeMap<(u8, [u8; 16], u16, u8), abi::Service>,
    sock_frontends: BTreeMap<(u8, [u8; 16], u16, u8), abi::Service>,
    ranges: BTreeSet<Cidr>,
    backends: BTreeMap<u32, services::Backend>,
    /// (hash, size class) of the table: its size is the frontends' to say.
    table: Option<(u64, usize)>,
}

/// The bookkeeping, less what the maps cannot say (free-id order, the
/// inputs of tables not yet verified, generation counters).
#[derive(Debug, PartialEq, Eq)]
struct Mirror {
    services: BTreeMap<ServiceKey, SvcMirror>,
    node: Option<abi::NodeCfg>,
    tunnels: BTreeMap<IpAddr, u32>,
}

fn mirror<S: MapStore>(dp: &Datapath<S>) -> Mirror {
    Mirror {
        services: dp
            .services
            .iter()
            .map(|(k, s)| {
                let m = SvcMirror {
                    id: s.id,
                    frontends: s
                        .frontends
                        .iter()
                        .map(|(k, v)| ((k.family, k.addr, k.port, k.proto), *v))
                        .collect(),
                    sock_frontends: s
                        .sock_frontends
                        .iter()
                        .map(|(k, v)| ((k.family, k.addr, k.port, k.proto), *v))
                        .collect(),
                    ranges: s.ranges.clone(),
                    backends: s.backends.clone(),
                    table: s.table.written.map(|h| (h, abi::maglev_class(s.table.size))),
                };
                (k.clone(), m)
            })
            .collect(),
        node: dp.node.cfg,
        tunnels: dp.node.tunnels.refs.iter().map(|(a, n)| (*a, *n)).collect(),
    }
}

/// The reconcilers as the maps of `store` say.
fn restored(store: &Checked) -> Datapath<Checked> {
    Datapath::restore(store.clone()).unwrap()
}

/// What the maps hold, without ids and indices (equal for equal desired
/// states whatever the history).
fn content<S: MapStore>(dp: &Datapath<S>) -> String {
    let mut out = String::new();
    for s in dp.list().unwrap() {
        out += &format!(
            "{} m={} table={} active={} enc={} aff={:?} ranges={:?}\n",
            s.name,
            s.maglev_size,
            s.table_size,
            s.active_backends,
            s.encap,
            s.affinity_timeout_s,
            s.source_ranges
        );
        for f in &s.frontends {
            out += &format!(
                "  fe {}:{}/{} np={} cip={} sock={}\n",
                f.addr, f.port, f.proto, f.nodeport, f.clusterip, f.socket
            );
        }
        for b in &s.backends {
            out += &format!(
                "  be {}:{} node={:?} term={} {:?}/{:?} slots={}\n",
                b.addr, b.port, b.node, b.terminating, b.name, b.weight, b.slots
            );
        }
    }
    out
}

fn checked() -> Datapath<Checked> {
    Datapath::restore(Checked::new()).unwrap()
}

// ---- tests --------------------------------------------------------------------

#[test]
fn apply_writes_the_desired_state_and_reapplying_writes_nothing() {
    let mut dp = checked();
    let st = dp.apply(&two()).unwrap();
    assert_eq!((st.services_added, st.node_writes, st.tables_built), (2, 1, 2), "{st:?}");
    assert!(st.settings_changed);
    let dump = dp.dump().unwrap();
    assert!(
        dump.contains("service default/a:http id=0 maglev=251 encap=geneve backends=3/3"),
        "{dump}"
    );
    assert!(dump.contains("affinity=ClientIP/600s source-ranges=192.0.2.0/24"), "{dump}");
    let a = &dp.list().unwrap()[0];
    assert_eq!(a.backends.iter().map(|b| b.slots).sum::<usize>(), 251);
    assert!(
        a.backends.iter().all(|b| b.weight == 1 && b.name == format!("{}:{}", b.addr, b.port)),
        "{a:?}"
    );
    assert_eq!(dp.store().inner.config_gen(), 1);

    let n = dp.store().log().len();
    let again = dp.apply(&two()).unwrap();
    assert_eq!((again.writes(), again.tables_built), (0, 0), "{again:?}");
    assert_eq!(dp.store().log().len(), n, "not one map operation");
    assert_eq!(dp.store().inner.config_gen(), 1);
}

#[test]
fn a_service_losing_or_regaining_all_its_backends_bumps_the_config_gen() {
    // XDP's frontend cache keeps the backend count as "none or some"
    // (xdp/flowcache.h): crossing 0 must reach it; other counts need not.
    let mut dp = checked();
    dp.apply(&two()).unwrap();
    let gen = |dp: &Datapath<Checked>| dp.store().inner.config_gen();
    let g0 = gen(&dp);
    let mut d = two();
    d.services.get_mut(&key("a")).unwrap().backends.truncate(1);
    assert!(!dp.apply(&d).unwrap().settings_changed, "3 -> 1 backends");
    assert_eq!(gen(&dp), g0);
    d.services.get_mut(&key("a")).unwrap().backends.clear();
    assert!(dp.apply(&d).unwrap().settings_changed, "1 -> 0 backends");
    assert_eq!(gen(&dp), g0 + 1);
    assert!(dp.apply(&two()).unwrap().settings_changed, "0 -> 3 backends");
    assert_eq!(gen(&dp), g0 + 2);
}

#[test]
fn one_endpoint_change_writes_that_service_only() {
    let mut dp = checked();
    dp.apply(&two()).unwrap();
    let before = dp.list().unwrap();
    let (a_id, b_id) = (before[0].id, before[1].id);
    let b_backends: HashSet<u32> = before[1].backends.iter().map(|b| b.id).collect();
    let n = dp.store().log().len();

    let mut d = two();
    d.services.get_mut(&key("a")).unwrap().backends[2] = backend("10.244.2.13", "10.0.0.12");
    let st = dp.apply(&d).unwrap();
    assert_eq!((st.services_added, st.services_removed, st.services_changed), (0, 0, 1));
    // New: its entry, hash entry and array value; gone: its array word,
    // hash entry and slot.
    assert_eq!((st.table_writes, st.backend_writes, st.deletes), (1, 3, 3), "{st:?}");
    // The gone backend's xlb_backend_meta delete; the new one has the
    // default name and weight: no entry.
    assert_eq!((st.frontend_writes, st.meta_writes, st.tables_built), (0, 1, 1), "{st:?}");
    assert!(!st.settings_changed, "the backend count did not change");
    for w in &dp.store().log()[n..] {
        assert_ne!(w.target.svc_id(), Some(b_id), "{w:?}");
        match w.target {
            Target::Backend(id) | Target::BackendStats(id) | Target::BackendMeta(id) => {
                assert!(!b_backends.contains(&id), "{w:?}")
            }
            Target::Frontend(_) | Target::Node | Target::ConfigGen => panic!("{w:?}"),
            t => assert_eq!(t.svc_id(), Some(a_id), "{w:?}"),
        }
    }
    let after = dp.list().unwrap();
    assert_eq!(format!("{:?}", before[1]), format!("{:?}", after[1]), "b untouched");
}

#[test]
fn writes_keep_the_datapath_consistent_at_every_step() {
    // Checked panics at the first write after which a packet could meet a
    // dangling entry; this walks through every kind of change.
    let mut dp = checked();
    let mut d = two();
    dp.apply(&d).unwrap();
    let a = d.services.get_mut(&key("a")).unwrap();
    a.backends.remove(0);
    a.backends.push(backend("10.244.3.11", "10.0.0.13"));
    a.backends[0].state = BackendState::Terminating;
    a.backends[1].weight = 3;
    dp.apply(&d).unwrap();
    // Every backend terminating: the table goes, after the frontends say 0.
    for b in &mut d.services.get_mut(&key("a")).unwrap().backends {
        b.state = BackendState::Terminating;
    }
    let st = dp.apply(&d).unwrap();
    assert_eq!(st.deletes, 1, "the table: {st:?}");
    assert!(dp
        .dump()
        .unwrap()
        .contains("default/a:http id=0 maglev=251 encap=geneve backends=0/3"));
    // And back; then a smaller table; then no backends at all.
    for b in &mut d.services.get_mut(&key("a")).unwrap().backends {
        b.state = BackendState::Active;
    }
    dp.apply(&d).unwrap();
    d.services.get_mut(&key("a")).unwrap().maglev_size = 97;
    dp.apply(&d).unwrap();
    d.services.get_mut(&key("a")).unwrap().backends.clear();
    dp.apply(&d).unwrap();
    // A frontend moves from b to a, b loses its range and gains a NodePort.
    let moved = d.services[&key("b")].frontends[0];
    let b = d.services.get_mut(&key("b")).unwrap();
    b.frontends = vec![Frontend {
        addr: ip("10.0.0.2"),
        port: 30080,
        proto: Proto::Tcp,
        kind: FrontendKind::NodePort,
    }];
    b.source_ranges.clear();
    d.services.get_mut(&key("a")).unwrap().frontends.push(moved);
    dp.apply(&d).unwrap();
    let list = dp.list().unwrap();
    assert_eq!(list[0].frontends.len(), 2, "{list:?}");
    assert!(list[1].frontends[0].nodeport && list[1].source_ranges.is_empty(), "{list:?}");
    // Everything goes.
    let st = dp.apply(&desired([])).unwrap();
    assert_eq!(st.services_removed, 2);
    assert_eq!(dp.dump().unwrap(), "");
    assert_eq!(dp.store().inner.svc_backends().unwrap(), vec![]);
    assert!(dp.tunnel_endpoints().is_empty());
}

#[test]
fn a_reused_backend_id_gets_a_newer_generation() {
    let mut dp = checked();
    let one = |addr: &str| desired([service("a", "10.100.0.1", vec![backend(addr, "10.0.0.11")])]);
    let none = desired([service("a", "10.100.0.1", vec![])]);
    let only = |dp: &Datapath<Checked>| dp.list().unwrap()[0].backends[0].clone();
    dp.apply(&one("10.244.1.11")).unwrap();
    let first = only(&dp);
    dp.apply(&none).unwrap();
    dp.apply(&one("10.244.1.12")).unwrap();
    let second = only(&dp);
    assert_eq!(second.id, first.id, "the freed id is reused");
    assert!(second.gen > first.gen, "{first:?} then {second:?}");
    // A restarted agent too, although no backend is listed to seed its
    // counter: the freed id's last generation is read back from its slot.
    dp.apply(&none).unwrap();
    let mut dp = restored(dp.store());
    dp.apply(&one("10.244.1.13")).unwrap();
    let third = only(&dp);
    assert_eq!(third.id, first.id);
    assert!(third.gen > second.gen, "{second:?} then {third:?}");
}

#[test]
fn backends_keep_their_index_while_they_stay() {
    let mut dp = checked();
    let mut d = two();
    dp.apply(&d).unwrap();
    let index = |dp: &Datapath<Checked>| -> BTreeMap<IpAddr, (u32, u32)> {
        dp.list().unwrap()[0].backends.iter().map(|b| (b.addr, (b.id, b.index))).collect()
    };
    let before = index(&dp);
    let a = d.services.get_mut(&key("a")).unwrap();
    a.backends.remove(1);
    a.backends.insert(0, backend("10.244.9.9", "10.0.0.11"));
    a.backends[1].weight = 2;
    a.backends[2].state = BackendState::Terminating;
    dp.apply(&d).unwrap();
    let after = index(&dp);
    for (addr, at) in &after {
        if let Some(was) = before.get(addr) {
            assert_eq!(was, at, "{addr} moved");
        }
    }
    assert_eq!(
        after[&ip("10.244.9.9")].1,
        3,
        "a new backend takes a new index, not the one just freed"
    );
}

/// `n` backends of service "big" (10.244.<i / 200>.<i % 200 + 1>).
fn big(n: usize) -> Service {
    let backends = (0..n)
        .map(|i| backend(&format!("10.244.{}.{}", i / 200, i % 200 + 1), "10.0.0.11"))
        .collect();
    service("big", "10.100.0.9", backends)
}

/// Every (service, index) -> backend id of xlb_svc_backends.
fn hashed<S: MapStore>(dp: &Datapath<S>) -> Vec<(abi::SvcBackendKey, u32)> {
    let mut h = dp.store().svc_backends_hash().unwrap();
    h.sort_unstable_by_key(|(k, _)| (k.svc_id, k.index));
    h
}

#[test]
fn every_index_has_a_hash_entry_and_the_first_svc_ids_one_array_write() {
    let mut dp = checked();
    dp.apply(&desired([big(20)])).unwrap();
    let log = dp.store().log();
    let ids = log.iter().filter(|w| matches!(w.target, Target::SvcBackendIds(0))).count();
    let hashes = log.iter().filter(|w| matches!(w.target, Target::SvcBackend(_))).count();
    assert_eq!((ids, hashes), (1, 20), "{log:?}");
    // The hash alone (an older agent's view) and the array in front of it
    // (XDP's) resolve every index alike.
    let held: Vec<u32> = hashed(&dp).iter().map(|(k, _)| k.index).collect();
    assert_eq!(held, (0..20).collect::<Vec<_>>());
    assert_eq!(hashed(&dp), dp.store().svc_backends().unwrap());
    let words = dp.store().svc_ids_all().unwrap()[0].1;
    assert!(words.id.iter().all(|&id| id != 0), "{words:?}");
    assert_eq!(mirror(&restored(dp.store())), mirror(&dp));
    // One backend below SVC_IDS and one above go: the array's word and
    // both hash entries.
    let mut svc = big(20);
    svc.backends.remove(19);
    svc.backends.remove(3);
    dp.apply(&desired([svc])).unwrap();
    let held: Vec<u32> = hashed(&dp).iter().map(|(k, _)| k.index).collect();
    assert_eq!(held, (0..19).filter(|&i| i != 3).collect::<Vec<_>>());
    assert_eq!(hashed(&dp), dp.store().svc_backends().unwrap());
    assert_eq!(dp.store().svc_ids_all().unwrap()[0].1.id[3], 0);
    assert_eq!(mirror(&restored(dp.store())), mirror(&dp));
}

#[test]
fn a_rolling_update_keeps_indexes_below_svc_ids() {
    // 12 backends replaced one at a time (surge 1: the new one ready, then
    // the old one gone): the lowest free index is reused, so every index
    // stays in xlb_svc_backend_ids (and in the hash behind it).
    let mut dp = checked();
    let all = big(40);
    let mut svc = Service { backends: all.backends[..12].to_vec(), ..all.clone() };
    dp.apply(&desired([svc.clone()])).unwrap();
    for next in &all.backends[12..] {
        svc.backends.push(next.clone());
        dp.apply(&desired([svc.clone()])).unwrap();
        svc.backends.remove(0);
        dp.apply(&desired([svc.clone()])).unwrap();
        let max = hashed(&dp).iter().map(|(k, _)| k.index).max();
        assert!(max < Some(13), "{max:?}");
        let words = dp.store().svc_ids_all().unwrap()[0].1;
        assert_eq!(words.id.iter().filter(|&&id| id != 0).count(), 12, "{words:?}");
    }
}

#[test]
fn an_older_agents_hash_only_indexes_fill_the_array_at_the_restore() {
    // An agent from before xlb_svc_backend_ids put every index in
    // xlb_svc_backends only (the array's words 0: XDP falls back to the
    // hash). The restore fills the array and deletes nothing; the first
    // apply has nothing left to write.
    let mut dp = checked();
    dp.apply(&desired([big(20)])).unwrap();
    let before = dp.store().svc_backends().unwrap();
    let mut store = dp.into_store();
    store.damage(Write::SvcBackendIds { svc_id: 0, ids: services::NO_IDS });
    assert_eq!(store.svc_backends().unwrap(), before);
    let n = store.log().len();
    let mut dp = Datapath::restore(store).unwrap();
    let log = &dp.store().log()[n..];
    assert!(
        log.iter().map(|w| w.target).eq([Target::SvcBackendIds(0)]),
        "one array write: {log:?}"
    );
    let words = dp.store().svc_ids_all().unwrap()[0].1;
    assert!(words.id.iter().all(|&id| id != 0), "{words:?}");
    let st = dp.apply(&desired([big(20)])).unwrap();
    assert_eq!(st.writes(), 0, "{st:?}");
    assert_eq!(dp.store().svc_backends().unwrap(), before);
    assert_eq!(hashed(&dp), before);
    // And a backend below SVC_IDS goes from both.
    let mut svc = big(20);
    svc.backends.remove(0);
    dp.apply(&desired([svc])).unwrap();
    assert_eq!(dp.store().svc_backends().unwrap(), before[1..]);
    assert_eq!(hashed(&dp), before[1..]);
    assert_eq!(mirror(&restored(dp.store())), mirror(&dp));
}

#[test]
fn an_array_only_layout_is_adopted_and_given_its_hash_entries() {
    // 8c29de7..aa2347d wrote indexes below SVC_IDS to the array only: the
    // restore takes them and writes their hash entries (before any apply,
    // so a rollback from here finds them), nothing else.
    let mut dp = checked();
    dp.apply(&desired([big(20), big_b(3)])).unwrap();
    let want = mirror(&dp);
    let before = hashed(&dp);
    let mut store = dp.into_store();
    for &(key, _) in before.iter().filter(|(k, _)| k.index < abi::SVC_IDS) {
        store.damage(Write::SvcBackendDelete { key });
    }
    let n = store.log().len();
    // (That layout breaks the hash's completeness Checked holds to.)
    store.checking = false;
    let mut dp = Datapath::restore(store).unwrap();
    dp.store().check().unwrap_or_else(|e| panic!("after the restore: {e}"));
    dp.store_mut().checking = true;
    assert_eq!(mirror(&dp), want);
    assert_eq!(hashed(&dp), before);
    let log = &dp.store().log()[n..];
    assert!(log.iter().all(|w| matches!(w.target, Target::SvcBackend(_))), "{log:?}");
    assert_eq!(log.len(), abi::SVC_IDS as usize + 3);
    let st = dp.apply(&desired([big(20), big_b(3)])).unwrap();
    assert_eq!(st.writes(), 0, "{st:?}");
}

#[test]
fn a_rollback_finds_every_backend_in_the_hash() {
    // What an agent from before xlb_svc_backend_ids restores: the hash
    // alone. At every step of a scenario and a rolling update it holds
    // what XDP resolves through the array, so the old agent sees every
    // backend and drops no new flow.
    let mut dp = checked();
    let mut steps = scenario();
    let all = big(30);
    let mut svc = Service { backends: all.backends[..12].to_vec(), ..all.clone() };
    steps.push(desired([svc.clone()]));
    for next in &all.backends[12..20] {
        svc.backends.push(next.clone());
        steps.push(desired([svc.clone()]));
        svc.backends.remove(0);
        steps.push(desired([svc.clone()]));
    }
    for (step, d) in steps.iter().enumerate() {
        dp.apply(d).unwrap();
        assert_eq!(hashed(&dp), dp.store().svc_backends().unwrap(), "step {step}");
        // Restored from the hash alone (the array wiped): the same.
        let mut old = dp.store().inner.clone();
        for (svc_id, _) in old.svc_ids_all().unwrap() {
            old.write(Write::SvcBackendIds { svc_id, ids: services::NO_IDS }).unwrap();
        }
        let old = Datapath::restore(old).unwrap();
        assert_eq!(mirror(&old), mirror(&dp), "step {step}");
    }
}

#[test]
fn a_roll_forward_after_a_rollback_and_churn_takes_the_hash() {
    // The new agent wrote service big's 6 backends (indexes 0..6, array
    // and hash). Then an older agent (hash only) ran and churned:
    // - index 2 freed (its hash entry gone, its backend's slot cleared),
    //   its id given to service b's new backend;
    // - index 4 freed and reused for a new endpoint under another id;
    // - index 5 freed, its id's slot cleared, nothing reused.
    // The array still holds the words from before the rollback. The
    // restore takes the hash and rewrites the array before returning (the
    // agent's programs attach after it): no stale word is left for XDP.
    let mut dp = checked();
    dp.apply(&desired([big(6), big_b(1)])).unwrap();
    let id_of = |name| dp.services.iter().find(|(k, _)| **k == key(name)).unwrap().1.id;
    let (big_id, b_id) = (id_of("big"), id_of("b"));
    let ids = dp.store().svc_ids_all().unwrap().into_iter().find(|v| v.0 == big_id).unwrap().1;
    let old = |i: usize| ids.id[i];
    let mut store = dp.into_store();
    store.checking = false;
    let entry = |store: &Checked, id: u32| store.inner.backend(id).unwrap();
    let hkey = |svc_id, index| abi::SvcBackendKey { svc_id, index };
    // Index 2 -> service b's index 1.
    let (b2, e2) = (old(2), entry(&store, old(2)));
    store.damage(Write::SvcBackendDelete { key: hkey(big_id, 2) });
    let mut v = abi::Backend { svc_id: b_id, gen: e2.gen + 1, ..e2 };
    v.addr[15] ^= 0x40;
    store.damage(Write::Backend { id: b2, value: v });
    store.damage(Write::SvcBackend { key: hkey(b_id, 1), backend_id: b2 });
    // Index 4 -> a new endpoint under id 200.
    let e4 = entry(&store, old(4));
    store.damage(Write::Backend { id: old(4), value: abi::Backend { flags: 0, ..e4 } });
    let mut v = abi::Backend { gen: e4.gen + 1, ..e4 };
    v.addr[15] ^= 0x20;
    store.damage(Write::Backend { id: 200, value: v });
    store.damage(Write::SvcBackend { key: hkey(big_id, 4), backend_id: 200 });
    // Index 5 freed.
    let e5 = entry(&store, old(5));
    store.damage(Write::SvcBackendDelete { key: hkey(big_id, 5) });
    store.damage(Write::Backend { id: old(5), value: abi::Backend { flags: 0, ..e5 } });
    // The old agent's tables name only its indexes (0, 1, 3, 4).
    let maglev = Maglev::new(251).unwrap();
    let built = maglev.build(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]).unwrap();
    let slots: Vec<u16> = built.iter().map(|&i| [0, 1, 3, 4][i as usize]).collect();
    store.damage(Write::Maglev { svc_id: big_id, slots: &slots });
    assert!(store.check().is_err(), "stale words to fix");

    let mut dp = Datapath::restore(store).unwrap();
    // Before any apply (that is, before the programs attach): the array
    // agrees with the hash, and every slot resolves as the old agent did.
    dp.store().check().unwrap_or_else(|e| panic!("after the restore: {e}"));
    let words = dp.store().svc_ids_all().unwrap();
    let words: BTreeMap<u32, abi::SvcBackendIds> = words.into_iter().collect();
    let w = words[&big_id].id;
    assert_eq!(&w[..6], &[old(0), old(1), 0, old(3), 200, 0]);
    assert_eq!(words[&b_id].id[1], b2, "0 -> the hash's id");
    let held: Vec<(u32, u32)> =
        dp.services.iter().flat_map(|(_, s)| s.backends.iter().map(|(&i, b)| (i, b.id))).collect();
    assert!(held.contains(&(4, 200)) && !held.contains(&(2, b2)), "{held:?}");
    // The first apply converges with the datapath consistent at every write.
    dp.store_mut().checking = true;
    dp.apply(&desired([big(6), big_b(1)])).unwrap();
    assert_eq!(hashed(&dp), dp.store().svc_backends().unwrap());
    assert_eq!(mirror(&restored(dp.store())), mirror(&dp));
    assert_eq!(dp.apply(&desired([big(6), big_b(1)])).unwrap().writes(), 0);
}

/// `n` backends of service "b" (10.245.0.<i + 1>).
fn big_b(n: usize) -> Service {
    let backends = (0..n).map(|i| backend(&format!("10.245.0.{}", i + 1), "10.0.0.12")).collect();
    service("b", "10.100.0.10", backends)
}

#[test]
fn tunnel_endpoints_are_counted_per_backend() {
    let mut dp = checked();
    let mut d = two();
    dp.apply(&d).unwrap();
    assert_eq!(dp.tunnel_endpoints(), [ip("10.0.0.11"), ip("10.0.0.12")].into());
    let gen = dp.tunnel_generation();
    // 10.0.0.11 loses one of its two backends: still an endpoint.
    d.services.get_mut(&key("a")).unwrap().backends.remove(0);
    dp.apply(&d).unwrap();
    assert_eq!(dp.tunnel_generation(), gen);
    // A backend moves to a new node, a local one appears.
    let b = d.services.get_mut(&key("b")).unwrap();
    b.backends[0].node = ip("10.0.0.13");
    b.backends.push(backend("10.244.0.5", "10.0.0.2"));
    dp.apply(&d).unwrap();
    assert_ne!(dp.tunnel_generation(), gen);
    assert_eq!(dp.tunnel_endpoints(), [ip("10.0.0.12"), ip("10.0.0.13")].into());
    assert_eq!(mirror(&dp).tunnels[&ip("10.0.0.12")], 3);
    assert_eq!(mirror(&dp).tunnels, mirror(&restored(dp.store())).tunnels);
}

#[test]
fn restore_equals_applied_weights_and_names_included() {
    let mut dp = checked();
    let mut d = two();
    let a = d.services.get_mut(&key("a")).unwrap();
    a.backends[0].weight = 5;
    a.backends[1].name = "pod-b".into();
    a.backends[2].state = BackendState::Terminating;
    d.services.get_mut(&key("b")).unwrap().encap = Encap::Ipip;
    let mut c = service("c", "10.100.0.3", vec![backend("10.244.5.5", "10.0.0.11")]);
    c.frontends[0].kind = FrontendKind::NodePort;
    c.frontends.push(Frontend {
        addr: ip("2001:db8::3"),
        port: 80,
        proto: Proto::Udp,
        kind: FrontendKind::ExternalIp,
    });
    d.services.insert(c.key.clone(), c);
    let mut no_frontend = service("d", "10.100.0.4", vec![backend("10.244.6.6", "10.0.0.11")]);
    no_frontend.frontends.clear();
    d.services.insert(no_frontend.key.clone(), no_frontend);
    dp.apply(&d).unwrap();

    let mut again = restored(dp.store());
    assert_eq!(mirror(&again), mirror(&dp));
    let a = &again.list().unwrap()[0];
    assert_eq!(a.backends[0].weight, 5);
    assert_eq!(a.backends[1].name, "pod-b");
    // Nothing to write; the tables are rebuilt once to verify them.
    let st = again.apply(&d).unwrap();
    assert_eq!(st.writes(), 0, "{st:?}");
    assert_eq!(st.tables_built, 3, "{st:?}");
    assert_eq!(again.apply(&d).unwrap().tables_built, 0);
}

#[test]
fn an_older_agents_maps_are_completed() {
    // Maps without xlb_backend_meta entries (an older agent's, or the
    // defaults): restored as weight 1 and the address as name, which is
    // what is desired: nothing to write.
    let mut dp = checked();
    dp.apply(&two()).unwrap();
    let mut store = dp.into_store();
    for (_, id) in store.inner.svc_backends().unwrap() {
        store.inner.write(Write::BackendMetaDelete { id }).unwrap();
    }
    let mut dp = Datapath::restore(store.inner.clone()).unwrap();
    let st = dp.apply(&two()).unwrap();
    assert_eq!(
        (st.meta_writes, st.writes()),
        (0, 0),
        "the names and weights were the guessed ones"
    );
    let mut d = two();
    d.services.get_mut(&key("a")).unwrap().backends[0].weight = 2;
    let st = dp.apply(&d).unwrap();
    assert_eq!((st.meta_writes, st.table_writes), (1, 1), "{st:?}");
}

#[test]
fn only_names_and_weights_other_than_the_default_have_an_entry() {
    // Entries of xlb_backend_meta by backend endpoint.
    fn entries(dp: &Datapath<Checked>) -> BTreeMap<String, (String, u32)> {
        let s = &dp.store().inner;
        s.svc_backends()
            .unwrap()
            .into_iter()
            .filter_map(|(_, id)| {
                let b = s.backend(id).unwrap();
                let ep = std::net::SocketAddr::new(
                    abi::addr_from_abi(&b.addr, b.family).unwrap(),
                    u16::from_be(b.port),
                );
                s.backend_meta(id)
                    .unwrap()
                    .map(|m| (ep.to_string(), (m.name.to_string(), m.weight)))
            })
            .collect()
    }
    // (endpoint, name, weight) of every backend, as the view lists them
    // and as a restored reconciler lists them.
    fn shown(dp: &Datapath<Checked>) -> Vec<(String, String, u32)> {
        let read = |dp: &Datapath<Checked>| -> Vec<(String, String, u32)> {
            let mut v: Vec<_> = dp
                .list()
                .unwrap()
                .iter()
                .flat_map(|s| s.backends.iter())
                .map(|b| (format!("{}:{}", b.addr, b.port), b.name.clone(), b.weight))
                .collect();
            v.sort();
            v
        };
        let again = restored(dp.store());
        assert_eq!(read(&again), read(dp), "restored");
        assert_eq!(mirror(&again), mirror(dp));
        read(dp)
    }
    let dflt = |ep: &str| (ep.to_string(), ep.to_string(), 1);
    let mut all_default: Vec<_> = two()
        .services
        .values()
        .flat_map(|s| s.backends.iter())
        .map(|b| dflt(&format!("{}:{}", b.addr, b.port)))
        .collect();
    all_default.sort();

    let mut dp = checked();
    let st = dp.apply(&two()).unwrap();
    assert_eq!(st.meta_writes, 0, "{st:?}");
    assert!(entries(&dp).is_empty(), "{:?}", entries(&dp));
    assert_eq!(shown(&dp), all_default);

    // Another weight, another name: an entry each.
    let mut d = two();
    let a = d.services.get_mut(&key("a")).unwrap();
    a.backends[0].weight = 3;
    a.backends[1].name = "pod-b".into();
    let (w, n) = (a.backends[0].clone(), a.backends[1].clone());
    let (w_ep, n_ep) = (format!("{}:{}", w.addr, w.port), format!("{}:{}", n.addr, n.port));
    let st = dp.apply(&d).unwrap();
    assert_eq!(st.meta_writes, 2, "{st:?}");
    assert_eq!(
        entries(&dp),
        BTreeMap::from([(w_ep.clone(), (w_ep.clone(), 3)), (n_ep.clone(), ("pod-b".into(), 1))])
    );
    let mut want = all_default.clone();
    for e in &mut want {
        if e.0 == w_ep {
            e.2 = 3;
        }
        if e.0 == n_ep {
            e.1 = "pod-b".into();
        }
    }
    want.sort();
    assert_eq!(shown(&dp), want);

    // A new backend with another weight is written with its entry; one
    // named like its endpoint with weight 1 gets none.
    let mut d2 = d.clone();
    let a = d2.services.get_mut(&key("a")).unwrap();
    let mut heavy = backend("10.244.4.4", "10.0.0.11");
    heavy.weight = 2;
    let plain = backend("10.244.4.5", "10.0.0.11");
    let (h_ep, p_ep) =
        (format!("{}:{}", heavy.addr, heavy.port), format!("{}:{}", plain.addr, plain.port));
    a.backends.extend([heavy, plain]);
    let st = dp.apply(&d2).unwrap();
    assert_eq!(st.meta_writes, 1, "{st:?}");
    assert_eq!(entries(&dp).get(&h_ep), Some(&(h_ep.clone(), 2)));
    assert!(!entries(&dp).contains_key(&p_ep));
    let listed = shown(&dp);
    assert!(listed.contains(&(h_ep.clone(), h_ep.clone(), 2)), "{listed:?}");
    assert!(listed.contains(&dflt(&p_ep)), "{listed:?}");

    // Back to the defaults: the entries are deleted.
    let n = dp.store().log().len();
    let st = dp.apply(&two()).unwrap();
    let deleted: BTreeSet<bool> = dp.store().log()[n..]
        .iter()
        .filter(|r| matches!(r.target, Target::BackendMeta(_)))
        .map(|r| r.delete)
        .collect();
    assert_eq!(deleted, BTreeSet::from([true]), "only deletes of xlb_backend_meta");
    assert_eq!(st.meta_writes, 4, "two changed back, two backends gone: {st:?}");
    assert!(entries(&dp).is_empty(), "{:?}", entries(&dp));
    assert_eq!(shown(&dp), all_default);
}

#[test]
fn resync_repairs_what_changed_behind_the_reconcilers() {
    let mut dp = checked();
    let d = two();
    dp.apply(&d).unwrap();
    let good = dp.dump().unwrap();
    let list = dp.list().unwrap();
    let (a, b) = (&list[0], &list[1]);
    let store = dp.store_mut();
    store.checking = false; // the damage breaks what the checks hold
    let fe = store.frontends().unwrap().into_iter().find(|(_, v)| v.id == b.id).unwrap();
    // b's frontend and a's table go, one of a's backends is rewritten, and
    // a service a missed delete left behind appears.
    store.damage(Write::FrontendDelete { key: fe.0 });
    store.damage(Write::MaglevDelete { svc_id: a.id, size: 251 });
    let be = store.backend(a.backends[0].id).unwrap();
    let moved = abi::Backend { node: [10, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], ..be };
    store.damage(Write::Backend { id: a.backends[0].id, value: moved });
    store.damage(Write::SvcName { svc_id: 77, name: "default/stale:http" });
    let stray = abi::FrontendKey { port: 81u16.to_be(), ..fe.0 };
    store.damage(Write::Frontend { key: stray, value: abi::Service { id: 77, ..fe.1 } });

    assert_eq!(dp.apply(&d).unwrap().writes(), 0, "a plain diff trusts its bookkeeping");
    let st = dp.resync(&d).unwrap();
    assert_eq!(st.services_removed, 1, "{st:?}");
    assert_eq!((st.frontend_writes, st.table_writes, st.backend_writes), (1, 1, 1), "{st:?}");
    assert_eq!(st.tables_built, 1, "only the table that is gone is rebuilt: {st:?}");
    assert_eq!(dp.dump().unwrap(), good);
    let st = dp.resync(&d).unwrap();
    assert_eq!((st.writes(), st.tables_built), (0, 0), "{st:?}");
}

#[test]
fn apply_services_touches_only_the_services_named() {
    let mut dp = checked();
    let d = two();
    let (a, b) = (&d.services[&key("a")], &d.services[&key("b")]);
    dp.apply_services(&node(), [(&a.key, Some(a)), (&b.key, Some(b))]).unwrap();
    let mut a2 = a.clone();
    a2.backends.pop();
    let n = dp.store().log().len();
    let st = dp.apply_services(&node(), [(&a2.key, Some(&a2))]).unwrap();
    assert_eq!(st.services_changed, 1);
    let b_id = dp.list().unwrap()[1].id;
    assert!(dp.store().log()[n..].iter().all(|w| w.target.svc_id() != Some(b_id)));
    // The last word on a key counts; an unknown removal is nothing.
    let gone = key("nope");
    let st =
        dp.apply_services(&node(), [(&b.key, Some(b)), (&b.key, None), (&gone, None)]).unwrap();
    assert_eq!(st.services_removed, 1);
    let err = dp.apply_services(&node(), [(&b.key, Some(&a2))]).unwrap_err().to_string();
    assert_eq!(err, "service default/b:http: given under the key of service default/a:http");
}

#[test]
fn invalid_services_are_refused_before_any_write() {
    let mut dp = checked();
    type Break = fn(&mut Service);
    let cases: Vec<(Break, &str)> = vec![
        (|s| s.maglev_size = 20000, "maglev size 20000 outside 2..=16381"),
        (|s| s.maglev_size = 250, "not a prime"),
        (|s| s.backends[1].weight = 0, "weight 0"),
        (|s| s.backends[1].name = "x".repeat(61).into(), "at most 60"),
        (|s| s.backends[1].name = s.backends[0].name.clone(), "given to two backends"),
        (|s| s.backends.push(s.backends[0].clone()), "listed twice"),
        (|s| s.frontends.push(s.frontends[0]), "listed twice"),
    ];
    for (break_it, want) in cases {
        let mut d = two();
        break_it(d.services.get_mut(&key("b")).unwrap());
        let err = dp.apply(&d).unwrap_err().to_string();
        assert!(err.starts_with("service default/b:http: ") && err.contains(want), "{err}");
        assert!(dp.store().log().is_empty(), "{err}: something was written");
    }
}

#[test]
fn capacity_is_enforced_and_leaves_no_trace() {
    let store =
        Checked { inner: MemStore::new(Capacity { services: 1, backends: 3 }), ..Checked::new() };
    let mut dp = Datapath::restore(store).unwrap();
    let err = dp.apply(&two()).unwrap_err().to_string();
    assert!(err.contains("capacity exhausted"), "{err}");
    assert_eq!(mirror(&dp), mirror(&restored(dp.store())));
    let mut one = two();
    one.services.remove(&key("b"));
    one.services.get_mut(&key("a")).unwrap().backends.pop();
    dp.apply(&one).unwrap();
    assert_eq!(dp.apply(&one).unwrap().writes(), 0);
}

/// The scenario of the failure tests: every kind of change.
fn scenario() -> Vec<Desired> {
    let d0 = two();
    let mut d1 = d0.clone();
    let a = d1.services.get_mut(&key("a")).unwrap();
    a.backends.remove(0);
    a.backends.push(backend("10.244.3.11", "10.0.0.13"));
    a.backends[0].weight = 4;
    a.backends[1].state = BackendState::Terminating;
    let b = d1.services.get_mut(&key("b")).unwrap();
    b.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    b.maglev_size = 97;
    d1.services
        .insert(key("c"), service("c", "10.100.0.3", vec![backend("10.244.4.4", "10.0.0.11")]));
    let mut d2 = d1.clone();
    d2.services.remove(&key("a"));
    d2.node.tunnel_v6 = Some("fd00::2".parse().unwrap());
    vec![d0, d1, d2, desired([])]
}

#[test]
fn a_failed_write_leaves_bookkeeping_true_and_a_retry_converges() {
    // The reference: the scenario without failures.
    let mut clean = checked();
    let mut want = Vec::new();
    for d in scenario() {
        clean.apply(&d).unwrap();
        want.push(content(&clean));
    }
    let total = clean.store().writes;
    for n in 0..total {
        let mut dp = checked();
        dp.store_mut().fail_at = Some(n);
        for (step, d) in scenario().iter().enumerate() {
            if let Err(e) = dp.apply(d) {
                assert!(e.to_string().starts_with("map xlb_"), "{e}");
                // Everything the maps name is known, and nothing more.
                assert_eq!(mirror(&dp), mirror(&restored(dp.store())), "write #{n} failed");
                dp.apply(d).unwrap_or_else(|e| panic!("retry after write #{n} failed: {e}"));
            }
            assert_eq!(content(&dp), want[step], "step {step}, write #{n} failed");
            assert_eq!(dp.apply(d).unwrap().writes(), 0, "step {step}, write #{n} failed");
        }
    }
}

#[test]
fn a_failed_free_does_not_resurrect_the_backend() {
    // The endpoint goes (its index is deleted, then the write clearing its
    // entry fails), then comes back: it must be written anew, not assumed.
    let mut dp = checked();
    let mut d = desired([service(
        "a",
        "10.100.0.1",
        vec![backend("10.244.1.11", "10.0.0.11"), backend("10.244.1.12", "10.0.0.11")],
    )]);
    dp.apply(&d).unwrap();
    let back = d.clone();
    d.services.get_mut(&key("a")).unwrap().backends.pop();
    // The index goes, then clearing the entry fails.
    dp.store_mut().fail_on =
        Some(|w| matches!(w, Write::Backend { value, .. } if value.flags == 0));
    dp.apply(&d).unwrap_err();
    assert_eq!(dp.list().unwrap()[0].backends.len(), 1);
    dp.apply(&back).unwrap();
    assert_eq!(dp.list().unwrap()[0].backends.len(), 2);
    assert_eq!(mirror(&dp), mirror(&restored(dp.store())));
}

#[test]
fn a_first_table_of_another_class_is_the_services_once_the_frontends_name_it() {
    // A service with frontends and no backend gets its first one and an M of
    // another size class; the write after the table (a source range) fails.
    // The table sits in a map no frontend names yet: not the service's table
    // (XDP and a restore look elsewhere) until the frontends carry its M,
    // after a retry or a resync.
    for (from, to) in [(11, 211), (211, 11)] {
        for resync in [false, true] {
            let at = format!("M {from} -> {to}, resync {resync}");
            let mut dp = checked();
            let mut d =
                desired([Service { maglev_size: from, ..service("a", "10.100.0.1", vec![]) }]);
            dp.apply(&d).unwrap();
            let a = d.services.get_mut(&key("a")).unwrap();
            a.maglev_size = to;
            a.backends = vec![backend("10.244.1.11", "10.0.0.11")];
            a.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
            dp.store_mut().fail_on = Some(|w| matches!(w, Write::SourceRange { .. }));
            let e = dp.apply(&d).unwrap_err();
            assert!(e.to_string().starts_with("map xlb_source_ranges"), "{at}: {e}");
            assert_eq!(mirror(&dp), mirror(&restored(dp.store())), "{at}");
            assert!(dp.services.iter().all(|(_, s)| s.table.written.is_none()), "{at}");
            if resync {
                dp.resync(&d).unwrap();
            } else {
                dp.apply(&d).unwrap();
            }
            let s = &dp.list().unwrap()[0];
            assert_eq!(
                (s.maglev_size, s.table_size, s.active_backends),
                (to, to as usize, 1),
                "{at}"
            );
            assert_eq!(mirror(&dp), mirror(&restored(dp.store())), "{at}");
            assert_eq!(dp.apply(&d).unwrap().writes(), 0, "{at}");
            assert_eq!(restored(dp.store()).apply(&d).unwrap().writes(), 0, "{at}");
        }
    }
}

#[test]
fn tables_follow_the_maglev_build_of_their_active_backends() {
    let mut dp = checked();
    let mut d = two();
    d.services.get_mut(&key("a")).unwrap().backends[1].weight = 3;
    dp.apply(&d).unwrap();
    let a = &dp.list().unwrap()[0];
    let input: Vec<(String, u32)> =
        d.services[&key("a")].backends.iter().map(|b| (b.name.to_string(), b.weight)).collect();
    let quotas = Maglev::new(251).unwrap().quotas(&input).unwrap();
    let slots: Vec<u32> = a.backends.iter().map(|b| b.slots as u32).collect();
    assert_eq!(slots, quotas);
}

/// The bookkeeping's cost at scale, on the in-memory store (so map syscalls
/// do not hide it): 10k services of 10 backends, small tables (Maglev is
/// measured on its own). Run: `cargo test --release -p xlb-lb --lib
/// bench_bookkeeping -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_bookkeeping_at_10k_services() {
    use std::time::Instant;
    let mut d = Desired { node: node(), ..Default::default() };
    for i in 0..10_000u32 {
        let (hi, lo) = (i / 250, i % 250);
        let backends = (0..10)
            .map(|j| {
                backend(
                    &format!("10.{}.{}.{}", 100 + hi / 10, (hi % 10) * 25 + j, lo + 1),
                    "10.0.0.11",
                )
            })
            .collect();
        let s = service(
            &format!("svc{i}"),
            &format!("10.{}.{}.{}", hi / 250, hi % 250, lo + 1),
            backends,
        );
        d.services.insert(s.key.clone(), Service { maglev_size: 13, ..s });
    }
    let store = MemStore::new(Capacity { services: 16384, backends: 262144 });
    let mut dp = Datapath::restore(store).unwrap();
    let t = Instant::now();
    dp.apply(&d).unwrap();
    let cold = t.elapsed();
    let mut full = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(dp.apply(&d).unwrap().writes(), 0);
        full = full.min(t.elapsed());
    }
    let keys: Vec<ServiceKey> = d.services.keys().cloned().collect();
    let t = Instant::now();
    for (n, k) in keys.iter().step_by(100).enumerate() {
        let s = d.services.get_mut(k).unwrap();
        s.backends[0].weight = 2 + (n as u32 % 2);
        dp.apply_services(&d.node, [(k, Some(&d.services[k]))]).unwrap();
    }
    let one = t.elapsed() / 100;
    let t = Instant::now();
    let again = Datapath::restore(dp.into_store()).unwrap();
    let restore = t.elapsed();
    assert_eq!(again.service_keys().count(), 10_000);
    eprintln!(
        "10k services x 10 backends: cold apply {cold:?}, full re-apply (no change) {full:?}, \
         one service changed {one:?}, restore {restore:?}"
    );
}

#[test]
fn the_frontend_filter_lets_every_frontend_by_and_follows_its_changes() {
    // #14: xlb_fe_filter has a bit per frontend key; the Checked store
    // fails any write after which a frontend's bit is clear (a bit set
    // before its frontend, cleared only after). Here: most other
    // destinations are filtered, a removed frontend's bit goes after its
    // delete, and maps whose filter is empty and unarmed (created by
    // another version) get their words before the filter is armed.
    let fe_key = |addr: &str, port: u16| {
        let (addr, family) = abi::addr_to_abi(ip(addr));
        abi::FrontendKey { addr, port: port.to_be(), proto: 6, family }
    };
    let (ka, kb) = (fe_key("10.100.0.1", 80), fe_key("10.100.0.2", 80));
    let word = |k: &abi::FrontendKey| Target::FeFilter(abi::fe_filter_bit(k) >> 6);
    let mut dp = checked();
    let st = dp.apply(&two()).unwrap();
    let s = &dp.store().inner;
    assert!(s.fe_filter_maybe(&ka) && s.fe_filter_maybe(&kb));
    // Two words (or one shared) and the armed flag.
    assert!((2..=3).contains(&st.filter_writes), "{st:?}");
    let log = dp.store().log();
    for k in [ka, kb] {
        let set = log.iter().position(|w| w.target == word(&k)).unwrap();
        let add = log.iter().position(|w| w.target == Target::Frontend(k)).unwrap();
        assert!(set < add, "{log:?}");
    }
    let armed = Target::FeFilter(abi::FE_FILTER_ARMED);
    let passed = (0..4096u16)
        .filter(|i| s.fe_filter_maybe(&fe_key(&format!("198.51.{}.{}", i >> 8, i & 255), 80 + i)))
        .count();
    assert!(passed < 10, "{passed} of 4096 non-frontend destinations not filtered");

    // b goes: its bit is cleared after its frontend is deleted.
    let d = desired(two().services.into_values().filter(|s| s.key == key("a")));
    let start = dp.store().log().len();
    dp.apply(&d).unwrap();
    let log = &dp.store().log()[start..];
    let del = log.iter().position(|w| w.target == Target::Frontend(kb)).unwrap();
    let clear = log.iter().position(|w| w.target == word(&kb)).unwrap();
    assert!(del < clear, "{log:?}");
    assert!(!dp.store().inner.fe_filter_maybe(&kb) && dp.store().inner.fe_filter_maybe(&ka));
    // b back: its bit is set before its frontend is written.
    let start = dp.store().log().len();
    dp.apply(&two()).unwrap();
    let log = &dp.store().log()[start..];
    let set = log.iter().position(|w| w.target == word(&kb)).unwrap();
    let add = log.iter().position(|w| w.target == Target::Frontend(kb)).unwrap();
    assert!(set < add, "{log:?}");

    // The filter wiped (maps of another version): a restore writes the
    // words, then arms it, and nothing else.
    let mut store = dp.into_store();
    for i in 0..=abi::FE_FILTER_ARMED {
        store.damage(Write::FeFilter { index: i, bits: 0 });
    }
    let mut dp = Datapath::restore(store).unwrap();
    let start = dp.store().log().len();
    let st = dp.apply(&two()).unwrap();
    assert_eq!(st.writes(), st.filter_writes, "{st:?}");
    let log = &dp.store().log()[start..];
    assert_eq!(log.last().map(|w| w.target), Some(armed), "{log:?}");
    let s = &dp.store().inner;
    assert!(s.fe_filter_maybe(&ka) && s.fe_filter_maybe(&kb));
}
