//! The ABI of the benchmark rig (testkit/bpf/xlb_bench.c, embedded as
//! [`crate::objects::bench`]): the frame-template mirror, its encoder, and the
//! xdp_md context a BPF_PROG_TEST_RUN needs, with one [`test_run`] of an XDP
//! program (and [`tc_test_run`] / [`tc_run`] of a tc program). Used by perf/, the benchmark tests and the XDP packet tests, so
//! the template layout and the run are written once.
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};

/// Largest template frame (XLB_BENCH_FRAME_MAX).
pub const FRAME_MAX: usize = 256;
/// Template slots of xlb_bench_frames (XLB_BENCH_TEMPLATES).
pub const TEMPLATES: usize = 16;
/// Template flag: rewrite the source port and address every iteration.
pub const F_NEW_FLOW: u16 = 1;

/// Mirrors struct xlb_bench_frame.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchFrame {
    pub len: u32,
    pub flags: u16,
    pub count: u16,
    pub sport_off: u16,
    pub saddr_lo_off: u16,
    pub ip_csum_off: u16,
    pub l4_csum_off: u16,
    pub bytes: [u8; FRAME_MAX],
}
const _: () = assert!(std::mem::size_of::<BenchFrame>() == 272);
// SAFETY: repr(C), no padding (asserted above), every bit pattern valid.
unsafe impl aya::Pod for BenchFrame {}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench frame of {len} bytes: want 14..={FRAME_MAX}")]
    Size { len: usize },
    #[error("new-flow template: EtherType {ethertype:#06x} is not IPv4/IPv6")]
    NotIp { ethertype: u16 },
    #[error("new-flow template: IP protocol {proto} is not TCP/UDP")]
    NotTcpUdp { proto: u8 },
}

impl BenchFrame {
    /// The template of `frame`, sent `count` times per wrapper run. With
    /// `new_flow` the wrapper varies the source port and the low bytes of the
    /// source address every iteration and fixes the checksums (IPv4 with any
    /// IHL, IPv6 without extension headers; TCP or UDP).
    pub fn encode(frame: &[u8], new_flow: bool, count: u16) -> Result<BenchFrame, BenchError> {
        let b = frame;
        if b.len() < 14 || b.len() > FRAME_MAX {
            return Err(BenchError::Size { len: b.len() });
        }
        let mut f = BenchFrame {
            len: b.len() as u32,
            flags: 0,
            count,
            sport_off: 0,
            saddr_lo_off: 0,
            ip_csum_off: 0,
            l4_csum_off: 0,
            bytes: [0; FRAME_MAX],
        };
        f.bytes[..b.len()].copy_from_slice(b);
        if new_flow {
            let ethertype = u16::from_be_bytes([b[12], b[13]]);
            let (l4, proto, saddr_end, ip_csum) = match ethertype {
                0x0800 if b.len() >= 34 => {
                    ((14 + (b[14] & 0xf) as usize * 4), b[23], 14 + 16, 14 + 10)
                }
                0x86dd if b.len() >= 54 => (14 + 40, b[20], 14 + 24, 0),
                _ => return Err(BenchError::NotIp { ethertype }),
            };
            let csum = match proto {
                6 => l4 + 16,
                17 => l4 + 6,
                proto => return Err(BenchError::NotTcpUdp { proto }),
            };
            f.flags |= F_NEW_FLOW;
            f.sport_off = l4 as u16;
            f.saddr_lo_off = (saddr_end - 2) as u16;
            f.ip_csum_off = ip_csum as u16;
            f.l4_csum_off = csum as u16;
        }
        Ok(f)
    }

    /// Like a `new_flow` template, but the destination port and the low
    /// bytes of the destination address vary every iteration (the wrapper
    /// writes at the offsets it is given): a packet to a new destination
    /// each time (a flood of random non-service destinations).
    pub fn encode_new_dest(frame: &[u8], count: u16) -> Result<BenchFrame, BenchError> {
        let mut f = BenchFrame::encode(frame, true, count)?;
        let daddr_end = if f.ip_csum_off != 0 { 14 + 20 } else { 14 + 40 };
        f.sport_off += 2;
        f.saddr_lo_off = daddr_end - 2;
        Ok(f)
    }
}

/// struct xdp_md as BPF_PROG_TEST_RUN's ctx_in: the frame arrives on
/// `ifindex`, queue 0, no metadata.
pub fn xdp_ctx(len: usize, ifindex: u32) -> [u8; 24] {
    let mut c = [0u8; 24];
    c[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    c[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// One BPF_PROG_TEST_RUN of the XDP program `prog` on `frame` arriving on
/// `ifindex`, `repeat` times; the output frame goes to `out` when given
/// (its length in `data_size_out`).
pub fn test_run(
    prog: &Xdp,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    out: Option<&mut [u8]>,
) -> Result<TestRunResult, ProgramError> {
    let ctx = xdp_ctx(frame.len(), ifindex);
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: out,
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    })
}

/// BPF_PROG_TEST_RUN of the tc program `prog` on `frame`, `repeat` times,
/// the `__sk_buff` context naming `ifindex` as the device (0: none, the
/// kernel's loopback): its return value, the kernel's time per run and the
/// output frame.
pub fn tc_test_run(
    prog: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(u32, std::time::Duration, Vec<u8>), ProgramError> {
    // sizeof(struct __sk_buff); ifindex at offset 40.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 512];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: (ifindex != 0).then_some(&ctx[..]),
        repeat,
        ..TestRunOptions::new()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration, out))
}

/// One [`tc_test_run`]: return value and output frame. Panics when the
/// kernel refuses the run (a test helper: the failure is the test's).
pub fn tc_run(prog: &SchedClassifier, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let (ret, _, out) = tc_test_run(prog, frame, ifindex, 1)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e:?}", frame.len()));
    (ret, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_flow_offsets_for_ipv4_with_options_and_ipv6_udp() {
        // Ethernet + IPv4 with IHL 6 (4 bytes of options) + TCP.
        let mut v4 = vec![0u8; 14 + 24 + 20];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        v4[14] = 0x46;
        v4[23] = 6;
        let f = BenchFrame::encode(&v4, true, 1).unwrap();
        assert_eq!((f.sport_off, f.saddr_lo_off, f.ip_csum_off, f.l4_csum_off), (38, 28, 24, 54));
        let mut v6 = vec![0u8; 14 + 40 + 8];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[20] = 17;
        let f = BenchFrame::encode(&v6, true, 1).unwrap();
        assert_eq!((f.sport_off, f.saddr_lo_off, f.ip_csum_off, f.l4_csum_off), (54, 36, 0, 60));
        assert!(matches!(BenchFrame::encode(&[0; 10], false, 1), Err(BenchError::Size { .. })));
        let mut arp = v4.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(matches!(BenchFrame::encode(&arp, true, 1), Err(BenchError::NotIp { .. })));
    }
}
