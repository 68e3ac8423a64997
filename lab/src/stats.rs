//! Interface counters inside a namespace, read over netlink (`ip -s -j
//! link`), for proving where packets went (DSR: replies never cross the LB).
use std::ops::Sub;

use crate::{netns, LabError};

/// Packet and byte counters of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl Sub for LinkStats {
    type Output = LinkStats;
    /// The change between two readings (`after - before`), saturating.
    fn sub(self, before: LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(before.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(before.tx_bytes),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            tx_dropped: self.tx_dropped.saturating_sub(before.tx_dropped),
        }
    }
}

/// Counters of `iface` in namespace `ns`.
pub fn link_stats(ns: &str, iface: &str) -> Result<LinkStats, LabError> {
    let out = netns::ip(ns, &["-s", "-j", "link", "show", "dev", iface])?;
    parse(&out).map_err(|reason| LabError::Stats { ns: ns.into(), iface: iface.into(), reason })
}

fn parse(json: &str) -> Result<LinkStats, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ip -j output: {e}"))?;
    let stats = v.get(0).and_then(|l| l.get("stats64")).ok_or("ip -j output: no [0].stats64")?;
    let field = |dir: &str, name: &str| {
        stats
            .get(dir)
            .and_then(|d| d.get(name))
            .and_then(|n| n.as_u64())
            .ok_or_else(|| format!("ip -j output: no stats64.{dir}.{name}"))
    };
    Ok(LinkStats {
        rx_packets: field("rx", "packets")?,
        tx_packets: field("tx", "packets")?,
        rx_bytes: field("rx", "bytes")?,
        tx_bytes: field("tx", "bytes")?,
        rx_dropped: field("rx", "dropped")?,
        tx_dropped: field("tx", "dropped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let json = r#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":100,"packets":3,"errors":0,"dropped":1,"over_errors":0,"multicast":0},"tx":{"bytes":50,"packets":2,"errors":0,"dropped":0,"carrier_errors":0,"collisions":0}}}]"#;
        let s = parse(json).unwrap();
        assert_eq!(
            s,
            LinkStats {
                rx_packets: 3,
                tx_packets: 2,
                rx_bytes: 100,
                tx_bytes: 50,
                rx_dropped: 1,
                tx_dropped: 0
            }
        );
        assert!(parse("[]").unwrap_err().contains("stats64"));
    }
}
