//! Internet checksums (RFC 1071): the one's-complement sum, the IPv4/IPv6
//! pseudo-header, and the finished 16-bit checksum; and SCTP's CRC32c
//! (RFC 9260 appendix A), bit by bit: the reference the datapath's
//! incremental update (lb/bpf/crc32c.h) is checked against.
use std::net::IpAddr;

/// Adds `data` to a running one's-complement sum (odd lengths padded with a
/// zero byte, as the RFC says). Fold with [`finish`].
pub fn add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = fold_once(sum + u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = fold_once(sum + (u32::from(*last) << 8));
    }
    sum
}

fn fold_once(sum: u32) -> u32 {
    (sum & 0xffff) + (sum >> 16)
}

/// Folds a running sum and complements it: the value to store in a header.
pub fn finish(sum: u32) -> u16 {
    let folded = fold_once(fold_once(sum));
    !(folded as u16)
}

/// The checksum of `data` alone (IPv4 header, ICMPv4).
pub fn checksum(data: &[u8]) -> u16 {
    finish(add(0, data))
}

/// The running sum of the pseudo-header for an upper-layer segment of `len`
/// bytes and protocol `proto` between `src` and `dst` (same family).
pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let sum = add(add(0, &s.octets()), &d.octets());
            add(sum, &[0, proto, (len >> 8) as u8, len as u8])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let sum = add(add(0, &s.octets()), &d.octets());
            add(sum, &(len as u32).to_be_bytes()).wrapping_add(u32::from(proto))
        }
        _ => panic!("pseudo-header with mixed families: {src} -> {dst}"),
    }
}

/// The checksum of an upper-layer segment (TCP, UDP, ICMPv6) whose own
/// checksum field is zero, over the pseudo-header.
pub fn l4(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    finish(add(pseudo(src, dst, proto, segment.len()), segment))
}

/// CRC32c (Castagnoli) of `data`, as SCTP computes it over its packet with
/// the checksum field zero; stored in the packet little-endian.
pub fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82f6_3b78; // reflected
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (POLY & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The check value of CRC-32C (iSCSI, SCTP): "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}
