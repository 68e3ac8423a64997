//! xlb-cni against the CNI spec with real network namespaces (root): the
//! binary is run as a runtime runs it (CNI_* environment, the plugin
//! configuration derived from the agent's configuration list on stdin)
//! from a private network namespace standing for the node, with the
//! datapath loaded and its pod programs pinned in a private bpffs directory
//! (what `xlb run --pod-network` does). Checked: ADD/CHECK/DEL and what
//! each leaves (the pod's interface, addresses, routes and MTU, the host
//! veth with xlb's programs, xlb_endpoints, the record, IPAM), DEL of an
//! unknown container, a repeated ADD, the spec's error codes for bad
//! configuration, versions, environment and namespaces, IPAM exhaustion
//! without a leak, an agent that is not ready, STATUS, GC, concurrent ADDs,
//! and an agent restart moving running pods to its programs.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use aya::programs::{SchedClassifier, TcAttachType};
use lb::{
    loader::{Dataplane, LoadOptions},
    view::DatapathView,
};
use serde_json::{json, Value};
use testkit::{
    netns::{in_private_netns, NamedNetns},
    pins::PinDir,
};
use xlb_cni::config::{conflist, ConflistOptions};

const PLUGIN: &str = env!("CARGO_BIN_EXE_xlb-cni");
const POD_MTU: u32 = 1436;
const HOST_MTU: u32 = 1500;

/// A node for the plugin: the agent's pins, state and IPAM directories.
struct Node {
    pins: PinDir,
    dir: PathBuf,
    dp: Option<Dataplane>,
    ranges: Vec<&'static str>,
}

impl Node {
    fn new(tag: &str, ranges: &[&'static str], agent: bool) -> Node {
        let pins = PinDir::new(tag);
        let dp = agent.then(|| {
            let mut dp = Dataplane::load(&LoadOptions::small(pins.path()))
                .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
            dp.pin_pod_programs().unwrap();
            dp
        });
        let dir = std::env::temp_dir().join(format!("xlb-cni-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Node { pins, dir, dp, ranges: ranges.to_vec() }
    }

    /// The plugin configuration a runtime derives from the agent's list.
    fn conf(&self, extra: Value) -> Value {
        let list: Value = serde_json::from_str(&conflist(&ConflistOptions {
            name: "xlb".into(),
            mtu: POD_MTU,
            host_mtu: HOST_MTU,
            pin_dir: self.pins.path().to_path_buf(),
            state_dir: self.dir.join("state"),
            ipam_dir: self.dir.join("ipam"),
            ranges: self.ranges.iter().map(|r| r.parse().unwrap()).collect(),
        }))
        .unwrap();
        let mut p = list["plugins"][0].clone();
        p["cniVersion"] = list["cniVersion"].clone();
        p["name"] = list["name"].clone();
        p.as_object_mut().unwrap().remove("capabilities");
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    fn ipam_files(&self) -> usize {
        std::fs::read_dir(self.dir.join("ipam/xlb"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }

    fn endpoints(&self) -> Vec<lb::view::EndpointListing> {
        DatapathView::open(self.pins.path()).unwrap().endpoints().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.dp = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One run of the plugin: (exit success, stdout parsed as JSON or Null).
fn cni(
    cmd: &str,
    id: &str,
    netns: Option<&Path>,
    ifname: &str,
    conf: &Value,
    args: &str,
) -> (bool, Value) {
    let mut c = Command::new(PLUGIN);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", Path::new(PLUGIN).parent().unwrap())
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = netns {
        c.env("CNI_NETNS", n);
    }
    let mut child = c.spawn().expect("running xlb-cni");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{cmd}: stdout {text:?}: {e}"))
    };
    if !out.status.success() {
        eprintln!("{cmd} {id}: {text} / {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), v)
}

fn code(v: &Value) -> u64 {
    v["code"].as_u64().unwrap_or_else(|| panic!("no error code in {v}"))
}

/// `ip -j` in `ns`, parsed.
fn ip_json(ns: &NamedNetns, args: &[&str]) -> Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    serde_json::from_str(&ns.ip(&a).unwrap()).unwrap()
}

/// The names of the programs attached to `iface` through TCX: (ingress,
/// egress), one pair per attachment.
fn tcx_programs(iface: &str) -> Vec<(String, String)> {
    let names = |d| -> Vec<String> {
        SchedClassifier::query_tcx(iface, d)
            .unwrap_or_else(|e| panic!("querying TCX of {iface}: {e}"))
            .1
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect()
    };
    names(TcAttachType::Ingress).into_iter().zip(names(TcAttachType::Egress)).collect()
}

fn host_link(name: &str) -> Option<Value> {
    let out = Command::new("ip").args(["-j", "link", "show", "dev", name]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone())
}

/// Runs `body` with the calling thread (and the plugin runs it spawns) in a
/// private namespace: the plugin's "host".
fn on_node(body: impl FnOnce() + Send) {
    testkit::require_root("CNI conformance tests");
    in_private_netns(|| {
        for (f, v) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
        ] {
            std::fs::write(f, v).unwrap();
        }
        body()
    })
    .unwrap();
}

#[test]
fn add_check_del_with_real_namespaces() {
    on_node(|| {
        let node = Node::new("acd", &["10.244.1.0/24", "2001:db8:244:1::/64"], true);
        let pod = NamedNetns::create("pod").unwrap();
        let conf = node.conf(json!({}));
        let (ok, res) = cni(
            "ADD",
            "c1",
            Some(&pod.path()),
            "eth0",
            &conf,
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        );
        assert!(ok, "{res}");
        // The result: host veth and pod interface, /32 and /128, defaults.
        assert_eq!(res["cniVersion"], "1.1.0");
        let ifs = res["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2);
        let host_if = ifs[0]["name"].as_str().unwrap().to_string();
        assert!(host_if.starts_with("xlb"), "{host_if}");
        assert_eq!(
            (ifs[1]["name"].as_str(), ifs[1]["mtu"].as_u64()),
            (Some("eth0"), Some(u64::from(POD_MTU)))
        );
        assert_eq!(ifs[1]["sandbox"].as_str(), Some(pod.path().to_str().unwrap()));
        let ips: Vec<&str> =
            res["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
        assert_eq!(ips, ["10.244.1.2/32", "2001:db8:244:1::2/128"]);
        assert_eq!(
            res["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}])
        );

        // In the pod: the interface up with the MTU, addresses, routes.
        let link = &ip_json(&pod, &["link", "show", "dev", "eth0"])[0];
        assert_eq!(link["mtu"].as_u64(), Some(u64::from(POD_MTU)));
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{link}");
        assert_eq!(link["address"].as_str(), ifs[1]["mac"].as_str());
        let addrs = pod.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(
            addrs.contains("10.244.1.2/32") && addrs.contains("2001:db8:244:1::2/128"),
            "{addrs}"
        );
        let r4 = pod.ip(&["route", "show"]).unwrap();
        assert!(
            r4.contains("default via 169.254.1.1 dev eth0") && r4.contains("169.254.1.1 dev eth0"),
            "{r4}"
        );
        let r6 = pod.ip(&["-6", "route", "show"]).unwrap();
        assert!(r6.contains("default via fe80::1 dev eth0"), "{r6}");

        // On the host: the veth, its gateway addresses, routes with the pod
        // MTU, xlb's programs attached (TCX), the endpoint, the record.
        let h = host_link(&host_if).expect("host veth");
        assert_eq!(h["mtu"].as_u64(), Some(u64::from(HOST_MTU)));
        let routes = testkit::netns::run("ip", &["route", "show", "10.244.1.2"]).unwrap();
        assert!(
            routes.contains(&format!("dev {host_if}"))
                && routes.contains(&format!("mtu {POD_MTU}")),
            "{routes}"
        );
        assert_eq!(
            tcx_programs(&host_if),
            [("xlb_pod_from".to_string(), "xlb_pod_to".to_string())]
        );
        let eps = node.endpoints();
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(
            eps[0].addrs,
            ["10.244.1.2".parse::<IpAddr>().unwrap(), "2001:db8:244:1::2".parse().unwrap()]
        );
        assert_eq!(eps[0].identity, lb::model::namespace_identity("default"));
        assert_eq!(Some(eps[0].mac.as_str()), ifs[1]["mac"].as_str());
        let (recs, errs) = xlb_cni::record::read_all(&node.dir.join("state"));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            (recs.len(), recs[0].pod.as_str(), recs[0].host_if.as_str()),
            (1, "default/web", host_if.as_str())
        );

        // CHECK with the result as prevResult.
        let check_conf = node.conf(json!({"prevResult": res}));
        let (ok, out) = cni("CHECK", "c1", Some(&pod.path()), "eth0", &check_conf, "");
        assert!(ok, "{out}");
        // CHECK notices what is gone.
        pod.ip(&["addr", "del", "10.244.1.2/32", "dev", "eth0"]).unwrap();
        let (ok, out) = cni("CHECK", "c1", Some(&pod.path()), "eth0", &check_conf, "");
        assert!(!ok && code(&out) == 103, "{out}");
        assert!(out["details"].as_str().unwrap().contains("10.244.1.2"), "{out}");

        // DEL: everything goes; a second DEL and a DEL without namespace succeed.
        let (ok, out) = cni("DEL", "c1", Some(&pod.path()), "eth0", &check_conf, "");
        assert!(ok, "{out}");
        assert!(host_link(&host_if).is_none(), "host veth left");
        assert!(pod.ip(&["link", "show", "dev", "eth0"]).is_err(), "pod interface left");
        assert!(node.endpoints().is_empty());
        assert_eq!(node.ipam_files(), 0);
        assert!(!node.pins.path().join(format!("links/pod_from_{host_if}")).exists());
        assert!(xlb_cni::record::read_all(&node.dir.join("state")).0.is_empty());
        assert!(cni("DEL", "c1", Some(&pod.path()), "eth0", &check_conf, "").0);
        assert!(cni("DEL", "c1", None, "eth0", &node.conf(json!({})), "").0);
    });
}

#[test]
fn del_of_an_unknown_container_succeeds() {
    on_node(|| {
        let node = Node::new("delunk", &["10.244.1.0/24"], true);
        let (ok, out) = cni(
            "DEL",
            "never-added",
            Some(Path::new("/run/netns/none-such")),
            "eth0",
            &node.conf(json!({})),
            "",
        );
        assert!(ok, "{out}");
        assert_eq!(out, Value::Null, "DEL prints nothing");
    });
}

#[test]
fn a_repeated_add_is_refused_and_leaves_the_first_intact() {
    on_node(|| {
        let node = Node::new("again", &["10.244.1.0/24"], true);
        let pod = NamedNetns::create("pod").unwrap();
        let conf = node.conf(json!({}));
        let (ok, first) = cni("ADD", "c1", Some(&pod.path()), "eth0", &conf, "");
        assert!(ok);
        let (ok, out) = cni("ADD", "c1", Some(&pod.path()), "eth0", &conf, "");
        assert!(!ok);
        assert_eq!(code(&out), 101, "{out}");
        // Same pod, another container id, interface name taken in the pod.
        let (ok, out) = cni("ADD", "c2", Some(&pod.path()), "eth0", &conf, "");
        assert!(!ok && code(&out) == 101, "{out}");
        assert_eq!(node.ipam_files(), 1, "the refused ADD gave its address back");
        let (ok, out) = cni(
            "CHECK",
            "c1",
            Some(&pod.path()),
            "eth0",
            &node.conf(json!({"prevResult": first})),
            "",
        );
        assert!(ok, "the first attachment is intact: {out}");
        // A second interface of the same container is another attachment.
        let (ok, out) = cni("ADD", "c1", Some(&pod.path()), "net1", &conf, "");
        assert!(ok, "{out}");
        assert_eq!(node.endpoints().len(), 2);
    });
}

#[test]
fn bad_input_gets_the_spec_error_codes() {
    on_node(|| {
        let node = Node::new("codes", &["10.244.1.0/24"], true);
        let pod = NamedNetns::create("pod").unwrap();
        let run = |conf: &str, netns: Option<&Path>, id: &str| {
            let mut c = Command::new(PLUGIN);
            c.env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", id)
                .env("CNI_IFNAME", "eth0");
            if let Some(n) = netns {
                c.env("CNI_NETNS", n);
            }
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success());
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(v["msg"].is_string() && v["details"].is_string(), "{v}");
            code(&v)
        };
        let good = node.conf(json!({})).to_string();
        assert_eq!(
            run("{\"cniVersion\": \"1.1.0\", ", Some(&pod.path()), "c1"),
            6,
            "malformed JSON"
        );
        assert_eq!(
            run(&good.replace("1.1.0", "0.0.7"), Some(&pod.path()), "c1"),
            1,
            "unknown cniVersion"
        );
        assert_eq!(
            run(&node.conf(json!({"mtu": 99})).to_string(), Some(&pod.path()), "c1"),
            7,
            "bad MTU"
        );
        assert_eq!(
            run(&node.conf(json!({"ipam": {"ranges": []}})).to_string(), Some(&pod.path()), "c1"),
            7
        );
        assert_eq!(run(&good, None, "c1"), 4, "no CNI_NETNS");
        assert_eq!(run(&good, Some(&pod.path()), "-bad id"), 4);
        assert_eq!(
            run(&good, Some(Path::new("/run/netns/xlb-none-such")), "c1"),
            3,
            "unknown netns"
        );
        assert_eq!(node.ipam_files(), 0, "no error left an allocation behind");
        // VERSION, whatever the configuration's version.
        let (ok, v) = cni("VERSION", "", None, "", &json!({"cniVersion": "1.0.0"}), "");
        assert!(ok);
        assert_eq!(v, json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}));
        // A 1.0.0 configuration gets a 1.0.0 result (no 1.1 fields).
        let mut c10 = node.conf(json!({}));
        c10["cniVersion"] = json!("1.0.0");
        let (ok, res) = cni("ADD", "c10", Some(&pod.path()), "eth0", &c10, "");
        assert!(ok, "{res}");
        assert_eq!(res["cniVersion"], "1.0.0");
        assert!(res["interfaces"][1].get("mtu").is_none(), "{res}");
    });
}

#[test]
fn ipam_exhaustion_is_its_error_and_leaks_nothing() {
    on_node(|| {
        // /29: five addresses to hand out.
        let node = Node::new("full", &["10.9.0.0/29"], true);
        let conf = node.conf(json!({}));
        let pods: Vec<NamedNetns> = (0..6).map(|_| NamedNetns::create("pod").unwrap()).collect();
        for (i, p) in pods.iter().take(5).enumerate() {
            let (ok, out) = cni("ADD", &format!("p{i}"), Some(&p.path()), "eth0", &conf, "");
            assert!(ok, "{out}");
        }
        let (ok, out) = cni("STATUS", "", None, "", &conf, "");
        assert!(!ok && code(&out) == 50, "STATUS says full: {out}");
        let (ok, out) = cni("ADD", "p5", Some(&pods[5].path()), "eth0", &conf, "");
        assert!(!ok);
        assert_eq!(code(&out), 100, "{out}");
        assert_eq!(node.ipam_files(), 5);
        assert!(
            pods[5].ip(&["link", "show", "dev", "eth0"]).is_err(),
            "no interface left in the pod"
        );
        // A DEL frees an address for the next.
        assert!(cni("DEL", "p0", Some(&pods[0].path()), "eth0", &conf, "").0);
        let (ok, out) = cni("ADD", "p5", Some(&pods[5].path()), "eth0", &conf, "");
        assert!(ok, "{out}");
    });
}

#[test]
fn an_agent_that_is_not_ready_means_try_again_later() {
    on_node(|| {
        let node = Node::new("noagent", &["10.244.1.0/24"], false);
        let pod = NamedNetns::create("pod").unwrap();
        let conf = node.conf(json!({}));
        let (ok, out) = cni("ADD", "c1", Some(&pod.path()), "eth0", &conf, "");
        assert!(!ok);
        assert_eq!(code(&out), 11, "{out}");
        let (ok, out) = cni("STATUS", "", None, "", &conf, "");
        assert!(!ok && code(&out) == 50, "{out}");
        assert_eq!(node.ipam_files(), 0);
    });
}

#[test]
fn static_addresses_gc_and_concurrent_adds() {
    on_node(|| {
        let node = Node::new("many", &["10.244.0.0/22", "2001:db8:244::/64"], true);
        let conf = node.conf(json!({}));
        // A static address (CNI_ARGS IP=, as the lab asks for its plan).
        let pod = NamedNetns::create("pod").unwrap();
        let (ok, res) = cni(
            "ADD",
            "static",
            Some(&pod.path()),
            "eth0",
            &conf,
            "IP=10.244.1.11,2001:db8:244::11",
        );
        assert!(ok, "{res}");
        assert_eq!(res["ips"][0]["address"], "10.244.1.11/32");
        assert_eq!(res["ips"][1]["address"], "2001:db8:244::11/128");
        let (ok, out) = cni(
            "ADD",
            "other",
            Some(&NamedNetns::create("pod").unwrap().path()),
            "eth0",
            &conf,
            "IP=10.244.1.11",
        );
        assert!(!ok && code(&out) == 104, "{out}");

        // 24 pods at once.
        let pods: Vec<NamedNetns> = (0..24).map(|_| NamedNetns::create("pod").unwrap()).collect();
        let results: Vec<(bool, Value)> = std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let conf = &conf;
                    s.spawn(move || cni("ADD", &format!("c{i}"), Some(&p.path()), "eth0", conf, ""))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen = std::collections::BTreeSet::new();
        for (ok, r) in &results {
            assert!(ok, "{r}");
            for ip in r["ips"].as_array().unwrap() {
                assert!(seen.insert(ip["address"].as_str().unwrap().to_string()), "{ip} twice");
            }
        }
        assert_eq!(node.endpoints().len(), 25);

        // GC: only "static" and c0 are still valid.
        let gc_conf = node.conf(json!({"cni.dev/valid-attachments": [
            {"containerID": "static", "ifname": "eth0"}, {"containerID": "c0", "ifname": "eth0"}]}));
        let (ok, out) = cni("GC", "", None, "", &gc_conf, "");
        assert!(ok, "{out}");
        assert_eq!(node.endpoints().len(), 2);
        assert_eq!(node.ipam_files(), 4);
        assert!(
            pods[3].ip(&["link", "show", "dev", "eth0"]).is_err(),
            "collected pod's interface gone"
        );
    });
}

#[test]
fn a_restarted_agent_moves_running_pods_to_its_programs() {
    on_node(|| {
        let mut node = Node::new("upgrade", &["10.244.1.0/24"], true);
        let pod = NamedNetns::create("pod").unwrap();
        let (ok, res) = cni("ADD", "c1", Some(&pod.path()), "eth0", &node.conf(json!({})), "");
        assert!(ok, "{res}");
        let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();
        let prog_ids = || {
            let mut ids: Vec<u32> = [TcAttachType::Ingress, TcAttachType::Egress]
                .into_iter()
                .flat_map(|d| SchedClassifier::query_tcx(&host_if, d).unwrap().1)
                .map(|p| p.id())
                .collect();
            ids.sort();
            ids
        };
        let before = prog_ids();
        assert_eq!(before.len(), 2, "from and to");
        // A new agent: loads its programs and pins them; running pods move.
        node.dp = None;
        let mut dp = Dataplane::load(&LoadOptions::small(node.pins.path())).unwrap();
        assert_eq!(dp.pin_pod_programs().unwrap(), 2, "both links of the pod moved");
        let after = prog_ids();
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|id| !before.contains(id)), "{before:?} -> {after:?}");
        // Stopping an agent detaches its own links, not the pods'.
        Dataplane::detach_all(node.pins.path()).unwrap();
        assert_eq!(prog_ids(), after);
        node.dp = Some(dp);
    });
}
