//! xlb-perf's library: the pieces the benchmark binary (`xlb-perf`) and its
//! tests share — the kube-proxy baseline rule generators ([`kubeproxy`]: the
//! iptables and nftables rulesets kube-proxy would write for N services), a
//! three-namespace forwarding rig ([`forward`]), the lab with
//! xlb agents and kube-proxy beside them ([`labrig`]), the connection-level
//! load generators ([`loadgen`]: wrk, iperf3) and the churn drivers
//! ([`churn`]), NetworkPolicies as kube-router's iptables rules
//! ([`netpol_iptables`]), Katran's map layouts and their programming plan
//! ([`katran`]). The scenarios themselves live in the binary
//! (perf/src/main.rs and its modules).
pub mod churn;
pub mod forward;
pub mod katran;
pub mod kubeproxy;
pub mod labrig;
pub mod loadgen;
pub mod netpol_iptables;
pub mod stats;
