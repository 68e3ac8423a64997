//! kube-proxy baselines: the rulesets kube-proxy writes for a set of
//! services, generated from its documented shape (our own code), in its two
//! Linux modes.
//!
//! iptables mode ([`iptables_restore`], input for `iptables-restore`): nat
//! KUBE-SERVICES matches each (cluster IP | load-balancer IP, protocol, port)
//! in turn and jumps to KUBE-SVC-<hash> (external addresses through
//! KUBE-EXT-<hash>, which marks for masquerade first); KUBE-SVC picks an
//! endpoint with `statistic --mode random --probability 1/(n-i)` rules and
//! jumps to KUBE-SEP-<hash>, which DNATs; KUBE-MARK-MASQ / KUBE-POSTROUTING
//! masquerade marked traffic; filter KUBE-FORWARD accepts marked and
//! established traffic and drops INVALID; services without endpoints are
//! rejected in filter KUBE-SERVICES. Cost per new connection grows with the
//! number of services (one rule per frontend in KUBE-SERVICES).
//!
//! nftables mode ([`nftables`], input for `nft -f`): table ip kube-proxy with
//! a `service-ips` verdict map (address . protocol . port → goto service
//! chain), `numgen random mod n vmap` over endpoint chains that DNAT, and the
//! same mark-and-masquerade scheme. Cost per new connection is one map lookup.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KpProto {
    Tcp,
    Udp,
}

impl KpProto {
    fn name(self) -> &'static str {
        match self {
            KpProto::Tcp => "tcp",
            KpProto::Udp => "udp",
        }
    }
}

/// One service port as kube-proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KpService {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub proto: KpProto,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// LoadBalancer ingress IP (same port), if any.
    pub lb_ip: Option<Ipv4Addr>,
    pub endpoints: Vec<SocketAddrV4>,
}

impl KpService {
    fn id(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// Node-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KpConfig {
    /// Pod CIDR: traffic from outside it to a cluster IP is masqueraded.
    pub cluster_cidr: String,
    /// The masquerade mark bit.
    pub masq_bit: u32,
}

impl Default for KpConfig {
    fn default() -> Self {
        KpConfig { cluster_cidr: "10.244.0.0/16".into(), masq_bit: 0x4000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KpError {
    #[error("service {service}: {field}: {reason}")]
    Invalid { service: String, field: &'static str, reason: String },
}

/// A stable 16-character chain suffix (base32 alphabet) for `s`: two
/// FNV-1a-64 passes with different offsets give 80 bits.
fn chain_hash(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |basis: u64| {
        s.bytes().fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
    let bits = (u128::from(a) << 16) | u128::from(b & 0xffff);
    (0..16).map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char).collect()
}

fn validate(services: &[KpService]) -> Result<(), KpError> {
    for s in services {
        if s.port == 0 {
            return Err(KpError::Invalid {
                service: s.id(),
                field: "port",
                reason: "0 is not a port".into(),
            });
        }
        if let Some(e) = s.endpoints.iter().find(|e| e.port() == 0) {
            return Err(KpError::Invalid {
                service: s.id(),
                field: "endpoints",
                reason: format!("{e}: port 0"),
            });
        }
    }
    Ok(())
}

/// The iptables-restore input kube-proxy's iptables mode would write.
pub fn iptables_restore(services: &[KpService], cfg: &KpConfig) -> Result<String, KpError> {
    validate(services)?;
    let mark = format!("{:#x}/{:#x}", cfg.masq_bit, cfg.masq_bit);
    let mut chains = String::new();
    let mut rules = String::new();
    let mut filter_rules = String::new();
    for s in services {
        let id = s.id();
        let p = s.proto.name();
        let svc = format!("KUBE-SVC-{}", chain_hash(&format!("{id}{p}")));
        if s.endpoints.is_empty() {
            let _ = writeln!(
                filter_rules,
                "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment \"{id} has no endpoints\" -m {p} --dport {} -j REJECT --reject-with icmp-port-unreachable",
                s.cluster_ip, s.port
            );
            continue;
        }
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment \"{id} cluster IP\" -m {p} --dport {} -j {svc}",
            s.cluster_ip, s.port
        );
        if let Some(lb) = s.lb_ip {
            let ext = format!("KUBE-EXT-{}", chain_hash(&format!("{id}{p}")));
            let _ = writeln!(chains, ":{ext} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {lb}/32 -p {p} -m comment --comment \"{id} loadbalancer IP\" -m {p} --dport {} -j {ext}",
                s.port
            );
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {id} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(rules, "-A {ext} -j {svc}");
        }
        let _ = writeln!(
            rules,
            "-A {svc} ! -s {} -d {}/32 -p {p} -m comment --comment \"{id} cluster IP\" -m {p} --dport {} -j KUBE-MARK-MASQ",
            cfg.cluster_cidr, s.cluster_ip, s.port
        );
        let n = s.endpoints.len();
        let mut sep_rules = String::new();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_hash(&format!("{id}{p}{ep}")));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let stat = if i + 1 < n {
                format!(" -m statistic --mode random --probability {:.11}", 1.0 / (n - i) as f64)
            } else {
                String::new()
            };
            let _ =
                writeln!(rules, "-A {svc} -m comment --comment \"{id} -> {ep}\"{stat} -j {sep}");
            let _ = writeln!(
                sep_rules,
                "-A {sep} -s {}/32 -m comment --comment \"{id}\" -j KUBE-MARK-MASQ",
                ep.ip()
            );
            let _ = writeln!(
                sep_rules,
                "-A {sep} -p {p} -m comment --comment \"{id}\" -m {p} -j DNAT --to-destination {ep}"
            );
        }
        rules.push_str(&sep_rules);
    }
    let mut out = String::new();
    out.push_str("*filter\n:KUBE-FORWARD - [0:0]\n:KUBE-SERVICES - [0:0]\n");
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    out.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str(&filter_rules);
    out.push_str("COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --set-xmark {mark}");
    let _ = writeln!(out, "-A KUBE-POSTROUTING -m mark ! --mark {mark} -j RETURN");
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --set-xmark {:#x}/0x0", cfg.masq_bit);
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str(&rules);
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str("COMMIT\n");
    Ok(out)
}

/// The `nft -f` input kube-proxy's nftables mode would write.
pub fn nftables(services: &[KpService], cfg: &KpConfig) -> Result<String, KpError> {
    validate(services)?;
    let bit = cfg.masq_bit;
    let mut chains = String::new();
    let mut elements = Vec::new();
    let mut no_ep = Vec::new();
    for s in services {
        let id = s.id();
        let p = s.proto.name();
        let h = chain_hash(&format!("{id}{p}"));
        let svc = format!("service-{h}");
        if s.endpoints.is_empty() {
            no_ep.push(format!(
                "{} . {p} . {} comment \"{id}\" : goto reject-chain",
                s.cluster_ip, s.port
            ));
            continue;
        }
        elements.push(format!("{} . {p} . {} : goto {svc}", s.cluster_ip, s.port));
        let _ = writeln!(chains, "\tchain {svc} {{");
        let _ = writeln!(
            chains,
            "\t\tip daddr {} {p} dport {} ip saddr != {} jump mark-for-masquerade",
            s.cluster_ip, s.port, cfg.cluster_cidr
        );
        let targets: Vec<String> = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto endpoint-{}", chain_hash(&format!("{id}{p}{ep}"))))
            .collect();
        let _ = writeln!(
            chains,
            "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            s.endpoints.len(),
            targets.join(", ")
        );
        if let Some(lb) = s.lb_ip {
            let ext = format!("external-{h}");
            elements.push(format!("{lb} . {p} . {} : goto {ext}", s.port));
            let _ = writeln!(
                chains,
                "\tchain {ext} {{\n\t\tjump mark-for-masquerade\n\t\tgoto {svc}\n\t}}"
            );
        }
        for ep in &s.endpoints {
            let _ = writeln!(
                chains,
                "\tchain endpoint-{} {{\n\t\tip saddr {} jump mark-for-masquerade\n\t\tmeta l4proto {p} dnat to {ep}\n\t}}",
                chain_hash(&format!("{id}{p}{ep}")),
                ep.ip()
            );
        }
    }
    let mut out = String::new();
    out.push_str("table ip kube-proxy {\n");
    out.push_str("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
    }
    out.push_str("\t}\n");
    out.push_str(
        "\tmap no-endpoint-services {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n",
    );
    if !no_ep.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", no_ep.join(",\n\t\t\t"));
    }
    out.push_str("\t}\n");
    out.push_str("\tchain reject-chain {\n\t\treject\n\t}\n");
    let _ = writeln!(
        out,
        "\tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {bit:#x}\n\t}}"
    );
    let _ = writeln!(
        out,
        "\tchain masquerading {{\n\t\tmeta mark & {bit:#x} == 0 return\n\t\tmeta mark set meta mark ^ {bit:#x}\n\t\tmasquerade fully-random\n\t}}"
    );
    out.push_str(
        "\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n",
    );
    out.push_str("\tchain filter-forward {\n\t\ttype filter hook forward priority -110; policy accept;\n\t\tct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\t\tct state invalid drop\n\t}\n");
    out.push_str("\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n");
    out.push_str("\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n");
    out.push_str("\tchain nat-postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}\n");
    out.push_str(&chains);
    out.push_str("}\n");
    Ok(out)
}

/// `n` synthetic service ports: cluster IPs from 10.96.0.10, load-balancer
/// IPs from `lb_base`, TCP `port`, `per` endpoints each on 10.244.x.y:`target`.
pub fn synthetic(n: u32, per: u32, lb_base: Ipv4Addr, port: u16, target: u16) -> Vec<KpService> {
    (0..n)
        .map(|i| {
            let endpoints = (0..per)
                .map(|j| {
                    let k = i.wrapping_mul(per).wrapping_add(j);
                    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 1, 10)) + k % 60_000);
                    SocketAddrV4::new(ip, target)
                })
                .collect();
            KpService {
                namespace: "bench".into(),
                name: format!("svc{i}"),
                port_name: "http".into(),
                proto: KpProto::Tcp,
                cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i),
                port,
                lb_ip: Some(Ipv4Addr::from(u32::from(lb_base) + i)),
                endpoints,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_stable_and_short() {
        let h = chain_hash("default/nginx:httptcp");
        assert_eq!(h.len(), 16);
        assert_eq!(h, chain_hash("default/nginx:httptcp"));
        assert_ne!(h, chain_hash("default/nginx:httpudp"));
        assert!(format!("KUBE-SVC-{h}").len() <= 28);
    }

    #[test]
    fn probabilities_split_evenly() {
        let s = synthetic(1, 4, Ipv4Addr::new(10, 100, 0, 1), 80, 8080);
        let r = iptables_restore(&s, &KpConfig::default()).unwrap();
        for p in ["0.25000000000", "0.33333333333", "0.50000000000"] {
            assert!(r.contains(&format!("--probability {p}")), "{p} missing:\n{r}");
        }
        assert_eq!(r.matches("-j DNAT --to-destination").count(), 4);
        assert_eq!(r.matches("-m statistic").count(), 3);
    }

    #[test]
    fn bad_port_is_named() {
        let mut s = synthetic(1, 1, Ipv4Addr::new(10, 100, 0, 1), 80, 8080);
        s[0].port = 0;
        let e = iptables_restore(&s, &KpConfig::default()).unwrap_err().to_string();
        assert!(e.contains("bench/svc0:http") && e.contains("port"), "{e}");
    }
}
