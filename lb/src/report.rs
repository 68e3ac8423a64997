//! Errors printed whole: [`Chain`] displays an error with every cause under
//! it ("attaching xlb_xdp to eth0: `bpf_link_create` failed: Operation not
//! permitted (os error 1)"), so an OS error is never hidden behind the
//! message of the call that got it. Levels whose message the level above
//! already ends with (`"map {map}: {source}"` style) are not repeated. For
//! anyhow errors `{:#}` does the same; use this for typed errors.
use std::{error::Error, fmt};

/// Displays `.0` and its whole `source()` chain, joined by ": ".
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(e) = next {
            let msg = e.to_string();
            if !shown.ends_with(&msg) {
                shown.push_str(": ");
                shown.push_str(&msg);
            }
            next = e.source();
        }
        f.write_str(&shown)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use aya::programs::ProgramError;

    use super::*;

    #[test]
    fn the_os_error_is_shown() {
        // What BPF_PROG_TEST_RUN returns without the privilege: aya's
        // message alone says only "`bpf_prog_test_run` failed".
        let e = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_test_run",
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(!e.to_string().contains("not permitted"), "aya's own message: {e}");
        let shown = Chain(&e).to_string();
        assert!(shown.contains("bpf_prog_test_run"), "{shown}");
        assert!(shown.contains("Operation not permitted (os error 1)"), "{shown}");
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("map xlb_ct: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let e = Outer { source: std::io::Error::from_raw_os_error(libc::ENOENT) };
        assert_eq!(Chain(&e).to_string(), "map xlb_ct: No such file or directory (os error 2)");
    }
}
