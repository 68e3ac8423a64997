//! What a CNI invocation gives the plugin: the network configuration on
//! stdin ([`NetConf`]: spec keys, xlb-cni's own, the runtime's
//! `runtimeConfig`, `prevResult`, `cni.dev/valid-attachments`), the
//! CNI_* environment ([`Invocation`]), and the [`CniResult`] an ADD returns.
//! Also renders the configuration list the agent installs
//! ([`conflist`]).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use lb::model::Cidr;
use serde::{Deserialize, Serialize};

use crate::error::{err, CniError, Code};

/// The specification versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
/// The plugin's `type` (its binary's name).
pub const PLUGIN_TYPE: &str = "xlb-cni";
/// The pods' IPv4 gateway: an address every host-side veth carries (so the
/// host answers ARP for it whatever arp_ignore says); off every pod range.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway: link-local, on every host-side veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const DEFAULT_PIN_DIR: &str = lb::loader::DEFAULT_PIN_DIR;
pub const DEFAULT_STATE_DIR: &str = "/run/xlb/cni";
pub const DEFAULT_IPAM_DIR: &str = "/run/xlb/ipam";

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_ipam_dir() -> PathBuf {
    PathBuf::from(DEFAULT_IPAM_DIR)
}
fn default_mtu() -> u32 {
    1500
}

/// The `ipam` section (handled in the plugin, not delegated).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Ipam {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// This node's pod ranges (its Node's spec.podCIDRs), one per family.
    pub ranges: Vec<String>,
    /// Where allocations are kept (a tmpfs: they outlive the agent, not the
    /// node, like the pods).
    #[serde(rename = "dataDir", default = "default_ipam_dir")]
    pub data_dir: PathBuf,
}

/// `runtimeConfig` (capabilities the runtime fills in).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The `ips` capability: static addresses ("10.244.1.11/24" or bare).
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin configuration as the runtime hands it over.
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The pod interface's MTU: the underlay's minus the overlay's overhead.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The host-side veth's MTU (default: `mtu`): larger lets an oversize
    /// packet reach xlb, which answers it with an ICMP too big.
    #[serde(rename = "hostMtu")]
    pub host_mtu: Option<u32>,
    /// The agent's bpffs pin directory (maps, pod programs, links).
    #[serde(rename = "pinDir", default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Where the plugin records each attachment for the agent.
    #[serde(rename = "stateDir", default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub ipam: Option<Ipam>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Decodes stdin: malformed JSON is code 6, an unknown cniVersion
    /// code 1, a configuration xlb-cni cannot use code 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| err(Code::Decode, "decoding the network configuration", e))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {:?}: xlb-cni supports {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let bad = |details: String| {
            Err(CniError::new(Code::InvalidConfig, "invalid network configuration", details))
        };
        let name_ok = conf.name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && conf.name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return bad(format!(
                "name {:?}: want an alphanumeric start, then [A-Za-z0-9_.-]",
                conf.name
            ));
        }
        if !(576..=65535).contains(&conf.mtu) {
            return bad(format!("mtu {}: outside 576..=65535", conf.mtu));
        }
        if conf.host_mtu.is_some_and(|h| h < conf.mtu || h > 65535) {
            return bad(format!("hostMtu {:?}: want mtu ({}) to 65535", conf.host_mtu, conf.mtu));
        }
        Ok(conf)
    }

    /// The ranges of the `ipam` section (at least one; at most one per
    /// family), for ADD and STATUS.
    pub fn ranges(&self) -> Result<Vec<Cidr>, CniError> {
        let bad = |details: String| {
            CniError::new(Code::InvalidConfig, "invalid network configuration", details)
        };
        let ipam = self.ipam.as_ref().ok_or_else(|| bad("no ipam section".into()))?;
        if ipam.ranges.is_empty() {
            return Err(bad("ipam.ranges is empty".into()));
        }
        let mut out: Vec<Cidr> = Vec::new();
        for (i, r) in ipam.ranges.iter().enumerate() {
            let c: Cidr = r.parse().map_err(|e| bad(format!("ipam.ranges[{i}]: {e}")))?;
            let max = if c.addr.is_ipv4() { 30 } else { 126 };
            if c.len > max {
                return Err(bad(format!("ipam.ranges[{i}]: {c} is too small to allocate from")));
            }
            if out.iter().any(|o| o.addr.is_ipv4() == c.addr.is_ipv4()) {
                return Err(bad(format!("ipam.ranges[{i}]: a second range of the same family")));
            }
            out.push(c.network());
        }
        Ok(out)
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam.as_ref().map_or_else(default_ipam_dir, |i| i.data_dir.clone())
    }
}

/// The CNI_* environment of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// CNI_ARGS, parsed (K8S_POD_NAMESPACE, K8S_POD_NAME, IP, ...).
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the environment through `get` (std::env::var, or a test's map).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let command = get("CNI_COMMAND").unwrap_or_default();
        let mut inv = Invocation {
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            command,
            args: BTreeMap::new(),
        };
        for kv in get("CNI_ARGS").unwrap_or_default().split(';').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some((k, v)) => {
                    inv.args.insert(k.to_string(), v.to_string());
                }
                None => {
                    return Err(CniError::new(
                        Code::InvalidEnv,
                        "invalid CNI_ARGS",
                        format!("{kv:?} is not KEY=VALUE"),
                    ))
                }
            }
        }
        Ok(inv)
    }

    /// Checks the variables `command` needs (names in the error, code 4).
    pub fn require(&self, netns: bool) -> Result<(), CniError> {
        let mut missing = Vec::new();
        let id_ok = self.container_id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && self.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !id_ok {
            missing.push("CNI_CONTAINERID");
        }
        if self.ifname.is_empty() || self.ifname.len() > 15 || self.ifname.contains(['/', ' ']) {
            missing.push("CNI_IFNAME");
        }
        if netns && self.netns.is_none() {
            missing.push("CNI_NETNS");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                Code::InvalidEnv,
                "invalid environment variables",
                format!("missing or invalid: {}", missing.join(", ")),
            ))
        }
    }

    /// The pod's namespace (CNI_ARGS K8S_POD_NAMESPACE).
    pub fn pod_namespace(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAMESPACE").map(String::as_str)
    }

    /// "namespace/pod" when the runtime says, else the container id.
    pub fn pod_name(&self) -> String {
        match (self.args.get("K8S_POD_NAMESPACE"), self.args.get("K8S_POD_NAME")) {
            (Some(ns), Some(p)) => format!("{ns}/{p}"),
            _ => self.container_id.clone(),
        }
    }
}

/// An interface of an ADD result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The ADD result (SPEC.md section 5).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub dns: serde_json::Value,
}

impl CniResult {
    /// The pod's addresses the result names (without their prefixes).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter_map(|i| i.address.split('/').next().and_then(|a| a.parse().ok()))
            .collect()
    }
}

/// What the agent writes as the node's CNI configuration list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflistOptions {
    pub name: String,
    pub mtu: u32,
    pub host_mtu: u32,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub ranges: Vec<Cidr>,
}

/// The configuration list (JSON) for `opts`: one plugin, xlb-cni, with the
/// `ips` capability for static addresses.
pub fn conflist(opts: &ConflistOptions) -> String {
    let v = serde_json::json!({
        "cniVersion": "1.1.0",
        "cniVersions": SUPPORTED_VERSIONS,
        "name": opts.name,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "mtu": opts.mtu,
            "hostMtu": opts.host_mtu,
            "pinDir": opts.pin_dir,
            "stateDir": opts.state_dir,
            "ipam": {
                "type": "xlb",
                "ranges": opts.ranges.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "dataDir": opts.ipam_dir,
            },
            "capabilities": {"ips": true},
        }],
    });
    serde_json::to_string_pretty(&v).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"xlb","type":"xlb-cni","mtu":1450,
        "ipam":{"type":"xlb","ranges":["10.244.1.0/24","2001:db8:244:1::/64"],"dataDir":"/tmp/x"}}"#;

    #[test]
    fn configuration_errors_carry_the_spec_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, Code::Decode);
        let v = GOOD.replace("1.1.0", "0.9.9");
        let e = NetConf::parse(v.as_bytes()).unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion);
        assert!(e.details.contains("1.0.0, 1.1.0"), "{e}");
        let e = NetConf::parse(GOOD.replace("1450", "100").as_bytes()).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        let c = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.ranges().unwrap().len(), 2);
        let two = GOOD.replace("2001:db8:244:1::/64", "10.9.0.0/16");
        assert_eq!(
            NetConf::parse(two.as_bytes()).unwrap().ranges().unwrap_err().code,
            Code::InvalidConfig
        );
    }

    #[test]
    fn the_environment_is_checked_by_name() {
        let env = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Invocation::from_env(move |k| m.get(k).cloned())
        };
        let inv = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
        ])
        .unwrap();
        let e = inv.require(true).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
        assert!(e.details.contains("CNI_CONTAINERID") && e.details.contains("CNI_NETNS"), "{e}");
        assert_eq!(inv.pod_name(), "ns/p");
        assert_eq!(env(&[("CNI_ARGS", "novalue")]).unwrap_err().code, Code::InvalidEnv);
    }

    #[test]
    fn the_conflist_round_trips_through_the_parser() {
        let text = conflist(&ConflistOptions {
            name: "xlb".into(),
            mtu: 1536,
            host_mtu: 1600,
            pin_dir: "/sys/fs/bpf/xlb".into(),
            state_dir: "/run/xlb/cni".into(),
            ipam_dir: "/run/xlb/ipam".into(),
            ranges: vec!["10.244.1.0/24".parse().unwrap()],
        });
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut plugin = v["plugins"][0].clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        plugin["name"] = v["name"].clone();
        let c = NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!((c.mtu, c.host_mtu), (1536, Some(1600)));
        assert_eq!(c.ranges().unwrap(), vec!["10.244.1.0/24".parse::<Cidr>().unwrap()]);
    }
}
