//! xlb's test and benchmark tooling, kept out of the product binaries (the
//! `xlb` agent links none of it): every test crate takes it as a
//! dev-dependency, perf/ and the lab as a dependency. Its neighbours: `lb`,
//! whose ABI constants the packet builder uses (no copy of its own), and
//! the lab, which puts [`objects::pass`] on veth peers.
//!
//! - [`packet`]: Ethernet frames built from named header fields, dissected
//!   into named layers, compared field by field; [`packet::bench`] the
//!   benchmark's reference frames.
//! - [`bench`]: the frame-template mirror and xdp_md context of the
//!   benchmark wrapper.
//! - [`objects`]: the trivial XDP_PASS program and the benchmark wrapper
//!   (testkit/bpf/), compiled at build time.
//! - [`pins`]: a private bpffs directory per test, removed on drop.
//! - [`netns`]: private and named network namespaces, commands inside them.
pub mod bench;
pub mod netns;
pub mod objects;
pub mod packet;
pub mod pins;

/// Fails loudly unless running as root: `what` says what needs it. The
/// privileged test tiers never pass by skipping.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} needs root (BPF programs, bpffs pins, network namespaces); running as uid \
         {euid}. Run the privileged tiers as root (sudo -E cargo test)."
    );
}
