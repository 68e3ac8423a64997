//! Kernel features the datapath uses beyond what its minimum kernel (6.6,
//! for TCX links) guarantees, asked of the running kernel before the
//! datapath objects are loaded: each probe is a one-helper program
//! (lb/probe/xlb_probe.c) run once with BPF_PROG_TEST_RUN, the helper called
//! exactly as the datapath calls it. A missing feature is not a silent
//! failure at packet time: [`crate::loader::Dataplane::load`] sets the
//! objects' load-time constants to the fallback, and [`Features::missing`]
//! names each missing feature, the kernel that has it and what xlb does
//! without it, for the agent to log.
use aya::{
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions},
    EbpfError, EbpfLoader,
};

use crate::objects;

/// What the running kernel supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `bpf_l4_csum_replace` takes BPF_F_IPV6 (Linux 6.16): the IPv6
    /// translations in tc leave a CHECKSUM_COMPLETE skb's csum alone.
    pub csum_ipv6_flag: bool,
}

/// A feature the kernel lacks, as a message names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub feature: &'static str,
    pub since: &'static str,
    /// What the datapath does without it.
    pub fallback: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the feature probes")]
    Load(#[source] Box<EbpfError>),
    #[error("feature probe {probe}: loading the program")]
    Program {
        probe: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("feature probe {probe}: BPF_PROG_TEST_RUN")]
    Run {
        probe: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
}

const CSUM_IPV6: &str = "xlb_probe_csum_ipv6";

impl Features {
    /// Every feature: what the datapath is written for.
    pub fn all() -> Features {
        Features { csum_ipv6_flag: true }
    }

    /// Asks the running kernel.
    pub fn probe() -> Result<Features, ProbeError> {
        let mut bpf =
            EbpfLoader::new().load(objects::probe()).map_err(|e| ProbeError::Load(Box::new(e)))?;
        let prog: &mut SchedClassifier = bpf
            .program_mut(CSUM_IPV6)
            .and_then(|p| p.try_into().ok())
            .expect("built from lb/probe/xlb_probe.c");
        prog.load().map_err(|e| ProbeError::Program { probe: CSUM_IPV6, source: Box::new(e) })?;
        // Ethernet + IPv6 + TCP: the helper reads the checksum at 70.
        let mut frame = [0u8; 14 + 40 + 20];
        frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        frame[14] = 0x60;
        frame[18..20].copy_from_slice(&20u16.to_be_bytes());
        frame[20] = 6;
        let mut out = [0u8; 14 + 40 + 20];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|e| ProbeError::Run { probe: CSUM_IPV6, source: Box::new(e) })?;
        Ok(Features { csum_ipv6_flag: r.return_value == 0 })
    }

    /// The features missing, each with the kernel that has it and the fallback.
    pub fn missing(&self) -> Vec<Missing> {
        let mut out = Vec::new();
        if !self.csum_ipv6_flag {
            out.push(Missing {
                feature: "bpf_l4_csum_replace flag BPF_F_IPV6",
                since: "Linux 6.16",
                fallback: "IPv6 translations in tc run without it: on a NIC that delivers \
                           CHECKSUM_COMPLETE the kernel logs rate-limited \"hw csum failure\" \
                           warnings and verifies those packets in software",
            });
        }
        out
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel feature missing: {} ({}); {}", self.feature, self.since, self.fallback)
    }
}
