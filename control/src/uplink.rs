//! `--iface auto`: the node's uplink is the interface of its default route
//! (IPv4's, else IPv6's; the lowest metric wins), read from
//! /proc/net/route and /proc/net/ipv6_route of the agent's network
//! namespace. A DaemonSet then needs no per-node interface name.
use std::path::Path;

/// The word `--iface` takes for "the default route's interface".
pub const AUTO: &str = "auto";

/// Why no uplink was found.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "--iface auto: no default route in this network namespace (neither in /proc/net/route \
         nor in /proc/net/ipv6_route); name the interface with --iface"
    )]
    NoDefaultRoute,
}

/// The interface of the default route in /proc/net/route's text: the
/// lowest metric among up (RTF_UP) routes to 0.0.0.0/0.
pub fn default_v4(text: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            (flags & RTF_UP != 0).then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, i)| i)
}

/// The same in /proc/net/ipv6_route's text (::/0, up, not a reject route,
/// not on lo).
pub fn default_v6(text: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // dst dst_len src src_len next_hop metric refcnt use flags iface
            if f.len() < 10 || f[0].bytes().any(|b| b != b'0') || f[1] != "00" || f[9] == "lo" {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            (flags & RTF_UP != 0 && flags & RTF_REJECT == 0).then(|| (metric, f[9].to_string()))
        })
        .min()
        .map(|(_, i)| i)
}

/// The default route's interface in the calling thread's network namespace.
pub fn default_route_iface() -> Result<String, UplinkError> {
    let read = |p: &str| match std::fs::read_to_string(Path::new(p)) {
        Ok(t) => Ok(t),
        // No IPv6 in this kernel: no IPv6 routes.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UplinkError::Read { path: p.into(), source }),
    };
    if let Some(i) = default_v4(&read("/proc/net/route")?) {
        return Ok(i);
    }
    default_v6(&read("/proc/net/ipv6_route")?).ok_or(UplinkError::NoDefaultRoute)
}

/// `--iface` values with `auto` replaced by the default route's interface
/// (once, even if named again or also named explicitly).
pub fn resolve(ifaces: &[String]) -> Result<Vec<String>, UplinkError> {
    let mut out: Vec<String> = Vec::new();
    for i in ifaces {
        let name = if i == AUTO { default_route_iface()? } else { i.clone() };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ens5\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
ens6\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
ens5\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
";
    const ROUTE6: &str = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn the_default_route_with_the_lowest_metric_wins() {
        assert_eq!(default_v4(ROUTE).as_deref(), Some("ens5"));
        assert_eq!(default_v4("Iface\tDestination\n").as_deref(), None);
        assert_eq!(default_v6(ROUTE6).as_deref(), Some("eth1"));
    }

    #[test]
    fn named_interfaces_pass_through() {
        assert_eq!(resolve(&["xv0".into(), "xv0".into()]).unwrap(), ["xv0"]);
    }
}
