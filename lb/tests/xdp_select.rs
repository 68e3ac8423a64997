//! XDP backend selection against the compiled xlb_xdp: Maglev spread (every
//! flow checked against the table read back from the maps, so the C flow hash
//! must match conntrack.h's definition), connection tracking across backend
//! changes (terminating, removed) and ClientIP session affinity. Privileged
//! tier: needs root and BPF.
mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use common::*;
use lb::{
    abi,
    model::{Affinity, BackendState, Desired, NodeConfig, Proto, Service},
    store::MapStore,
};
use testkit::packet::Frame;

/// Pod 1 of nodes 1..=n, behind VIP:80/TCP.
fn spread_service(v6: bool, n: u8) -> Service {
    let backends = (1..=n).map(|i| backend(pod(i, 1, v6), node(i, v6))).collect();
    service(&format!("spread-{}", fam(v6)), vip(v6), 80, Proto::Tcp, backends)
}

#[test]
fn maglev_spreads_new_flows_over_three_backends() {
    with_lab("spread", |lab| {
        lab.apply(&[spread_service(false, 3), spread_service(true, 3)]);
        for v6 in BOTH {
            let mut per_backend: BTreeMap<SocketAddr, u32> = BTreeMap::new();
            let mut cases = Vec::new();
            for port in 20000..21000 {
                let s = syn(v6, port);
                let (want, ep) = lab.expect_dsr(&s, 80);
                *per_backend.entry(ep).or_default() += 1;
                cases.push(Case::of(format!("{} SYN from port {port}", fam(v6)), &s).tx(&want));
            }
            lab.check(&cases);
            assert_eq!(per_backend.len(), 3, "{}: flows reached {per_backend:?}", fam(v6));
            for (ep, n) in &per_backend {
                // 1000/3 = 333; a fair hash keeps each share well within this band.
                assert!(
                    (250..=420).contains(n),
                    "{}: {ep} got {n} of 1000 flows: {per_backend:?}",
                    fam(v6)
                );
            }
            let l = lab.listing(&format!("spread-{}", fam(v6)));
            assert_eq!((l.packets, l.new_flows), (1000, 1000), "{} service stats", fam(v6));
            for b in &l.backends {
                let ep = SocketAddr::new(b.addr, b.port);
                assert_eq!(
                    b.packets,
                    u64::from(per_backend[&ep]),
                    "{} stats of backend {ep}",
                    fam(v6)
                );
            }
        }
    });
}

/// A client port whose new flow Maglev sends to `ep`.
fn port_for(lab: &Lab, v6: bool, ep: SocketAddr) -> u16 {
    (30000..31000)
        .find(|&p| lab.expect_dsr(&syn(v6, p), 80).1 == ep)
        .unwrap_or_else(|| panic!("no client port in 30000..31000 maps to {ep}"))
}

#[test]
fn terminating_backend_keeps_its_flows_and_gets_no_new_ones() {
    with_lab("terminating", |lab| {
        for v6 in BOTH {
            let mut svc = spread_service(v6, 2);
            lab.apply(&[svc.clone()]);
            let (a, port) = syn_to_a(lab, v6);

            svc.backends[0].state = BackendState::Terminating;
            lab.apply(&[svc]);
            let k = ack(v6, port);
            let mut cases = vec![Case::of(format!("{} ACK stays on terminating A", fam(v6)), &k)
                .tx(&geneve_dsr(1, v6, &k, 80, a))];
            let b = SocketAddr::new(pod(2, 1, v6), TARGET_PORT);
            for p in 31000..31050 {
                let n = syn(v6, p);
                cases.push(
                    Case::of(format!("{} new SYN {p} goes to B", fam(v6)), &n)
                        .tx(&geneve_dsr(2, v6, &n, 80, b)),
                );
            }
            lab.check(&cases);
        }
    });
}

#[test]
fn removed_backend_flow_moves_to_a_live_backend() {
    with_lab("removed", |lab| {
        for v6 in BOTH {
            let mut svc = spread_service(v6, 2);
            lab.apply(&[svc.clone()]);
            let (_, port) = syn_to_a(lab, v6);
            let b = SocketAddr::new(pod(2, 1, v6), TARGET_PORT);

            svc.backends.remove(0);
            lab.apply(&[svc]);
            let k = ack(v6, port);
            let l0 = lab.listing(&format!("spread-{}", fam(v6)));
            lab.check(&[Case::of(format!("{} ACK after A is removed goes to B", fam(v6)), &k)
                .tx(&geneve_dsr(2, v6, &k, 80, b))]);
            let l1 = lab.listing(&format!("spread-{}", fam(v6)));
            assert_eq!(l1.new_flows, l0.new_flows + 1, "{}: the moved flow is a new flow", fam(v6));
        }
    });
}

#[test]
fn client_ip_affinity_pins_every_port_of_a_client_to_one_backend() {
    with_lab("affinity", |lab| {
        let mut services = Vec::new();
        for v6 in BOTH {
            let mut s = spread_service(v6, 3);
            s.affinity = Some(Affinity { timeout: AFFINITY });
            services.push(s);
        }
        lab.apply(&services);
        for v6 in BOTH {
            let first = syn(v6, 45000);
            let (want, ep) = lab.expect_dsr(&first, 80);
            let mut cases = vec![Case::of(format!("{} first SYN", fam(v6)), &first).tx(&want)];
            let n = node_index(
                services[usize::from(v6)].backends.iter().find(|b| b.addr == ep.ip()).unwrap().node,
            );
            let mut other_by_maglev = 0;
            for p in 45001..45020 {
                let s = syn(v6, p);
                if lab.expect_dsr(&s, 80).1 != ep {
                    other_by_maglev += 1;
                }
                cases.push(
                    Case::of(format!("{} SYN from port {p}", fam(v6)), &s)
                        .tx(&geneve_dsr(n, v6, &s, 80, ep)),
                );
            }
            assert!(
                other_by_maglev > 0,
                "{}: Maglev alone would also pick {ep}: the test proves nothing",
                fam(v6)
            );
            lab.check(&cases);
            let l = lab.listing(&format!("spread-{}", fam(v6)));
            assert_eq!((l.new_flows, l.affinity_hits), (20, 19), "{} service stats", fam(v6));
        }
    });
}

#[test]
fn established_flows_see_service_changes_with_their_next_packet() {
    // The XDP flow cache holds a service's settings per flow; the agent's
    // configuration generation makes a change reach cached flows at once.
    with_lab("cachegen", |lab| {
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let s = syn(v6, CLIENT_PORT);
            let k = ack(v6, CLIENT_PORT);
            lab.apply(&[web(v6)]);
            lab.check(&[
                Case::of(format!("{} SYN", fam(v6)), &s).tx(&geneve_dsr(1, v6, &s, 80, ep)),
                Case::of(format!("{} ACK (cached)", fam(v6)), &k)
                    .tx(&geneve_dsr(1, v6, &k, 80, ep)),
            ]);

            lab.apply(&[with_encap(web(v6), lb::model::Encap::Ipip)]);
            let hash = flow_hash(client(v6), vip(v6), CLIENT_PORT, 80, 6);
            lab.check(&[Case::of(format!("{} ACK after the switch to IPIP", fam(v6)), &k)
                .tx(&k.encap_in(outer_ip(1, v6, hash)))]);

            let mut ranged = web(v6);
            let other = if v6 { "2001:db8:ffff::/48" } else { "198.51.100.0/24" };
            ranged.source_ranges = vec![other.parse().unwrap()];
            lab.apply(&[ranged]);
            lab.check(&[Case::of(
                format!("{} ACK from outside the new source ranges", fam(v6)),
                &k,
            )
            .drop(lb::abi::Counter::DropSourceRange)]);
        }
    });
}

#[test]
fn a_flow_to_no_frontend_is_served_as_soon_as_its_frontend_appears() {
    // #14: a packet to no frontend is passed cheaply (the frontend filter:
    // its bit is clear; session 5: a negative flow-cache entry); a
    // frontend added must be served from its first packet, and one removed
    // must stop being served at once.
    with_lab("negcache", |lab| {
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let k = ack(v6, CLIENT_PORT);
            lab.apply(&[]);
            lab.check(&[
                Case::of(format!("{} ACK, no frontend", fam(v6)), &k)
                    .pass(abi::Counter::PassNotFrontendFiltered),
                Case::of(format!("{} ACK, no frontend, again", fam(v6)), &k)
                    .pass(abi::Counter::PassNotFrontendFiltered),
            ]);
            lab.apply(&[web(v6)]);
            lab.check(&[Case::of(format!("{} ACK once the frontend exists", fam(v6)), &k)
                .tx(&geneve_dsr(1, v6, &k, 80, ep))]);
            lab.apply(&[]);
            lab.check(&[
                Case::of(format!("{} ACK after the frontend went", fam(v6)), &k)
                    .pass(abi::Counter::PassNotFrontendFiltered),
                Case::of(format!("{} ACK after the frontend went, again", fam(v6)), &k)
                    .pass(abi::Counter::PassNotFrontendFiltered),
            ]);
            lab.apply(&[web(v6)]);
            lab.check(&[Case::of(format!("{} ACK once the frontend is back", fam(v6)), &k)
                .tx(&geneve_dsr(1, v6, &k, 80, ep))]);
            lab.apply(&[]);
        }
    });
}

/// Pins the calling thread to its current CPU: per-CPU caches filled by one
/// run are read by the next.
fn pin_to_this_cpu() {
    // SAFETY: plain syscalls on a zeroed cpu_set_t owned here.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn a_cached_frontend_sees_its_service_lose_and_regain_its_backends() {
    // XDP's frontend cache (xdp/flowcache.h) keeps a copy of the service
    // value for the packets the flow cache misses, backend count included:
    // new flows must be rejected from the first packet after the last
    // backend went, and served from the first after one came back.
    with_lab("fecache", |lab| {
        pin_to_this_cpu();
        for v6 in BOTH {
            let ep = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let mut empty = web(v6);
            empty.backends.clear();
            let served = |sport: u16, what: &str| {
                let s = syn(v6, sport);
                Case::of(format!("{} SYN {what}", fam(v6)), &s).tx(&geneve_dsr(1, v6, &s, 80, ep))
            };
            lab.apply(&[web(v6)]);
            lab.check(&[served(CLIENT_PORT, "with a backend"), served(CLIENT_PORT + 1, "again")]);
            lab.apply(&[empty]);
            for sport in [CLIENT_PORT + 2, CLIENT_PORT + 3] {
                let before = lab.counters()[&(abi::Counter::OkReject as u32)].0;
                let (verdict, _) = lab.run(&syn(v6, sport).build());
                let after = lab.counters()[&(abi::Counter::OkReject as u32)].0;
                assert_eq!(
                    (verdict_name(verdict), after - before),
                    (verdict_name(XDP_TX), 1),
                    "{} SYN from port {sport} once the service has no backend: a reject",
                    fam(v6)
                );
            }
            lab.apply(&[web(v6)]);
            lab.check(&[served(CLIENT_PORT + 4, "once the backend is back")]);
        }
    });
}

/// The frontend key of `addr:port`/TCP as xlb_frontends holds it.
fn fe_key(addr: IpAddr, port: u16) -> abi::FrontendKey {
    let (addr, family) = abi::addr_to_abi(addr);
    abi::FrontendKey { addr, port: port.to_be(), proto: 6, family }
}

#[test]
fn the_frontend_filter_passes_other_destinations_and_never_a_frontend() {
    // #14: xlb_fe_filter (a bit per frontend key, written by the
    // reconciler; the C and Rust hashes must agree). Packets to random
    // non-service destinations are passed with PASS_NOT_FRONTEND_FILTERED
    // unless a frontend shares their bit (then looked up: PASS_NOT_FRONTEND);
    // 64 frontends of each family are all served; a frontend added later is
    // served from its first packet; a filter not armed filters nothing.
    with_lab("fefilter", |lab| {
        let addr = |v6: bool, i: u32| -> IpAddr {
            if v6 {
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, (i >> 16) as u16, i as u16)
                    .into()
            } else {
                std::net::Ipv4Addr::new(203, 0, 113 + (i >> 8 & 1) as u8, i as u8).into()
            }
        };
        let mut services = Vec::new();
        for v6 in BOTH {
            for i in 0..64u32 {
                let be = vec![backend(pod(1, 1, v6), node(1, v6))];
                let name = format!("fe-{}-{i}", fam(v6));
                services.push(service(&name, addr(v6, i), 1000 + i as u16, Proto::Tcp, be));
            }
        }
        lab.apply(&services);
        let keys: std::collections::HashSet<u32> = services
            .iter()
            .map(|s| abi::fe_filter_bit(&fe_key(s.frontends[0].addr, s.frontends[0].port)))
            .collect();
        for v6 in BOTH {
            for i in 0..64u32 {
                let f = Frame::eth(ROUTER_MAC, LB_MAC)
                    .ip(client(v6), addr(v6, i))
                    .tcp(CLIENT_PORT, 1000 + i as u16)
                    .seq(1)
                    .syn();
                let (verdict, _) = lab.run(&f.build());
                assert_eq!(verdict, XDP_TX, "{} frontend {i} not served", fam(v6));
            }
        }
        // Random destinations (a fixed LCG sequence): some of each reason
        // would be luck; the reason is predicted from the bits exactly.
        let mut x: u32 = 0x1234_5678;
        let mut cases = Vec::new();
        let mut looked_up = 0;
        for n in 0..1000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v6 = n % 2 == 1;
            let dst: IpAddr = if v6 {
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, (x >> 16) as u16, x as u16)
                    .into()
            } else {
                std::net::Ipv4Addr::new(198, 18, (x >> 8) as u8, x as u8).into()
            };
            let dport = (x >> 16) as u16 | 1;
            let f = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), dst)
                .tcp(CLIENT_PORT, dport)
                .seq(1)
                .syn();
            let maybe = keys.contains(&abi::fe_filter_bit(&fe_key(dst, dport)));
            looked_up += usize::from(maybe);
            let reason = if maybe {
                abi::Counter::PassNotFrontend
            } else {
                abi::Counter::PassNotFrontendFiltered
            };
            cases.push(Case::of(format!("{} SYN to {dst}:{dport}", fam(v6)), &f).pass(reason));
        }
        lab.check(&cases);
        assert!(looked_up < 10, "{looked_up} of 1000 random destinations share a frontend's bit");

        // A frontend added later: filtered before, served at once after.
        for v6 in BOTH {
            let (dst, port) = (addr(v6, 200), 4242);
            let f = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), dst)
                .tcp(CLIENT_PORT, port)
                .seq(1)
                .syn();
            lab.check(&[Case::of(format!("{} SYN before its frontend", fam(v6)), &f)
                .pass(abi::Counter::PassNotFrontendFiltered)]);
            let be = vec![backend(pod(1, 1, v6), node(1, v6))];
            services.push(service(&format!("late-{}", fam(v6)), dst, port, Proto::Tcp, be));
            lab.apply(&services);
            let (verdict, _) = lab.run(&f.build());
            assert_eq!(verdict, XDP_TX, "{} the new frontend not served", fam(v6));
        }

        // Not armed (maps created by another version): every packet is
        // looked up.
        lab.path
            .store_mut()
            .write(lb::store::Write::FeFilter { index: abi::FE_FILTER_ARMED, bits: 0 })
            .unwrap();
        for v6 in BOTH {
            let f = Frame::eth(ROUTER_MAC, LB_MAC)
                .ip(client(v6), addr(v6, 300))
                .tcp(CLIENT_PORT, 9)
                .seq(1)
                .syn();
            lab.check(&[Case::of(format!("{} SYN, filter not armed", fam(v6)), &f)
                .pass(abi::Counter::PassNotFrontend)]);
        }
    });
}

#[test]
fn a_syn_reusing_a_4_tuple_does_not_follow_it_to_a_terminating_backend() {
    // A client reuses its source port for a new connection while the old
    // connection's entry still names a backend that has since started
    // terminating: the SYN is a new flow and must go to a live backend.
    with_lab("synreuse", |lab| {
        for v6 in BOTH {
            let mut svc = spread_service(v6, 2);
            lab.apply(&[svc.clone()]);
            let a = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
            let b = SocketAddr::new(pod(2, 1, v6), TARGET_PORT);
            let port = port_for(lab, v6, a);
            let s = syn(v6, port);
            let k = ack(v6, port);
            lab.check(&[
                Case::of(format!("{} SYN to A", fam(v6)), &s).tx(&geneve_dsr(1, v6, &s, 80, a)),
                Case::of(format!("{} ACK to A (cached)", fam(v6)), &k)
                    .tx(&geneve_dsr(1, v6, &k, 80, a)),
            ]);
            svc.backends[0].state = BackendState::Terminating;
            lab.apply(&[svc]);
            lab.check(&[
                Case::of(format!("{} ACK stays on terminating A", fam(v6)), &k)
                    .tx(&geneve_dsr(1, v6, &k, 80, a)),
                Case::of(format!("{} SYN reusing the 4-tuple goes to B", fam(v6)), &s)
                    .tx(&geneve_dsr(2, v6, &s, 80, b)),
            ]);
        }
    });
}

/// #14: with no maglev size set, M follows the active backends (3: 457, 12:
/// 1993, lb::maglev::auto_size), so the table moves between the size-class
/// maps: the new one is written first, the frontend then names the new M,
/// then the old entry goes. An established flow keeps its backend through
/// the connection table; new flows follow the new table; and a table left
/// in xlb_maglev by an agent from before the classes serves new flows until
/// the next apply moves it into its class's map.
#[test]
fn a_table_moves_between_size_classes_without_moving_flows() {
    with_lab("mclass", |lab| {
        for v6 in BOTH {
            let name = format!("spread-{}", fam(v6));
            let mut svc = spread_service(v6, 3);
            svc.maglev_size = lb::model::MAGLEV_SIZE_AUTO;
            lab.apply(&[svc.clone()]);
            let id = lab.listing(&name).id;
            assert_eq!(lab.listing(&name).maglev_size, 457);
            let s = syn(v6, 46000);
            let (want, ep) = lab.expect_dsr(&s, 80);
            lab.check(&[Case::of(format!("{} SYN at M = 457", fam(v6)), &s).tx(&want)]);

            svc.backends = (1..=3)
                .flat_map(|n| (1..=4).map(move |m| backend(pod(n, m, v6), node(n, v6))))
                .collect();
            lab.apply(&[svc.clone()]);
            let l = lab.listing(&name);
            assert_eq!((l.maglev_size, l.table_size), (1993, 1993), "{name}");
            let maps = lab.path.maps();
            let in_class = |i: usize| {
                let mut v = vec![0u8; maps.maglev_classes[i].value_size()];
                maps.maglev_classes[i].lookup(&id.to_ne_bytes(), &mut v).unwrap()
            };
            assert!(
                !in_class(1) && in_class(3),
                "{name}: the 457 entry goes, the 1993 one is there"
            );

            let k = ack(v6, 46000);
            let n = node_index(svc.backends.iter().find(|b| b.addr == ep.ip()).unwrap().node);
            let mut cases = vec![Case::of(format!("{} ACK keeps its backend", fam(v6)), &k)
                .tx(&geneve_dsr(n, v6, &k, 80, ep))];
            for p in 46100..46150 {
                let s = syn(v6, p);
                cases.push(
                    Case::of(format!("{} SYN {p} at M = 1993", fam(v6)), &s)
                        .tx(&lab.expect_dsr(&s, 80).0),
                );
            }
            lab.check(&cases);

            // An older agent's table: in xlb_maglev, not in the class map.
            let table = lab.path.store().maglev(id, 1993).unwrap().unwrap();
            let mut legacy = abi::MaglevTable { slot: [0; abi::MAGLEV_MAX], pad: 0 };
            legacy.slot[..1993].copy_from_slice(&table);
            let maps = lab.path.maps();
            let mut big: lb::maps::Hash<u32, abi::MaglevTable> =
                aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
                    aya::maps::MapData::from_pin(lab.path.pin_dir().join("xlb_maglev")).unwrap(),
                ))
                .unwrap();
            big.insert(id, legacy, 0).unwrap();
            maps.maglev_classes[3].delete(&id.to_ne_bytes()).unwrap();
            let s = syn(v6, 46200);
            let want = lab.expect_dsr(&s, 80).0;
            lab.check(&[Case::of(format!("{} SYN from the old map", fam(v6)), &s).tx(&want)]);
            // A resync re-reads the maps: the table is rewritten in its class.
            let node = NodeConfig { tunnel_v4: Some(LB_V4), tunnel_v6: Some(LB_V6) };
            lab.path.resync(&Desired::new(node, [svc.clone()])).unwrap();
            let maps = lab.path.maps();
            let mut v = vec![0u8; maps.maglev_classes[3].value_size()];
            assert!(maps.maglev_classes[3].lookup(&id.to_ne_bytes(), &mut v).unwrap());
            assert!(maps.maglev.get(&id, 0).is_err(), "{name}: the old map's entry is removed");
            let s = syn(v6, 46300);
            let want = lab.expect_dsr(&s, 80).0;
            lab.check(&[Case::of(format!("{} SYN after the move", fam(v6)), &s).tx(&want)]);
        }
    });
}

/// xlb_ct entries, counted.
fn ct_entries(lab: &Lab) -> usize {
    let mut n = 0;
    lab.path
        .store()
        .connections(&mut |_, _| {
            n += 1;
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    n
}

/// #14 item 2, the flood guard: beyond the per-CPU insert budget new flows
/// are served by Maglev alone (every packet where the table says) and write
/// no connection-table entry, so a flood of new flows cannot evict the
/// established ones; the flows served without an entry are counted.
#[test]
fn a_new_flow_flood_beyond_the_budget_writes_no_entries() {
    with_lab_loaded(
        "ctguard",
        // 10 entries a second per CPU, bursts of one.
        |o| o.ct_insert_rate = 10,
        |lab| {
            lab.apply(&[spread_service(false, 3)]);
            let est = syn(false, 20000);
            let (want, _) = lab.expect_dsr(&est, 80);
            lab.check(&[Case::of("the established flow's SYN", &est).tx(&want)]);
            assert_eq!(ct_entries(lab), 1, "the established flow has its entry");

            let started = std::time::Instant::now();
            lab.check(&maglev_syns(lab, 21000..23000, "flood SYN"));
            // A token every 100 ms per CPU (the bucket is per CPU and the
            // thread may move, each CPU starting with one): the flood got at
            // most that many entries.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let refills = cpus * ((started.elapsed().as_millis() / 100) as usize + 1);
            let g = lab.path.store().ct_guard().unwrap();
            assert!(g.skipped >= 2000 - refills as u64, "{g:?} ({refills} refills)");
            assert_eq!(g.inserted + g.skipped, 2001, "every new flow counted once: {g:?}");
            assert!(ct_entries(lab) <= 1 + refills, "{} entries", ct_entries(lab));
            let listing = lab.listing("spread-v4");
            assert_eq!(listing.new_flows, 2001, "all served as new flows");
        },
    );
}

/// #14 item 4: beyond the insert budget a new flow does not fill the XDP
/// flow cache either (a flood would overwrite established flows' slots with
/// flows that never come back): its next packet takes xlb_select again
/// (counted as a new flow again) and Maglev sends it to the same backend.
#[test]
fn a_flow_served_past_the_budget_does_not_fill_the_flow_cache() {
    with_lab_loaded(
        "ctnofill",
        |o| o.ct_insert_rate = 10,
        |lab| {
            lab.apply(&[spread_service(false, 3)]);
            // Spend every CPU's bucket (each starts with a token).
            lab.check(&maglev_syns(lab, 21000..21100, "SYN"));
            // A token comes back every 100 ms per CPU: a flow that got one
            // anyway is cached as before; take the next port then.
            let mut unpinned = None;
            for p in 22000..22100u16 {
                let n0 = lab.listing("spread-v4").new_flows;
                let s = syn(false, p);
                let (want, _) = lab.expect_dsr(&s, 80);
                lab.check(&[Case::of(format!("SYN from port {p}"), &s).tx(&want)]);
                if ct_way_of(lab, &flow_key(false, p)).is_none() {
                    unpinned = Some((p, n0));
                    break;
                }
            }
            let (p, n0) = unpinned.expect("a SYN past the budget within 100 tries");
            let a = ack(false, p);
            let (want, _) = lab.expect_dsr(&a, 80);
            lab.check(&[Case::of("its ACK: the same backend", &a).tx(&want)]);
            if ct_way_of(lab, &flow_key(false, p)).is_none() {
                assert_eq!(
                    lab.listing("spread-v4").new_flows,
                    n0 + 2,
                    "the ACK took xlb_select again (not served by the flow cache)"
                );
            }
        },
    );
}

/// #14 item 4, tags: a lookup reads only the ways whose tag
/// (xlb_ct_tags) matches the flow's. The SYN's insert writes its way's tag;
/// with that tag cleared the flow's next packet reads as a miss (Maglev
/// picks the same backend) and its insert writes the tag again, in the
/// same way. The agent's CtTable::insert writes tags the program finds.
#[test]
fn a_connection_table_way_is_found_through_its_tag() {
    with_lab("cttags", |lab| {
        for v6 in BOTH {
            let name = format!("spread-{}", fam(v6));
            lab.apply(&[spread_service(v6, 3)]);
            let (a, port) = syn_to_a(lab, v6);
            let key = flow_key(v6, port);
            let tag = abi::ct_tag(abi::flow_hash(&key));
            let (set, way, _) = ct_way_of(lab, &key).expect("the SYN's way");
            let ct = &lab.path.maps().ct;
            let tags = ct.read_tags(set).unwrap();
            assert_eq!(tags.tag[way], tag, "{}: the insert wrote the way's tag", fam(v6));
            assert_eq!(
                tags,
                lb::maps::CtTable::tags_of(&ct.read_set(set).unwrap()),
                "{}: the set's tags are its ways' tags",
                fam(v6)
            );
            let mut cleared = tags;
            cleared.tag[way] = 0;
            ct.write_tags(set, &cleared).unwrap();
            bump_config_gen(lab);
            let n0 = lab.listing(&name).new_flows;
            let k = ack(v6, port);
            lab.check(&[Case::of(format!("{} ACK with its tag cleared", fam(v6)), &k)
                .tx(&geneve_dsr(1, v6, &k, 80, a))]);
            assert_eq!(lab.listing(&name).new_flows, n0 + 1, "{}: read as a miss", fam(v6));
            assert_eq!(ct_way_of(lab, &key).map(|w| (w.0, w.1)), Some((set, way)), "same way");
            let ct = &lab.path.maps().ct;
            assert_eq!(ct.read_tags(set).unwrap().tag[way], tag, "{}: tag written again", fam(v6));

            // The agent's insert: a flow pinned to B by user space is
            // found by the program (B, not Maglev's A) through its tag.
            let l = lab.listing(&name);
            let b = l.backends.iter().find(|b| b.addr == pod(2, 1, v6)).expect("backend B");
            let p2 = (port + 1..31000)
                .find(|&p| lab.expect_dsr(&syn(v6, p), 80).1 == a)
                .expect("a second client port Maglev maps to A");
            let key2 = flow_key(v6, p2);
            let e =
                abi::CtEntry::to(l.id, b.id, lab.path.maps().backends.get(&b.id, 0).unwrap().gen);
            let (set2, way2) = lab.path.maps().ct.insert(&key2, e).unwrap();
            assert_eq!(
                lab.path.maps().ct.read_tags(set2).unwrap().tag[way2],
                abi::ct_tag(abi::flow_hash(&key2))
            );
            bump_config_gen(lab);
            let bb = SocketAddr::new(pod(2, 1, v6), TARGET_PORT);
            let k2 = ack(v6, p2);
            lab.check(&[Case::of(format!("{} ACK of a flow the agent wrote", fam(v6)), &k2)
                .tx(&geneve_dsr(2, v6, &k2, 80, bb))]);
        }
    });
}

/// The connection-table key of the test client's TCP flow to VIP:80.
fn flow_key(v6: bool, sport: u16) -> abi::FlowKey {
    abi::FlowKey::of(client(v6), sport, vip(v6), 80, 6)
}

/// IPv4 SYNs from each client port of `ports`, each expected to reach the
/// endpoint Maglev picks for it (Geneve DSR to its node).
fn maglev_syns(lab: &Lab, ports: std::ops::Range<u16>, what: &str) -> Vec<Case> {
    ports
        .map(|p| {
            let s = syn(false, p);
            let (want, _) = lab.expect_dsr(&s, 80);
            Case::of(format!("{what} from port {p}"), &s).tx(&want)
        })
        .collect()
}

/// Sends the SYN of a flow that Maglev gives to A (pod 1 on node 1) and
/// checks it reaches A; returns A and the flow's client port.
fn syn_to_a(lab: &mut Lab, v6: bool) -> (SocketAddr, u16) {
    let a = SocketAddr::new(pod(1, 1, v6), TARGET_PORT);
    let port = port_for(lab, v6, a);
    let s = syn(v6, port);
    lab.check(&[Case::of(format!("{} SYN to A", fam(v6)), &s).tx(&geneve_dsr(1, v6, &s, 80, a))]);
    (a, port)
}

/// (set, way) of `key` in xlb_ct, whether valid or not.
fn ct_way_of(lab: &Lab, key: &abi::FlowKey) -> Option<(u32, usize, abi::CtWay)> {
    let ct = &lab.path.maps().ct;
    let set = ct.set_of(abi::flow_hash(key));
    let s = ct.read_set(set).unwrap_or_else(|e| panic!("xlb_ct[{set}]: {e}"));
    s.way.iter().position(|w| w.key == *key).map(|i| (set, i, s.way[i]))
}

/// Ends every flow-cache entry (as the agent's configuration bump does), so
/// the next packet of each flow takes xlb_select and its xlb_ct lookup, as
/// it does once a second in production (XLB_FC_TTL_JIFFIES).
fn bump_config_gen(lab: &mut Lab) {
    lab.path.store_mut().write(lb::store::Write::ConfigGenBump).expect("xlb_config_gen bump");
}

/// #14 item 1, torn ways: the set-associative table is written without
/// locks, so a reader may meet a way half written by another CPU (here: a
/// way corrupted from user space, its backend id from one write and its
/// check word from another). It must read as a miss (Maglev picks again,
/// the same backend), never as the half-written backend, and the new-flow
/// insert rewrites that same way whole.
#[test]
fn a_torn_connection_table_way_reads_as_a_miss_and_is_replaced() {
    with_lab("cttorn", |lab| {
        for v6 in BOTH {
            let name = format!("spread-{}", fam(v6));
            lab.apply(&[spread_service(v6, 3)]);
            let (a, port) = syn_to_a(lab, v6);
            let key = flow_key(v6, port);
            let (set, way, good) = ct_way_of(lab, &key).expect("the SYN's way");
            assert!(good.valid(), "{}: a whole way after the SYN: {good:?}", fam(v6));
            let l = lab.listing(&name);
            let b_id = l.backends.iter().find(|b| b.addr == pod(2, 1, v6)).expect("backend B").id;
            for (what, torn) in [
                ("backend id of another write", abi::CtEntry { backend_id: b_id, ..good.e }),
                ("check word of another write", abi::CtEntry { check: good.e.check ^ 2, ..good.e }),
            ] {
                let ct = &lab.path.maps().ct;
                let mut st = ct.read_set(set).unwrap();
                st.way[way].e = torn;
                ct.write_set(set, &st).unwrap();
                assert!(!st.way[way].valid(), "{what}: the mirror sees it torn too");
                bump_config_gen(lab);
                let n0 = lab.listing(&name).new_flows;
                let k = ack(v6, port);
                lab.check(&[Case::of(format!("{} ACK over a way with the {what}", fam(v6)), &k)
                    .tx(&geneve_dsr(1, v6, &k, 80, a))]);
                assert_eq!(lab.listing(&name).new_flows, n0 + 1, "{what}: read as a miss");
                let (set2, way2, now) = ct_way_of(lab, &key).expect("the flow's way");
                assert_eq!((set2, way2), (set, way), "{what}: replaced in place");
                assert!(now.valid(), "{what}: whole again: {now:?}");
                assert_eq!(now.e.backend_id, good.e.backend_id, "{what}: A again");
            }
        }
    });
}

/// #14 item 1, recency: established flows keep their connection-table ways
/// (and so their backends across a Maglev change) through a flood of new
/// flows that overfills the table many times, because their packets
/// refresh the ways' stamps and mark them hit, and eviction takes the
/// oldest way never seen again (not hit) first, the oldest hit way last.
/// The flood is spread evenly (at most 2 new flows per set between two
/// refreshes, so the outcome does not depend on chance). Without refreshes
/// the same flood still keeps them (hit ways go only when all 4 ways of a
/// set are hit) and evicts flows seen once (a SYN only).
#[test]
fn established_flows_keep_their_backends_across_a_flood_that_overfills_the_table() {
    const SETS: u32 = 64;
    with_lab_loaded(
        "ctflood",
        |o| {
            o.sizes.ct = SETS * abi::CT_WAYS;
            o.ct_insert_rate = 0;
        },
        |lab| {
            for v6 in BOTH {
                let mut svc = spread_service(v6, 3);
                lab.apply(&[svc.clone()]);
                let ct_set =
                    |lab: &Lab, p: u16| lab.path.maps().ct.set_of(abi::flow_hash(&flow_key(v6, p)));
                // 32 established flows, one per set.
                let mut used = std::collections::BTreeSet::new();
                let est: Vec<u16> =
                    (20000..30000u16).filter(|&p| used.insert(ct_set(lab, p))).take(32).collect();
                // flow -> (backend, its node's index) as Maglev picked it.
                let mut backend_of = BTreeMap::new();
                for &p in &est {
                    let h = flow_hash(client(v6), vip(v6), p, 80, 6);
                    let (ep, node) = lab.maglev_pick(vip(v6), 80, Proto::Tcp, h);
                    let s = syn(v6, p);
                    lab.check(&[Case::of(format!("{} SYN {p}", fam(v6)), &s).tx(&geneve_dsr(
                        node_index(node),
                        v6,
                        &s,
                        80,
                        ep,
                    ))]);
                    backend_of.insert(p, (ep, node_index(node)));
                }
                let mut next = 30000u16;
                let mut flood = |lab: &mut Lab| {
                    // Two new flows per set, in every set.
                    let mut per_set = [0u8; SETS as usize];
                    let mut n = 0;
                    while n < 2 * SETS {
                        let p = next;
                        next += 1;
                        let set = ct_set(lab, p) as usize;
                        if per_set[set] == 2 {
                            continue;
                        }
                        per_set[set] += 1;
                        n += 1;
                        let (verdict, _) = lab.run(&syn(v6, p).build());
                        assert_eq!(verdict, XDP_TX, "flood SYN {p}");
                    }
                };
                // Every established flow's ACK, after the flow cache ends
                // (their ways' stamps are refreshed), to its first backend.
                let keepalive = |lab: &mut Lab| {
                    bump_config_gen(lab);
                    for (p, (ep, ni)) in &backend_of {
                        let k = ack(v6, *p);
                        let (verdict, out) = lab.run(&k.build());
                        assert_eq!(verdict, XDP_TX, "{} ACK {p}", fam(v6));
                        let want = geneve_dsr(*ni, v6, &k, 80, *ep).build();
                        assert!(out == want, "{} ACK {p} left {ep}", fam(v6));
                    }
                };
                // 8 rounds of 2 per set: 4x the table's capacity.
                let name = format!("spread-{}", fam(v6));
                let n0 = lab.listing(&name).new_flows;
                for _ in 0..8 {
                    // Past XLB_CT_REFRESH_JIFFIES (32 ticks: 128 ms at HZ 250).
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    keepalive(lab);
                    flood(lab);
                }
                let flooded = lab.listing(&name).new_flows - n0;
                assert_eq!(flooded, 8 * 2 * u64::from(SETS), "{}: only the flood was new", fam(v6));
                for &p in &est {
                    let (_, _, w) = ct_way_of(lab, &flow_key(v6, p)).expect("the way survives");
                    assert!(w.valid(), "{} flow {p}: {w:?}", fam(v6));
                }
                // A fourth backend moves about a quarter of Maglev's flows;
                // the established ones stay where their ways say.
                svc.backends.push(backend(pod(1, 2, v6), node(1, v6)));
                lab.apply(&[svc.clone()]);
                let mut moved = 0;
                for (p, (ep, ni)) in &backend_of {
                    let k = ack(v6, *p);
                    moved += usize::from(lab.expect_dsr(&k, 80).1 != *ep);
                    lab.check(&[Case::of(format!("{} ACK {p} after the change", fam(v6)), &k)
                        .tx(&geneve_dsr(*ni, v6, &k, 80, *ep))]);
                }
                assert!(moved > 0, "{}: some flow would have moved without its way", fam(v6));

                // Flows seen once (a SYN, nothing since), one in each of
                // 16 other sets, as a flood's SYNs from spoofed sources.
                let once: Vec<u16> =
                    (10000..20000u16).filter(|&p| used.insert(ct_set(lab, p))).take(16).collect();
                std::thread::sleep(std::time::Duration::from_millis(20));
                for &p in &once {
                    let (verdict, _) = lab.run(&syn(v6, p).build());
                    assert_eq!(verdict, XDP_TX, "{} SYN {p} (seen once)", fam(v6));
                    let (_, _, w) = ct_way_of(lab, &flow_key(v6, p)).expect("its way");
                    assert_eq!(
                        w.e.stamp & abi::CT_HIT,
                        0,
                        "{} {p}: not hit after its SYN",
                        fam(v6)
                    );
                }
                for &p in &est {
                    let (_, _, w) = ct_way_of(lab, &flow_key(v6, p)).expect("the way");
                    assert_ne!(w.e.stamp & abi::CT_HIT, 0, "{} {p}: hit (seen again)", fam(v6));
                }

                // The same flood without refreshes: 4 new flows per set,
                // where every set holds 3 or 4 flood ways (never hit). The
                // established flows (hit: seen after their insert) are
                // never the victim while an unhit way is there, however
                // old their stamps; the flows seen once are (the oldest
                // unhit way once the older flood ways are gone).
                for _ in 0..2 {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    flood(lab);
                }
                for &p in &est {
                    let (_, _, w) = ct_way_of(lab, &flow_key(v6, p))
                        .unwrap_or_else(|| panic!("{} {p}: a hit way outlives the flood", fam(v6)));
                    assert!(w.valid(), "{} flow {p}: {w:?}", fam(v6));
                }
                let left =
                    once.iter().filter(|&&p| ct_way_of(lab, &flow_key(v6, p)).is_some()).count();
                assert_eq!(left, 0, "{}: without a second packet the flood evicts them", fam(v6));

                // A set whose 4 ways are all hit gives up the oldest: three
                // more flows in the first established flow's set, each a
                // SYN and an ACK (the flow cache serves the ACK and marks
                // the way hit, xlb_ct_seen_again; the lookup would too),
                // then one new flow in that set.
                let (p0, set0) = (est[0], ct_set(lab, est[0]));
                let same: Vec<u16> =
                    (next..u16::MAX).filter(|&p| ct_set(lab, p) == set0).take(4).collect();
                let (hit, p) = (&same[..3], same[3]);
                for &p in hit {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let (verdict, _) = lab.run(&syn(v6, p).build());
                    assert_eq!(verdict, XDP_TX, "{} SYN {p}", fam(v6));
                    let (verdict, _) = lab.run(&ack(v6, p).build());
                    assert_eq!(verdict, XDP_TX, "{} ACK {p}", fam(v6));
                    let (_, _, w) = ct_way_of(lab, &flow_key(v6, p)).expect("its way");
                    assert_ne!(w.e.stamp & abi::CT_HIT, 0, "{} {p}: hit by its ACK", fam(v6));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                let (verdict, _) = lab.run(&syn(v6, p).build());
                assert_eq!(verdict, XDP_TX, "{} SYN {p}", fam(v6));
                assert!(ct_way_of(lab, &flow_key(v6, p)).is_some(), "{} {p} inserted", fam(v6));
                assert!(
                    ct_way_of(lab, &flow_key(v6, p0)).is_none(),
                    "{}: the oldest hit way went",
                    fam(v6)
                );
                for &p in hit {
                    assert!(ct_way_of(lab, &flow_key(v6, p)).is_some(), "{} {p}: kept", fam(v6));
                }
            }
        },
    );
}

/// A service of 21 backends: indexes 0..16 resolve through
/// xlb_svc_backend_ids, the hash xlb_svc_backends holds every index. With
/// the array wiped (what an agent from before it reads and leaves) the same
/// backends are served, and a resync fills it again. Then a rollback's
/// churn: an older agent (hash only) swapped indexes 0 and 1, the array
/// still names them the other way round; the next agent's restore (before
/// its programs would attach) rewrites the array from the hash and packets
/// go where the hash says.
#[test]
fn indexes_resolve_through_the_id_array_the_hash_and_an_older_agents_hash() {
    with_lab("svcids", |lab| {
        for v6 in BOTH {
            let name = format!("spread-{}", fam(v6));
            let mut svc = spread_service(v6, 3);
            svc.backends = (1..=3)
                .flat_map(|n| (1..=7).map(move |m| backend(pod(n, m, v6), node(n, v6))))
                .collect();
            lab.apply(&[svc.clone()]);
            let l = lab.listing(&name);
            let index_of: BTreeMap<SocketAddr, u32> =
                l.backends.iter().map(|b| (SocketAddr::new(b.addr, b.port), b.index)).collect();
            assert_eq!(index_of.values().max(), Some(&20), "{name}");
            let syns = |lab: &mut Lab, from: u16, what: &str| {
                syns_to_indexes(lab, v6, &index_of, from, what)
            };
            // The service's entries: as XDP resolves them, and in the hash.
            let resolved = |lab: &Lab| -> Vec<(abi::SvcBackendKey, u32)> {
                let e = lab.path.maps().svc_backend_entries().unwrap();
                e.into_iter().filter(|(k, _)| k.svc_id == l.id).collect()
            };
            let hashed = |lab: &Lab| -> Vec<(abi::SvcBackendKey, u32)> {
                let mut e = lab.path.maps().svc_backends_all().unwrap();
                e.retain(|(k, _)| k.svc_id == l.id);
                e.sort_unstable_by_key(|(k, _)| k.index);
                e
            };
            let entries = resolved(lab);
            assert_eq!(hashed(lab), entries, "{name}: the hash holds every index");
            let hit = syns(lab, 47000, "(array and hash)");
            assert!(
                hit.iter().any(|&i| i < abi::SVC_IDS) && hit.iter().any(|&i| i >= abi::SVC_IDS),
                "{name}: flows reached indexes {hit:?}"
            );

            // An older agent's maps: every index in xlb_svc_backends only.
            let maps = lab.path.maps();
            let ids = maps.svc_backend_ids.as_ref().expect("xlb_svc_backend_ids");
            ids.update(&l.id.to_ne_bytes(), &[0u8; 64]).unwrap();
            assert_eq!(resolved(lab), entries, "{name}: same resolution");
            syns(lab, 47200, "(older agent's hash)");

            // A resync re-reads the maps and fills the array again.
            let node = NodeConfig { tunnel_v4: Some(LB_V4), tunnel_v6: Some(LB_V6) };
            lab.path.resync(&Desired::new(node.clone(), [svc.clone()])).unwrap();
            let maps = lab.path.maps();
            assert_eq!(maps.svc_ids(l.id).unwrap().id.iter().filter(|&&id| id != 0).count(), 16);
            assert_eq!(resolved(lab), entries, "{name}: same resolution");
            assert_eq!(hashed(lab), entries, "{name}: the hash untouched");
            syns(lab, 47400, "(filled again)");

            // A rollback's churn: the older agent gave index 0 the backend
            // of index 1 and the other way round (the hash only).
            let mut hash: lb::maps::Hash<abi::SvcBackendKey, u32> =
                aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
                    aya::maps::MapData::from_pin(lab.path.pin_dir().join("xlb_svc_backends"))
                        .unwrap(),
                ))
                .unwrap();
            let (k0, a) = entries[0];
            let (k1, b) = entries[1];
            assert_eq!((k0.index, k1.index), (0, 1));
            hash.insert(k0, b, 0).unwrap();
            hash.insert(k1, a, 0).unwrap();
            let stale = resolved(lab);
            assert_eq!((stale[0].1, stale[1].1), (a, b), "{name}: XDP would follow stale words");
            // The next agent restores: the hash wins, the array follows it
            // before the restore returns.
            let pin = lab.path.pin_dir().to_path_buf();
            lab.path = lb::datapath::Datapath::open(&pin).unwrap();
            let now = resolved(lab);
            assert_eq!((now[0].1, now[1].1), (b, a), "{name}");
            assert_eq!(now, hashed(lab), "{name}: no stale word left for XDP");
            assert_eq!(lab.path.maps().svc_ids(l.id).unwrap().id[..2], [b, a]);
            let index_of: BTreeMap<SocketAddr, u32> = lab
                .listing(&name)
                .backends
                .iter()
                .map(|b| (SocketAddr::new(b.addr, b.port), b.index))
                .collect();
            let syns = |lab: &mut Lab, from: u16, what: &str| {
                syns_to_indexes(lab, v6, &index_of, from, what)
            };
            let hit = syns(lab, 47600, "(rolled forward)");
            assert!(hit.contains(&0) && hit.contains(&1), "{name}: flows reached {hit:?}");
            lab.path.resync(&Desired::new(node, [svc.clone()])).unwrap();
            assert_eq!(resolved(lab), hashed(lab), "{name}");
            syns(lab, 47800, "(applied)");
        }
    });
}

/// 200 SYNs from ports `from..`, each checked against the DSR frame the
/// listing predicts; the service-local indexes they reached.
fn syns_to_indexes(
    lab: &mut Lab,
    v6: bool,
    index_of: &BTreeMap<SocketAddr, u32>,
    from: u16,
    what: &str,
) -> std::collections::BTreeSet<u32> {
    let mut indexes = std::collections::BTreeSet::new();
    let mut cases = Vec::new();
    for p in from..from + 200 {
        let s = syn(v6, p);
        let (want, ep) = lab.expect_dsr(&s, 80);
        indexes.insert(index_of[&ep]);
        cases.push(Case::of(format!("{} SYN {p} {what}", fam(v6)), &s).tx(&want));
    }
    lab.check(&cases);
    indexes
}
