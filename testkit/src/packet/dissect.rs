//! The dissector: bytes into named layers of named fields, with absolute
//! offsets, for printing and for [`super::diff`]. It never fails: a header
//! cut short becomes a `(truncated)` layer, unknown bytes a `payload` layer,
//! and checksums are annotated `ok` or `bad, want 0x....` where they can be
//! verified.
use std::{
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb::abi::{
    GENEVE_OPT_CLASS, GENEVE_OPT_DSR4, GENEVE_OPT_DSR6, GENEVE_OPT_EP4, GENEVE_OPT_EP6, GENEVE_PORT,
};

use super::{
    csum,
    frame::{ethertype, proto, tcp_flags},
};

/// One header field: name, where it sits in the frame, and its value as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub len: usize,
    pub value: String,
}

/// One header (or payload) found in the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dissected {
    pub name: String,
    pub offset: usize,
    pub fields: Vec<Field>,
}

impl Dissected {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

impl fmt::Display for Dissected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @{}:", self.name, self.offset)?;
        for field in &self.fields {
            write!(f, " {}={}", field.name, field.value)?;
        }
        Ok(())
    }
}

/// The layers of an Ethernet frame, outermost first.
pub fn dissect(frame: &[u8]) -> Vec<Dissected> {
    let mut d = Dissector { b: frame, out: Vec::new() };
    d.eth(0, frame.len());
    d.out
}

/// One line per layer.
pub fn show(frame: &[u8]) -> String {
    let mut s = String::new();
    for layer in dissect(frame) {
        let _ = writeln!(s, "{layer}");
    }
    s
}

pub(crate) fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

pub(crate) fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "(none)".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::HOPOPTS => "hop-by-hop",
        proto::ICMP => "icmp",
        proto::IPIP => "ipip",
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::IPV6 => "ipv6",
        proto::SCTP => "sctp",
        proto::ROUTING => "routing",
        proto::FRAGMENT => "fragment",
        proto::ICMPV6 => "icmpv6",
        proto::NONE => "none",
        proto::DSTOPTS => "dest-opts",
        _ => "?",
    }
}

fn checksum_note(stored: u16, want: u16) -> String {
    if stored == want {
        format!("{stored:#06x} ok")
    } else {
        format!("{stored:#06x} bad, want {want:#06x}")
    }
}

struct Layer {
    d: Dissected,
}

impl Layer {
    fn new(name: impl Into<String>, offset: usize) -> Self {
        Layer { d: Dissected { name: name.into(), offset, fields: Vec::new() } }
    }

    fn f(&mut self, name: &'static str, offset: usize, len: usize, value: impl Into<String>) {
        self.d.fields.push(Field { name, offset, len, value: value.into() });
    }
}

struct Dissector<'a> {
    b: &'a [u8],
    out: Vec<Dissected>,
}

impl Dissector<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.b[at], self.b[at + 1]])
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.b[at..at + 4].try_into().unwrap())
    }

    fn v4(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&self.b[at..at + 4]).unwrap())
    }

    fn v6(&self, at: usize) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.b[at..at + 16]).unwrap())
    }

    fn push(&mut self, l: Layer) {
        self.out.push(l.d);
    }

    /// Records `name` as cut short: `want` bytes needed, `end - at` present.
    fn truncated(&mut self, name: &str, at: usize, end: usize, want: usize) {
        let mut l = Layer::new(format!("{name} (truncated)"), at);
        l.f("have", at, end - at, format!("{} of {want} bytes", end - at));
        l.f("bytes", at, end - at, hex(&self.b[at..end]));
        self.push(l);
    }

    fn payload(&mut self, name: &str, at: usize, end: usize) {
        if at < end {
            let mut l = Layer::new(name, at);
            l.f("len", at, end - at, (end - at).to_string());
            l.f("bytes", at, end - at, hex(&self.b[at..end]));
            self.push(l);
        }
    }

    fn eth(&mut self, at: usize, end: usize) {
        if end - at < 14 {
            return self.truncated("ethernet", at, end, 14);
        }
        let mut l = Layer::new("ethernet", at);
        l.f("dst", at, 6, mac(&self.b[at..at + 6]));
        l.f("src", at + 6, 6, mac(&self.b[at + 6..at + 12]));
        let mut et_at = at + 12;
        let mut et = self.u16(et_at);
        l.f("type", et_at, 2, format!("{et:#06x}"));
        self.push(l);
        while et == ethertype::VLAN || et == ethertype::QINQ {
            let tag = et_at + 2;
            if end - tag < 4 {
                return self.truncated("vlan", tag, end, 4);
            }
            let tci = self.u16(tag);
            let mut v = Layer::new("vlan", tag);
            v.f("pcp", tag, 1, (tci >> 13).to_string());
            v.f("dei", tag, 1, ((tci >> 12) & 1).to_string());
            v.f("vid", tag, 2, (tci & 0xfff).to_string());
            et_at = tag + 2;
            et = self.u16(et_at);
            v.f("type", et_at, 2, format!("{et:#06x}"));
            self.push(v);
        }
        self.ethertype(et, et_at + 2, end);
    }

    fn ethertype(&mut self, et: u16, at: usize, end: usize) {
        match et {
            ethertype::IPV4 => self.ipv4(at, end, false),
            ethertype::IPV6 => self.ipv6(at, end, false),
            ethertype::ARP => self.arp(at, end),
            ethertype::TEB => self.eth(at, end),
            _ => self.payload("payload", at, end),
        }
    }

    fn arp(&mut self, at: usize, end: usize) {
        if end - at < 28 {
            return self.truncated("arp", at, end, 28);
        }
        let mut l = Layer::new("arp", at);
        l.f("htype", at, 2, self.u16(at).to_string());
        l.f("ptype", at + 2, 2, format!("{:#06x}", self.u16(at + 2)));
        l.f("hlen", at + 4, 1, self.b[at + 4].to_string());
        l.f("plen", at + 5, 1, self.b[at + 5].to_string());
        l.f("op", at + 6, 2, self.u16(at + 6).to_string());
        l.f("sha", at + 8, 6, mac(&self.b[at + 8..at + 14]));
        l.f("spa", at + 14, 4, self.v4(at + 14).to_string());
        l.f("tha", at + 18, 6, mac(&self.b[at + 18..at + 24]));
        l.f("tpa", at + 24, 4, self.v4(at + 24).to_string());
        self.push(l);
        self.payload("trailer", at + 28, end);
    }

    /// `quoted`: inside an ICMP error, where the packet may be cut short.
    fn ipv4(&mut self, at: usize, end: usize, quoted: bool) {
        if end - at < 20 {
            return self.truncated("ipv4", at, end, 20);
        }
        let b = self.b;
        let ihl = usize::from(b[at] & 0xf);
        let hlen = ihl * 4;
        let total = usize::from(self.u16(at + 2));
        let frag = self.u16(at + 6);
        let p = b[at + 9];
        let (src, dst) = (self.v4(at + 12), self.v4(at + 16));
        let mut l = Layer::new("ipv4", at);
        l.f("version", at, 1, (b[at] >> 4).to_string());
        l.f("ihl", at, 1, format!("{ihl} ({hlen} bytes)"));
        l.f("tos", at + 1, 1, format!("{:#04x}", b[at + 1]));
        l.f("total_len", at + 2, 2, total.to_string());
        l.f("id", at + 4, 2, format!("{:#06x}", self.u16(at + 4)));
        let mut flags = Vec::new();
        if frag & 0x8000 != 0 {
            flags.push("RESERVED");
        }
        if frag & 0x4000 != 0 {
            flags.push("DF");
        }
        if frag & 0x2000 != 0 {
            flags.push("MF");
        }
        l.f("flags", at + 6, 1, if flags.is_empty() { "-".into() } else { flags.join("|") });
        l.f("frag_offset", at + 6, 2, (frag & 0x1fff).to_string());
        l.f("ttl", at + 8, 1, b[at + 8].to_string());
        l.f("proto", at + 9, 1, format!("{p} ({})", proto_name(p)));
        let stored = self.u16(at + 10);
        let sum = if (20..=end - at).contains(&hlen) {
            let mut h = b[at..at + hlen].to_vec();
            h[10..12].fill(0);
            checksum_note(stored, csum::checksum(&h))
        } else {
            format!("{stored:#06x} unverified")
        };
        l.f("checksum", at + 10, 2, sum);
        l.f("src", at + 12, 4, src.to_string());
        l.f("dst", at + 16, 4, dst.to_string());
        if hlen < 20 || hlen > end - at {
            l.f("error", at, 1, format!("ihl {ihl}: header of {hlen} bytes in {}", end - at));
            self.push(l);
            return self.payload("payload", at + 20, end);
        }
        if hlen > 20 {
            l.f("options", at + 20, hlen - 20, hex(&b[at + 20..at + hlen]));
        }
        self.push(l);
        let pend = if total >= hlen && total <= end - at { at + total } else { end };
        let complete = !quoted && pend == at + total;
        if frag & 0x1fff != 0 {
            self.payload("fragment", at + hlen, pend);
        } else {
            self.upper(p, IpAddr::V4(src), IpAddr::V4(dst), at + hlen, pend, complete);
        }
        if !quoted {
            self.payload("trailer", pend, end);
        }
    }

    fn ipv6(&mut self, at: usize, end: usize, quoted: bool) {
        if end - at < 40 {
            return self.truncated("ipv6", at, end, 40);
        }
        let vtf = self.u32(at);
        let plen = usize::from(self.u16(at + 4));
        let mut nh = self.b[at + 6];
        let (src, dst) = (self.v6(at + 8), self.v6(at + 24));
        let mut l = Layer::new("ipv6", at);
        l.f("version", at, 1, (vtf >> 28).to_string());
        l.f("traffic_class", at, 2, format!("{:#04x}", (vtf >> 20) & 0xff));
        l.f("flow_label", at + 1, 3, format!("{:#07x}", vtf & 0xfffff));
        l.f("payload_len", at + 4, 2, plen.to_string());
        l.f("next_header", at + 6, 1, format!("{nh} ({})", proto_name(nh)));
        l.f("hop_limit", at + 7, 1, self.b[at + 7].to_string());
        l.f("src", at + 8, 16, src.to_string());
        l.f("dst", at + 24, 16, dst.to_string());
        self.push(l);
        let pend = if plen <= end - at - 40 { at + 40 + plen } else { end };
        let complete = !quoted && pend == at + 40 + plen;
        let mut cur = at + 40;
        loop {
            match nh {
                proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS => {
                    let name = match nh {
                        proto::HOPOPTS => "ipv6-hop-by-hop",
                        proto::ROUTING => "ipv6-routing",
                        _ => "ipv6-dest-opts",
                    };
                    if pend - cur < 8 {
                        return self.truncated(name, cur, pend, 8);
                    }
                    let len = (usize::from(self.b[cur + 1]) + 1) * 8;
                    if pend - cur < len {
                        return self.truncated(name, cur, pend, len);
                    }
                    let mut e = Layer::new(name, cur);
                    nh = self.b[cur];
                    e.f("next_header", cur, 1, format!("{nh} ({})", proto_name(nh)));
                    e.f("len", cur + 1, 1, format!("{} ({len} bytes)", self.b[cur + 1]));
                    e.f("data", cur + 2, len - 2, hex(&self.b[cur + 2..cur + len]));
                    self.push(e);
                    cur += len;
                }
                proto::FRAGMENT => {
                    if pend - cur < 8 {
                        return self.truncated("ipv6-fragment", cur, pend, 8);
                    }
                    let off = self.u16(cur + 2);
                    let mut e = Layer::new("ipv6-fragment", cur);
                    nh = self.b[cur];
                    e.f("next_header", cur, 1, format!("{nh} ({})", proto_name(nh)));
                    e.f("offset", cur + 2, 2, (off >> 3).to_string());
                    e.f("more", cur + 3, 1, (off & 1).to_string());
                    e.f("id", cur + 4, 4, format!("{:#010x}", self.u32(cur + 4)));
                    self.push(e);
                    cur += 8;
                    if off >> 3 != 0 {
                        self.payload("fragment", cur, pend);
                        break;
                    }
                }
                _ => {
                    self.upper(nh, IpAddr::V6(src), IpAddr::V6(dst), cur, pend, complete);
                    break;
                }
            }
        }
        if !quoted {
            self.payload("trailer", pend, end);
        }
    }

    /// An upper-layer segment `[at, end)`; `complete`: the IP length says it
    /// is all there, so its checksum can be verified.
    fn upper(&mut self, p: u8, src: IpAddr, dst: IpAddr, at: usize, end: usize, complete: bool) {
        let verify = |b: &[u8], sum_at: usize| -> Option<u16> {
            complete.then(|| {
                let mut seg = b[at..end].to_vec();
                seg[sum_at..sum_at + 2].fill(0);
                csum::l4(src, dst, p, &seg)
            })
        };
        match p {
            proto::TCP => {
                if end - at < 20 {
                    return self.truncated("tcp", at, end, 20);
                }
                let b = self.b;
                let doff = usize::from(b[at + 12] >> 4) * 4;
                let mut l = Layer::new("tcp", at);
                l.f("sport", at, 2, self.u16(at).to_string());
                l.f("dport", at + 2, 2, self.u16(at + 2).to_string());
                l.f("seq", at + 4, 4, self.u32(at + 4).to_string());
                l.f("ack", at + 8, 4, self.u32(at + 8).to_string());
                l.f("data_offset", at + 12, 1, format!("{} ({doff} bytes)", doff / 4));
                l.f("flags", at + 13, 1, tcp_flag_names(b[at + 13]));
                l.f("window", at + 14, 2, self.u16(at + 14).to_string());
                let stored = self.u16(at + 16);
                l.f(
                    "checksum",
                    at + 16,
                    2,
                    match verify(b, 16) {
                        Some(want) => checksum_note(stored, want),
                        None => format!("{stored:#06x} unverified"),
                    },
                );
                l.f("urgent", at + 18, 2, self.u16(at + 18).to_string());
                let hend = if (20..=end - at).contains(&doff) { at + doff } else { at + 20 };
                if hend > at + 20 {
                    l.f("options", at + 20, hend - at - 20, hex(&b[at + 20..hend]));
                }
                self.push(l);
                self.payload("payload", hend, end);
            }
            proto::UDP => {
                if end - at < 8 {
                    return self.truncated("udp", at, end, 8);
                }
                let (sport, dport) = (self.u16(at), self.u16(at + 2));
                let stored = self.u16(at + 6);
                let mut l = Layer::new("udp", at);
                l.f("sport", at, 2, sport.to_string());
                l.f("dport", at + 2, 2, dport.to_string());
                l.f("len", at + 4, 2, self.u16(at + 4).to_string());
                let sum = match verify(self.b, 6) {
                    _ if stored == 0 => "0x0000 none".to_string(),
                    Some(want) => checksum_note(stored, if want == 0 { 0xffff } else { want }),
                    None => format!("{stored:#06x} unverified"),
                };
                l.f("checksum", at + 6, 2, sum);
                self.push(l);
                if dport == GENEVE_PORT {
                    self.geneve(at + 8, end);
                } else {
                    self.payload("payload", at + 8, end);
                }
            }
            proto::SCTP => {
                if end - at < 12 {
                    return self.truncated("sctp", at, end, 12);
                }
                let stored = u32::from_le_bytes(self.b[at + 8..at + 12].try_into().unwrap());
                let mut l = Layer::new("sctp", at);
                l.f("sport", at, 2, self.u16(at).to_string());
                l.f("dport", at + 2, 2, self.u16(at + 2).to_string());
                l.f("vtag", at + 4, 4, format!("{:#010x}", self.u32(at + 4)));
                let crc = if complete {
                    let mut seg = self.b[at..end].to_vec();
                    seg[8..12].fill(0);
                    let want = csum::crc32c(&seg);
                    if want == stored {
                        format!("{stored:#010x} ok")
                    } else {
                        format!("{stored:#010x} bad, want {want:#010x}")
                    }
                } else {
                    format!("{stored:#010x} unverified")
                };
                l.f("crc32c", at + 8, 4, crc);
                self.push(l);
                self.payload("chunks", at + 12, end);
            }
            proto::ICMP | proto::ICMPV6 => {
                let v6 = p == proto::ICMPV6;
                let name = if v6 { "icmpv6" } else { "icmp" };
                if end - at < 8 {
                    return self.truncated(name, at, end, 8);
                }
                let (typ, code) = (self.b[at], self.b[at + 1]);
                let stored = self.u16(at + 2);
                let want = if v6 {
                    verify(self.b, 2)
                } else {
                    let mut m = self.b[at..end].to_vec();
                    m[2..4].fill(0);
                    Some(csum::checksum(&m))
                };
                let mut l = Layer::new(name, at);
                l.f("type", at, 1, typ.to_string());
                l.f("code", at + 1, 1, code.to_string());
                l.f(
                    "checksum",
                    at + 2,
                    2,
                    match want {
                        Some(want) => checksum_note(stored, want),
                        None => format!("{stored:#06x} unverified"),
                    },
                );
                let rest = self.u32(at + 4);
                match (v6, typ, code) {
                    (false, 3, 4) => l.f("mtu", at + 6, 2, (rest & 0xffff).to_string()),
                    (true, 2, _) => l.f("mtu", at + 4, 4, rest.to_string()),
                    _ => l.f("rest", at + 4, 4, format!("{rest:#010x}")),
                }
                self.push(l);
                match (v6, typ) {
                    (false, 3 | 11 | 12) => self.ipv4(at + 8, end, true),
                    (true, 1..=4) => self.ipv6(at + 8, end, true),
                    _ => self.payload("payload", at + 8, end),
                }
            }
            proto::IPIP => self.ipv4(at, end, false),
            proto::IPV6 => self.ipv6(at, end, false),
            _ => self.payload("payload", at, end),
        }
    }

    fn geneve(&mut self, at: usize, end: usize) {
        if end - at < 8 {
            return self.truncated("geneve", at, end, 8);
        }
        let b = self.b;
        let optlen = usize::from(b[at] & 0x3f) * 4;
        let et = self.u16(at + 2);
        let mut l = Layer::new("geneve", at);
        l.f("version", at, 1, (b[at] >> 6).to_string());
        l.f("opt_len", at, 1, format!("{} ({optlen} bytes)", optlen / 4));
        l.f("oam", at + 1, 1, (b[at + 1] >> 7).to_string());
        l.f("critical", at + 1, 1, ((b[at + 1] >> 6) & 1).to_string());
        l.f("proto", at + 2, 2, format!("{et:#06x}"));
        let vni = u32::from_be_bytes([0, b[at + 4], b[at + 5], b[at + 6]]);
        l.f("vni", at + 4, 3, vni.to_string());
        self.push(l);
        if end - at - 8 < optlen {
            return self.truncated("geneve-options", at + 8, end, optlen);
        }
        let (mut cur, oend) = (at + 8, at + 8 + optlen);
        while cur < oend {
            if oend - cur < 4 {
                return self.truncated("geneve-option", cur, oend, 4);
            }
            let class = self.u16(cur);
            let typ = b[cur + 2];
            let dlen = usize::from(b[cur + 3] & 0x1f) * 4;
            if oend - cur - 4 < dlen {
                return self.truncated("geneve-option", cur, oend, 4 + dlen);
            }
            let d = cur + 4;
            let mut o = Layer::new("geneve-option", cur);
            o.f("class", cur, 2, format!("{class:#06x}"));
            o.f("type", cur + 2, 1, format!("{typ:#04x}"));
            o.f("len", cur + 3, 1, format!("{} ({dlen} bytes)", dlen / 4));
            match (class, typ, dlen) {
                (GENEVE_OPT_CLASS, GENEVE_OPT_DSR4 | GENEVE_OPT_EP4, 8) => {
                    o.f("addr", d, 4, self.v4(d).to_string());
                    o.f("port", d + 4, 2, self.u16(d + 4).to_string());
                    o.f("pad", d + 6, 2, hex(&b[d + 6..d + 8]));
                }
                (GENEVE_OPT_CLASS, GENEVE_OPT_DSR6 | GENEVE_OPT_EP6, 20) => {
                    o.f("addr", d, 16, self.v6(d).to_string());
                    o.f("port", d + 16, 2, self.u16(d + 16).to_string());
                    o.f("pad", d + 18, 2, hex(&b[d + 18..d + 20]));
                }
                _ => o.f("data", d, dlen, hex(&b[d..d + dlen])),
            }
            self.push(o);
            cur = d + dlen;
        }
        self.ethertype(et, oend, end);
    }
}

fn tcp_flag_names(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (tcp_flags::FIN, "FIN"),
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::RST, "RST"),
        (tcp_flags::PSH, "PSH"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::URG, "URG"),
        (tcp_flags::ECE, "ECE"),
        (tcp_flags::CWR, "CWR"),
    ];
    let set: Vec<_> = NAMES.iter().filter(|(bit, _)| f & bit != 0).map(|(_, n)| *n).collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join("|")
    }
}
