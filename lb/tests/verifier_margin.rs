//! The verifier's margin: every xlb program is loaded as the agent loads it
//! (Dataplane::create_maps, then load_programs: the same rodata, features
//! and maps), and the kernel's count of the instructions its verifier
//! processed (bpf_prog_info.verified_insns, Linux >= 5.16) is printed and
//! held under half of the kernel's 1,000,000 limit. A program that grows
//! toward the limit fails here first, before another kernel's pruning or
//! the next feature makes the agent fail to load at all; the count is also
//! what the agent's cold start waits for (the verifier's time). When a
//! program grows, lb/bpf/verifier.h says how to find where its states
//! multiply and the tools used so far.
//! Privileged tier: needs root and BPF; fails (never skips) without them.
use std::time::Instant;

use lb::loader::{Dataplane, LoadOptions, MapSizes, SOCK_PROGRAMS};
use testkit::{netns::in_private_netns, pins::PinDir};

/// Half of BPF_COMPLEXITY_LIMIT_INSNS.
const BOUND: u32 = 500_000;

#[test]
fn every_program_verifies_within_half_the_kernels_limit() {
    testkit::require_root("the verifier margin test");
    in_private_netns(|| {
        let pins = PinDir::new("vmargin");
        let opts = LoadOptions {
            pin_dir: pins.path().into(),
            sizes: MapSizes::small(),
            ..Default::default()
        };
        let staged = Dataplane::create_maps(&opts)
            .unwrap_or_else(|e| panic!("creating the datapath's maps: {e}\n{e:?}"));
        let start = Instant::now();
        let mut dp = staged
            .load_programs()
            .unwrap_or_else(|e| panic!("loading the datapath's programs: {e}\n{e:?}"));
        let load_ms = start.elapsed().as_millis();

        let mut counts = vec![
            ("xlb_xdp", dp.xdp_program().info()),
            ("xlb_tc_ingress", dp.tc_ingress_program().info()),
            ("xlb_tc_egress", dp.tc_egress_program().info()),
            ("xlb_pod_from", dp.pod_from_program().info()),
            ("xlb_pod_to", dp.pod_to_program().info()),
        ];
        for name in SOCK_PROGRAMS {
            let prog = dp.sock_program(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            counts.push((name, prog.info()));
        }
        let counts: Vec<(&str, u32)> = counts
            .into_iter()
            .map(|(name, info)| {
                let info = info.unwrap_or_else(|e| panic!("bpf_prog_info of {name}: {e}"));
                let n = info.verified_instruction_count().unwrap_or_else(|| {
                    panic!("{name}: the kernel reports no verified_insns (Linux < 5.16?)")
                });
                (name, n)
            })
            .collect();

        println!("verifier processed insns (bound {BOUND}, limit 1000000), load {load_ms} ms:");
        println!("| program | verified insns | of the bound |");
        println!("|---|---:|---:|");
        for (name, n) in &counts {
            println!("| {name} | {n} | {:.0}% |", 100.0 * f64::from(*n) / f64::from(BOUND));
        }
        let over: Vec<_> = counts.iter().filter(|(_, n)| *n >= BOUND).collect();
        assert!(over.is_empty(), "over half the verifier's limit: {over:?}");
    })
    .unwrap_or_else(|e| panic!("the test's network namespace: {e}"));
}
