//! Ethernet frames for BPF tests and perf/ load generators: a builder from
//! named header fields ([`Frame`]), a dissector into named layers and fields
//! ([`dissect`], [`show`]) and a field-by-field comparison ([`diff`]).
//! Pure byte work: nothing here touches the kernel. xlb's own protocol
//! numbers (the Geneve port, option class and types) are `lb::abi`'s.
//!
//! ```
//! use testkit::packet::{diff, Frame};
//! let syn = Frame::eth([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
//!     .ipv4("192.0.2.10".parse().unwrap(), "10.100.0.1".parse().unwrap())
//!     .tcp(40000, 80)
//!     .syn();
//! let bytes = syn.build();
//! assert_eq!(bytes.len(), 54);
//! assert!(diff(&bytes, &syn.clone().ttl(3).build()).unwrap().contains("ipv4.ttl"));
//! ```
mod csum;
mod diff;
mod dissect;
mod frame;

pub use csum::{checksum, crc32c, l4 as l4_checksum};
pub use diff::diff;
pub use dissect::{dissect, show, Dissected, Field};
pub use frame::{
    ethertype, proto, tcp_flags, Arp, Eth, Frame, Geneve, GeneveOpt, Icmp, Ipv4, Ipv6, Ipv6Ext,
    Layer, Mac, Sctp, Tcp, Udp,
};

/// The benchmark's reference frames (/work/shared/bench/packets, see its
/// README), built from named fields.
pub mod bench {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::{Frame, Mac};

    /// The load balancer's NIC.
    pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
    /// The upstream router.
    pub const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
    pub const NON_VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 99);
    pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
    pub const CLIENT_PORT: u16 = 40000;

    fn v4(dst: Ipv4Addr) -> Frame {
        Frame::eth(ROUTER_MAC, LB_MAC).ipv4(CLIENT_V4, dst).ip_id(0x1234).df()
    }

    /// `(file name, frame)` for each of the five reference frames.
    pub fn frames() -> Vec<(&'static str, Frame)> {
        vec![
            ("tcp_syn_vip.bin", v4(VIP_V4).tcp(CLIENT_PORT, 80).seq(1000).syn()),
            ("tcp_ack_vip.bin", v4(VIP_V4).tcp(CLIENT_PORT, 80).seq(1001).ack_seq(5001).ack()),
            (
                "udp_vip.bin",
                v4(VIP_V4)
                    .udp(CLIENT_PORT, 53)
                    .payload(&[0xbe, 0xef, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
            ),
            ("tcp_nonvip.bin", v4(NON_VIP_V4).tcp(CLIENT_PORT, 80).seq(1000).syn()),
            (
                "tcp6_syn_vip.bin",
                Frame::eth(ROUTER_MAC, LB_MAC)
                    .ipv6(CLIENT_V6, VIP_V6)
                    .tcp(CLIENT_PORT, 80)
                    .seq(1000)
                    .syn(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use lb::abi::{GENEVE_OPT_DSR6, GENEVE_PORT};

    use super::{bench::*, *};

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3: the one's-complement sum of these bytes is 0xddf2.
        assert_eq!(checksum(&unhex("0001 f203 f4f5 f6f7")), !0xddf2);
        // Odd length: the last byte is padded with zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn ipv4_header_checksum_known_value() {
        // A widely published IPv4 header whose checksum is 0xb861.
        let h = Frame::new()
            .ipv4(Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 199))
            .df()
            .ip_proto(proto::UDP)
            .total_len(0x73)
            .build();
        assert_eq!(h, unhex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7"));
        assert_eq!(checksum(&h), 0, "a correct header sums to zero");
    }

    #[test]
    fn icmpv6_and_udp6_checksums_known_values() {
        // Values computed independently (a separate Python implementation of
        // RFC 1071 over the RFC 8200 pseudo-header).
        let src: Ipv6Addr = "2001:db8:f::2".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let ptb = Frame::new()
            .ipv6(src, dst)
            .icmp6_packet_too_big(1280)
            .payload(&[0x60, 0, 0, 0, 0, 0, 6, 64])
            .build();
        assert_eq!(&ptb[42..44], &[0x36, 0xe2], "ICMPv6 checksum");
        let udp = Frame::new().ipv6(src, dst).udp(5353, 53).payload(b"xlb").build();
        assert_eq!(&udp[46..48], &[0xb4, 0xba], "UDP/IPv6 checksum");
    }

    #[test]
    fn builder_reproduces_bench_frames_byte_for_byte() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/packets");
        for (name, frame) in frames() {
            let path = dir.join(name);
            let want = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("reading {}: {e} (shared/ must sit beside the repo)", path.display())
            });
            let got = frame.build();
            if let Some(d) = diff(&want, &got) {
                panic!("{name}: builder output differs from the file\n{d}");
            }
        }
    }

    #[test]
    fn dissector_names_every_field_and_verifies_checksums() {
        let bytes = frames()[0].1.build();
        let layers = dissect(&bytes);
        let names: Vec<_> = layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["ethernet", "ipv4", "tcp"]);
        assert_eq!(layers[1].field("checksum").unwrap().value, "0x5c2d ok");
        assert_eq!(layers[1].field("flags").unwrap().value, "DF");
        assert_eq!(layers[2].field("checksum").unwrap().value, "0x480a ok");
        assert_eq!(layers[2].field("flags").unwrap().value, "SYN");
        let bad = frames()[0].1.clone().ip_checksum(0x1111).build();
        assert_eq!(dissect(&bad)[1].field("checksum").unwrap().value, "0x1111 bad, want 0x5c2d");
    }

    fn geneve_v4() -> Frame {
        let client = frames()[0].1.clone();
        let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
        client.clone().dst("10.244.1.11".parse().unwrap()).dport(8080).encap_in(
            Frame::eth(LB_MAC, ROUTER_MAC)
                .ipv4(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 11))
                .udp(50000, GENEVE_PORT)
                .l4_checksum(0)
                .geneve(7)
                .dsr_opt(vip),
        )
    }

    #[test]
    fn geneve_dsr_option_layout() {
        let b = geneve_v4().build();
        let g = 14 + 20 + 8;
        // opt_len 3 words, no flags, protocol IPv4, VNI 7.
        assert_eq!(&b[g..g + 8], &unhex("0300 0800 0000 0700"));
        // class 0xff58, type 1, 2 words: 10.100.0.1, port 80, 2 pad bytes.
        assert_eq!(&b[g + 8..g + 20], &unhex("ff58 0102 0a64 0001 0050 0000"));
        assert_eq!(&b[g + 20..g + 21], &[0x45]);
        let names: Vec<_> = dissect(&b).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["ethernet", "ipv4", "udp", "geneve", "geneve-option", "ipv4", "tcp"]);
        let v6 = GeneveOpt::dsr(SocketAddr::new(IpAddr::V6(VIP_V6), 443));
        assert_eq!((v6.typ, v6.data.len()), (GENEVE_OPT_DSR6, 20));
        assert_eq!(&v6.data[16..], &[0x01, 0xbb, 0, 0]);
    }

    #[test]
    fn ipv6_extension_headers_are_padded_and_chained() {
        let b = Frame::eth(ROUTER_MAC, LB_MAC)
            .ipv6(CLIENT_V6, VIP_V6)
            .hop_by_hop(&[])
            .routing(4, 0, &[])
            .dest_opts(&[0x1e, 1, 0xaa])
            .fragment6(0, false, 9)
            .tcp(1, 2)
            .build();
        let names: Vec<_> = dissect(&b).into_iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "ethernet",
                "ipv6",
                "ipv6-hop-by-hop",
                "ipv6-routing",
                "ipv6-dest-opts",
                "ipv6-fragment",
                "tcp"
            ]
        );
        assert_eq!(b[14 + 6], proto::HOPOPTS);
        // hop-by-hop: next = routing, len 0, PadN of 4.
        assert_eq!(&b[54..62], &[proto::ROUTING, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(u16::from_be_bytes([b[18], b[19]]), 8 + 8 + 8 + 8 + 20);
        assert!(dissect(&b).last().unwrap().field("checksum").unwrap().value.ends_with("ok"));
    }

    #[test]
    fn icmp_error_quotes_inner_packet() {
        let inner = frames()[0].1.l3();
        let b = Frame::eth(ROUTER_MAC, LB_MAC)
            .ipv4(Ipv4Addr::new(10, 0, 0, 1), CLIENT_V4)
            .icmp4_frag_needed(1400)
            .inner(inner)
            .quote_len(28)
            .build();
        assert_eq!(b.len(), 14 + 20 + 8 + 28);
        let layers = dissect(&b);
        assert_eq!(layers[2].field("mtu").unwrap().value, "1400");
        assert_eq!(layers[2].field("checksum").unwrap().value.split(' ').nth(1), Some("ok"));
        assert_eq!(layers[3].name, "ipv4");
        assert_eq!(layers[4].name, "tcp (truncated)");
    }

    #[test]
    fn ip_in_ip_families() {
        let inner6 = frames()[4].1.l3();
        let outer4 = Frame::eth(LB_MAC, ROUTER_MAC)
            .ipv4(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 11));
        let b = inner6.clone().encap_in(outer4.clone()).build();
        assert_eq!(b[14 + 9], proto::IPV6);
        let b = frames()[0].1.encap_in(outer4).build();
        assert_eq!(b[14 + 9], proto::IPIP);
        let names: Vec<_> = dissect(&b).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["ethernet", "ipv4", "ipv4", "tcp"]);
    }

    #[test]
    fn vlan_and_malformed_overrides() {
        let b = frames()[0].1.clone().vlan(100).build();
        assert_eq!(&b[12..18], &[0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        let b = frames()[0].1.clone().ihl(4).total_len(999).build();
        assert_eq!(b[14], 0x44);
        let ip = &dissect(&b)[1];
        assert_eq!(ip.field("total_len").unwrap().value, "999");
        assert!(ip.field("error").is_some());
    }

    #[test]
    fn dissect_never_panics_on_any_prefix() {
        let frames = [
            geneve_v4().build(),
            frames()[4].1.clone().hop_by_hop(&[]).fragment6(0, true, 1).build(),
            Frame::eth(ROUTER_MAC, LB_MAC)
                .ipv6(VIP_V6, CLIENT_V6)
                .icmp6_packet_too_big(1280)
                .inner(frames()[4].1.l3())
                .build(),
            frames()[0].1.clone().vlan(5).ip_options(&[1; 8]).build(),
        ];
        for f in &frames {
            for n in 0..=f.len() {
                let _ = show(&f[..n]);
            }
        }
    }

    #[test]
    fn diff_reports_fields_and_offsets() {
        let a = geneve_v4().build();
        assert_eq!(diff(&a, &a), None);
        let b = geneve_v4().ttl(3).build();
        let d = diff(&a, &b).unwrap();
        // .ttl() applies to the last IP header: the inner one (layer 5).
        assert!(d.contains("[5] ipv4.ttl @70: expected 64, actual 3"), "{d}");
        assert!(d.contains("[5] ipv4.checksum"), "{d}");
        assert!(d.contains("first difference at byte 70"), "{d}");
        let d = diff(&a, &a[..40]).unwrap();
        assert!(d.contains("missing from actual"), "{d}");
    }
}
