//! The resource types the double serves (group, version, kind, plural, scope) and the
//! mapping from request paths and `apiVersion`/`kind` pairs to them.

/// One served resource type, e.g. `discovery.k8s.io/v1` `EndpointSlice` (`endpointslices`).
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The lower-case plural used in URL paths.
    pub plural: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The collection path across all namespaces, e.g. `/apis/discovery.k8s.io/v1/endpointslices`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.prefix(), self.plural)
    }

    fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

/// Every resource type served. Adding a kind is one line here.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
    ResourceType { group: "", version: "v1", kind: "Node", plural: "nodes", namespaced: false },
    ResourceType { group: "", version: "v1", kind: "Pod", plural: "pods", namespaced: true },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
    },
    // GKE's policy logging configuration (a CRD there): the agent watches it.
    ResourceType {
        group: "networking.gke.io",
        version: "v1alpha1",
        kind: "NetworkLogging",
        plural: "networkloggings",
        namespaced: false,
    },
];

/// The resource type for an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// What a request path names: a collection (optionally within a namespace) or one object.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub resource: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...` paths the way the API server lays
/// them out; `None` for anything it does not serve.
pub(crate) fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match rest {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 1 => {
            let resource = by_plural(group, version, plural).filter(|r| r.namespaced)?;
            Some(Route {
                resource,
                namespace: Some(nonempty(ns)?),
                name: match tail {
                    [name] => Some(nonempty(name)?),
                    _ => None,
                },
            })
        }
        [plural] => Some(Route {
            resource: by_plural(group, version, plural)?,
            namespace: None,
            name: None,
        }),
        [plural, name] => {
            let resource = by_plural(group, version, plural).filter(|r| !r.namespaced)?;
            Some(Route { resource, namespace: None, name: Some(nonempty(name)?) })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route("/api/v1/services").unwrap();
        assert_eq!((r.resource.kind, r.namespace, r.name), ("Service", None, None));
        let r = route("/api/v1/namespaces/default/services/web").unwrap();
        assert_eq!(
            (r.resource.kind, r.namespace.as_deref(), r.name.as_deref()),
            ("Service", Some("default"), Some("web"))
        );
        let r = route("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!((r.resource.kind, r.name.as_deref()), ("Namespace", Some("kube-system")));
        let r = route("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices").unwrap();
        assert_eq!((r.resource.kind, r.namespace.as_deref()), ("EndpointSlice", Some("a")));
        assert!(route("/api/v1/namespaces/a/nodes").is_none(), "nodes are cluster-scoped");
        assert!(route("/api/v1/services/web").is_none(), "services are namespaced");
        assert!(route("/api/v1/namespaces/a/services/web/status").is_none());
        assert!(route("/apis/discovery.k8s.io/v1beta1/endpointslices").is_none());
        assert_eq!(
            by_kind("networking.k8s.io/v1", "NetworkPolicy").unwrap().plural,
            "networkpolicies"
        );
        assert!(by_kind("v1", "EndpointSlice").is_none());
    }
}
