//! Fuzz tier of the packet path (#12 item 13): mutated frames through the
//! real XDP program with BPF_PROG_TEST_RUN, every verdict judged by a parser
//! written here, independent of lb/bpf/parse.h:
//! - PASS leaves the frame untouched (no backend is local, no next hop is
//!   unresolved: nothing may be handed to the kernel rewritten);
//! - TX/REDIRECT only for a well-formed input (lengths and versions as the
//!   kernel checks them on input) addressed to a frontend address, and the
//!   output is a sane packet: an outer IPv4/IPv6 header whose lengths match
//!   the frame, a valid IPv4 header checksum, from this node to a backend
//!   node (Geneve on its UDP port with a well-formed inner packet, or IPIP),
//!   or a reply (RST / ICMP) from the frontend back to the input's source;
//! - every run is counted exactly once (the XDP hook's counters move by the
//!   number of runs).
//!
//! Seeds are valid frames of every kind the program handles; each run
//! mutates one (bytes flipped, a header field overwritten, truncated,
//! extended). Budget: XLB_FUZZ_FRAMES (default 1,000,000: the quick tier,
//! seconds); the long run is documented in the README (XLB_FUZZ_FRAMES=
//! 100000000). XLB_FUZZ_SEED replays a run (the seed is printed).
mod common;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::*;
use lb::model::Proto;
use testkit::{bench::test_run, packet::Frame};

const XDP_ABORTED: u32 = 0;
const XDP_REDIRECT: u32 = 4;
const GENEVE_PORT: u16 = 6081;
const NO_BACKEND_PORT: u16 = 81;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The frontends the lab serves: (address, port, protocol number).
fn frontends() -> HashSet<(IpAddr, u16, u8)> {
    let mut f = HashSet::new();
    for v6 in [false, true] {
        f.insert((vip(v6), 80, 6));
        f.insert((vip(v6), 53, 17));
        f.insert((vip(v6), 2905, 132));
        f.insert((vip(v6), NO_BACKEND_PORT, 6));
    }
    f
}

fn services() -> Vec<lb::model::Service> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let f = if v6 { "6" } else { "4" };
        let be = vec![backend(pod(1, 1, v6), node(1, v6)), backend(pod(2, 1, v6), node(2, v6))];
        out.push(service(&format!("tcp{f}"), vip(v6), 80, Proto::Tcp, be.clone()));
        out.push(service(&format!("udp{f}"), vip(v6), 53, Proto::Udp, be.clone()));
        out.push(service(&format!("sctp{f}"), vip(v6), 2905, Proto::Sctp, be));
        out.push(service(&format!("none{f}"), vip(v6), NO_BACKEND_PORT, Proto::Tcp, vec![]));
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    for v6 in [false, true] {
        let base = || Frame::eth(ROUTER_MAC, LB_MAC).ip(client(v6), vip(v6));
        s.push(syn(v6, CLIENT_PORT).build());
        s.push(ack(v6, CLIENT_PORT).payload(b"GET / HTTP/1.1\r\n\r\n").build());
        s.push(base().udp(CLIENT_PORT, 53).payload(b"query").build());
        s.push(base().sctp(CLIENT_PORT, 2905).payload(&[0; 16]).build());
        s.push(base().tcp(CLIENT_PORT, NO_BACKEND_PORT).syn().build());
        s.push(base().tcp(CLIENT_PORT, 8080).syn().build()); // not a frontend
        s.push(
            Frame::eth(ROUTER_MAC, LB_MAC)
                .vlan(7)
                .ip(client(v6), vip(v6))
                .tcp(4000, 80)
                .syn()
                .build(),
        );
        let router: IpAddr = if v6 { ROUTER_V6.into() } else { ROUTER_V4.into() };
        let reply = Frame::new().ip(vip(v6), client(v6)).tcp(80, CLIENT_PORT).ack();
        let icmp = Frame::eth(ROUTER_MAC, LB_MAC).ip(router, vip(v6));
        let icmp = if v6 { icmp.icmp6_packet_too_big(1280) } else { icmp.icmp4_frag_needed(1400) };
        s.push(icmp.inner(reply).build());
        // Big enough to be too big for the tunnel (ICMP too big answers).
        s.push(base().udp(CLIENT_PORT, 53).payload(&[7; 1500]).build());
    }
    s.push(
        Frame::eth(ROUTER_MAC, LB_MAC)
            .ipv4(CLIENT_V4, VIP_V4)
            .ip_id(77)
            .mf()
            .udp(CLIENT_PORT, 53)
            .payload(&[1; 64])
            .build(),
    );
    s.push(
        Frame::eth(ROUTER_MAC, LB_MAC)
            .ipv4(CLIENT_V4, VIP_V4)
            .ip_id(77)
            .frag_offset(9)
            .ip_proto(17)
            .payload(&[2; 64])
            .build(),
    );
    s.push(
        Frame::eth(ROUTER_MAC, LB_MAC)
            .ipv4(CLIENT_V4, VIP_V4)
            .ip_options(&[1, 1, 1, 0])
            .tcp(5, 80)
            .syn()
            .build(),
    );
    s
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        // Headers live in the first ~100 bytes: most mutations go there.
        let hot = f.len().clamp(1, 110);
        match rng.below(6) {
            0 | 1 => {
                let i = rng.below(hot);
                f[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(hot);
                f[i] = rng.next() as u8;
            }
            3 => {
                if f.len() >= 2 {
                    let i = rng.below(hot.min(f.len() - 1));
                    let v = match rng.below(4) {
                        0 => 0u16,
                        1 => 0xffff,
                        2 => rng.next() as u16 & 0xff,
                        _ => rng.next() as u16,
                    };
                    f[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            // Not below an Ethernet header: BPF_PROG_TEST_RUN refuses
            // shorter XDP input (EINVAL), as no NIC delivers it.
            4 => f.truncate(14 + rng.below(f.len().saturating_sub(14) + 1)),
            _ => {
                let n = rng.below(64);
                f.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    f
}

// ---- the judge: an independent parser ----

/// What a well-formed IP packet says about itself.
#[derive(Debug)]
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Destination port (TCP/UDP/SCTP of an unfragmented or first fragment).
    dport: Option<u16>,
    /// A non-first fragment (no L4 header).
    later_fragment: bool,
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn ipv4_header_ok(h: &[u8]) -> bool {
    let mut sum = 0u32;
    for i in (0..h.len()).step_by(2) {
        sum += u32::from(be16(h, i));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Ethernet (+ one VLAN tag): (EtherType, L3 offset).
fn l2(f: &[u8]) -> Option<(u16, usize)> {
    if f.len() < 14 {
        return None;
    }
    let et = be16(f, 12);
    if et == 0x8100 {
        return (f.len() >= 18).then(|| (be16(f, 16), 18));
    }
    Some((et, 14))
}

/// The IP packet at `b` (to the end of `b`), if well formed by the rules the
/// kernel applies on input. Bytes after the IP packet (padding) are allowed.
fn ip_packet(et: u16, b: &[u8]) -> Option<Packet> {
    let (src, dst, proto, l4, frag_off, more) = match et {
        0x0800 => {
            if b.len() < 20 || b[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(b[0] & 0xf) * 4;
            let total = usize::from(be16(b, 2));
            if ihl < 20 || total < ihl || total > b.len() {
                return None;
            }
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]).into();
            let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]).into();
            let ff = be16(b, 6);
            (src, dst, b[9], &b[ihl..total], ff & 0x1fff, ff & 0x2000 != 0)
        }
        0x86dd => {
            if b.len() < 40 || b[0] >> 4 != 6 {
                return None;
            }
            let total = 40 + usize::from(be16(b, 4));
            if total > b.len() {
                return None;
            }
            let a = |o: usize| -> IpAddr {
                let o: [u8; 16] = b[o..o + 16].try_into().unwrap();
                Ipv6Addr::from(o).into()
            };
            let (mut next, mut at) = (b[6], 40);
            let (mut frag_off, mut more) = (0, false);
            // Extension headers: hop-by-hop, routing, destination options, fragment.
            loop {
                match next {
                    0 | 43 | 60 => {
                        if at + 8 > total {
                            return None;
                        }
                        let len = (usize::from(b[at + 1]) + 1) * 8;
                        next = b[at];
                        at += len;
                        if at > total {
                            return None;
                        }
                    }
                    44 => {
                        if at + 8 > total {
                            return None;
                        }
                        let ff = be16(b, at + 2);
                        frag_off = ff >> 3;
                        more = ff & 1 != 0;
                        next = b[at];
                        at += 8;
                    }
                    _ => break,
                }
            }
            (a(8), a(24), next, &b[at..total], frag_off, more)
        }
        _ => return None,
    };
    if frag_off != 0 {
        return Some(Packet { src, dst, proto, dport: None, later_fragment: true });
    }
    let fragmented = more;
    let dport = match proto {
        6 => {
            let doff = usize::from(*l4.get(12)? >> 4) * 4;
            if l4.len() < 20 || doff < 20 || doff > l4.len() {
                return None;
            }
            Some(be16(l4, 2))
        }
        17 => {
            if l4.len() < 8 {
                return None;
            }
            let len = usize::from(be16(l4, 4));
            if len < 8 || (!fragmented && len > l4.len()) {
                return None;
            }
            Some(be16(l4, 2))
        }
        132 => {
            if l4.len() < 12 {
                return None;
            }
            Some(be16(l4, 2))
        }
        1 | 58 => {
            if l4.len() < 8 {
                return None;
            }
            None
        }
        _ => None,
    };
    Some(Packet { src, dst, proto, dport, later_fragment: false })
}

fn well_formed(f: &[u8]) -> Option<Packet> {
    let (et, off) = l2(f)?;
    ip_packet(et, &f[off..])
}

/// Why an output frame sent back out (TX/REDIRECT) is not sane, if it is not.
fn insane_output(input: &Packet, out: &[u8]) -> Option<String> {
    let Some((et, off)) = l2(out) else { return Some("no Ethernet header".into()) };
    let b = &out[off..];
    let Some(outer) = ip_packet(et, b) else { return Some("outer IP malformed".into()) };
    // The outer lengths must cover the frame exactly (no stray bytes).
    let ip_len = match et {
        0x0800 => usize::from(be16(b, 2)),
        _ => 40 + usize::from(be16(b, 4)),
    };
    if ip_len != b.len() {
        return Some(format!("outer IP length {ip_len}, frame carries {}", b.len()));
    }
    if et == 0x0800 {
        let ihl = usize::from(b[0] & 0xf) * 4;
        if !ipv4_header_ok(&b[..ihl]) {
            return Some("outer IPv4 header checksum".into());
        }
        if b[8] == 0 {
            return Some("TTL 0".into());
        }
    }
    let nodes: Vec<IpAddr> = (1..=3).flat_map(|n| [node(n, false), node(n, true)]).collect();
    if nodes.contains(&outer.dst) {
        // Tunnelled to a backend node, from this node.
        if outer.src != lb_addr(outer.src.is_ipv6()) {
            return Some(format!("tunnel source {}", outer.src));
        }
        let ihl = if et == 0x0800 { usize::from(b[0] & 0xf) * 4 } else { 40 };
        return match outer.proto {
            17 => {
                let udp = &b[ihl..];
                if be16(udp, 2) != GENEVE_PORT || usize::from(be16(udp, 4)) != udp.len() {
                    return Some("Geneve UDP header".into());
                }
                let g = &udp[8..];
                let hlen = 8 + usize::from(g[0] & 0x3f) * 4;
                if g[0] >> 6 != 0 || hlen > g.len() {
                    return Some("Geneve header".into());
                }
                let inner_et = be16(g, 2);
                match ip_packet(inner_et, &g[hlen..]) {
                    Some(_) => None,
                    None => Some("inner packet malformed".into()),
                }
            }
            4 | 41 => match ip_packet(if outer.proto == 4 { 0x0800 } else { 0x86dd }, &b[ihl..]) {
                Some(_) => None,
                None => Some("IPIP inner packet malformed".into()),
            },
            p => Some(format!("tunnel protocol {p}")),
        };
    }
    // A reply to the client: from the address it wrote to, back to it.
    if outer.dst != input.src || outer.src != input.dst {
        return Some(format!("sent {} -> {}, neither tunnel nor reply", outer.src, outer.dst));
    }
    match outer.proto {
        6 | 1 | 58 => None,
        p => Some(format!("reply of protocol {p}")),
    }
}

fn judge(
    fronts: &HashSet<(IpAddr, u16, u8)>,
    verdict: u32,
    input: &[u8],
    out: &[u8],
) -> Result<(), String> {
    match verdict {
        XDP_ABORTED | XDP_DROP => Ok(()),
        XDP_PASS => {
            if out == input {
                Ok(())
            } else {
                Err("PASS changed the frame".into())
            }
        }
        XDP_TX | XDP_REDIRECT => {
            let Some(p) = well_formed(input) else {
                return Err("sent on a malformed frame".into());
            };
            let to_frontend_addr = fronts.iter().any(|(a, _, _)| *a == p.dst);
            let to_frontend = match p.dport {
                Some(port) => fronts.contains(&(p.dst, port, p.proto)),
                // ICMP errors about a flow and later fragments: the address
                // (the program matches the quoted flow / the first fragment).
                None if p.later_fragment || matches!(p.proto, 1 | 58) => to_frontend_addr,
                None => false,
            };
            if !to_frontend {
                return Err(format!("sent a packet to {} (not a frontend): {p:?}", p.dst));
            }
            match insane_output(&p, out) {
                None => Ok(()),
                Some(why) => Err(format!("output not sane: {why}")),
            }
        }
        v => Err(format!("verdict {v}")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn mutated_frames_are_judged_by_an_independent_parser() {
    let frames: usize =
        std::env::var("XLB_FUZZ_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 =
        std::env::var("XLB_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("fuzz: {frames} frames, XLB_FUZZ_SEED={seed}");
    with_lab("fuzz", |lab| {
        lab.apply(&services());
        let fronts = frontends();
        let seeds = seeds();
        // The judge agrees with itself on the seeds: each is well formed,
        // and each one to a frontend is sent.
        for s in &seeds {
            assert!(well_formed(s).is_some(), "seed not well formed: {}", hex(s));
        }
        let before: u64 = lab.counters().values().map(|c| c.0).sum();
        let mut rng = Rng(seed);
        let mut out = vec![0u8; 4096];
        let mut verdicts = [0usize; 5];
        let t0 = std::time::Instant::now();
        for i in 0..frames {
            let s = &seeds[rng.below(seeds.len())];
            let input = if i < seeds.len() { seeds[i].clone() } else { mutate(&mut rng, s) };
            let r = test_run(lab.dp.xdp_program(), &input, lab.ifindex, 1, Some(&mut out))
                .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {}", lb::report::Chain(&e)));
            let got = &out[..r.data_size_out as usize];
            if let Err(why) = judge(&fronts, r.return_value, &input, got) {
                panic!(
                    "frame {i} (XLB_FUZZ_SEED={seed}): {why}\n  verdict {}\n  in  {}\n  out {}\n{}",
                    r.return_value,
                    hex(&input),
                    hex(got),
                    testkit::packet::show(&input)
                );
            }
            verdicts[(r.return_value as usize).min(4)] += 1;
        }
        let after: u64 = lab.counters().values().map(|c| c.0).sum();
        eprintln!(
            "fuzz: {frames} frames in {:?}: aborted {} drop {} pass {} tx {} redirect {}",
            t0.elapsed(),
            verdicts[0],
            verdicts[1],
            verdicts[2],
            verdicts[3],
            verdicts[4]
        );
        assert_eq!(after - before, frames as u64, "every run counted exactly once");
        assert_eq!(verdicts[0], 0, "XDP_ABORTED is never returned");
        assert!(verdicts[3] > frames / 100, "too few frames forwarded to judge: {verdicts:?}");
    });
}
