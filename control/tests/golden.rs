//! Golden translation tests: each tests/golden/NAME.yaml holds manifests and,
//! in a `# xlb-test:` comment line, the node and policy to translate with
//! (`node=NAME`, `external-ip-cidr=CIDR` (repeatable), `proxy-name=NAME`).
//! The loaded and translated result, rendered as text (the desired state, or
//! every error), must equal NAME.out byte for byte. `XLB_BLESS=1 cargo test
//! -p xlb-control --test golden` rewrites the .out files; review the diff.
use std::{fs, path::PathBuf};

use xlb_control::{render, source::file, translate};

fn options(yaml: &str, case: &str) -> translate::TranslateOptions {
    let header = yaml
        .lines()
        .find_map(|l| l.strip_prefix("# xlb-test:"))
        .unwrap_or_else(|| panic!("{case}: no `# xlb-test:` header line"));
    let mut opts = translate::TranslateOptions::new("");
    for word in header.split_whitespace() {
        let (k, v) = word
            .split_once('=')
            .unwrap_or_else(|| panic!("{case}: header word {word:?} is not KEY=VALUE"));
        match k {
            "node" => opts.node_name = v.to_string(),
            "external-ip-cidr" => {
                opts.external_ip_cidrs.push(v.parse().unwrap_or_else(|e| panic!("{case}: {e}")))
            }
            "proxy-name" => opts.proxy_name = v.to_string(),
            _ => panic!("{case}: unknown header key {k:?}"),
        }
    }
    assert!(!opts.node_name.is_empty(), "{case}: header needs node=NAME");
    opts
}

/// What a case produces: the rendered desired state, the rendered errors,
/// or the loader's error.
fn run_case(yaml: &str, case: &str) -> String {
    let opts = options(yaml, case);
    let cluster = match file::load_str(yaml, &format!("{case}.yaml")) {
        Ok(c) => c,
        Err(e) => return format!("load error: {e}\n"),
    };
    match translate::translate(&cluster, &opts) {
        Ok(desired) => render::desired(&desired),
        Err(errors) => render::errors(&errors),
    }
}

#[test]
fn golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("XLB_BLESS").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases missing in {}", dir.display());

    let mut failures = Vec::new();
    for path in &cases {
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let yaml = fs::read_to_string(path).unwrap();
        let got = run_case(&yaml, &case);
        let out = path.with_extension("out");
        if bless {
            fs::write(&out, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&out).unwrap_or_else(|e| {
            panic!("{}: {e} (run with XLB_BLESS=1 to create it)", out.display())
        });
        if got != want {
            failures.push(format!("--- {case}: want\n{want}+++ {case}: got\n{got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ (XLB_BLESS=1 to accept):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Translation is a function of the objects, not of their order.
#[test]
fn object_order_does_not_matter() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for case in ["multi-port", "terminating", "bad-fields"] {
        let yaml = fs::read_to_string(dir.join(format!("{case}.yaml"))).unwrap();
        let opts = options(&yaml, case);
        let mut cluster = file::load_str(&yaml, case).unwrap();
        let want = translate::translate(&cluster, &opts);
        cluster.services.reverse();
        cluster.slices.reverse();
        cluster.nodes.reverse();
        assert_eq!(translate::translate(&cluster, &opts), want, "{case}");
    }
}
