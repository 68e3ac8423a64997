//! `xlb-cni`: the CNI plugin binary. The container runtime runs it with the
//! CNI_* environment and the network configuration on stdin; it prints the
//! result (ADD, VERSION) or the spec's error JSON on stdout, and exits 0 on
//! success, 1 on error. Everything else is the library's
//! ([`xlb_cni::plugin`]).
use std::{io::Read, process::ExitCode};

use xlb_cni::{
    config::Invocation,
    error::{err, Code},
    plugin,
};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let version = |input: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(input)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
            .unwrap_or_else(|| "1.1.0".into())
    };
    let result = Invocation::from_env(|k| std::env::var(k).ok()).and_then(|inv| {
        if inv.command != "VERSION" || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            std::io::stdin()
                .read_to_end(&mut stdin)
                .map_err(|e| err(Code::Io, "reading the network configuration", e))?;
        }
        plugin::run(&inv, &stdin)
    });
    match result {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&version(&stdin)));
            eprintln!("xlb-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
