//! NetworkPolicy as the agent runs it: the Pods, Namespaces and
//! NetworkPolicies of the source mirrored ([`PolicyObjects`], taken out of
//! each batch of [`Changes`] before the translation sees it), compiled
//! when one changed, and turned into this node's [`PolicyDesired`]: the
//! compiled rules of the pods whose addresses this node's endpoints hold,
//! by host veth ([`desired`]). The endpoints carry the pods' identities
//! ([`set_identities`]) so the overlay and local checks see them.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use lb::{
    model::Endpoint,
    policy::{EndpointPolicy, PolicyDesired},
};

use super::{compile, Compiled};
use crate::cluster::{Changes, KindChanges, ObjectKey};

/// The objects policy reads, kept current from the source's changes.
#[derive(Debug, Default)]
pub struct PolicyObjects {
    pods: BTreeMap<ObjectKey, Arc<Pod>>,
    namespaces: BTreeMap<ObjectKey, Arc<Namespace>>,
    policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
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
