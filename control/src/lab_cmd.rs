//! `xlb lab` (placeholder: the lab helper replaces this file).

/// Options of `xlb lab`.
#[derive(clap::Args, Debug)]
pub struct LabArgs {}

/// Runs the lab.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    anyhow::bail!("`xlb lab` is not built yet ({args:?})")
}
