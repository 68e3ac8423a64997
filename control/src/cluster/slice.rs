//! `discovery.k8s.io/v1` EndpointSlice as xlb keeps it: only the fields the
//! translation reads (addressType, ports, and per endpoint its addresses,
//! conditions and nodeName; of its metadata the name, namespace,
//! resourceVersion, uid and the `kubernetes.io/service-name` label), decoded
//! straight from the API's JSON (or a manifest) and the rest skipped or
//! dropped. The EndpointSlices are the largest kind
//! by far (at 30k Services × 10 endpoints, k8s-openapi's `Endpoint` is ~350
//! bytes before any of its strings; this one is 56), and the store keeps
//! every one. Decoding follows k8s-openapi's: every field optional, `null`
//! read as absent, unknown fields ignored — so an object k8s-openapi decodes
//! decodes here too, and the translation finds the same values (and names
//! the same fields in its errors). The impls a registered kind needs
//! (`Resource`, `ListableResource`, `Metadata`) are written here, as for a
//! custom resource; `From<k8s_openapi::…::EndpointSlice>` serves tools and
//! tests that build the k8s-openapi type.
use k8s_openapi::{
    api::discovery::v1::{self as k8s, EndpointConditions, EndpointPort},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    NamespaceResourceScope,
};
use serde::{Deserialize, Deserializer};

use crate::translate::SERVICE_NAME_LABEL;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "Decoded")]
pub struct EndpointSlice {
    /// Name, namespace, resourceVersion and uid only (labels, annotations,
    /// owner references and the rest are dropped when decoded).
    pub metadata: ObjectMeta,
    /// Its `kubernetes.io/service-name` label: the Service it belongs to.
    pub service_name: Option<String>,
    /// "IPv4", "IPv6" or "FQDN".
    pub address_type: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Option<Vec<EndpointPort>>,
}

/// An EndpointSlice as decoded, before its metadata is trimmed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Decoded {
    #[serde(default, deserialize_with = "null_default")]
    metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_default")]
    address_type: String,
    #[serde(default, deserialize_with = "null_default")]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
}

impl From<Decoded> for EndpointSlice {
    fn from(d: Decoded) -> Self {
        let ObjectMeta { name, namespace, resource_version, uid, labels, .. } = d.metadata;
        EndpointSlice {
            // resourceVersion: the watch resumes from it; uid: deletions.
            metadata: ObjectMeta { name, namespace, resource_version, uid, ..Default::default() },
            service_name: labels.and_then(|mut l| l.remove(SERVICE_NAME_LABEL)),
            address_type: d.address_type,
            endpoints: d.endpoints,
            ports: d.ports,
        }
    }
}

/// One endpoint: what the translation reads of it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Consumers use the first (the API documents the rest as unused).
    #[serde(default, deserialize_with = "null_default")]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    #[serde(default)]
    pub node_name: Option<String>,
}

/// A field that is absent or `null`: its default (as k8s-openapi reads them).
fn null_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl From<k8s::EndpointSlice> for EndpointSlice {
    fn from(s: k8s::EndpointSlice) -> Self {
        EndpointSlice::from(Decoded {
            metadata: s.metadata,
            address_type: s.address_type,
            endpoints: s.endpoints.into_iter().map(Endpoint::from).collect(),
            ports: s.ports,
        })
    }
}

impl From<k8s::Endpoint> for Endpoint {
    fn from(e: k8s::Endpoint) -> Self {
        Endpoint { addresses: e.addresses, conditions: e.conditions, node_name: e.node_name }
    }
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s::EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for EndpointSlice {
    const LIST_KIND: &'static str =
        <k8s::EndpointSlice as k8s_openapi::ListableResource>::LIST_KIND;
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full EndpointSlice as the API serves it: what k8s-openapi reads of
    /// it, this type reads too; the fields it does not keep are skipped.
    const FULL: &str = r#"{
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop", "uid": "u-1",
                     "labels": {"kubernetes.io/service-name": "web"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u-0"}]},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": [
            {"addresses": ["10.0.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "nodeName": "node1", "zone": "a", "hostname": "p",
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "u-2"},
             "hints": {"forZones": [{"name": "a"}]}, "deprecatedTopology": {"k": "v"}},
            {"addresses": null, "conditions": null, "nodeName": null},
            {}
        ]
    }"#;

    #[test]
    fn reads_what_k8s_openapi_reads_of_the_fields_kept() {
        let full: k8s::EndpointSlice = serde_json::from_str(FULL).unwrap();
        let compact: EndpointSlice = serde_json::from_str(FULL).unwrap();
        assert_eq!(compact, EndpointSlice::from(full));
        assert_eq!(compact.endpoints.len(), 3);
        assert_eq!(compact.endpoints[0].node_name.as_deref(), Some("node1"));
        assert_eq!(compact.endpoints[1], Endpoint::default());
        assert_eq!(compact.service_name.as_deref(), Some("web"));
        let m = &compact.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("web-abc"), Some("shop"), Some("u-1"))
        );
        assert!(m.labels.is_none() && m.owner_references.is_none());

        let empty: EndpointSlice =
            serde_json::from_str(r#"{"addressType": null, "endpoints": null}"#).unwrap();
        assert_eq!(empty, EndpointSlice::default());
        assert_eq!(
            EndpointSlice::from(serde_json::from_str::<k8s::EndpointSlice>("{}").unwrap()),
            empty
        );
    }

    #[test]
    fn a_wrong_type_fails_the_object_as_with_k8s_openapi() {
        let bad = r#"{"endpoints": [{"nodeName": 5}]}"#;
        assert!(serde_json::from_str::<k8s::EndpointSlice>(bad).is_err());
        assert!(serde_json::from_str::<EndpointSlice>(bad).is_err());
    }
}
