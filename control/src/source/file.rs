//! Manifest-file source: reads multi-document YAML (or JSON) manifests from a
//! file or a directory into a [`Cluster`], and tells when they changed. The
//! daemon hands what it read over as a full listing; the other source is
//! [`crate::source::kube`].
//!
//! Accepted kinds: every kind registered in [`crate::cluster::kinds`] (v1
//! Service, discovery.k8s.io/v1 EndpointSlice, v1 Node), and lists of them
//! (v1 List, ServiceList, EndpointSliceList, NodeList). Any other kind is an
//! error naming the file, the document (1-based) and the kind: a manifest set
//! meant for xlb should hold nothing xlb ignores silently. A file is read
//! whole or not at all.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::LazyLock,
    time::SystemTime,
};

use serde::Deserialize;
use thiserror::Error;

use crate::cluster::{for_each_kind, Cluster, Kind, KindVisitor};

/// Why manifests could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: document {doc}: {source}")]
    Yaml {
        origin: String,
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{origin}: document {doc}{item}: no apiVersion/kind")]
    NoKind { origin: String, doc: usize, item: String },
    #[error(
        "{origin}: document {doc}{item}: kind {api_version} {kind} is not supported \
         (expected {expected} or a List of them)",
        expected = supported()
    )]
    UnsupportedKind { origin: String, doc: usize, item: String, api_version: String, kind: String },
    #[error("{origin}: document {doc}{item}: {kind}: {source}")]
    Decode {
        origin: String,
        doc: usize,
        item: String,
        kind: &'static str,
        #[source]
        source: serde_yaml::Error,
    },
}

/// Loads every manifest of `path`: a file, or a directory's `*.yaml`,
/// `*.yml` and `*.json` files (not recursive, in name order).
pub fn load_path(path: &Path) -> Result<Cluster, LoadError> {
    let mut cluster = Cluster::default();
    for file in manifest_files(path)? {
        let text = fs::read_to_string(&file)
            .map_err(|source| LoadError::Io { path: file.clone(), source })?;
        load_into(&mut cluster, &text, &file.display().to_string())?;
    }
    Ok(cluster)
}

/// Loads the manifests in `text`; `origin` names it in errors.
pub fn load_str(text: &str, origin: &str) -> Result<Cluster, LoadError> {
    let mut cluster = Cluster::default();
    load_into(&mut cluster, text, origin)?;
    Ok(cluster)
}

fn load_into(cluster: &mut Cluster, text: &str, origin: &str) -> Result<(), LoadError> {
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_yaml::Value::deserialize(de).map_err(|source| LoadError::Yaml {
            origin: origin.to_string(),
            doc,
            source,
        })?;
        if value.is_null() {
            continue; // an empty document ("---" at the end)
        }
        add_object(cluster, value, origin, doc, String::new())?;
    }
    Ok(())
}

fn add_object(
    cluster: &mut Cluster,
    value: serde_yaml::Value,
    origin: &str,
    doc: usize,
    item: String,
) -> Result<(), LoadError> {
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        return Err(LoadError::NoKind { origin: origin.to_string(), doc, item });
    };
    let decode = |kind: &'static str, source| LoadError::Decode {
        origin: origin.to_string(),
        doc,
        item: item.clone(),
        kind,
        source,
    };
    let of_version = || DECODERS.iter().filter(|d| d.api_version == api_version);
    if let Some(d) = of_version().find(|d| d.kind == kind) {
        return (d.add)(cluster, value).map_err(|e| decode(d.kind, e));
    }
    let is_list = (api_version == "v1" && kind == "List") || of_version().any(|d| d.list == kind);
    if !is_list {
        return Err(LoadError::UnsupportedKind {
            origin: origin.to_string(),
            doc,
            item,
            api_version,
            kind,
        });
    }
    let items = match value.get("items") {
        Some(serde_yaml::Value::Sequence(items)) => items.clone(),
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(_) => {
            let e = <serde_yaml::Error as serde::de::Error>::custom("items: not a list");
            return Err(decode("List", e));
        }
    };
    for (j, v) in items.into_iter().enumerate() {
        add_object(cluster, v, origin, doc, format!("{item} items[{j}]"))?;
    }
    Ok(())
}

/// How a registered kind is read from a manifest document.
struct Decoder {
    api_version: &'static str,
    kind: &'static str,
    /// Its list kind ("ServiceList").
    list: &'static str,
    /// Decodes the document and adds it to the kind's objects.
    add: fn(&mut Cluster, serde_yaml::Value) -> Result<(), serde_yaml::Error>,
}

/// One [`Decoder`] per registered kind, in registration order.
static DECODERS: LazyLock<Vec<Decoder>> = LazyLock::new(|| {
    struct Collect(Vec<Decoder>);
    impl KindVisitor for Collect {
        fn visit<K: Kind>(&mut self) {
            self.0.push(Decoder {
                api_version: K::API_VERSION,
                kind: K::KIND,
                list: K::LIST_KIND,
                add: add::<K>,
            });
        }
    }
    let mut c = Collect(Vec::new());
    for_each_kind(&mut c);
    c.0
});

fn add<K: Kind>(cluster: &mut Cluster, value: serde_yaml::Value) -> Result<(), serde_yaml::Error> {
    K::of_mut(cluster).push(serde_yaml::from_value(value)?);
    Ok(())
}

/// "v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node": the kinds accepted.
fn supported() -> String {
    let kinds: Vec<String> =
        DECODERS.iter().map(|d| format!("{} {}", d.api_version, d.kind)).collect();
    kinds.join(", ")
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    if !fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "yaml" | "yml" | "json") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// What identifies a version of the manifests: each file's path, size and
/// modification time. Changes when a file is edited, added or removed.
pub type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The current [`Stamp`] of `path` (a file or a directory).
pub fn stamp(path: &Path) -> Result<Stamp, LoadError> {
    let mut out = Vec::new();
    for file in manifest_files(path)? {
        let meta =
            fs::metadata(&file).map_err(|source| LoadError::Io { path: file.clone(), source })?;
        out.push((file, meta.len(), meta.modified().ok()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_names_document_and_kind() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let err = load_str(text, "x.yaml").unwrap_err().to_string();
        assert_eq!(
            err,
            "x.yaml: document 2: kind apps/v1 Deployment is not supported (expected v1 \
             Service, discovery.k8s.io/v1 EndpointSlice, v1 Node, v1 Pod, v1 Namespace, \
             networking.k8s.io/v1 NetworkPolicy, networking.gke.io/v1alpha1 NetworkLogging \
             or a List of them)"
        );
    }

    #[test]
    fn list_and_empty_documents() {
        let text = "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                    metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n---\n";
        let c = load_str(text, "x.yaml").unwrap();
        assert_eq!((c.nodes.len(), c.services.len(), c.slices.len()), (1, 1, 0));
    }

    #[test]
    fn list_item_of_unknown_kind() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: p}\n";
        let err = load_str(text, "x.yaml").unwrap_err().to_string();
        assert!(err.starts_with("x.yaml: document 1 items[0]: kind v1 Secret"), "{err}");
    }

    #[test]
    fn decode_error_names_kind() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: 3}\n";
        let err = load_str(text, "x.yaml").unwrap_err().to_string();
        assert!(err.starts_with("x.yaml: document 1: Service: "), "{err}");
    }
}
