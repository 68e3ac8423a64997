//! Terminating the sockets the socket programs connected to a backend that
//! is gone: connected UDP sockets and TCP sockets still connecting, in every
//! network namespace below the hooked cgroup, so that no stale flow ever
//! reaches an address a new pod reuses (kube-proxy flushes conntrack for
//! UDP to the same end).
//!
//! How: the socket iterators of sock/xlb_sock_iter.c call bpf_sock_destroy
//! (a kfunc, Linux 6.5) on each socket whose peer is listed in xlb_sock_kill
//! and whose own storage says xlb translated it there. An iterator walks the
//! sockets of the network namespace it is opened in, so [`Reaper::reap`]
//! opens one per namespace of the cgroup's processes, on a thread that
//! joined it. [`Reaper::load`] is the probe: the kernel loads the programs
//! (kfunc resolved and allowed for iterators) or says why not, and the agent
//! logs what happens without it. aya 0.14 does not resolve `__ksym` externs:
//! the program calls the kfunc through a raw instruction whose immediate
//! the loader patches with bpf_sock_destroy's BTF id before loading.
//!
//! [`Reaper::sweep`] deletes the xlb_sock_cookie records no live socket
//! holds: the sock_release program deletes a socket's record when it is
//! released, but not while no agent had it attached (stopped with
//! --detach-on-exit). Cookies are never reused, so such a record is never
//! read; it only takes room, and the agent sweeps at start.
use std::{
    collections::HashSet,
    io::Read,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::Iter,
    Btf, Ebpf, EbpfLoader,
};

use crate::{abi, model::Proto, objects};

/// The placeholder call of xlb_sock_destroy (sock/xlb_sock_iter.c):
/// BPF_JMP|BPF_CALL, src_reg BPF_PSEUDO_KFUNC_CALL, imm "dksx".
const PLACEHOLDER: [u8; 8] = [0x85, 0x20, 0x00, 0x00, 0x64, 0x6b, 0x73, 0x78];
const PROGRAMS: [(&str, &str); 2] = [("xlb_sock_iter_udp", "udp"), ("xlb_sock_iter_tcp", "tcp")];
/// The sweep's iterators: the cookies of sockets holding an xlb_sock_cookie record.
const LIVE_PROGRAMS: [(&str, &str); 2] =
    [("xlb_sock_live_udp", "udp"), ("xlb_sock_live_tcp", "tcp")];

#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("the kernel has no bpf_sock_destroy kfunc (Linux 6.5 or later): {0}")]
    NoKfunc(String),
    #[error("the embedded iterator object has no placeholder kfunc call")]
    NoPlaceholder,
    #[error("loading the socket iterators: {0}")]
    Load(String),
    #[error("xlb_sock_kill / xlb_sock_cookie: {0}")]
    Map(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A backend that is gone: its address, port and the protocol of its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GoneBackend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

/// What one reap did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReapStats {
    /// Network namespaces walked.
    pub namespaces: usize,
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets the kernel refused to destroy.
    pub failed: usize,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Network namespaces walked.
    pub namespaces: usize,
    /// Records of live sockets (kept).
    pub live: usize,
    /// Records deleted: no socket holds them.
    pub removed: usize,
}

/// The loaded socket iterators.
pub struct Reaper {
    ebpf: Ebpf,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reaper")
    }
}

/// The object with every placeholder call patched to call `btf_id`.
fn patched(object: &[u8], btf_id: u32) -> Result<Vec<u8>, ReapError> {
    let mut bytes = object.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + 8 <= bytes.len() {
        if bytes[i..i + 8] == PLACEHOLDER {
            bytes[i + 4..i + 8].copy_from_slice(&btf_id.to_le_bytes());
            found += 1;
            i += 8;
        } else {
            i += 1;
        }
    }
    if found == 0 {
        return Err(ReapError::NoPlaceholder);
    }
    Ok(bytes)
}

impl Reaper {
    /// Loads the iterators, sharing xlb_sock_kill, xlb_sock_cookie and xlb_sock_state pinned
    /// under `pin_dir` (the datapath's, loaded first). An error says why the
    /// kernel will not terminate sockets.
    pub fn load(pin_dir: &Path) -> Result<Reaper, ReapError> {
        let btf = Btf::from_sys_fs().map_err(|e| ReapError::Btf(e.to_string()))?;
        let id = btf
            .id_by_type_name_kind("bpf_sock_destroy", aya_obj::btf::BtfKind::Func)
            .map_err(|e| ReapError::NoKfunc(e.to_string()))?;
        let bytes = patched(objects::sock_iter(), id)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .default_map_pin_directory(pin_dir)
            .load(&bytes)
            .map_err(|e| ReapError::Load(format!("{e:#}")))?;
        for (name, target) in PROGRAMS.into_iter().chain(LIVE_PROGRAMS) {
            let prog: &mut Iter = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| ReapError::Load(format!("program {name} missing")))?;
            prog.load(target, &btf).map_err(|e| ReapError::Load(format!("{name}: {e:#}")))?;
        }
        Ok(Reaper { ebpf })
    }

    /// Destroys, in every network namespace of a process below `cgroup`,
    /// the connected UDP sockets and connecting TCP sockets xlb translated
    /// to one of `gone`.
    pub fn reap(&mut self, cgroup: &Path, gone: &[GoneBackend]) -> Result<ReapStats, ReapError> {
        let keys: Vec<abi::FrontendKey> = gone
            .iter()
            .map(|g| {
                let (addr, family) = abi::addr_to_abi(g.addr);
                abi::FrontendKey { addr, port: g.port.to_be(), proto: g.proto.number(), family }
            })
            .collect();
        let mut stats = ReapStats::default();
        if keys.is_empty() {
            return Ok(stats);
        }
        let map_err = |e: aya::maps::MapError| ReapError::Map(e.to_string());
        {
            let mut kill: BpfHashMap<&mut MapData, abi::FrontendKey, u32> = BpfHashMap::try_from(
                self.ebpf.map_mut("xlb_sock_kill").ok_or(ReapError::Map("missing".into()))?,
            )
            .map_err(map_err)?;
            for k in &keys {
                kill.insert(k, 1, 0).map_err(map_err)?;
            }
        }
        let result = self.walk(cgroup, &PROGRAMS, &mut |out| {
            for rc in out.chunks_exact(4) {
                if i32::from_ne_bytes(rc.try_into().expect("4 bytes")) == 0 {
                    stats.destroyed += 1;
                } else {
                    stats.failed += 1;
                }
            }
        });
        let mut kill: BpfHashMap<&mut MapData, abi::FrontendKey, u32> = BpfHashMap::try_from(
            self.ebpf.map_mut("xlb_sock_kill").ok_or(ReapError::Map("missing".into()))?,
        )
        .map_err(map_err)?;
        for k in &keys {
            let _ = kill.remove(k);
        }
        result.map(|namespaces| ReapStats { namespaces, ..stats })
    }

    /// Deletes the xlb_sock_cookie records no socket in a network namespace
    /// of `cgroup`'s processes holds. The keys are read before the sockets
    /// are walked: a socket translated meanwhile is not in that list, and a
    /// listed one that is alive is found by the walk.
    pub fn sweep(&mut self, cgroup: &Path) -> Result<SweepStats, ReapError> {
        let map_err = |e: aya::maps::MapError| ReapError::Map(e.to_string());
        let before: Vec<u64> = {
            let records: BpfHashMap<&MapData, u64, abi::SockRec> = BpfHashMap::try_from(
                self.ebpf.map("xlb_sock_cookie").ok_or(ReapError::Map("missing".into()))?,
            )
            .map_err(map_err)?;
            records.keys().collect::<Result<_, _>>().map_err(map_err)?
        };
        // No record (storage mode, or no socket translated yet): the walk
        // through every namespace of the node is skipped.
        if before.is_empty() {
            return Ok(SweepStats::default());
        }
        let mut live = HashSet::new();
        let namespaces = self.walk(cgroup, &LIVE_PROGRAMS, &mut |out| {
            live.extend(
                out.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))),
            );
        })?;
        let mut records: BpfHashMap<&mut MapData, u64, abi::SockRec> = BpfHashMap::try_from(
            self.ebpf.map_mut("xlb_sock_cookie").ok_or(ReapError::Map("missing".into()))?,
        )
        .map_err(map_err)?;
        let mut stats = SweepStats { namespaces, ..Default::default() };
        for cookie in before {
            if live.contains(&cookie) {
                stats.live += 1;
            } else if records.remove(&cookie).is_ok() {
                stats.removed += 1;
            }
        }
        Ok(stats)
    }

    /// Runs `programs` in every network namespace of `cgroup`'s processes,
    /// handing each iterator's output to `out`; the namespaces walked.
    fn walk(
        &mut self,
        cgroup: &Path,
        programs: &[(&str, &str)],
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, ReapError> {
        let mut walked = 0;
        for ns in namespaces(cgroup)? {
            walked += 1;
            for &(name, _) in programs {
                let prog: &mut Iter = self
                    .ebpf
                    .program_mut(name)
                    .and_then(|p| p.try_into().ok())
                    .expect("loaded in Reaper::load");
                let id = prog.attach().map_err(|e| ReapError::Load(format!("{name}: {e}")))?;
                let link =
                    prog.take_link(id).map_err(|e| ReapError::Load(format!("{name}: {e}")))?;
                // An iterator walks the namespace it is created in: create
                // and read it on a thread that joined `ns`.
                let bytes = std::thread::scope(|s| {
                    s.spawn(|| -> std::io::Result<Vec<u8>> {
                        // SAFETY: setns on this thread only, with an open namespace fd.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        let mut file = link.into_file().map_err(std::io::Error::other)?;
                        let mut buf = Vec::new();
                        file.read_to_end(&mut buf)?;
                        Ok(buf)
                    })
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("iterator thread panicked")))
                });
                let bytes = match bytes {
                    Ok(b) => b,
                    // The namespace may be gone by now: nothing left in it.
                    Err(e) => {
                        tracing::debug!(error = %e, "socket iterator");
                        continue;
                    }
                };
                out(&bytes);
            }
        }
        Ok(walked)
    }
}

/// One open handle of each distinct network namespace of the processes in
/// `cgroup` and below it.
fn namespaces(cgroup: &Path) -> Result<Vec<std::fs::File>, ReapError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs)
            .map_err(|source| ReapError::Io { path: procs.clone(), source })?;
        for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            // A process may exit meanwhile: skip it.
            let Ok(f) = std::fs::File::open(format!("/proc/{pid}/ns/net")) else { continue };
            let Ok(m) = f.metadata() else { continue };
            if seen.insert((m.dev(), m.ino())) {
                out.push(f);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_placeholder_is_patched_everywhere() {
        let mut obj = vec![0u8; 4];
        obj.extend(super::PLACEHOLDER);
        obj.extend([1, 2, 3]);
        obj.extend(super::PLACEHOLDER);
        let out = super::patched(&obj, 0x01020304).unwrap();
        assert_eq!(&out[4..12], &[0x85, 0x20, 0, 0, 4, 3, 2, 1]);
        assert_eq!(&out[15..23], &[0x85, 0x20, 0, 0, 4, 3, 2, 1]);
        assert!(super::patched(&[0; 16], 1).is_err());
    }
}
