//! Compiles BPF C programs with clang: into OUT_DIR for build scripts
//! (lb/build.rs: the datapath, xdp/ and tc/; testkit/build.rs: the test and
//! benchmark programs), and at run time for `xlb-perf compare`, which builds
//! another revision's objects ([`Clang::object`]) — all with the same flags
//! and the same include directories. A missing clang is a build error that says what
//! to install. The kernel uapi headers (<asm/types.h>) live in the
//! toolchain's multiarch include directory (/usr/include/x86_64-linux-gnu on
//! Debian amd64, aarch64-linux-gnu on arm64): asked of clang itself
//! (`-print-multiarch`), overridable with XLB_BPF_MULTIARCH; clang itself
//! with XLB_CLANG.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const INSTALL: &str = "Install clang (apt-get install clang libbpf-dev) or run ./scripts/setup.sh";

/// clang, found once per build script, with the include directories every
/// program gets.
#[derive(Debug)]
pub struct Clang {
    exe: String,
    includes: Vec<PathBuf>,
}

impl Clang {
    /// XLB_CLANG (default `clang`) and its multiarch include directory.
    pub fn from_env() -> Clang {
        println!("cargo:rerun-if-env-changed=XLB_CLANG");
        let exe = env::var("XLB_CLANG").unwrap_or_else(|_| "clang".into());
        let multiarch = multiarch_include(&exe);
        Clang { exe, includes: vec![multiarch] }
    }

    /// Adds an include directory (`-I`) and rebuilds when a file in it changes.
    pub fn include(mut self, dir: impl Into<PathBuf>) -> Clang {
        let dir = dir.into();
        for file in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .flatten()
        {
            println!("cargo:rerun-if-changed={}", file.path().display());
        }
        self.includes.push(dir);
        self
    }

    /// Compiles every `*.c` of `dir` (in name order) into OUT_DIR/<stem>.o.
    pub fn compile_dir(&self, dir: &Path) {
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut sources: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect();
        sources.sort();
        for src in &sources {
            self.compile(src);
        }
    }

    /// Compiles `src` into OUT_DIR/<stem>.o (-O2 -g -target bpf, warnings
    /// are errors).
    pub fn compile(&self, src: &Path) {
        println!("cargo:rerun-if-changed={}", src.display());
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR: run from a build script"));
        let obj = out.join(src.file_stem().expect("a source file name")).with_extension("o");
        self.object(src, &obj).unwrap_or_else(|e| panic!("{e}"));
    }

    /// clang at run time (no cargo output): `exe` with `includes` and the
    /// toolchain's multiarch include directory.
    pub fn at_run_time(exe: &str, includes: Vec<PathBuf>) -> Result<Clang, String> {
        let mut all = vec![multiarch_dir(exe)?];
        all.extend(includes);
        Ok(Clang { exe: exe.to_string(), includes: all })
    }

    /// Compiles `src` into `obj` with the build's flags; the error says
    /// what failed (clang missing, or its diagnostics on stderr).
    pub fn object(&self, src: &Path, obj: &Path) -> Result<(), String> {
        let status = Command::new(&self.exe)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-Wno-unused-function"])
            .args(self.includes.iter().map(|d| format!("-I{}", d.display())))
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(obj)
            .status()
            .map_err(|e| format!("running {}: {e}. {INSTALL}", self.exe))?;
        if !status.success() {
            return Err(format!("clang failed on {}", src.display()));
        }
        Ok(())
    }
}

/// The multiarch include directory of the toolchain: XLB_BPF_MULTIARCH (a
/// tuple such as "aarch64-linux-gnu" or a directory), else what
/// `clang -print-multiarch` names, under /usr/include. Also for tests that
/// compile a probe object (lb/tests/abi_btf.rs).
pub fn multiarch_include(clang: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed=XLB_BPF_MULTIARCH");
    multiarch_dir(clang).unwrap_or_else(|e| panic!("{e}"))
}

/// [`multiarch_include`] without cargo output, the failure as a message.
pub fn multiarch_dir(clang: &str) -> Result<PathBuf, String> {
    let tuple = match env::var("XLB_BPF_MULTIARCH") {
        Ok(v) if v.starts_with('/') => return Ok(PathBuf::from(v)),
        Ok(v) => v,
        Err(_) => {
            let out = Command::new(clang)
                .arg("-print-multiarch")
                .output()
                .map_err(|e| format!("running {clang} -print-multiarch: {e}. {INSTALL}"))?;
            let tuple = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || tuple.is_empty() {
                return Err(format!(
                    "{clang} -print-multiarch named no multiarch tuple ({}); set XLB_BPF_MULTIARCH to the tuple or the include directory holding asm/types.h",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            tuple
        }
    };
    let dir = PathBuf::from("/usr/include").join(&tuple);
    if !dir.join("asm/types.h").exists() {
        return Err(format!(
            "{}/asm/types.h is missing: install linux-libc-dev for {tuple}, or set XLB_BPF_MULTIARCH",
            dir.display()
        ));
    }
    Ok(dir)
}
