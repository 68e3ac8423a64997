//! CNI errors as the spec's JSON error result: the well-known codes of
//! SPEC.md section 5 and xlb's own (100 and up).
use serde::Serialize;

/// Error codes: well-known (below 100) and xlb-cni's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: cannot serve ADD.
    NotAvailable = 50,
    /// No free address in the node's pod ranges.
    IpamExhausted = 100,
    /// The interface exists already (ADD repeated without DEL).
    InterfaceExists = 101,
    /// Setting up the pod's network failed (netlink, BPF).
    Setup = 102,
    /// CHECK found the network not as ADD left it.
    CheckFailed = 103,
    /// A requested static address is outside the ranges or taken.
    AddressUnavailable = 104,
}

/// An error result: code, short message, details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The JSON the runtime reads.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Out {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("plain strings serialize")
    }
}

/// Shorthand: an error of `code` whose details are `e`'s text.
pub fn err(code: Code, msg: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code, msg, e.to_string())
}
