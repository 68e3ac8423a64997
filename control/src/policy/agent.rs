//! NetworkPolicy as the agent runs it: the Pods, Namespaces and
//! NetworkPolicies of the source mirrored ([`PolicyObjects`], taken out of
//! each batch of [`Changes`] before the translation sees it), compiled
//! when one changed, and turned into this node's [`PolicyDesired`]: the
//! compiled rules of the pods whose addresses this node's endpoints hold,
//! by host veth ([`desired`]). The endpoints carry the pods' identities
//! ([`set_identities`]) so the overlay and local checks see them. The
//! NetworkLogging objects are mirrored too: with the annotations of
//! policies and namespaces they make the [`PolicyNames`] the policy
//! action log reads ([`super::logging`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use lb::{
    model::Endpoint,
    policy::{EndpointPolicy, PolicyDesired},
};

use super::{
    compile,
    logging::{LoggingConfig, ALLOW_ANNOTATION, DENY_ANNOTATION},
    Compiled,
};
use crate::cluster::{networklogging::NetworkLogging, Changes, KindChanges, ObjectKey};

/// The objects policy reads, kept current from the source's changes.
#[derive(Debug, Default)]
pub struct PolicyObjects {
    pods: BTreeMap<ObjectKey, Arc<Pod>>,
    namespaces: BTreeMap<ObjectKey, Arc<Namespace>>,
    policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
    loggings: BTreeMap<ObjectKey, Arc<NetworkLogging>>,
    /// Something changed since the last [`PolicyObjects::compile`].
    dirty: bool,
}

fn apply<K>(map: &mut BTreeMap<ObjectKey, Arc<K>>, changes: KindChanges<K>) -> bool {
    let mut changed = changes.full;
    for (key, obj) in changes.into_changes(map.keys().cloned().collect::<Vec<_>>().iter()) {
        changed = true;
        match obj {
            Some(o) => {
                map.insert(key, o);
            }
            None => {
                map.remove(&key);
            }
        }
    }
    changed
}

impl PolicyObjects {
    /// Takes the policy kinds out of `changes` (the rest is the
    /// translation's).
    pub fn take(&mut self, changes: &mut Changes) {
        self.dirty |= apply(&mut self.pods, std::mem::take(&mut changes.pods));
        self.dirty |= apply(&mut self.namespaces, std::mem::take(&mut changes.namespaces));
        self.dirty |= apply(&mut self.policies, std::mem::take(&mut changes.policies));
        self.dirty |= apply(&mut self.loggings, std::mem::take(&mut changes.network_loggings));
    }

    /// What the policy action log reads, for `compiled` (compiled from
    /// these objects): the NetworkLogging `default` (an invalid one is
    /// named in `logging_errors` and logging stays off; other names are
    /// ignored), the policies annotated for allow logging and the
    /// namespaces annotated for deny logging.
    pub fn names(&self, compiled: &Compiled) -> PolicyNames {
        let mut logging = LoggingConfig::default();
        let mut logging_errors = Vec::new();
        for obj in self.loggings.values() {
            let parsed = serde_json::to_value(&**obj)
                .map_err(|e| format!("NetworkLogging: {e}"))
                .and_then(|v| LoggingConfig::from_object(&v));
            match parsed {
                Ok(Some(c)) => logging = c,
                Ok(None) => {}
                Err(e) => logging_errors.push(e),
            }
        }
        let annotated = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                         key: &str| {
            m.annotations.as_ref().and_then(|a| a.get(key)).is_some_and(|v| v == "true")
        };
        let logged: BTreeSet<String> = self
            .policies
            .iter()
            .filter(|(_, p)| annotated(&p.metadata, ALLOW_ANNOTATION))
            .map(|(k, _)| k.to_string())
            .collect();
        PolicyNames {
            logging,
            logging_errors,
            logged_policies: compiled
                .policies
                .iter()
                .filter(|(_, name)| logged.contains(*name))
                .map(|(id, _)| *id)
                .collect(),
            deny_logged_namespaces: self
                .namespaces
                .iter()
                .filter(|(_, n)| annotated(&n.metadata, DENY_ANNOTATION))
                .map(|(k, _)| k.name.clone())
                .collect(),
            by_ip: compiled
                .pods
                .iter()
                .flat_map(|(k, p)| p.ips.iter().map(move |ip| (*ip, k.clone())))
                .collect(),
            compiled: Arc::new(compiled.clone()),
        }
    }

    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Every policy compiled over the pods and namespaces held.
    pub fn compile(&mut self) -> Compiled {
        self.dirty = false;
        let pods: Vec<Pod> = self.pods.values().map(|p| (**p).clone()).collect();
        let nss: Vec<Namespace> = self.namespaces.values().map(|n| (**n).clone()).collect();
        let nps: Vec<NetworkPolicy> = self.policies.values().map(|p| (**p).clone()).collect();
        compile(&pods, &nss, &nps)
    }
}

/// The names and logging rules the policy action log resolves verdicts
/// with, published by the agent on every recompile.
#[derive(Clone, Debug, Default)]
pub struct PolicyNames {
    pub compiled: Arc<Compiled>,
    /// NetworkLogging `default` (all off without one).
    pub logging: LoggingConfig,
    /// Invalid NetworkLogging objects, named with their field.
    pub logging_errors: Vec<String>,
    /// Policy numbers annotated `policy.network.gke.io/enable-logging: "true"`.
    pub logged_policies: BTreeSet<u32>,
    /// Namespaces annotated `policy.network.gke.io/enable-deny-logging: "true"`.
    pub deny_logged_namespaces: BTreeSet<String>,
    /// Pod addresses -> pods.
    pub by_ip: std::collections::HashMap<std::net::IpAddr, ObjectKey>,
}

impl PolicyNames {
    /// The pod holding `ip`.
    pub fn pod(&self, ip: std::net::IpAddr) -> Option<&super::PodInfo> {
        self.by_ip.get(&ip).and_then(|k| self.compiled.pods.get(k))
    }
}

/// Each endpoint takes the identity of the pod holding its first address
/// (an endpoint no Pod object names keeps the CNI plugin's).
pub fn set_identities(c: &Compiled, eps: &mut [Endpoint]) {
    for ep in eps {
        if let Some(p) = ep.addrs.iter().find_map(|a| c.pod_at(*a)) {
            ep.identity = p.identity;
        }
    }
}

/// This node's datapath policy: every address identity, and the rules of
/// the pods behind `eps`.
pub fn desired(c: &Compiled, eps: &[Endpoint]) -> PolicyDesired {
    let mut endpoints = BTreeMap::new();
    for ep in eps {
        let Some(pod) = ep.addrs.iter().find_map(|a| c.pod_at(*a)) else { continue };
        let Some(rules) = c.endpoints.get(&ObjectKey::new(Some(&pod.namespace), &pod.name)) else {
            continue;
        };
        endpoints.insert(
            ep.ifindex,
            EndpointPolicy { ingress: rules.ingress.clone(), egress: rules.egress.clone() },
        );
    }
    PolicyDesired { addrs: c.addr_identities(), endpoints, policies: c.policies.clone() }
}
