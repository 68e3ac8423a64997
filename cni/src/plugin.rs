//! The CNI operations: ADD, DEL, CHECK, STATUS, GC and VERSION, as the
//! runtime calls them ([`run`]). ADD makes the pod's network in this order,
//! undoing what it made if a later step fails:
//!
//!   1. refuse a repeated ADD (the attachment's record exists: code 101),
//!      an unready agent (pod programs not pinned: code 11, try again), a
//!      namespace that does not exist (code 3);
//!   2. addresses from this node's pod ranges (IPAM, code 100 when full);
//!   3. a veth pair, its peer created inside the pod's namespace as
//!      CNI_IFNAME with the pod MTU; inside: link up, the addresses (/32 and
//!      /128), a link route to the gateway 169.254.1.1 and default routes
//!      via it and via fe80::1;
//!   4. the host side: forwarding on, up, the gateway addresses, a route to
//!      each pod address with the pod MTU as its path MTU;
//!   5. xlb's programs attached to the host side (TCX, links pinned beside
//!      the agent's), the pod's entries in xlb_endpoints, the record for the
//!      agent.
//!
//! DEL undoes all of it and succeeds whatever is already gone. CHECK
//! compares the pod's network with `prevResult` and xlb's state.
use std::{collections::BTreeSet, net::IpAddr, path::Path};

use lb::model::Endpoint;

use crate::{
    config::{
        CniResult, Interface, Invocation, IpConfig, NetConf, RouteConfig, GATEWAY_V4, GATEWAY_V6,
        SUPPORTED_VERSIONS,
    },
    error::{err, CniError, Code},
    ipam::{Ipam, Owner},
    netlink::{Link, Netlink, SCOPE_LINK, SCOPE_UNIVERSE},
    netns::{self, Netns},
    record::{self, host_ifname, EndpointRecord},
};

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> CniError {
    err(Code::Setup, what, e)
}

/// Runs one invocation: the result JSON to print on success (None: the
/// operation prints nothing), or the error (and the version to report it in).
pub fn run(inv: &Invocation, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match inv.command.as_str() {
        "VERSION" => Ok(Some(version(stdin))),
        "ADD" => {
            let conf = NetConf::parse(stdin)?;
            let result = add(inv, &conf)?;
            Ok(Some(serde_json::to_string(&result).expect("results serialize")))
        }
        "DEL" => {
            let conf = NetConf::parse(stdin)?;
            del(inv, &conf).map(|()| None)
        }
        "CHECK" => {
            let conf = NetConf::parse(stdin)?;
            check(inv, &conf).map(|()| None)
        }
        "STATUS" => {
            let conf = NetConf::parse(stdin)?;
            status(&conf).map(|()| None)
        }
        "GC" => {
            let conf = NetConf::parse(stdin)?;
            gc(&conf).map(|()| None)
        }
        other => Err(CniError::new(
            Code::InvalidEnv,
            "invalid environment variables",
            format!("CNI_COMMAND {other:?}: want ADD, DEL, CHECK, STATUS, GC or VERSION"),
        )),
    }
}

/// VERSION: the versions spoken, in the version asked about.
fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| "1.1.0".into());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// Static addresses the runtime asks for: CNI_ARGS IP=a[,b] and the `ips`
/// capability.
fn requested(inv: &Invocation, conf: &NetConf) -> Result<Vec<IpAddr>, CniError> {
    let mut out = Vec::new();
    let from_args: Option<Vec<String>> =
        inv.args.get("IP").map(|s| s.split(',').map(str::to_string).collect());
    for s in from_args.unwrap_or_default().iter().chain(&conf.runtime_config.ips) {
        let a = s.split('/').next().unwrap_or("");
        out.push(a.trim().parse().map_err(|_| {
            CniError::new(Code::InvalidConfig, "invalid requested address", format!("{s:?}"))
        })?);
    }
    Ok(out)
}

fn open_netns(inv: &Invocation) -> Result<Netns, CniError> {
    let path = inv.netns.as_deref().expect("required");
    Netns::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            "container network namespace unknown",
            format!("{}: {e}", path.display()),
        )
    })
}

/// What ADD made, so a failure can undo exactly that.
#[derive(Default)]
struct Made {
    veth: Option<u32>,
    attached: bool,
    endpoint: Option<Vec<IpAddr>>,
}

fn add(inv: &Invocation, conf: &NetConf) -> Result<CniResult, CniError> {
    inv.require(true)?;
    let ranges = conf.ranges()?;
    if record::read(&conf.state_dir, &inv.container_id, &inv.ifname).is_some() {
        return Err(CniError::new(
            Code::InterfaceExists,
            "already added",
            format!(
                "container {} interface {} has a network: DEL it first",
                inv.container_id, inv.ifname
            ),
        ));
    }
    if !lb::loader::pod_programs_pinned(&conf.pin_dir) {
        return Err(CniError::new(
            Code::TryAgainLater,
            "xlb agent not ready",
            format!(
                "no pod programs pinned under {} (is `xlb run --pod-network` running?)",
                conf.pin_dir.display()
            ),
        ));
    }
    let ns = open_netns(inv)?;
    let owner = Owner { container_id: inv.container_id.clone(), ifname: inv.ifname.clone() };
    let ipam = Ipam::open(&conf.ipam_dir(), &conf.name, ranges)?;
    let addrs = ipam.allocate(&owner, &requested(inv, conf)?)?;
    let mut made = Made::default();
    match make(inv, conf, &ns, &addrs, &mut made) {
        Ok(result) => Ok(result),
        Err(e) => {
            undo(conf, inv, &made);
            let _ = ipam.release(&owner);
            Err(e)
        }
    }
}

fn undo(conf: &NetConf, inv: &Invocation, made: &Made) {
    let host_if = host_ifname(&inv.container_id, &inv.ifname);
    if let (Some(addrs), Ok(mut map)) = (&made.endpoint, lb::maps::EndpointMap::open(&conf.pin_dir))
    {
        let _ = map.remove(addrs, made.veth);
    }
    if made.attached {
        let _ = lb::loader::detach_pod(&conf.pin_dir, &host_if);
    }
    if let (Some(index), Ok(mut nl)) = (made.veth, Netlink::open()) {
        let _ = nl.del_link(index);
    }
    let _ = record::remove(&conf.state_dir, &inv.container_id, &inv.ifname);
}

fn make(
    inv: &Invocation,
    conf: &NetConf,
    ns: &Netns,
    addrs: &[(IpAddr, lb::model::Cidr)],
    made: &mut Made,
) -> Result<CniResult, CniError> {
    let host_if = host_ifname(&inv.container_id, &inv.ifname);
    let host_mtu = conf.host_mtu.unwrap_or(conf.mtu);
    let mut nl = Netlink::open().map_err(|e| setup_err("netlink", e))?;
    match nl.add_veth(&host_if, host_mtu, &inv.ifname, conf.mtu, ns.fd()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(CniError::new(
                Code::InterfaceExists,
                "interface exists",
                format!("{} in {} or {host_if} on the host: {e}", inv.ifname, ns.path().display()),
            ))
        }
        Err(e) => return Err(setup_err("creating the veth pair", e)),
    }
    let host = nl
        .link(&host_if)
        .map_err(|e| setup_err("reading the host veth", e))?
        .ok_or_else(|| setup_err("reading the host veth", format!("{host_if} vanished")))?;
    made.veth = Some(host.index);

    // Inside the pod.
    let ifname = inv.ifname.clone();
    let pod_addrs: Vec<IpAddr> = addrs.iter().map(|(a, _)| *a).collect();
    let pod: Link = ns
        .run(|| -> Result<Link, CniError> {
            let mut nl = Netlink::open().map_err(|e| setup_err("netlink in the pod", e))?;
            let link = nl
                .link(&ifname)
                .map_err(|e| setup_err("reading the pod interface", e))?
                .ok_or_else(|| setup_err("reading the pod interface", "not created"))?;
            let step = |what: &str, r: std::io::Result<()>| r.map_err(|e| setup_err(what, e));
            if pod_addrs.iter().any(IpAddr::is_ipv6) {
                // No router advertisements: the routes are the plugin's.
                let _ = netns::sysctl(&format!("net/ipv6/conf/{ifname}/accept_ra"), "0");
            }
            step("pod interface up", nl.set_up(link.index))?;
            for a in &pod_addrs {
                let len = if a.is_ipv4() { 32 } else { 128 };
                step("pod address", nl.add_addr(link.index, *a, len, SCOPE_UNIVERSE))?;
            }
            if pod_addrs.iter().any(IpAddr::is_ipv4) {
                let gw = IpAddr::V4(GATEWAY_V4);
                step("gateway route", nl.add_route(gw, 32, None, link.index, SCOPE_LINK, None))?;
                let any = IpAddr::from([0u8; 4]);
                step(
                    "default route",
                    nl.add_route(any, 0, Some(gw), link.index, SCOPE_UNIVERSE, None),
                )?;
            }
            if pod_addrs.iter().any(IpAddr::is_ipv6) {
                let any = IpAddr::from([0u8; 16]);
                let gw = IpAddr::V6(GATEWAY_V6);
                step(
                    "IPv6 default route",
                    nl.add_route(any, 0, Some(gw), link.index, SCOPE_UNIVERSE, None),
                )?;
            }
            Ok(link)
        })
        .map_err(|e| err(Code::UnknownContainer, "entering the pod's namespace", e))??;

    // The host side.
    for (key, on) in [
        (format!("net/ipv4/conf/{host_if}/forwarding"), true),
        (format!("net/ipv6/conf/{host_if}/forwarding"), true),
        (format!("net/ipv6/conf/{host_if}/accept_ra"), false),
    ] {
        let v = if on { "1" } else { "0" };
        netns::sysctl(&key, v).map_err(|e| setup_err(&format!("sysctl {key}"), e))?;
    }
    let step = |what: &str, r: std::io::Result<()>| r.map_err(|e| setup_err(what, e));
    step("host veth up", nl.set_up(host.index))?;
    step("gateway address", nl.add_addr(host.index, IpAddr::V4(GATEWAY_V4), 32, SCOPE_LINK))?;
    step("IPv6 gateway address", nl.add_addr(host.index, IpAddr::V6(GATEWAY_V6), 64, SCOPE_LINK))?;
    for (a, _) in addrs {
        let len = if a.is_ipv4() { 32 } else { 128 };
        step(
            "route to the pod",
            nl.add_route(*a, len, None, host.index, SCOPE_LINK, Some(conf.mtu)),
        )?;
    }

    // xlb: programs on the host side, the pod in xlb_endpoints, the record.
    lb::loader::attach_pod(&conf.pin_dir, &host_if).map_err(|e| match e {
        lb::loader::LoadError::NotReady { .. } => {
            err(Code::TryAgainLater, "xlb agent not ready", e)
        }
        e => setup_err("attaching xlb's programs", e),
    })?;
    made.attached = true;
    let identity = lb::model::namespace_identity(inv.pod_namespace().unwrap_or("default"));
    let ep = Endpoint {
        name: inv.pod_name(),
        addrs: addrs.iter().map(|(a, _)| *a).collect(),
        ifindex: host.index,
        mac: pod.mac,
        host_mac: host.mac,
        identity,
    };
    made.endpoint = Some(ep.addrs.clone());
    lb::maps::EndpointMap::open(&conf.pin_dir)
        .and_then(|mut m| m.insert(&ep))
        .map_err(|e| setup_err("writing xlb_endpoints", e))?;
    let rec = EndpointRecord {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: ns.path().display().to_string(),
        pod: ep.name.clone(),
        host_if: host_if.clone(),
        ifindex: host.index,
        mac: mac_text(&pod.mac),
        host_mac: mac_text(&host.mac),
        addrs: ep.addrs.clone(),
        identity,
    };
    rec.write(&conf.state_dir).map_err(|e| err(Code::Io, "writing the attachment record", e))?;

    let v11 = conf.cni_version == "1.1.0";
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: host_if,
                mac: mac_text(&host.mac),
                mtu: v11.then_some(host_mtu),
                sandbox: String::new(),
            },
            Interface {
                name: inv.ifname.clone(),
                mac: mac_text(&pod.mac),
                mtu: v11.then_some(conf.mtu),
                sandbox: ns.path().display().to_string(),
            },
        ],
        ips: addrs
            .iter()
            .map(|(a, _)| IpConfig {
                address: format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 }),
                gateway: Some(if a.is_ipv4() {
                    GATEWAY_V4.to_string()
                } else {
                    GATEWAY_V6.to_string()
                }),
                interface: Some(1),
            })
            .collect(),
        routes: addrs
            .iter()
            .map(|(a, _)| {
                if a.is_ipv4() {
                    RouteConfig { dst: "0.0.0.0/0".into(), gw: Some(GATEWAY_V4.to_string()) }
                } else {
                    RouteConfig { dst: "::/0".into(), gw: Some(GATEWAY_V6.to_string()) }
                }
            })
            .collect(),
        dns: serde_json::json!({}),
    })
}

/// Removes one attachment: veth (and with it the pod's side), program
/// links, xlb_endpoints entries, record, addresses. Whatever is missing is
/// skipped.
fn teardown(conf: &NetConf, owner: &Owner) -> Result<(), CniError> {
    let host_if = host_ifname(&owner.container_id, &owner.ifname);
    let rec = record::read(&conf.state_dir, &owner.container_id, &owner.ifname);
    let mut nl = Netlink::open().map_err(|e| setup_err("netlink", e))?;
    let link = nl.link(&host_if).map_err(|e| setup_err("reading the host veth", e))?;
    if let Some(l) = &link {
        match nl.del_link(l.index) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => return Err(setup_err("deleting the veth", e)),
        }
    }
    lb::loader::detach_pod(&conf.pin_dir, &host_if).map_err(|e| setup_err("unpinning links", e))?;
    let ipam =
        conf.ranges().ok().map(|r| Ipam::open(&conf.ipam_dir(), &conf.name, r)).transpose()?;
    let mut addrs: Vec<IpAddr> = rec.as_ref().map(|r| r.addrs.clone()).unwrap_or_default();
    if let Some(ipam) = &ipam {
        addrs.extend(ipam.held(owner)?);
    }
    if let Ok(mut map) = lb::maps::EndpointMap::open(&conf.pin_dir) {
        // Only entries naming this attachment's veth: an address already
        // given to another pod keeps that pod's entry.
        let ifindex = rec.as_ref().map(|r| r.ifindex).or(link.as_ref().map(|l| l.index));
        map.remove(&addrs, ifindex).map_err(|e| setup_err("removing xlb_endpoints entries", e))?;
    }
    record::remove(&conf.state_dir, &owner.container_id, &owner.ifname)
        .map_err(|e| err(Code::Io, "removing the attachment record", e))?;
    if let Some(ipam) = &ipam {
        ipam.release(owner)?;
    }
    Ok(())
}

fn del(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    inv.require(false)?;
    teardown(conf, &Owner { container_id: inv.container_id.clone(), ifname: inv.ifname.clone() })
}

/// What CHECK reads inside the pod: its interface, that interface's
/// addresses, whether the IPv4 and IPv6 default routes are there.
type Inside = (Option<Link>, Vec<(IpAddr, u8)>, bool, bool);

fn check(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    inv.require(true)?;
    let fail = |details: String| Err(CniError::new(Code::CheckFailed, "check failed", details));
    let prev: CniResult = match &conf.prev_result {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| err(Code::Decode, "decoding prevResult", e))?,
        None => {
            return Err(CniError::new(
                Code::InvalidConfig,
                "invalid network configuration",
                "CHECK needs prevResult",
            ))
        }
    };
    let ns = open_netns(inv)?;
    let Some(rec) = record::read(&conf.state_dir, &inv.container_id, &inv.ifname) else {
        return fail(format!(
            "no record of container {} interface {}",
            inv.container_id, inv.ifname
        ));
    };
    let mut nl = Netlink::open().map_err(|e| setup_err("netlink", e))?;
    match nl.link(&rec.host_if).map_err(|e| setup_err("reading the host veth", e))? {
        Some(l) if l.index == rec.ifindex && l.up => {}
        other => {
            return fail(format!(
                "host veth {}: {other:?}, want index {} up",
                rec.host_if, rec.ifindex
            ))
        }
    }
    let want: BTreeSet<IpAddr> = prev.addresses().into_iter().collect();
    let ifname = inv.ifname.clone();
    let inside = ns
        .run(|| -> std::io::Result<Inside> {
            let mut nl = Netlink::open()?;
            let link = nl.link(&ifname)?;
            let addrs = link.as_ref().map(|l| nl.addrs(l.index)).transpose()?.unwrap_or_default();
            let default =
                |r: &crate::netlink::Route, gw: IpAddr| r.dst.1 == 0 && r.gateway == Some(gw);
            let v4 = nl.routes(false)?.iter().any(|r| default(r, IpAddr::V4(GATEWAY_V4)));
            let v6 = nl.routes(true)?.iter().any(|r| default(r, IpAddr::V6(GATEWAY_V6)));
            Ok((link, addrs, v4, v6))
        })
        .map_err(|e| err(Code::UnknownContainer, "entering the pod's namespace", e))?
        .map_err(|e| setup_err("reading the pod's network", e))?;
    let (link, addrs, v4, v6) = inside;
    match link {
        Some(l) if l.up => {}
        other => return fail(format!("{}: {other:?}, want it up", inv.ifname)),
    }
    let have: BTreeSet<IpAddr> = addrs.iter().map(|(a, _)| *a).collect();
    if let Some(missing) = want.iter().find(|a| !have.contains(a)) {
        return fail(format!("{}: no address {missing}", inv.ifname));
    }
    if want.iter().any(IpAddr::is_ipv4) && !v4 {
        return fail(format!("no default route via {GATEWAY_V4}"));
    }
    if want.iter().any(IpAddr::is_ipv6) && !v6 {
        return fail(format!("no IPv6 default route via {GATEWAY_V6}"));
    }
    let ranges = conf.ranges()?;
    let owner = Owner { container_id: inv.container_id.clone(), ifname: inv.ifname.clone() };
    let held: BTreeSet<IpAddr> =
        Ipam::open(&conf.ipam_dir(), &conf.name, ranges)?.held(&owner)?.into_iter().collect();
    if !want.is_subset(&held) {
        return fail(format!("IPAM holds {held:?} for this attachment, the result names {want:?}"));
    }
    for kind in ["pod_from", "pod_to"] {
        let pin = conf.pin_dir.join("links").join(format!("{kind}_{}", rec.host_if));
        if !pin.exists() {
            return fail(format!("xlb's program link {} is missing", pin.display()));
        }
    }
    let view = lb::view::DatapathView::open(&conf.pin_dir)
        .map_err(|e| err(Code::CheckFailed, "reading xlb's maps", e))?;
    let eps = view.endpoints().map_err(|e| err(Code::CheckFailed, "reading xlb_endpoints", e))?;
    let mine: BTreeSet<IpAddr> =
        eps.iter().filter(|e| e.ifindex == rec.ifindex).flat_map(|e| e.addrs.clone()).collect();
    if !want.is_subset(&mine) {
        return fail(format!(
            "xlb_endpoints has {mine:?} on ifindex {}, want {want:?}",
            rec.ifindex
        ));
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let ranges = conf.ranges()?;
    if !lb::loader::pod_programs_pinned(&conf.pin_dir) {
        return Err(CniError::new(
            Code::NotAvailable,
            "xlb agent not ready",
            format!("no pod programs pinned under {}", conf.pin_dir.display()),
        ));
    }
    let full = Ipam::open(&conf.ipam_dir(), &conf.name, ranges)?.full_ranges()?;
    if !full.is_empty() {
        let list: Vec<String> = full.iter().map(ToString::to_string).collect();
        return Err(CniError::new(
            Code::NotAvailable,
            "no free address",
            format!("full: {}", list.join(", ")),
        ));
    }
    Ok(())
}

/// GC: every attachment the runtime does not list as valid is torn down —
/// those with a record and those holding addresses.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: BTreeSet<Owner> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| Owner { container_id: a.container_id.clone(), ifname: a.ifname.clone() })
        .collect();
    let mut stale: BTreeSet<Owner> = BTreeSet::new();
    let (records, _) = record::read_all(&conf.state_dir);
    stale.extend(
        records.into_iter().map(|r| Owner { container_id: r.container_id, ifname: r.ifname }),
    );
    if let Ok(ranges) = conf.ranges() {
        let ipam = Ipam::open(&conf.ipam_dir(), &conf.name, ranges)?;
        stale.extend(ipam.allocations()?.into_iter().map(|(_, o)| o));
    }
    for owner in stale.difference(&valid) {
        teardown(conf, owner)?;
    }
    Ok(())
}

/// For tests and the agent: whether `dir` holds the pod programs.
pub fn agent_ready(pin_dir: &Path) -> bool {
    lb::loader::pod_programs_pinned(pin_dir)
}
