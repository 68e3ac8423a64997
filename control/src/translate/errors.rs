//! What a rejected configuration says: each problem names the object and the
//! field, as the API writes them (`Service default/web: spec.ports[1].targetPort:
//! 0 is not a port number (1-65535)`). [`ErrorList`] collects one object's
//! problems while [`super::services`], [`super::endpoints`] and
//! [`super::nodes`] translate it; the [`super::Translator`] orders them all
//! into [`ConfigErrors`].
use std::{collections::HashSet, fmt, net::IpAddr};

use lb::model::ServiceKey;
use thiserror::Error;

use super::services::MAX_AFFINITY_TIMEOUT_S;
use crate::cluster::Kind;

/// A Kubernetes object named in an error: "Service default/web", "Node node1".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// `obj`, named by its metadata; a namespaced object without a namespace
    /// is in "default".
    pub fn of<K: Kind>(obj: &K) -> Self {
        let m = obj.meta();
        ObjectRef {
            kind: K::KIND,
            namespace: K::NAMESPACED
                .then(|| m.namespace.clone().unwrap_or_else(|| "default".into())),
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What is wrong with one field.
#[derive(Clone, Debug, Error, PartialEq, Eq, Hash)]
pub enum Problem {
    #[error("missing")]
    Missing,
    #[error("{value:?} is not an IP address")]
    BadIp { value: String },
    #[error("{value:?} is not a CIDR: {reason}")]
    BadCidr { value: String, reason: String },
    #[error(
        "{addr} is outside the allowed external IP CIDRs ({allowed}); allow it with \
         --external-ip-cidr (CVE-2020-8554)"
    )]
    ExternalIpNotAllowed { addr: IpAddr, allowed: String },
    #[error("{value} is not a port number (1-65535)")]
    BadPort { value: i32 },
    #[error("{value:?} is not a valid port name (IANA_SVC_NAME)")]
    BadPortName { value: String },
    #[error("{value:?} is not one of {expected}")]
    BadValue { value: String, expected: &'static str },
    #[error("{value:?} is not a prime number <= {max}")]
    BadMaglevSize { value: String, max: u32 },
    #[error("{value} is not between 1 and {max} seconds", max = MAX_AFFINITY_TIMEOUT_S)]
    BadAffinityTimeout { value: i32 },
    #[error("node {node:?} not found")]
    UnknownNode { node: String },
    #[error("node {node:?} has no InternalIP address")]
    NodeWithoutAddress { node: String },
    #[error("{addr} does not match addressType {address_type}")]
    FamilyMismatch { addr: IpAddr, address_type: String },
    #[error("named targetPort {target:?} has no port number in the slice")]
    UnresolvedTargetPort { target: String },
    #[error("{frontend} is already a frontend of {other}")]
    DuplicateFrontend { frontend: String, other: ServiceKey },
}

impl Problem {
    /// A short stable name of the kind of problem (a metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::BadIp { .. } => "bad_ip",
            Problem::BadCidr { .. } => "bad_cidr",
            Problem::ExternalIpNotAllowed { .. } => "external_ip_not_allowed",
            Problem::BadPort { .. } => "bad_port",
            Problem::BadPortName { .. } => "bad_port_name",
            Problem::BadValue { .. } => "bad_value",
            Problem::BadMaglevSize { .. } => "bad_maglev_size",
            Problem::BadAffinityTimeout { .. } => "bad_affinity_timeout",
            Problem::UnknownNode { .. } => "unknown_node",
            Problem::NodeWithoutAddress { .. } => "node_without_address",
            Problem::FamilyMismatch { .. } => "family_mismatch",
            Problem::UnresolvedTargetPort { .. } => "unresolved_target_port",
            Problem::DuplicateFrontend { .. } => "duplicate_frontend",
        }
    }
}

/// One problem: `Service default/web: spec.ports[1].targetPort: ...`.
#[derive(Clone, Debug, Error, PartialEq, Eq, Hash)]
#[error("{object}: {field}: {problem}")]
pub struct ConfigError {
    pub object: ObjectRef,
    /// Path of the field inside the object, as in the API: `spec.ports[1].targetPort`.
    pub field: String,
    pub problem: Problem,
}

/// Every problem of a rejected configuration, in a deterministic order
/// (objects sorted by namespace and name).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "configuration rejected ({n} error{})", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// The problems found while translating one object, each once (a slice is
/// read once per service port; its endpoints' problems are reported once), in
/// the order found.
#[derive(Debug, Default)]
pub(super) struct ErrorList {
    errors: Vec<ConfigError>,
    seen: HashSet<ConfigError>,
}

impl ErrorList {
    pub(super) fn push(&mut self, object: &ObjectRef, field: impl Into<String>, problem: Problem) {
        let e = ConfigError { object: object.clone(), field: field.into(), problem };
        if self.seen.insert(e.clone()) {
            self.errors.push(e);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Service};

    use super::*;

    #[test]
    fn error_display_names_object_and_field() {
        let e = ConfigError {
            object: ObjectRef {
                kind: "Service",
                namespace: Some("default".into()),
                name: "web".into(),
            },
            field: "spec.ports[1].targetPort".into(),
            problem: Problem::BadPort { value: 0 },
        };
        assert_eq!(
            e.to_string(),
            "Service default/web: spec.ports[1].targetPort: 0 is not a port number (1-65535)"
        );
    }

    #[test]
    fn objects_are_named_by_kind_and_scope() {
        let mut svc = Service::default();
        svc.metadata.name = Some("web".into());
        assert_eq!(ObjectRef::of(&svc).to_string(), "Service default/web");
        let mut node = Node::default();
        node.metadata.name = Some("node1".into());
        node.metadata.namespace = Some("ignored".into());
        assert_eq!(ObjectRef::of(&node).to_string(), "Node node1");
    }
}
