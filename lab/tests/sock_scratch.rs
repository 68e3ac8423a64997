use lab::cgroup::{self, Cgroup};
use lb::{
    datapath::Datapath,
    loader::{Dataplane, LoadOptions},
    model::*,
};
use std::{net::IpAddr, process::Stdio};
use testkit::{netns::NamedNetns, pins::PinDir};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn scratch() {
    let ns = NamedNetns::create("sock").unwrap();
    for a in ["10.244.1.11/32", "10.244.1.12/32"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    for a in ["fd00::11/128", "fd00::12/128"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    let probe = env!("CARGO_BIN_EXE_xlb-probe");
    let cg =
        Cgroup::create(cgroup::root().unwrap().join(format!("xlbt{}-scratch", std::process::id())))
            .unwrap();
    let mut servers = Vec::new();
    for (name, port) in [("b1", "8081"), ("b2", "8082")] {
        let mut c = ns.nsenter(probe);
        c.args(["serve", "--name", name, "--tcp", port, "--udp", port]).stdout(Stdio::null());
        servers.push(c.spawn().unwrap());
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pins = PinDir::new("sock");
    let mut dp = Dataplane::load(&LoadOptions::small(pins.path())).unwrap();
    dp.attach_sock(cg.path()).unwrap();
    let mut d = Datapath::open(pins.path()).unwrap();
    let mut svcs = Vec::new();
    for (name, proto, vport, v6) in [
        ("web", Proto::Tcp, 80, false),
        ("dns", Proto::Udp, 53, false),
        ("web6", Proto::Tcp, 80, true),
    ] {
        let mut s = Service::new(ServiceKey::new("default", name, "p"));
        let vip = if v6 { ip("fd00:96::10") } else { ip("10.96.0.10") };
        s.sock_frontends =
            vec![Frontend { addr: vip, port: vport, proto, kind: FrontendKind::ClusterIp }];
        let (a, b) = if v6 { ("fd00::11", "fd00::12") } else { ("10.244.1.11", "10.244.1.12") };
        s.backends = vec![
            Backend::new(ip(a), 8081, ip("10.0.0.11")),
            Backend::new(ip(b), 8082, ip("10.0.0.11")),
        ];
        s.maglev_size = 251;
        svcs.push(s);
    }
    let mut none = Service::new(ServiceKey::new("default", "none", "p"));
    none.sock_frontends = vec![Frontend {
        addr: ip("10.96.0.11"),
        port: 80,
        proto: Proto::Tcp,
        kind: FrontendKind::ClusterIp,
    }];
    svcs.push(none);
    d.apply(&Desired::new(NodeConfig::default(), svcs)).unwrap();
    print!("{}", d.dump().unwrap());
    for args in [
        vec!["tcp", "10.96.0.10:80", "--count", "6"],
        vec!["udp", "10.96.0.10:53", "--count", "3"],
        vec!["udp", "10.96.0.10:53", "--count", "2", "--connected"],
        vec!["tcp", "10.96.0.11:80"],
        vec!["tcp", "[fd00:96::10]:80", "--count", "2"],
        vec!["tcp", "[::ffff:10.96.0.10]:80", "--count", "2"],
        vec!["udp", "[::ffff:10.96.0.10]:53", "--count", "2"],
    ] {
        let mut c = ns.nsenter(probe);
        c.args(&args);
        cg.join_before_exec(&mut c);
        let out = c.output().unwrap();
        println!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // destroy scenario
    let mut reaper = lb::sockdestroy::Reaper::load(pins.path()).unwrap();
    let mut c = ns.nsenter(probe);
    c.args(["udp-hold", "10.96.0.10:53", "--count", "30", "--interval-ms", "100"])
        .stdout(Stdio::piped());
    cg.join_before_exec(&mut c);
    let child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // remove both backends of dns
    let mut svcs2: Vec<Service> = Vec::new();
    for s in d.list().unwrap() {
        let _ = s;
    }
    let desired = {
        let mut dd = Desired::new(NodeConfig::default(), Vec::<Service>::new());
        dd.services = Default::default();
        dd
    };
    let _ = svcs2.len();
    let _ = desired;
    let mut dns = Service::new(ServiceKey::new("default", "dns", "p"));
    dns.sock_frontends = vec![Frontend {
        addr: ip("10.96.0.10"),
        port: 53,
        proto: Proto::Udp,
        kind: FrontendKind::ClusterIp,
    }];
    dns.backends = vec![];
    dns.maglev_size = 251;
    let st = d.apply_services(&NodeConfig::default(), [(&dns.key.clone(), Some(&dns))]).unwrap();
    println!("gone: {:?}", st.gone_backends);
    let r = reaper.reap(cg.path(), &st.gone_backends).unwrap();
    println!("reap: {r:?}");
    let out = child.wait_with_output().unwrap();
    println!("hold: {}", String::from_utf8_lossy(&out.stdout));
    for (c, n) in lb::loader::read_counters(pins.path()).unwrap() {
        if n.packets > 0 {
            println!("{} {}", c.name(), n.packets);
        }
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    Dataplane::detach_all(pins.path()).unwrap();
    drop(dp);
    cg.remove().unwrap();
}
