//! Prometheus Operator wiring: a PodMonitor scraping every agent on the
//! shipped metrics port (the container port named `metrics`, the agent's
//! `--metrics-addr`). The operator's types are not in k8s-openapi: the
//! object is plain YAML, and a test checks it against the DaemonSets.
use super::{labels, InstallOptions, Manifest};

pub fn pod_monitor(opts: &InstallOptions) -> Manifest {
    let obj = serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {
            "name": "xlb",
            "namespace": opts.namespace,
            "labels": labels("agent"),
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "xlb"}},
            "namespaceSelector": {"matchNames": [opts.namespace]},
            "podMetricsEndpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": "15s",
                "relabelings": [{
                    "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                    "targetLabel": "node"
                }, {
                    "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                    "targetLabel": "role"
                }]
            }]
        }
    });
    Manifest {
        kind: "PodMonitor".into(),
        name: "xlb".into(),
        yaml: serde_yaml::to_string(&obj).expect("JSON serializes"),
    }
}
