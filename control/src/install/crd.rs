//! GKE's NetworkLogging custom resource (networking.gke.io/v1alpha1,
//! cluster-scoped; only the object named `default` counts): its CRD, which
//! must exist before an agent that watches the kind starts, and the
//! `default` object that turns policy action logging on
//! ([`crate::policy::logging`] reads `spec.cluster.{allow,deny}.{log,delegate}`).
use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
        CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{labels, Manifest};

pub const GROUP: &str = "networking.gke.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "NetworkLogging";
pub const PLURAL: &str = "networkloggings";

/// `{log, delegate}` of one action.
fn action(what: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": format!("Logging of {what} connections."),
        "properties": {
            "log": {"type": "boolean", "description": format!("Log {what} connections.")},
            "delegate": {
                "type": "boolean",
                "description": "Log only where annotated: allows of policies annotated policy.network.gke.io/enable-logging, denies in namespaces annotated policy.network.gke.io/enable-deny-logging."
            }
        }
    })
}

pub fn network_logging_crd() -> CustomResourceDefinition {
    let schema: JSONSchemaProps = serde_json::from_value(serde_json::json!({
        "type": "object",
        "description": "Policy action logging of the cluster (only the object named default counts).",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "cluster": {
                        "type": "object",
                        "properties": {"allow": action("allowed"), "deny": action("denied")}
                    }
                }
            }
        }
    }))
    .expect("a valid schema");
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{PLURAL}.{GROUP}")),
            labels: Some(labels("agent")),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: KIND.into(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.into(),
                singular: Some("networklogging".into()),
                ..Default::default()
            },
            scope: "Cluster".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema) }),
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The `default` object: which actions are logged.
pub fn network_logging_default(deny: bool, allow: bool) -> Manifest {
    let obj = serde_json::json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": KIND,
        "metadata": {"name": "default"},
        "spec": {"cluster": {
            "allow": {"log": allow, "delegate": false},
            "deny": {"log": deny, "delegate": false}
        }}
    });
    Manifest {
        kind: KIND.into(),
        name: "default".into(),
        yaml: serde_yaml::to_string(&obj).expect("JSON serializes"),
    }
}
