//! Katran (Meta's XDP L4 load balancer) as a rival, the parts that need no
//! Katran source: its map layouts as our own `repr(C)` types, written from
//! reading katran/lib/bpf/balancer_structs.h and balancer_maps.h (aya checks
//! every key and value size against the compiled object's maps when a map
//! is opened, so a drifted layout fails loudly), the plan that turns xlb's
//! desired state into Katran's VIPs, reals and consistent-hash rings, and the
//! check that a forwarded frame is IP-in-IP to the real's host. The
//! benchmark that builds, loads and times Katran's object is
//! perf/src/katran_bench.rs.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, ensure, Context, Result};
use lb::{maglev::Maglev, model::Desired};

/// Entries of one VIP's consistent-hash ring (Katran's compile-time
/// RING_SIZE, balancer_consts.h): VIP `n` owns ch_rings[n·RING_SIZE ..].
pub const RING_SIZE: u32 = 65537;
/// Katran's vip_map capacity (MAX_VIPS).
pub const MAX_VIPS: u32 = 512;
/// Katran's reals array capacity (MAX_REALS); real id 0 is never used.
pub const MAX_REALS: u32 = 4096;
/// ctl_array slot of the gateway's MAC (mac_addr_pos in balancer.bpf.c).
pub const CTL_MAC_POS: u32 = 0;
/// real_definition.flags: the real is an IPv6 host (IP6-in-IP6).
pub const F_IPV6: u8 = 1;

/// struct vip_definition: destination address (IPv4 in the first four
/// bytes, the rest zero), port and protocol, as the program builds its key
/// from a zeroed struct (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

/// struct vip_meta.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// F_* VIP flags (0: hash the 5-tuple, connection table on).
    pub flags: u32,
    /// Index of the VIP's ring in ch_rings, and of its stats slot.
    pub vip_num: u32,
}

/// struct real_definition: the real's host address (IPIP outer destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealDef {
    pub addr: [u8; 16],
    pub flags: u8,
    pub pad: [u8; 3],
}

/// struct ctl_value: a MAC in the first six bytes (or an ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtlValue {
    pub bytes: [u8; 8],
}

/// struct flow_key (the connection table's key): 16 + 16 + 4 + 1, padded.
pub const FLOW_KEY_SIZE: u32 = 40;
/// struct real_pos_lru (the connection table's value): u32 + pad + u64.
pub const REAL_POS_LRU_SIZE: u32 = 16;

const _: () = assert!(size_of::<VipKey>() == 20);
const _: () = assert!(size_of::<VipMeta>() == 8);
const _: () = assert!(size_of::<RealDef>() == 20);
const _: () = assert!(size_of::<CtlValue>() == 8);

// SAFETY: plain repr(C) integers and byte arrays, no implicit padding (the
// sizes are asserted above), so any bit pattern is a valid value.
unsafe impl aya::Pod for VipKey {}
// SAFETY: as above.
unsafe impl aya::Pod for VipMeta {}
// SAFETY: as above.
unsafe impl aya::Pod for RealDef {}
// SAFETY: as above.
unsafe impl aya::Pod for CtlValue {}

fn addr16(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

impl VipKey {
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> VipKey {
        VipKey { addr: addr16(addr), port: port.to_be_bytes(), proto, pad: 0 }
    }
}

impl RealDef {
    pub fn new(host: IpAddr) -> RealDef {
        RealDef { addr: addr16(host), flags: if host.is_ipv6() { F_IPV6 } else { 0 }, pad: [0; 3] }
    }
}

impl CtlValue {
    pub fn mac(mac: [u8; 6]) -> CtlValue {
        let mut bytes = [0u8; 8];
        bytes[..6].copy_from_slice(&mac);
        CtlValue { bytes }
    }
}

/// One VIP as Katran holds it.
#[derive(Clone, Debug)]
pub struct VipPlan {
    pub key: VipKey,
    pub meta: VipMeta,
    /// RING_SIZE real ids: ch_rings[meta.vip_num · RING_SIZE + i].
    pub ring: Vec<u32>,
}

/// Katran's maps for a desired state: one VIP per frontend (its number in
/// order), one real per backend (ids from 1, each pointing at the backend's
/// node: Katran encapsulates to the host, as xlb's IPIP mode does), each
/// VIP's ring filled by xlb's own Maglev over its backends (RING_SIZE is
/// prime), so both balancers spread flows over the same backends.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub vips: Vec<VipPlan>,
    /// reals[id]; reals[0] is the unused id 0.
    pub reals: Vec<RealDef>,
}

impl Plan {
    pub fn from_desired(d: &Desired) -> Result<Plan> {
        let maglev = Maglev::new(RING_SIZE).context("Katran's ring size as a Maglev table")?;
        let mut plan = Plan { vips: Vec::new(), reals: vec![RealDef::default()] };
        for svc in d.services.values() {
            ensure!(!svc.backends.is_empty(), "service {}: no backends", svc.key);
            let first = plan.reals.len() as u32;
            plan.reals.extend(svc.backends.iter().map(|b| RealDef::new(b.node)));
            let named: Vec<(&str, u32)> =
                svc.backends.iter().map(|b| (&*b.name, b.weight)).collect();
            let table = maglev
                .build(&named)
                .with_context(|| format!("service {}: Maglev table", svc.key))?;
            let ring: Vec<u32> = table.iter().map(|&i| first + u32::from(i)).collect();
            for fe in &svc.frontends {
                let vip_num = plan.vips.len() as u32;
                plan.vips.push(VipPlan {
                    key: VipKey::new(fe.addr, fe.port, fe.proto.number()),
                    meta: VipMeta { flags: 0, vip_num },
                    ring: ring.clone(),
                });
            }
        }
        ensure!(
            plan.vips.len() as u32 <= MAX_VIPS,
            "{} VIPs: Katran holds {MAX_VIPS}",
            plan.vips.len()
        );
        ensure!(
            plan.reals.len() as u32 <= MAX_REALS,
            "{} reals: Katran holds {}",
            plan.reals.len() - 1,
            MAX_REALS - 1
        );
        Ok(plan)
    }

    /// Entries ch_rings needs: RING_SIZE per VIP.
    pub fn ring_entries(&self) -> u32 {
        RING_SIZE * (self.vips.len() as u32).max(1)
    }
}

/// The outer destination of `output` if it is `input`'s IP packet carried
/// in IP-in-IP (IPv4, protocol 4) or IP6-in-IP6 (next header 41) behind a
/// new Ethernet header; an error saying what differs otherwise.
pub fn ipip_outer_dst(input: &[u8], output: &[u8]) -> Result<IpAddr> {
    const ETH: usize = 14;
    ensure!(input.len() > ETH && output.len() > ETH, "frames shorter than Ethernet");
    let (outer_len, dst) = match u16::from_be_bytes([output[12], output[13]]) {
        0x0800 => {
            let ihl = usize::from(output[ETH] & 0x0f) * 4;
            ensure!(output.len() >= ETH + ihl, "truncated outer IPv4 header");
            ensure!(output[ETH + 9] == 4, "outer IPv4 protocol {}, not IPIP (4)", output[ETH + 9]);
            let d: [u8; 4] = output[ETH + 16..ETH + 20].try_into().expect("4 bytes");
            (ihl, IpAddr::V4(Ipv4Addr::from(d)))
        }
        0x86dd => {
            ensure!(output.len() >= ETH + 40, "truncated outer IPv6 header");
            ensure!(
                output[ETH + 6] == 41,
                "outer IPv6 next header {}, not IPv6-in-IPv6 (41)",
                output[ETH + 6]
            );
            let d: [u8; 16] = output[ETH + 24..ETH + 40].try_into().expect("16 bytes");
            (40, IpAddr::V6(Ipv6Addr::from(d)))
        }
        t => bail!("outer ethertype {t:#06x}, not IP"),
    };
    let inner = &output[ETH + outer_len..];
    ensure!(
        inner == &input[ETH..],
        "the inner packet is not the frame's IP packet ({} bytes vs {})",
        inner.len(),
        input.len() - ETH
    );
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb::model::{Backend, BackendState, Frontend, FrontendKind, Proto, Service, ServiceKey};

    fn service(name: &str, vip: &str, port: u16, proto: Proto, nodes: &[&str]) -> Service {
        let mut s = Service::new(ServiceKey::new("t", name, ""));
        s.frontends.push(Frontend {
            addr: vip.parse().unwrap(),
            port,
            proto,
            kind: FrontendKind::LoadBalancer,
        });
        s.backends = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Backend {
                name: format!("{name}-{i}").into(),
                addr: n.parse().unwrap(),
                port,
                node: n.parse().unwrap(),
                weight: 1,
                state: BackendState::Active,
            })
            .collect();
        s
    }

    fn desired(svcs: Vec<Service>) -> Desired {
        let mut d = Desired::default();
        for s in svcs {
            d.services.insert(s.key.clone(), s);
        }
        d
    }

    #[test]
    fn keys_are_network_order_and_zero_padded() {
        let k = VipKey::new("10.100.0.1".parse().unwrap(), 80, 6);
        let mut want = [0u8; 20];
        want[..4].copy_from_slice(&[10, 100, 0, 1]);
        want[16..19].copy_from_slice(&[0, 80, 6]);
        // SAFETY: VipKey is 20 bytes of plain data (asserted).
        let got: [u8; 20] = unsafe { std::mem::transmute(k) };
        assert_eq!(got, want);
        let r = RealDef::new("2001:db8::1".parse().unwrap());
        assert_eq!(r.flags, F_IPV6);
        assert_eq!(r.addr, "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(RealDef::new("10.0.0.11".parse().unwrap()).flags, 0);
        assert_eq!(CtlValue::mac([1, 2, 3, 4, 5, 6]).bytes, [1, 2, 3, 4, 5, 6, 0, 0]);
    }

    #[test]
    fn plan_numbers_vips_and_reals_and_fills_each_ring_with_its_own_reals() {
        let d = desired(vec![
            service("a", "10.100.0.1", 80, Proto::Tcp, &["10.0.0.11", "10.0.0.12", "10.0.0.13"]),
            service("b", "2001:db8:100::1", 53, Proto::Udp, &["2001:db8::11", "2001:db8::12"]),
        ]);
        let p = Plan::from_desired(&d).unwrap();
        assert_eq!(p.reals.len(), 1 + 3 + 2, "id 0 unused, then one per backend");
        assert_eq!(p.reals[0], RealDef::default());
        assert_eq!(p.vips.len(), 2);
        assert_eq!(p.ring_entries(), 2 * RING_SIZE);
        for (n, (v, ids)) in p.vips.iter().zip([1u32..4, 4..6]).enumerate() {
            assert_eq!(v.meta.vip_num, n as u32);
            assert_eq!(v.ring.len() as u32, RING_SIZE);
            let ids: Vec<u32> = ids.collect();
            for id in &ids {
                let share = v.ring.iter().filter(|r| *r == id).count() as f64;
                let fair = f64::from(RING_SIZE) / ids.len() as f64;
                assert!((share - fair).abs() <= 1.0, "real {id}: {share} slots, fair {fair}");
            }
            assert!(v.ring.iter().all(|r| ids.contains(r)), "a ring points at another VIP's real");
        }
        assert_eq!(p.vips[1].key.proto, 17);
        assert_eq!(p.vips[1].key.port, 53u16.to_be_bytes());
        assert!(p.reals[4..].iter().all(|r| r.flags == F_IPV6));
    }

    #[test]
    fn plan_refuses_a_service_without_backends() {
        let d = desired(vec![service("a", "10.100.0.1", 80, Proto::Tcp, &[])]);
        let e = Plan::from_desired(&d).unwrap_err();
        assert!(format!("{e:#}").contains("no backends"), "{e:#}");
    }

    fn frame_v4() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 16..14 + 20].copy_from_slice(&[10, 100, 0, 1]);
        f
    }

    #[test]
    fn ipip_check_takes_ipip_to_the_host_and_names_what_differs() {
        let input = frame_v4();
        let mut out = input[..14].to_vec();
        let mut outer = [0u8; 20];
        outer[0] = 0x45;
        outer[9] = 4;
        outer[16..20].copy_from_slice(&[10, 0, 0, 11]);
        out.extend_from_slice(&outer);
        out.extend_from_slice(&input[14..]);
        assert_eq!(ipip_outer_dst(&input, &out).unwrap(), "10.0.0.11".parse::<IpAddr>().unwrap());
        let mut bad = out.clone();
        bad[14 + 9] = 17;
        assert!(format!("{:#}", ipip_outer_dst(&input, &bad).unwrap_err()).contains("not IPIP"));
        let mut changed = out.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(format!("{:#}", ipip_outer_dst(&input, &changed).unwrap_err()).contains("inner"));
        assert!(ipip_outer_dst(&input, &input).is_err(), "the frame as sent is no IPIP");
    }
}
