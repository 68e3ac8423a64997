//! Address management for this node's pod ranges, in the plugin (no
//! delegated IPAM binary). Allocations are files: `<dataDir>/<network>/<ip>`
//! holding the attachment (container id and interface) that owns the
//! address, plus `last.<family>` with the last address handed out, so
//! allocation continues after it (an address just freed is not reused at
//! once). Every operation holds an exclusive flock on `<network>/lock`:
//! concurrent ADDs and DELs of different containers never hand one address
//! out twice. The files survive the agent and the plugin; with dataDir on a
//! tmpfs (/run) they go with the node, as its pods do, so nothing leaks
//! across a node restart; GC removes what the runtime no longer knows.
//!
//! Per range the network address, the first address after it and (IPv4)
//! the broadcast address are never handed out. A search looks at every
//! address of an IPv4 range and at most [`MAX_SCAN`] of an IPv6 one.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use lb::model::Cidr;

use crate::error::{CniError, Code};

/// Candidates an allocation examines in one range at most.
pub const MAX_SCAN: u128 = 1 << 16;

/// Who owns an address: one attachment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    fn encode(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    fn decode(text: &str) -> Option<Owner> {
        let mut l = text.lines();
        Some(Owner { container_id: l.next()?.to_string(), ifname: l.next()?.to_string() })
    }
}

/// The allocations of one network.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    ranges: Vec<Cidr>,
}

/// The held lock; released on drop (closing the file).
struct Locked(#[allow(dead_code)] File);

fn io_err(what: &str, path: &Path, e: io::Error) -> CniError {
    CniError::new(Code::Io, format!("IPAM: {what}"), format!("{}: {e}", path.display()))
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::from((n as u32).to_be_bytes())
    } else {
        IpAddr::from(n.to_be_bytes())
    }
}

/// First and last address handed out in `r`.
fn bounds(r: &Cidr) -> (u128, u128) {
    let v4 = r.addr.is_ipv4();
    let bits = if v4 { 32 } else { 128 } - u32::from(r.len);
    let base = to_u128(r.network().addr);
    let size = if bits >= 128 { u128::MAX } else { 1u128 << bits };
    let last = base + size - 1 - u128::from(v4); // IPv4: not the broadcast
    (base + 2, last)
}

impl Ipam {
    /// The allocations of network `name` under `data_dir`, for `ranges`.
    pub fn open(data_dir: &Path, name: &str, ranges: Vec<Cidr>) -> Result<Ipam, CniError> {
        let dir = data_dir.join(name);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating the data directory", &dir, e))?;
        Ok(Ipam { dir, ranges })
    }

    fn lock(&self) -> Result<Locked, CniError> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("opening the lock", &path, e))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("locking", &path, io::Error::last_os_error()));
        }
        Ok(Locked(f))
    }

    fn path_of(&self, a: IpAddr) -> PathBuf {
        self.dir.join(a.to_string())
    }

    fn owner_of(&self, a: IpAddr) -> Option<Owner> {
        fs::read_to_string(self.path_of(a)).ok().and_then(|t| Owner::decode(&t))
    }

    /// Every allocation: (address, owner).
    fn all(&self) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?;
        for e in entries.flatten() {
            let Ok(a) = e.file_name().to_string_lossy().parse::<IpAddr>() else { continue };
            if let Some(o) = self.owner_of(a) {
                out.push((a, o));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Takes `a` for `owner` if free (true), or tells it is held by
    /// someone (false).
    fn claim(&self, a: IpAddr, owner: &Owner) -> Result<bool, CniError> {
        let path = self.path_of(a);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(owner.encode().as_bytes())
                    .map_err(|e| io_err("recording an allocation", &path, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("recording an allocation", &path, e)),
        }
    }

    fn last_path(&self, v4: bool) -> PathBuf {
        self.dir.join(if v4 { "last.ipv4" } else { "last.ipv6" })
    }

    /// One address of each range for `owner`: the one `requested` names in
    /// it, else the one it holds already (a repeated ADD), else the next
    /// free one. On failure nothing this call took stays taken.
    pub fn allocate(
        &self,
        owner: &Owner,
        requested: &[IpAddr],
    ) -> Result<Vec<(IpAddr, Cidr)>, CniError> {
        let _lock = self.lock()?;
        let held = self.all()?;
        let mut got: Vec<(IpAddr, Cidr)> = Vec::new();
        let mut taken_now: Vec<IpAddr> = Vec::new();
        let result = (|| {
            for r in &self.ranges {
                if let Some(a) = requested.iter().find(|a| r.contains(**a)) {
                    let (lo, hi) = bounds(r);
                    let n = to_u128(*a);
                    let mine = held.iter().any(|(h, o)| h == a && o == owner);
                    if !mine && (n < lo || n > hi || !self.claim(*a, owner)?) {
                        return Err(CniError::new(
                            Code::AddressUnavailable,
                            "requested address unavailable",
                            format!("{a}: taken, or reserved in {r}"),
                        ));
                    }
                    if !mine {
                        taken_now.push(*a);
                    }
                    got.push((*a, *r));
                    continue;
                }
                if let Some((a, _)) = held.iter().find(|(a, o)| o == owner && r.contains(*a)) {
                    got.push((*a, *r));
                    continue;
                }
                let v4 = r.addr.is_ipv4();
                let (lo, hi) = bounds(r);
                let last = fs::read_to_string(self.last_path(v4))
                    .ok()
                    .and_then(|t| t.trim().parse::<IpAddr>().ok())
                    .map(to_u128)
                    .filter(|n| (lo..=hi).contains(n))
                    .unwrap_or(hi);
                let span = hi - lo + 1;
                let mut found = None;
                for i in 1..=span.min(MAX_SCAN) {
                    let n = lo + (last - lo + i) % span;
                    let a = from_u128(v4, n);
                    if self.claim(a, owner)? {
                        found = Some(a);
                        break;
                    }
                }
                let Some(a) = found else {
                    return Err(CniError::new(
                        Code::IpamExhausted,
                        "no free address",
                        format!("every address of {r} is allocated"),
                    ));
                };
                taken_now.push(a);
                let lp = self.last_path(v4);
                fs::write(&lp, a.to_string())
                    .map_err(|e| io_err("recording the last address", &lp, e))?;
                got.push((a, *r));
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(got),
            Err(e) => {
                for a in taken_now {
                    let _ = fs::remove_file(self.path_of(a));
                }
                Err(e)
            }
        }
    }

    /// Frees every address `owner` holds; returns them (none: fine).
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        let _lock = self.lock()?;
        let mut out = Vec::new();
        for (a, o) in self.all()? {
            if &o == owner {
                let p = self.path_of(a);
                match fs::remove_file(&p) {
                    Ok(()) => out.push(a),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("freeing an address", &p, e)),
                }
            }
        }
        Ok(out)
    }

    /// The addresses `owner` holds.
    pub fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        let _lock = self.lock()?;
        Ok(self.all()?.into_iter().filter(|(_, o)| o == owner).map(|(a, _)| a).collect())
    }

    /// Every allocation with its owner.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        let _lock = self.lock()?;
        self.all()
    }

    /// Ranges whose every address is taken (STATUS; IPv6 ranges are never
    /// full in practice: counted like IPv4 up to MAX_SCAN).
    pub fn full_ranges(&self) -> Result<Vec<Cidr>, CniError> {
        let all = self.allocations()?;
        Ok(self
            .ranges
            .iter()
            .filter(|r| {
                let (lo, hi) = bounds(r);
                let used = all.iter().filter(|(a, _)| r.contains(*a)).count() as u128;
                used >= (hi - lo + 1).min(MAX_SCAN)
            })
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xlb-ipam-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn owner(id: &str) -> Owner {
        Owner { container_id: id.into(), ifname: "eth0".into() }
    }

    #[test]
    fn allocates_per_family_reuses_for_the_same_owner_and_frees() {
        let d = tmp("basic");
        let ranges = vec!["10.244.1.0/24".parse().unwrap(), "2001:db8:244:1::/64".parse().unwrap()];
        let ipam = Ipam::open(&d, "xlb", ranges).unwrap();
        let a = ipam.allocate(&owner("a"), &[]).unwrap();
        assert_eq!(
            a.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>(),
            ["10.244.1.2", "2001:db8:244:1::2"]
        );
        assert_eq!(
            ipam.allocate(&owner("a"), &[]).unwrap(),
            a,
            "a repeated ADD keeps its addresses"
        );
        let b = ipam.allocate(&owner("b"), &[]).unwrap();
        assert_eq!(b[0].0.to_string(), "10.244.1.3");
        assert_eq!(ipam.release(&owner("a")).unwrap().len(), 2);
        assert!(ipam.release(&owner("a")).unwrap().is_empty(), "release twice: fine");
        let c = ipam.allocate(&owner("c"), &[]).unwrap();
        assert_eq!(c[0].0.to_string(), "10.244.1.4", "continues after the last, not the freed");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn exhaustion_is_its_error_and_leaks_nothing() {
        let d = tmp("full");
        // /29: .0 network, .1 reserved, .7 broadcast: .2 to .6 (5 addresses).
        let ranges = vec!["10.0.0.0/29".parse().unwrap(), "2001:db8::/64".parse().unwrap()];
        let ipam = Ipam::open(&d, "xlb", ranges).unwrap();
        for i in 0..5 {
            ipam.allocate(&owner(&format!("p{i}")), &[]).unwrap();
        }
        let e = ipam.allocate(&owner("late"), &[]).unwrap_err();
        assert_eq!(e.code, Code::IpamExhausted);
        assert!(ipam.held(&owner("late")).unwrap().is_empty(), "the IPv6 address was given back");
        assert_eq!(ipam.full_ranges().unwrap(), vec!["10.0.0.0/29".parse().unwrap()]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn requested_addresses_are_honoured_or_refused() {
        let d = tmp("static");
        let ipam = Ipam::open(&d, "xlb", vec!["10.244.1.0/24".parse().unwrap()]).unwrap();
        let want: IpAddr = "10.244.1.11".parse().unwrap();
        assert_eq!(ipam.allocate(&owner("a"), &[want]).unwrap()[0].0, want);
        assert_eq!(ipam.allocate(&owner("a"), &[want]).unwrap()[0].0, want, "its own again: fine");
        assert_eq!(ipam.allocate(&owner("b"), &[want]).unwrap_err().code, Code::AddressUnavailable);
        let reserved: IpAddr = "10.244.1.1".parse().unwrap();
        assert_eq!(
            ipam.allocate(&owner("b"), &[reserved]).unwrap_err().code,
            Code::AddressUnavailable
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let d = tmp("race");
        let ranges = vec!["10.244.0.0/22".parse().unwrap()];
        Ipam::open(&d, "xlb", ranges.clone()).unwrap();
        let got: Vec<IpAddr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let (d, ranges) = (d.clone(), ranges.clone());
                    s.spawn(move || {
                        let ipam = Ipam::open(&d, "xlb", ranges).unwrap();
                        (0..25)
                            .map(|i| ipam.allocate(&owner(&format!("t{t}-{i}")), &[]).unwrap()[0].0)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 200);
        let _ = fs::remove_dir_all(&d);
    }
}
