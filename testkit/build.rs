//! Compiles the test and benchmark BPF programs (testkit/bpf/*.c) into
//! OUT_DIR, where `testkit::objects` embeds them; the clang invocation is
//! bpf-build's, the same as the datapath's.
use std::{env, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    bpf_build::Clang::from_env().compile_dir(&root.join("bpf"));
}
