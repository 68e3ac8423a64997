//! Network-namespace labs for xlb: a client, a router with the fabric bridge,
//! a load balancer and backend nodes with nginx pods, joined by veth pairs
//! and addressed as in the team brief ([`spec`]). Pods get their network
//! from xlb-cni, run as a container runtime runs it ([`cni`]), once the
//! nodes' agents are up ([`Lab::start_pods`]). [`Lab`] builds it, runs
//! processes and closures inside its namespaces, and tears everything down
//! on drop, on panic, or from a signal thread ([`teardown_all`]). Used by
//! the `xlb-lab` binary (lab/cli), the end-to-end tests and perf/. Test
//! tooling: the `xlb` agent does not link it. Of xlb it knows the XDP_PASS
//! object it puts on the LB's router-side peer (testkit's), and how to find
//! the `xlb` binary, start `xlb run` agents and read their pinned maps
//! ([`agent`]). Workloads come from manifests as a user writes them
//! ([`workload`]); [`reach`] prints the pods' reachability matrix; [`udp`]
//! echoes and probes datagrams in pods.
pub mod agent;
pub mod cgroup;
pub mod cni;
pub mod eastwest;
pub mod held;
pub mod http;
pub mod manifests;
pub mod netns;
pub mod nginx;
mod process;
pub mod reach;
mod registry;
pub mod spec;
pub mod stats;
mod topology;
pub mod udp;
pub mod workload;

use std::{io, path::PathBuf};

pub use process::LabChild;
pub use registry::teardown_all;
pub use spec::LabSpec;
pub use stats::LinkStats;
pub use topology::{Host, Lab, Node, Pod};

/// Errors of building and using a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, veth, XDP); running as uid {uid}")]
    NotRoot { uid: u32 },
    #[error("lab spec: {field}: {reason}")]
    Spec { field: &'static str, reason: String },
    #[error("namespace {ns}: {op}: {source}")]
    Netns { ns: String, op: &'static str, source: io::Error },
    #[error("namespace {ns}: {source}")]
    Enter { ns: String, source: testkit::netns::NetnsError },
    #[error("no namespace {name:?} in lab {prefix} (known: {known})")]
    UnknownNamespace { name: String, prefix: String, known: String },
    #[error("namespace {ns}: starting `{cmd}`: {source}")]
    Spawn { ns: String, cmd: String, source: io::Error },
    #[error("namespace {ns}: `{cmd}` failed ({status}): {stderr}")]
    Command { ns: String, cmd: String, status: String, stderr: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("loading xlb_pass: {source}")]
    XdpLoad { source: Box<aya::EbpfError> },
    #[error("the embedded xlb_pass object has no program {name}")]
    XdpProgramMissing { name: &'static str },
    #[error("namespace {ns}: attaching xlb_pass to {iface}: {source}")]
    XdpAttach { ns: String, iface: String, source: Box<aya::programs::ProgramError> },
    #[error("backend {pod}: nginx not answering on {addr} after {waited_ms} ms: {detail}")]
    BackendNotReady { pod: String, addr: String, waited_ms: u128, detail: String },
    #[error(
        "no xlb binary at {tried}: build it (`cargo build --release -p xlb-control`) or set XLB_BIN"
    )]
    NoXlb { tried: String },
    #[error("xlb agent on {node}: {detail}")]
    Agent { node: String, detail: String },
    #[error(
        "no xlb-cni binary at {tried}: build it (`cargo build --release -p xlb-cni`) or set XLB_CNI_BIN"
    )]
    NoCni { tried: String },
    #[error("CNI: {op}: {detail}")]
    Cni { op: String, detail: String },
    #[error("namespace {ns}: counters of {iface}: {reason}")]
    Stats { ns: String, iface: String, reason: String },
}
