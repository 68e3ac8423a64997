//! The test and benchmark BPF programs (testkit/bpf/), embedded at build
//! time by build.rs. The datapath's own objects are `lb::objects`.
use lb::objects::Aligned;

/// The trivial XDP_PASS program (testkit/bpf/xlb_pass.c): the benchmark
/// baseline, and what the lab puts on veth peers so XDP_TX frames arrive.
pub fn pass() -> &'static [u8] {
    static OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/xlb_pass.o")));
    &OBJ.0
}

/// The microbenchmark wrapper and packet-generator rig
/// (testkit/bpf/xlb_bench.c): programs `xlb_bench`, `xlb_bench_tx`,
/// `xlb_bench_reflect`, `xlb_bench_sink`; its ABI is [`crate::bench`].
pub fn bench() -> &'static [u8] {
    static OBJ: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/xlb_bench.o")));
    &OBJ.0
}
