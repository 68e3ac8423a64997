//! Compiles the BPF programs (xdp/*.c, tc/*.c) with clang into OUT_DIR, where
//! `lb::objects` embeds them. A missing clang is a build error that says what
//! to install. The kernel uapi headers (<asm/types.h>) live in the
//! toolchain's multiarch include directory (/usr/include/x86_64-linux-gnu on
//! Debian amd64, aarch64-linux-gnu on arm64): asked of clang itself
//! (`-print-multiarch`), overridable with XLB_BPF_MULTIARCH.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ws = root.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let clang = env::var("XLB_CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-env-changed=XLB_CLANG");
    let multiarch = multiarch_include(&clang);
    for header in std::fs::read_dir(root.join("bpf")).expect("lb/bpf").flatten() {
        println!("cargo:rerun-if-changed={}", header.path().display());
    }

    let mut objects = Vec::new();
    for dir in ["xdp", "tc"] {
        let dir = ws.join(dir);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut sources: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect();
        sources.sort();
        objects.extend(sources);
    }
    for src in &objects {
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out.join(src.file_stem().unwrap()).with_extension("o");
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-Wno-unused-function"])
            .arg(format!("-I{}", multiarch.display()))
            .arg(format!("-I{}", root.join("bpf").display()))
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("running {clang}: {e}. Install clang (apt-get install clang libbpf-dev) or run ./scripts/setup.sh")
            });
        assert!(status.success(), "clang failed on {}", src.display());
    }
}

/// The multiarch include directory of the toolchain: XLB_BPF_MULTIARCH (a
/// tuple such as "aarch64-linux-gnu" or a directory), else what
/// `clang -print-multiarch` names, under /usr/include.
fn multiarch_include(clang: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed=XLB_BPF_MULTIARCH");
    let tuple = match env::var("XLB_BPF_MULTIARCH") {
        Ok(v) if v.starts_with('/') => return PathBuf::from(v),
        Ok(v) => v,
        Err(_) => {
            let out = Command::new(clang).arg("-print-multiarch").output().unwrap_or_else(|e| {
                panic!("running {clang} -print-multiarch: {e}. Install clang (apt-get install clang libbpf-dev) or run ./scripts/setup.sh")
            });
            let tuple = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                out.status.success() && !tuple.is_empty(),
                "{clang} -print-multiarch named no multiarch tuple ({}); set XLB_BPF_MULTIARCH to the tuple or the include directory holding asm/types.h",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            tuple
        }
    };
    let dir = PathBuf::from("/usr/include").join(&tuple);
    assert!(
        dir.join("asm/types.h").exists(),
        "{}/asm/types.h is missing: install linux-libc-dev for {tuple}, or set XLB_BPF_MULTIARCH",
        dir.display()
    );
    dir
}
