//! A real Prometheus scrapes a real xlb agent in the netns lab (end-to-end
//! tier: root, BPF, netns, Debian's `prometheus`; fails without them).
//!
//! The lab (client, router, LB, two nodes with nginx pods) runs one `xlb
//! run` per node namespace; Prometheus runs in the LB's namespace on a
//! loopback port and scrapes the LB agent's /metrics every second. Checked
//! through Prometheus' HTTP API:
//! - while HTTP traffic flows (N requests, each on a fresh connection), the
//!   service's new-flow counter grows by exactly N;
//! - a known number of raw TCP SYNs (from a client address nothing answers
//!   for, so no reply or reset comes back through the LB) grows the
//!   service's packet counter by exactly that number;
//! - malformed frames injected towards the LB show up under their drop
//!   reasons, each with its exact count. They are sent from the router's
//!   bridge port: the LB's only L2 neighbour (a frame from the client would
//!   be checked and dropped by the router's IP stack before reaching the LB);
//! - /readyz is ready, and a killed `xlb monitor` leaves event emission on
//!   only until its lease expires (the agent clears it).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lab::{
    agent::{self, Agent, AgentSpec},
    http::{self, DriveSpec},
    manifests::{self, EndpointState},
    spec::{VIP_PORT, VIP_V4},
    Lab, LabChild, LabSpec,
};
use serde_json::Value;
use testkit::packet::Frame;

const AGENT_READY: Duration = Duration::from_secs(30);
const PROM_WAIT: Duration = Duration::from_secs(30);
const METRICS: &str = "127.0.0.1:9465";
const PROM: &str = "127.0.0.1:19090";

/// Field order is drop order: Prometheus and the agents stop before the lab goes.
struct Running {
    prometheus: Option<LabChild>,
    agents: Vec<Agent>,
    lab: Lab,
}

/// A plain HTTP/1.1 GET of `path` on `addr` in the calling namespace:
/// (status code, body).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Running {
    fn start() -> Running {
        let spec = LabSpec::default();
        let lab = Lab::build(spec.clone())
            .unwrap_or_else(|e| panic!("building the lab (this test needs root): {e}"));
        let config = lab.temp_dir().join("nginx.yaml");
        std::fs::write(&config, manifests::nginx(&spec, &|_| EndpointState::Ready)).unwrap();
        let agent_spec = AgentSpec::new(env!("CARGO_BIN_EXE_xlb"), &config);
        let mut lab = lab;
        let agents = agent::start_all(&mut lab, &agent_spec, AGENT_READY)
            .unwrap_or_else(|e| panic!("starting the agents and pods: {e}"));
        Running { prometheus: None, agents, lab }
    }

    fn lb_get(&self, path: &str) -> (u16, String) {
        self.lab
            .in_ns("lb", || get(METRICS, path))
            .unwrap()
            .unwrap_or_else(|e| panic!("GET {METRICS}{path} in the LB namespace: {e}"))
    }

    fn start_prometheus(&mut self) {
        let dir = self.lab.temp_dir().join("prometheus");
        std::fs::create_dir_all(dir.join("tsdb")).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: xlb\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n\
                 \x20   static_configs:\n      - targets: [\"{METRICS}\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={PROM}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = self
            .lab
            .spawn("lb", cmd)
            .unwrap_or_else(|e| panic!("starting prometheus (apt-get install prometheus): {e}"));
        self.prometheus = Some(child);
        let t0 = Instant::now();
        loop {
            if let Ok(Ok((200, _))) = self.lab.in_ns("lb", || get(PROM, "/-/ready")) {
                return;
            }
            assert!(
                t0.elapsed() < PROM_WAIT,
                "prometheus not ready after {PROM_WAIT:?}; log:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Instant query; the single sample's value, None when the result is empty.
    fn query(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (code, body) = self.lab.in_ns("lb", || get(PROM, &path)).unwrap().unwrap();
        assert_eq!(code, 200, "query {q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let res = v["data"]["result"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert!(res.len() <= 1, "query {q}: several series: {body}");
        res.first().map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// Waits until Prometheus answers `q` with `want` (it scrapes every second).
    fn wait_value(&self, q: &str, want: f64) {
        let t0 = Instant::now();
        loop {
            let got = self.query(q);
            if got == Some(want) {
                return;
            }
            assert!(
                t0.elapsed() < PROM_WAIT,
                "Prometheus: {q} = {got:?}, want {want}; agent /metrics:\n{}",
                self.lb_get("/metrics")
                    .1
                    .lines()
                    .filter(|l| l.starts_with("xlb_service") || l.starts_with("xlb_drops"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The value of `sample` (full name with labels, as in the text) in the
    /// agent's own /metrics.
    fn scrape(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.lb_get("/metrics");
        body.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until the Prometheus value of `q` has caught up with the
    /// agent's own /metrics value of `sample` (no traffic in flight) and returns it.
    fn settled(&self, q: &str, sample: &str) -> f64 {
        let t0 = Instant::now();
        loop {
            let direct = self.scrape(sample).unwrap_or_else(|| panic!("no {sample} in /metrics"));
            std::thread::sleep(Duration::from_millis(1500));
            if self.scrape(sample) == Some(direct) && self.query(q) == Some(direct) {
                return direct;
            }
            assert!(t0.elapsed() < PROM_WAIT, "{q} never settled at {direct}");
        }
    }
}

fn mac_of(lab: &Lab, ns: &str, iface: &str) -> [u8; 6] {
    let out = lab.run(ns, "ip", &["-o", "link", "show", iface]).unwrap();
    let mac = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let b: Vec<u8> = mac.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
    b.try_into().unwrap()
}

/// Sends raw Ethernet frames out of `iface` in the calling namespace.
fn send_raw(iface: &str, frames: &[Vec<u8>]) {
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(iface).unwrap();
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        sll.sll_halen = 6;
        assert!(sll.sll_ifindex > 0, "no interface {iface}");
        for f in frames {
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            let n = libc::sendto(
                fd,
                f.as_ptr() as *const libc::c_void,
                f.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(n, f.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

#[test]
fn prometheus_scrapes_service_traffic_and_drop_reasons() {
    let mut r = Running::start();
    let (code, body) = r.lb_get("/readyz");
    assert_eq!((code, body.trim()), (200, "ready"));
    assert_eq!(r.lb_get("/healthz").0, 200);
    r.start_prometheus();
    r.wait_value("up{job=\"xlb\"}", 1.0);

    // The IPv4 service's label, as the agent names it.
    let (_, text) = r.lb_get("/metrics");
    let svc = text
        .lines()
        .filter_map(|l| l.strip_prefix("xlb_service_packets_total{service=\""))
        .filter_map(|l| l.split('"').next())
        .find(|s| s.starts_with("default/nginx") && !s.ends_with("/ipv6"))
        .unwrap_or_else(|| panic!("no IPv4 nginx service series in:\n{text}"))
        .to_string();
    let packets_q = format!("xlb_service_packets_total{{job=\"xlb\",service=\"{svc}\"}}");
    let packets_s = format!("xlb_service_packets_total{{service=\"{svc}\"}}");
    let flows_q = format!("xlb_service_new_flows_total{{job=\"xlb\",service=\"{svc}\"}}");
    let flows_s = format!("xlb_service_new_flows_total{{service=\"{svc}\"}}");

    // 1. HTTP traffic: N requests, each on a fresh connection = N new flows.
    let flows0 = r.settled(&flows_q, &flows_s);
    let pk0 = r.settled(&packets_q, &packets_s);
    const N: usize = 200;
    let spec = DriveSpec {
        concurrency: 4,
        ..DriveSpec::new(vec![SocketAddr::from((VIP_V4, VIP_PORT))], N)
    };
    let report = r.lab.in_ns("client", || http::drive(&spec)).unwrap();
    assert_eq!(report.succeeded(), N, "failures: {:?}", report.failures);
    r.wait_value(&flows_q, flows0 + N as f64);
    let pk1 = r.settled(&packets_q, &packets_s);
    // At least SYN, ACK and the request per connection went through the LB.
    assert!(pk1 - pk0 >= 3.0 * N as f64, "{pk0} -> {pk1} packets for {N} requests");

    // 2. Exactly K SYNs from a client address nobody answers for.
    const K: u16 = 57;
    let router_c0 = mac_of(&r.lab, "router", "c0");
    let client_mac = mac_of(&r.lab, "client", "eth0");
    let ghost = Ipv4Addr::new(192, 0, 2, 77);
    let syns: Vec<Vec<u8>> = (0..K)
        .map(|i| {
            Frame::eth(client_mac, router_c0)
                .ipv4(ghost, VIP_V4)
                .tcp(50000 + i, VIP_PORT)
                .seq(1)
                .syn()
                .build()
        })
        .collect();
    r.lab.in_ns("client", || send_raw("eth0", &syns)).unwrap();
    r.wait_value(&packets_q, pk1 + K as f64);
    r.wait_value(&flows_q, flows0 + (N + K as usize) as f64);

    // 3. Malformed frames from the router's bridge port to the LB.
    let lb_mac = mac_of(&r.lab, "lb", "eth0");
    let br_mac = mac_of(&r.lab, "router", "br0");
    let good =
        Frame::eth(br_mac, lb_mac).ipv4(Ipv4Addr::new(192, 0, 2, 10), VIP_V4).tcp(40000, 80).syn();
    let bad_len = good.clone().total_len(1000).build(); // IP length past the frame
    let bad_ihl = good.clone().ihl(4).build(); // IHL < 5
    let truncated = good.build()[..14 + 10].to_vec(); // ends inside the IPv4 header
    let cases = [("bad_len", bad_len, 3u64), ("bad_ihl", bad_ihl, 2), ("truncated", truncated, 5)];
    let mut before = Vec::new();
    for (reason, _, _) in &cases {
        // Counted at the hook that dropped them: XDP on the LB's NIC.
        let q = format!("xlb_drops_total{{job=\"xlb\",hook=\"xdp\",reason=\"{reason}\"}}");
        let s = format!("xlb_drops_total{{hook=\"xdp\",reason=\"{reason}\"}}");
        before.push((q.clone(), r.settled(&q, &s)));
    }
    let frames: Vec<Vec<u8>> =
        cases.iter().flat_map(|(_, f, n)| std::iter::repeat_n(f.clone(), *n as usize)).collect();
    r.lab.in_ns("router", || send_raw("br0", &frames)).unwrap();
    for ((q, b), (_, _, n)) in before.iter().zip(&cases) {
        r.wait_value(q, b + *n as f64);
    }
    // The per-reason series are distinct and the dashboard's drop query works.
    let total = r.query("sum(xlb_drops_total{job=\"xlb\"})").unwrap();
    assert!(total >= 10.0, "sum of drops {total}");

    // 4. A killed monitor: events stay on until the lease runs out, then the
    //    agent clears the mask.
    let lb_pin: PathBuf = r.agents[0].pin_dir.clone();
    let mut mon = Command::new(env!("CARGO_BIN_EXE_xlb"));
    mon.args(["monitor", "--pin-dir"]).arg(&lb_pin).stdout(Stdio::null()).stderr(Stdio::null());
    let mut mon = r.lab.spawn("lb", mon).unwrap();
    let t0 = Instant::now();
    while r.scrape("xlb_event_listener_active") != Some(1.0) {
        assert!(t0.elapsed() < Duration::from_secs(10), "monitor lease never seen active");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(mon.pid() as i32, libc::SIGKILL) };
    let _ = mon.wait_timeout(Duration::from_secs(5));
    let killed = Instant::now();
    while r.scrape("xlb_event_listener_active") != Some(0.0) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "lease of a killed monitor never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("killed monitor's lease cleared after {:?}", killed.elapsed());
}
