//! `xlb observe`: live flows of a node with their verdicts (forwarded by a
//! service, allowed or denied by NetworkPolicy, dropped with a reason),
//! pods, namespaces, services and identities named, read from the agent's
//! `GET /flows` stream ([`crate::flows`]: the agent is the ring's one
//! reader, so any number of observers run at once). Filters by pod,
//! namespace, service, verdict, protocol and port run here; output is text
//! or JSON lines.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use clap::Args;
use lb::view::service_matches;

use crate::flows::{Flow, Peer};

#[derive(Args, Debug, Clone, Default)]
pub struct ObserveArgs {
    /// The agent's metrics endpoint, which serves /flows.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9465")]
    pub agent: String,
    /// Only flows from or to this pod: "name" or "namespace/name".
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows from or to a pod of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only flows of this service: "namespace/name" or "namespace/name:port".
    #[arg(long)]
    pub service: Option<String>,
    /// Only these verdicts (repeatable): forwarded, allowed, denied, dropped.
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Only this protocol: tcp, udp, sctp, icmp, icmpv6.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Only flows with this port at either end.
    #[arg(long)]
    pub port: Option<u16>,
    /// Exit after printing this many flows.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// JSON, one flow per line.
    #[arg(long)]
    pub json: bool,
}

const VERDICTS: [&str; 4] = ["forwarded", "allowed", "denied", "dropped"];

fn pod_matches(want: &str, p: &Peer) -> bool {
    let Some(pod) = &p.pod else { return false };
    match want.split_once('/') {
        Some((ns, name)) => p.namespace.as_deref() == Some(ns) && pod == name,
        None => pod == want,
    }
}

/// Whether `f` passes every filter of `a`.
pub fn matches(a: &ObserveArgs, f: &Flow) -> bool {
    let either = |p: &dyn Fn(&Peer) -> bool| p(&f.src) || p(&f.dst);
    a.pod.as_deref().is_none_or(|w| either(&|p| pod_matches(w, p)))
        && a.namespace.as_deref().is_none_or(|w| either(&|p| p.namespace.as_deref() == Some(w)))
        && a.service
            .as_deref()
            .is_none_or(|w| f.service.as_deref().is_some_and(|s| service_matches(w, s)))
        && (a.verdict.is_empty() || a.verdict.contains(&f.verdict))
        && a.protocol.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(&f.proto))
        && a.port.is_none_or(|w| f.src.port == w || f.dst.port == w)
}

fn end(p: &Peer) -> String {
    let addr = match (p.ip, p.port) {
        (Some(ip), 0) => ip.to_string(),
        (Some(ip), port) => SocketAddr::new(ip, port).to_string(),
        (None, _) => "-".into(),
    };
    match (&p.namespace, &p.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}({addr})"),
        _ => addr,
    }
}

/// One flow as a text line.
pub fn text_line(f: &Flow) -> String {
    let secs = f.time.rem_euclid(86_400.0);
    let (h, m, s) = ((secs / 3600.0) as u32, ((secs % 3600.0) / 60.0) as u32, secs % 60.0);
    let mut line = format!(
        "{h:02}:{m:02}:{s:09.6} {:<9} {} {} -> {}",
        f.verdict.to_uppercase(),
        f.proto,
        end(&f.src),
        end(&f.dst)
    );
    for (k, v) in [
        ("direction", &f.direction),
        ("policy", &f.policy),
        ("reason", &f.reason),
        ("service", &f.service),
        ("backend", &f.backend),
    ] {
        if let Some(v) = v {
            line += &format!(" {k}={v}");
        }
    }
    for (k, p) in [("src_identity", &f.src), ("dst_identity", &f.dst)] {
        if let Some(id) = p.identity {
            line += &format!(" {k}={id}");
        }
    }
    line + &format!(" node={} iface={}", f.node, f.iface)
}

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    for v in &args.verdict {
        if !VERDICTS.contains(&v.as_str()) {
            bail!("--verdict {v:?}: one of {}", VERDICTS.join(", "));
        }
    }
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&args.agent)
        .with_context(|| format!("--agent {}", args.agent))?
        .next()
        .with_context(|| format!("--agent {}: no address", args.agent))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the agent at {addr} (is `xlb run` running?)"))?;
    stream
        .write_all(format!("GET /flows HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .context("asking the agent for /flows")?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).context("reading the agent's answer")?;
    if !status.contains(" 200 ") {
        bail!("the agent at {addr} answered {:?} to /flows", status.trim_end());
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).context("reading the agent's answer")? == 0 {
            bail!("the agent closed the connection");
        }
        if h.trim_end().is_empty() {
            break;
        }
    }
    eprintln!("xlb observe: flows of the agent at {addr} (Ctrl-C to stop)");
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    for line in reader.lines() {
        let line = line.context("reading flows from the agent")?;
        if line.is_empty() {
            continue; // the agent's heartbeat
        }
        let f: Flow = serde_json::from_str(&line)
            .with_context(|| format!("a flow the agent sent: {line}"))?;
        if !matches(&args, &f) {
            continue;
        }
        let mut out = stdout.lock();
        let text = if args.json { line } else { text_line(&f) };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS); // stdout closed
        }
        printed += 1;
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    bail!("the agent closed the flow stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            time: 3661.5,
            node: "node1".into(),
            verdict: "denied".into(),
            event: "policy".into(),
            hook: "pod_to".into(),
            iface: "xlb1".into(),
            direction: Some("ingress".into()),
            reason: Some("policy_ingress".into()),
            proto: "tcp".into(),
            src: Peer {
                ip: Some("10.0.0.1".parse().unwrap()),
                port: 40000,
                pod: Some("a".into()),
                namespace: Some("x".into()),
                workload: None,
                identity: Some(70001),
            },
            dst: Peer {
                ip: Some("10.0.1.2".parse().unwrap()),
                port: 80,
                pod: Some("b".into()),
                namespace: Some("y".into()),
                workload: Some("ReplicaSet/b-1".into()),
                identity: Some(70002),
            },
            service: None,
            backend: None,
            policy: None,
            len: 60,
        }
    }

    #[test]
    fn filters_by_pod_namespace_verdict_protocol_port_and_service() {
        let f = flow();
        let a = |f: fn(&mut ObserveArgs)| {
            let mut a = ObserveArgs::default();
            f(&mut a);
            a
        };
        assert!(matches(&ObserveArgs::default(), &f));
        assert!(matches(&a(|a| a.pod = Some("a".into())), &f));
        assert!(matches(&a(|a| a.pod = Some("y/b".into())), &f));
        assert!(!matches(&a(|a| a.pod = Some("x/b".into())), &f));
        assert!(matches(&a(|a| a.namespace = Some("y".into())), &f));
        assert!(!matches(&a(|a| a.namespace = Some("z".into())), &f));
        assert!(matches(&a(|a| a.verdict = vec!["allowed".into(), "denied".into()]), &f));
        assert!(!matches(&a(|a| a.verdict = vec!["forwarded".into()]), &f));
        assert!(matches(&a(|a| a.protocol = Some("TCP".into())), &f));
        assert!(!matches(&a(|a| a.protocol = Some("udp".into())), &f));
        assert!(matches(&a(|a| a.port = Some(80)), &f));
        assert!(!matches(&a(|a| a.port = Some(81)), &f));
        assert!(!matches(&a(|a| a.service = Some("default/web".into())), &f));
        let mut s = flow();
        s.service = Some("default/web:80".into());
        assert!(matches(&a(|a| a.service = Some("default/web".into())), &s));
    }

    #[test]
    fn text_and_json_lines() {
        let f = flow();
        assert_eq!(
            text_line(&f),
            "01:01:01.500000 DENIED    tcp x/a(10.0.0.1:40000) -> y/b(10.0.1.2:80) \
             direction=ingress reason=policy_ingress src_identity=70001 dst_identity=70002 \
             node=node1 iface=xlb1"
        );
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Flow>(&j).unwrap(), f);
    }
}
