//! Network namespaces by path (CNI_NETNS): opened once, entered by a thread
//! of its own for the work inside (a netlink socket opened there stays
//! there; sysctls written there are the namespace's). The calling thread
//! never moves.
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace.
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)?;
        // SAFETY: plain ioctl on an fd we own; NS_GET_NSTYPE takes no argument.
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
        if ty != libc::CLONE_NEWNET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a network namespace", path.display()),
            ));
        }
        Ok(Netns { file, path: path.to_path_buf() })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid namespace fd; only this thread moves.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// _IO(0xb7, 0x3): the type of the namespace an fd refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Writes a /proc/sys entry in the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}
