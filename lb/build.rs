//! Compiles the datapath's BPF programs (xdp/*.c, tc/*.c, sock/*.c, with
//! lb/bpf/ on the include path) and the kernel feature probes (lb/probe/*.c)
//! into OUT_DIR, where `lb::objects` embeds them. The
//! clang invocation (flags, multiarch include directory, XLB_CLANG) is
//! bpf-build's, shared with testkit/build.rs.
use std::{env, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ws = root.parent().unwrap().to_path_buf();
    let clang = bpf_build::Clang::from_env().include(root.join("bpf"));
    for dir in ["xdp", "tc", "sock"] {
        clang.compile_dir(&ws.join(dir));
    }
    clang.compile_dir(&root.join("probe"));
}
