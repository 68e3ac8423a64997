//! xlb-perf's library: the pieces the benchmark binary (`xlb-perf`) and its
//! tests share — private network namespaces with cleanup ([`netns`]) and the
//! kube-proxy baseline rule generators ([`kubeproxy`]: the iptables and
//! nftables rulesets kube-proxy would write for N services). The benchmarks
//! themselves live in the binary (perf/src/main.rs and its modules).
pub mod forward;
pub mod kubeproxy;
pub mod netns;
pub mod stats;
