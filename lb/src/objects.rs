//! The compiled datapath objects, embedded at build time by build.rs. (The
//! test and benchmark programs are testkit's, outside the product.)

/// Aligns embedded bytes to 8 so the ELF parser may read them in place.
#[repr(C, align(8))]
pub struct Aligned<B: ?Sized>(pub B);

macro_rules! object {
    ($name:literal) => {{
        static OBJ: &Aligned<[u8]> =
            &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".o")));
        &OBJ.0
    }};
}

/// The north-south fast path (xdp/xlb_xdp.c): program `xlb_xdp`.
pub fn xdp() -> &'static [u8] {
    object!("xlb_xdp")
}

/// DSR termination (tc/xlb_tc.c): programs `xlb_tc_ingress`, `xlb_tc_egress`.
pub fn tc() -> &'static [u8] {
    object!("xlb_tc")
}

/// East-west translation at the socket (sock/xlb_sock.c): the cgroup
/// sock_addr programs of `loader::SOCK_PROGRAMS`.
pub fn sock() -> &'static [u8] {
    object!("xlb_sock")
}

/// Socket termination (sock/xlb_sock_iter.c): the socket iterators
/// `xlb_sock_iter_udp`, `xlb_sock_iter_tcp` (see `crate::sockdestroy`).
pub fn sock_iter() -> &'static [u8] {
    object!("xlb_sock_iter")
}

/// Kernel feature probes (lb/probe/xlb_probe.c), run by `crate::features`.
pub fn probe() -> &'static [u8] {
    object!("xlb_probe")
}
