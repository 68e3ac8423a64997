//! Manifests parsed back into the Kubernetes API types, strictly: each
//! document is decoded into its k8s-openapi type (by apiVersion and kind),
//! encoded again and compared with what was read; a field the type does
//! not know (k8s-openapi's decoders skip them silently, as the API server
//! would with a warning) or a value that did not survive is an error naming
//! the document and the field's path. Kinds k8s-openapi lacks (the
//! NetworkLogging object, the Prometheus Operator's PodMonitor) are checked
//! against the fields xlb writes.
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// One document, decoded.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    DaemonSet(Box<DaemonSet>),
    Crd(Box<CustomResourceDefinition>),
    /// networking.gke.io/v1alpha1 NetworkLogging.
    NetworkLogging(Value),
    /// monitoring.coreos.com/v1 PodMonitor.
    PodMonitor(Value),
}

/// A document that is not what its kind allows.
#[derive(Debug, thiserror::Error)]
#[error("document {index} ({kind} {name}): {problem}")]
pub struct StrictError {
    pub index: usize,
    pub kind: String,
    pub name: String,
    pub problem: String,
}

/// The fields of `read` that `back` (decoded and encoded again) lost or
/// changed, as paths (`spec.template.spec.containers[0].securityContext.foo`).
/// A null read counts as absent.
pub fn lost_fields(read: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (read, back) {
        (Value::Object(r), Value::Object(b)) => {
            for (k, v) in r {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(bv) => lost_fields(v, bv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(format!("{p}: unknown field")),
                }
            }
        }
        (Value::Array(r), Value::Array(b)) if r.len() == b.len() => {
            for (i, (rv, bv)) in r.iter().zip(b).enumerate() {
                lost_fields(rv, bv, &format!("{path}[{i}]"), out);
            }
        }
        (r, b) if r == b => {}
        (r, b) => out.push(format!("{path}: read {r}, kept {b}")),
    }
}

fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    lost_fields(v, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(t)
    } else {
        Err(lost.join("; "))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read for its shape only
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LogAction {
    #[serde(default)]
    log: bool,
    #[serde(default)]
    delegate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LogCluster {
    #[serde(default)]
    allow: Option<LogAction>,
    #[serde(default)]
    deny: Option<LogAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LogSpec {
    cluster: LogCluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct NetworkLogging {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: LogSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: PodMonitorSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    #[serde(default)]
    namespace_selector: Option<Value>,
    pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodMetricsEndpoint {
    port: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    relabelings: Vec<Relabeling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Relabeling {
    source_labels: Vec<String>,
    target_label: String,
}

fn shape<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(v.clone()).map(|_| ()).map_err(|e| e.to_string())
}

/// Decodes one document (already read as JSON) strictly.
pub fn object(v: &Value) -> Result<Object, String> {
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    Ok(match (api, kind) {
        ("v1", "Namespace") => Object::Namespace(Box::new(typed(v)?)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(Box::new(typed(v)?)),
        ("v1", "ConfigMap") => Object::ConfigMap(Box::new(typed(v)?)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(Box::new(typed(v)?)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(Box::new(typed(v)?))
        }
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(typed(v)?)),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => Object::Crd(Box::new(typed(v)?)),
        ("networking.gke.io/v1alpha1", "NetworkLogging") => {
            shape::<NetworkLogging>(v)?;
            Object::NetworkLogging(v.clone())
        }
        ("monitoring.coreos.com/v1", "PodMonitor") => {
            shape::<PodMonitor>(v)?;
            Object::PodMonitor(v.clone())
        }
        _ => return Err(format!("apiVersion {api:?} kind {kind:?}: not a kind of xlb's install")),
    })
}

/// Every document of a multi-document YAML text, decoded strictly; empty
/// documents (comments only) are skipped.
pub fn parse(text: &str) -> Result<Vec<Object>, StrictError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let fail = |kind: &str, name: &str, problem: String| StrictError {
            index,
            kind: kind.into(),
            name: name.into(),
            problem,
        };
        let v = Value::deserialize(doc).map_err(|e| fail("?", "?", e.to_string()))?;
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("?").to_string();
        let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_string();
        out.push(object(&v).map_err(|p| fail(&kind, &name, p))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: xlb\n  nmespace: kube-system\n";
        let e = parse(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 0 (ServiceAccount xlb): metadata.nmespace: unknown field"
        );
        let text = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: [{name: a, securityContext: {priviledged: true}}]\n";
        let e = parse(text).unwrap_err();
        assert!(
            e.problem.contains(
                "spec.template.spec.containers[0].securityContext.priviledged: unknown field"
            ),
            "{e}"
        );
        let text = "apiVersion: networking.gke.io/v1alpha1\nkind: NetworkLogging\nmetadata: {name: default}\nspec: {cluster: {deny: {log: true, delgate: false}}}\n";
        assert!(parse(text).unwrap_err().problem.contains("delgate"));
    }
}
