//! `networking.gke.io/v1alpha1` NetworkLogging: GKE Dataplane V2's
//! cluster-scoped configuration of policy action logging (only the object
//! named `default` counts; [`crate::policy::logging::LoggingConfig`] reads
//! it). Not part of k8s-openapi, so the impls a registered kind needs
//! (`Resource`, `ListableResource`, `Metadata`) are written here. `spec` is
//! kept as raw JSON: a malformed spec must not fail the decoding of the
//! watcher's list (which would block every other NetworkLogging object); it
//! is validated, field by field, where it is read.
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, ClusterResourceScope};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkLogging {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `{cluster: {allow: {log, delegate}, deny: {log, delegate}}}`, unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

impl k8s_openapi::Resource for NetworkLogging {
    const API_VERSION: &'static str = "networking.gke.io/v1alpha1";
    const GROUP: &'static str = "networking.gke.io";
    const KIND: &'static str = "NetworkLogging";
    const VERSION: &'static str = "v1alpha1";
    const URL_PATH_SEGMENT: &'static str = "networkloggings";
    type Scope = ClusterResourceScope;
}

impl k8s_openapi::ListableResource for NetworkLogging {
    const LIST_KIND: &'static str = "NetworkLoggingList";
}

impl k8s_openapi::Metadata for NetworkLogging {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
