//! Report files under perf/out/: one JSON and one markdown file per
//! scenario, CSV tables, SVG plots, and the summary `all` assembles.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("out")
}

/// Writes `<name>.json` and `<name>.md`.
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T, markdown: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join(format!("{name}.md"));
    std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    Ok(())
}

/// Writes `<name>.csv` from a header and rows.
pub fn write_csv(dir: &Path, name: &str, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut s = header.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    let p = dir.join(format!("{name}.csv"));
    std::fs::write(&p, s).with_context(|| format!("writing {}", p.display()))
}
