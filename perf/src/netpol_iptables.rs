//! NetworkPolicies as iptables + ipset rules in kube-router's shape (the
//! baseline of `xlb-perf policy-conn`, #11): written from kube-router's
//! documented chain layout, per node, for the node's own pods:
//!
//!   FORWARD → KUBE-ROUTER-FORWARD: for every local pod some policy
//!     isolates, `-d pod` (ingress) / `-s pod` (egress) → KUBE-POD-FW-<h>;
//!     at the end, packets marked 0x20000 (a pod chain let them through)
//!     are accepted.
//!   KUBE-POD-FW-<h>: conntrack RELATED,ESTABLISHED accept, INVALID drop,
//!     traffic from the node itself accepted, then a jump to each policy
//!     chain that selects the pod (ingress policies `-d pod`, egress `-s
//!     pod`), REJECT what no policy marked 0x10000, else mark 0x20000
//!     (and clear 0x10000).
//!   KUBE-NWPLCY-<h>: per rule and port, `-m set --match-set <peers> src -m
//!     set --match-set <targets> dst [-p P --dport X[:Y]] -j MARK
//!     0x10000`, then RETURN once marked. Peers: a hash:ip set
//!     (KUBE-SRC-<h>) of the pods the rule's selectors match, a hash:net
//!     set with `nomatch` excepts per ipBlock; targets: the pods the policy
//!     selects (KUBE-DST-<h>). Egress rules swap src and dst.
//!
//! The output is text for `ipset restore` and `iptables-restore --noflush`;
//! [`Ruleset::cleanup`] is what removes it again. Named ports are not
//! resolved (an error names the policy), as the benchmark uses numbers.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

/// A pod as the generator sees it.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Runs on the node the rules are for (gets a firewall chain).
    pub local: bool,
}

/// A namespace and its labels.
#[derive(Clone, Debug)]
pub struct NsRef {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("NetworkPolicy {policy}: {field}: {reason}")]
pub struct GenError {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

/// One node's rules.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    /// `ipset restore` input (create + add lines).
    pub ipsets: String,
    /// `iptables-restore --noflush` input (filter table).
    pub iptables: String,
    pub set_names: Vec<String>,
    pub chains: Vec<String>,
    /// Rules written (iptables lines starting with -A / -I).
    pub rules: usize,
    /// Pods with a firewall chain.
    pub isolated_pods: usize,
}

impl Ruleset {
    /// iptables-restore --noflush input removing every chain of this
    /// ruleset (the FORWARD jump first); ipset names to destroy after it.
    pub fn cleanup(&self) -> String {
        let mut s = String::from("*filter\n");
        if !self.chains.is_empty() {
            s.push_str("-D FORWARD -j KUBE-ROUTER-FORWARD\n");
        }
        for c in &self.chains {
            let _ = writeln!(s, "-F {c}");
        }
        for c in &self.chains {
            let _ = writeln!(s, "-X {c}");
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// FNV-1a, 64 bits: stable short names for chains and sets (kube-router
/// hashes names the same way, with another hash).
fn hash16(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

/// Whether `sel` matches `labels` (matchLabels and matchExpressions; an
/// empty selector matches everything).
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    if let Some(m) = &sel.match_labels {
        if m.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals: BTreeSet<&str> = e.values.iter().flatten().map(|s| s.as_str()).collect();
        let have = labels.get(&e.key).map(|s| s.as_str());
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| vals.contains(v)),
            "NotIn" => !have.is_some_and(|v| vals.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            op => return Err(format!("operator {op:?} unknown")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One rule's peers and ports.
type Rule = (Vec<NetworkPolicyPeer>, Option<Vec<NetworkPolicyPort>>);

#[derive(Default)]
struct Builder {
    ipsets: String,
    sets: Vec<String>,
    chains: Vec<String>,
    body: String,
    rules: usize,
}

impl Builder {
    fn set_ip(&mut self, name: &str, ips: &BTreeSet<Ipv4Addr>) {
        let _ = writeln!(self.ipsets, "create {name} hash:ip family inet -exist");
        for ip in ips {
            let _ = writeln!(self.ipsets, "add {name} {ip} -exist");
        }
        self.sets.push(name.to_string());
    }
    fn set_net(&mut self, name: &str, cidr: &str, except: &[String]) {
        let _ = writeln!(self.ipsets, "create {name} hash:net family inet -exist");
        let _ = writeln!(self.ipsets, "add {name} {cidr} -exist");
        for e in except {
            let _ = writeln!(self.ipsets, "add {name} {e} nomatch -exist");
        }
        self.sets.push(name.to_string());
    }
    fn rule(&mut self, chain: &str, spec: &str) {
        let _ = writeln!(self.body, "-A {chain} {spec}");
        self.rules += 1;
    }
}

fn ns_labels<'a>(namespaces: &'a [NsRef], ns: &str) -> Option<&'a BTreeMap<String, String>> {
    namespaces.iter().find(|n| n.name == ns).map(|n| &n.labels)
}

/// The pods a peer's selectors match (None: an ipBlock peer).
fn peer_pods(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    pods: &[PodRef],
    namespaces: &[NsRef],
) -> Result<Option<BTreeSet<Ipv4Addr>>, String> {
    if peer.ip_block.is_some() {
        return Ok(None);
    }
    let mut out = BTreeSet::new();
    for p in pods {
        let ns_ok = match &peer.namespace_selector {
            None => p.namespace == policy_ns,
            Some(sel) => match ns_labels(namespaces, &p.namespace) {
                Some(l) => selects(sel, l)?,
                None => false,
            },
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(sel) => selects(sel, &p.labels)?,
        };
        if ns_ok && pod_ok {
            out.insert(p.ip);
        }
    }
    Ok(Some(out))
}

/// `-p tcp --dport 80[:90]` of one port entry ("" for none).
fn port_match(p: &NetworkPolicyPort) -> Result<String, String> {
    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
    Ok(match &p.port {
        None => format!("-p {proto}"),
        Some(IntOrString::Int(n)) => match p.end_port {
            Some(e) => format!("-p {proto} --dport {n}:{e}"),
            None => format!("-p {proto} --dport {n}"),
        },
        Some(IntOrString::String(s)) => {
            return Err(format!("named port {s:?}: not resolved by this generator"))
        }
    })
}

/// The rules of `policies` for one node (`pods` with `local` set are the
/// node's).
pub fn kube_router(
    pods: &[PodRef],
    namespaces: &[NsRef],
    policies: &[NetworkPolicy],
) -> Result<Ruleset, GenError> {
    let mut b = Builder::default();
    // Per local pod: (ingress policy chains, egress policy chains).
    let mut pod_chains: BTreeMap<usize, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for pol in policies {
        let ns = pol.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = pol.metadata.name.clone().unwrap_or_default();
        let err = |field: &str, reason: String| GenError {
            policy: format!("{ns}/{name}"),
            field: field.into(),
            reason,
        };
        let spec = pol.spec.clone().unwrap_or_default();
        let pod_selector = spec.pod_selector.clone().unwrap_or_default();
        let targets: Vec<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.namespace == ns)
            .filter_map(|(i, p)| match selects(&pod_selector, &p.labels) {
                Ok(true) => Some(Ok(i)),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| err("spec.podSelector", e))?;
        if !targets.iter().any(|&i| pods[i].local) {
            continue; // kube-router writes a node's chains for its own pods only
        }
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.is_some() {
                t.push("Egress".into());
            }
            t
        });
        let ingress = types.iter().any(|t| t == "Ingress");
        let egress = types.iter().any(|t| t == "Egress");
        let h = hash16(&[&ns, &name]);
        let chain = format!("KUBE-NWPLCY-{h}");
        let dst_set = format!("KUBE-DST-{h}");
        b.chains.push(chain.clone());
        b.set_ip(&dst_set, &targets.iter().map(|&i| pods[i].ip).collect());
        let _ = writeln!(b.body, ":{chain} - [0:0]");
        // Direction, rules, the field's name.
        let mut dirs: Vec<(bool, Vec<Rule>)> = Vec::new();
        if ingress {
            let r = spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone().unwrap_or_default(), r.ports.clone()));
            dirs.push((true, r.collect()));
        }
        if egress {
            let r = spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone().unwrap_or_default(), r.ports.clone()));
            dirs.push((false, r.collect()));
        }
        for (is_in, rules) in &dirs {
            let field = if *is_in { "spec.ingress" } else { "spec.egress" };
            let (peer_dir, me_dir) = if *is_in { ("src", "dst") } else { ("dst", "src") };
            for (ri, (peers, ports)) in rules.iter().enumerate() {
                let field = format!("{field}[{ri}]");
                let port_specs: Vec<String> = match ports {
                    None => vec![String::new()],
                    Some(ps) if ps.is_empty() => vec![String::new()],
                    Some(ps) => ps
                        .iter()
                        .map(port_match)
                        .collect::<Result<_, _>>()
                        .map_err(|e| err(&format!("{field}.ports"), e))?,
                };
                // Peer sets: none (empty from/to: everyone), else one set
                // per selector peer (merged) and one per ipBlock.
                let mut peer_sets: Vec<Option<String>> = Vec::new();
                if peers.is_empty() {
                    peer_sets.push(None);
                } else {
                    let mut ips = BTreeSet::new();
                    let mut any_sel = false;
                    for (pi, peer) in peers.iter().enumerate() {
                        match peer_pods(peer, &ns, pods, namespaces)
                            .map_err(|e| err(&format!("{field}.peers[{pi}]"), e))?
                        {
                            Some(set) => {
                                any_sel = true;
                                ips.extend(set);
                            }
                            None => {
                                let blk = peer.ip_block.as_ref().expect("an ipBlock peer");
                                let n = format!(
                                    "KUBE-SRC-{}",
                                    hash16(&[&ns, &name, &field, &pi.to_string(), "blk"])
                                );
                                b.set_net(&n, &blk.cidr, blk.except.as_deref().unwrap_or(&[]));
                                peer_sets.push(Some(n));
                            }
                        }
                    }
                    if any_sel {
                        let n = format!("KUBE-SRC-{}", hash16(&[&ns, &name, &field, "pods"]));
                        b.set_ip(&n, &ips);
                        peer_sets.push(Some(n));
                    }
                }
                for ps in &peer_sets {
                    for pm in &port_specs {
                        let mut r = String::new();
                        let _ = write!(
                            r,
                            "-m comment --comment \"rule to mark traffic matching a network policy\""
                        );
                        if let Some(ps) = ps {
                            let _ = write!(r, " -m set --match-set {ps} {peer_dir}");
                        }
                        let _ = write!(r, " -m set --match-set {dst_set} {me_dir}");
                        if !pm.is_empty() {
                            let _ = write!(r, " {pm}");
                        }
                        r.push_str(" -j MARK --set-xmark 0x10000/0x10000");
                        b.rule(&chain, &r);
                        b.rule(&chain, "-m mark --mark 0x10000/0x10000 -j RETURN");
                    }
                }
            }
            for &i in &targets {
                if pods[i].local {
                    let e = pod_chains.entry(i).or_default();
                    if *is_in {
                        e.0.push(chain.clone());
                    } else {
                        e.1.push(chain.clone());
                    }
                }
            }
        }
    }

    // The pod firewall chains and the top chain.
    let mut top = String::new();
    let mut top_rules = 0;
    for (&i, (ins, outs)) in &pod_chains {
        let p = &pods[i];
        let fw = format!("KUBE-POD-FW-{}", hash16(&[&p.namespace, &p.name]));
        b.chains.push(fw.clone());
        let _ = writeln!(b.body, ":{fw} - [0:0]");
        b.rule(&fw, "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
        b.rule(&fw, "-m conntrack --ctstate INVALID -j DROP");
        b.rule(&fw, &format!("-d {} -m addrtype --src-type LOCAL -j ACCEPT", p.ip));
        for c in ins {
            b.rule(&fw, &format!("-d {} -j {c}", p.ip));
        }
        for c in outs {
            b.rule(&fw, &format!("-s {} -j {c}", p.ip));
        }
        b.rule(
            &fw,
            "-m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable",
        );
        b.rule(&fw, "-j MARK --set-xmark 0x0/0x10000");
        b.rule(&fw, "-j MARK --set-xmark 0x20000/0x20000");
        if !ins.is_empty() {
            let _ = writeln!(top, "-A KUBE-ROUTER-FORWARD -d {} -j {fw}", p.ip);
            top_rules += 1;
        }
        if !outs.is_empty() {
            let _ = writeln!(top, "-A KUBE-ROUTER-FORWARD -s {} -j {fw}", p.ip);
            top_rules += 1;
        }
    }
    let _ = writeln!(top, "-A KUBE-ROUTER-FORWARD -m mark --mark 0x20000/0x20000 -j ACCEPT");
    top_rules += 1;
    // Chain declarations first, then every chain's rules, then the jump.
    let mut ipt = String::from("*filter\n:KUBE-ROUTER-FORWARD - [0:0]\n");
    let (decls, rules): (Vec<&str>, Vec<&str>) = b.body.lines().partition(|l| l.starts_with(':'));
    for d in decls {
        let _ = writeln!(ipt, "{d}");
    }
    for r in rules {
        let _ = writeln!(ipt, "{r}");
    }
    ipt.push_str(&top);
    ipt.push_str("-I FORWARD 1 -j KUBE-ROUTER-FORWARD\nCOMMIT\n");
    let mut chains = vec!["KUBE-ROUTER-FORWARD".to_string()];
    chains.extend(b.chains);
    Ok(Ruleset {
        ipsets: b.ipsets,
        iptables: ipt,
        set_names: b.sets,
        chains,
        rules: b.rules + top_rules + 1,
        isolated_pods: pod_chains.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyIngressRule, NetworkPolicySpec};

    fn pod(name: &str, ip: [u8; 4], local: bool) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ip: Ipv4Addr::from(ip),
            local,
        }
    }

    fn sel(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn kube_router_shape() {
        let pods = [pod("a", [10, 0, 0, 1], false), pod("b", [10, 0, 0, 2], true)];
        let nss = [NsRef { name: "default".into(), labels: BTreeMap::new() }];
        let pol = NetworkPolicy {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(sel("pod", "b")),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(sel("pod", "a")),
                            ..Default::default()
                        },
                        NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: "192.0.2.0/24".into(),
                                except: Some(vec!["192.0.2.128/25".into()]),
                            }),
                            ..Default::default()
                        },
                    ]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(80)),
                        end_port: Some(90),
                        protocol: Some("TCP".into()),
                    }]),
                }]),
                ..Default::default()
            }),
        };
        let r = kube_router(&pods, &nss, std::slice::from_ref(&pol)).unwrap();
        assert_eq!(r.isolated_pods, 1);
        // The pod's set holds a's address; the ipBlock set its except as nomatch.
        assert!(r.ipsets.contains("add KUBE-SRC-") && r.ipsets.contains(" 10.0.0.1 -exist"));
        assert!(r.ipsets.contains("192.0.2.128/25 nomatch"));
        assert!(r.ipsets.contains("10.0.0.2 -exist"), "targets set");
        // Conntrack first in the pod chain, the jump by destination, REJECT.
        let fw: Vec<&str> =
            r.iptables.lines().filter(|l| l.starts_with("-A KUBE-POD-FW-")).collect();
        assert!(fw[0].ends_with("--ctstate RELATED,ESTABLISHED -j ACCEPT"), "{fw:?}");
        assert!(fw.iter().any(|l| l.contains("-d 10.0.0.2 -j KUBE-NWPLCY-")));
        assert!(fw.iter().any(|l| l.contains("-j REJECT")));
        assert_eq!(
            r.iptables.lines().filter(|l| l.contains("--dport 80:90 -j MARK")).count(),
            2,
            "one mark rule per peer set"
        );
        assert!(r.iptables.contains("-A KUBE-ROUTER-FORWARD -d 10.0.0.2 -j KUBE-POD-FW-"));
        assert!(r.cleanup().starts_with("*filter\n-D FORWARD -j KUBE-ROUTER-FORWARD\n"));
        // A node without the selected pod: nothing but the top chain.
        let remote = [pod("a", [10, 0, 0, 1], true), pod("b", [10, 0, 0, 2], false)];
        let r = kube_router(&remote, &nss, &[pol]).unwrap();
        assert_eq!(r.isolated_pods, 0);
        assert!(r.ipsets.is_empty());
    }
}
