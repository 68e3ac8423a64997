//! The packet generator of `xlb-perf pps` where the kernel refuses
//! BPF_F_TEST_XDP_LIVE_FRAMES (EPERM): an AF_PACKET socket on the
//! generator's veth with PACKET_QDISC_BYPASS, frames handed to the driver by
//! sendmmsg in batches. A frame template with `new_flow` gets a new source
//! port and address low bits per frame (checksums fixed incrementally), as
//! the XDP generator's wrapper does. Costlier per frame than live frames
//! (a syscall per batch and a copy per frame), and on the same core as the
//! load balancer's XDP (veth runs the peer's XDP in the sender's softirq),
//! so ratios against the forwarder are diluted by the generator's share:
//! the report names the generator.
use std::{io, os::fd::AsRawFd};

use anyhow::{Context, Result};
use testkit::bench::BenchFrame;

use crate::benchprog::Template;

const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// An AF_PACKET socket bound to one interface.
pub struct AfPacket {
    fd: std::os::fd::OwnedFd,
}

/// RFC 1624 incremental checksum update of one 16-bit word (as stored).
fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!csum) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

fn word(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn put(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

impl AfPacket {
    /// A raw socket on `ifindex` (in the calling thread's network
    /// namespace) that bypasses the qdisc.
    pub fn open(ifindex: u32) -> Result<AfPacket> {
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: raw is a fresh, valid fd.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a c_int option value.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                &one as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
        }
        // SAFETY: a zeroed sockaddr_ll with family and ifindex set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind with a valid sockaddr_ll of its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        Ok(AfPacket { fd })
    }

    /// Sends `count` frames cycling through `templates` in batches of
    /// `batch`; `seq` numbers new flows across calls. Returns frames sent.
    pub fn send(
        &self,
        templates: &[Template],
        count: u64,
        batch: usize,
        seq: &mut u64,
    ) -> Result<u64> {
        let encoded: Vec<BenchFrame> = templates
            .iter()
            .map(|t| BenchFrame::encode(&t.bytes, t.new_flow, templates.len() as u16))
            .collect::<Result<_, _>>()?;
        let mut bufs: Vec<Vec<u8>> =
            (0..batch).map(|i| templates[i % templates.len()].bytes.clone()).collect();
        let mut sent = 0u64;
        let mut k = 0usize;
        while sent < count {
            let n = batch.min((count - sent) as usize);
            for (i, buf) in bufs.iter_mut().enumerate().take(n) {
                let t = (k + i) % templates.len();
                let f = &encoded[t];
                buf.clear();
                buf.extend_from_slice(&templates[t].bytes);
                if templates[t].new_flow {
                    *seq += 1;
                    vary(buf, f, *seq);
                }
            }
            k += n;
            let mut iov: Vec<libc::iovec> = bufs[..n]
                .iter()
                .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: zeroed msghdr, then one iovec set.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = v;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            // SAFETY: msgs point at live buffers for the duration of the call.
            let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::WouldBlock
                {
                    continue;
                }
                return Err(e).context("sendmmsg(AF_PACKET)");
            }
            sent += r as u64;
        }
        Ok(sent)
    }
}

/// The wrapper's new-flow rewrite: source port = seq, low 16 bits of the
/// source address = seq >> 16 (checksums updated).
fn vary(buf: &mut [u8], f: &BenchFrame, seq: u64) {
    let (sport, saddr) = (usize::from(f.sport_off), usize::from(f.saddr_lo_off));
    let port = (seq as u16).to_be();
    let addr = ((seq >> 16) as u16).to_be();
    let (old_port, old_addr) = (word(buf, sport), word(buf, saddr));
    put(buf, sport, port);
    put(buf, saddr, addr);
    if f.l4_csum_off != 0 {
        let o = usize::from(f.l4_csum_off);
        let c = csum_replace2(word(buf, o), old_port, port);
        put(buf, o, csum_replace2(c, old_addr, addr));
    }
    if f.ip_csum_off != 0 {
        let o = usize::from(f.ip_csum_off);
        put(buf, o, csum_replace2(word(buf, o), old_addr, addr));
    }
}
