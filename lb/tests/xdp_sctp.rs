//! SCTP services through the compiled xlb_xdp: frontends of protocol 132
//! hashed on the ports like TCP and UDP; the DNAT to the endpoint leaves
//! SCTP's CRC32c alone when only the address changes (the CRC does not
//! cover it) and updates it for a port change (lb/bpf/crc32c.h), which is
//! checked against the bitwise CRC32c of the frame builder (testkit
//! packet::csum::crc32c) at many packet lengths. The reverse path (tc
//! egress) is in tc_dsr.rs. Privileged tier: needs root and BPF.
mod common;

use std::net::SocketAddr;

use common::*;
use lb::model::Proto;
use testkit::packet::Frame;

const SVC_PORT: u16 = 3868;

fn sctp(v6: bool, dport: u16, payload: usize) -> Frame {
    Frame::eth(ROUTER_MAC, LB_MAC)
        .ip(client(v6), vip(v6))
        .sctp(CLIENT_PORT, dport)
        .payload(&(0..payload).map(|i| i as u8).collect::<Vec<_>>())
}

/// The CRC32c field of an SCTP frame built by `sctp` (untagged, no options).
fn crc_of(frame: &[u8], v6: bool) -> [u8; 4] {
    let at = 14 + if v6 { 40 } else { 20 } + 8;
    frame[at..at + 4].try_into().unwrap()
}

#[test]
fn sctp_is_balanced_with_its_crc_kept_or_recomputed() {
    with_lab("sctp", |lab| {
        let mut services = Vec::new();
        for v6 in BOTH {
            let ep = |port| {
                let mut b = backend(pod(1, 1, v6), node(1, v6));
                b.port = port;
                vec![b]
            };
            let name = |what| format!("{what}-{}", fam(v6));
            // Same port: an address-only translation. Another: the CRC moves.
            services.push(service(&name("same"), vip(v6), SVC_PORT, Proto::Sctp, ep(SVC_PORT)));
            services.push(service(
                &name("port"),
                vip(v6),
                SVC_PORT + 1,
                Proto::Sctp,
                ep(TARGET_PORT),
            ));
        }
        lab.apply(&services);
        let mut cases = Vec::new();
        for v6 in BOTH {
            for len in [0, 1, 5, 16, 100, 333, 1000, 1400] {
                for (dport, target) in [(SVC_PORT, SVC_PORT), (SVC_PORT + 1, TARGET_PORT)] {
                    let input = sctp(v6, dport, len);
                    let (want, ep) = lab.expect_dsr(&input, dport);
                    assert_eq!(ep, SocketAddr::new(pod(1, 1, v6), target));
                    if dport == target {
                        // The expected frame's CRC is computed from scratch;
                        // with the ports unchanged it is the client's.
                        let inner_at = want.build().len() - input.build().len();
                        let out = want.build();
                        assert_eq!(
                            crc_of(&out[inner_at..], v6),
                            crc_of(&input.build(), v6),
                            "address-only: CRC unchanged"
                        );
                    }
                    let what = if dport == target { "address only" } else { "port translated" };
                    cases.push(
                        Case::of(format!("{} {what}, {len} bytes of chunks", fam(v6)), &input)
                            .tx(&want),
                    );
                }
            }
        }
        lab.check(&cases);
    });
}
