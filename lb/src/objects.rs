//! The compiled BPF objects, embedded at build time by build.rs.

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

/// The trivial XDP_PASS program (xdp/xlb_pass.c): benchmark baseline, veth peers.
pub fn pass() -> &'static [u8] {
    object!("xlb_pass")
}

/// The microbenchmark wrapper and packet-generator rig (xdp/xlb_bench.c):
/// programs `xlb_bench`, `xlb_bench_tx`, `xlb_bench_reflect`, `xlb_bench_sink`.
pub fn bench() -> &'static [u8] {
    object!("xlb_bench")
}
