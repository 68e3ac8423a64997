//! The agent's identity and permissions: a ServiceAccount, a ClusterRole
//! derived from the code (every kind in the registry of watched kinds,
//! [`crate::cluster::kinds`], with the verbs the Kubernetes source uses,
//! [`crate::source::kube::VERBS`]: list and watch, nothing else) and the
//! binding. A kind registered later is in the role with no edit here.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{labels, InstallOptions};
use crate::cluster::{for_each_kind, Kind, KindVisitor};

/// The name of the service account, role and binding.
pub const NAME: &str = "xlb";

/// One permission: (API group, resource) with its verbs. The group is ""
/// for the core group, as RBAC spells it.
pub type Grant = ((String, String), Vec<String>);

/// What the agent needs: every registered kind's (group, plural) with the
/// source's verbs, from the code.
pub fn needed() -> BTreeMap<(String, String), Vec<String>> {
    struct Needed(BTreeMap<(String, String), Vec<String>>);
    impl KindVisitor for Needed {
        fn visit<K: Kind>(&mut self) {
            let group = K::group(&()).to_string();
            let plural = K::plural(&()).to_string();
            let verbs = crate::source::kube::VERBS.iter().map(|v| v.to_string()).collect();
            self.0.insert((group, plural), verbs);
        }
    }
    let mut n = Needed(BTreeMap::new());
    for_each_kind(&mut n);
    n.0
}

/// What a ClusterRole grants, one entry per (group, resource), verbs sorted.
/// Resource names and non-resource URLs are not expanded: a role holding
/// them grants more than [`needed`] says, which [`excess`] reports.
pub fn granted(role: &ClusterRole) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for rule in role.rules.iter().flatten() {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                let v = out.entry((g.clone(), r.clone())).or_default();
                v.extend(rule.verbs.iter().cloned());
                v.sort();
                v.dedup();
            }
        }
    }
    out
}

/// How `role` differs from what the agent needs, one line each: a missing
/// grant (the agent would fail to list or watch) or an excess one (more
/// than least privilege). Empty when exact.
pub fn compare(role: &ClusterRole) -> Vec<String> {
    let need = needed();
    let have = granted(role);
    let mut out = Vec::new();
    for ((g, r), verbs) in &need {
        let held = have.get(&(g.clone(), r.clone()));
        for v in verbs {
            if !held.is_some_and(|h| h.contains(v)) {
                out.push(format!("missing: {v} {r} (apiGroup {g:?})"));
            }
        }
    }
    for ((g, r), verbs) in &have {
        let wanted = need.get(&(g.clone(), r.clone()));
        for v in verbs {
            if !wanted.is_some_and(|w| w.contains(v)) {
                out.push(format!("excess: {v} {r} (apiGroup {g:?}): the agent never does it"));
            }
        }
    }
    for rule in role.rules.iter().flatten() {
        if rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
            out.push("excess: a rule names resourceNames (the agent lists whole kinds)".into());
        }
        if rule.non_resource_urls.as_ref().is_some_and(|n| !n.is_empty()) {
            out.push("excess: a rule grants nonResourceURLs".into());
        }
    }
    if role.aggregation_rule.is_some() {
        out.push("excess: an aggregationRule".into());
    }
    out
}

pub fn service_account(opts: &InstallOptions) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels("agent")),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// One rule per API group, its resources and the source's verbs.
pub fn cluster_role() -> ClusterRole {
    let mut by_group: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for ((group, resource), verbs) in needed() {
        let e = by_group.entry(group).or_default();
        e.0.push(resource);
        e.1 = verbs;
    }
    let rules = by_group
        .into_iter()
        .map(|(group, (resources, verbs))| PolicyRule {
            api_groups: Some(vec![group]),
            resources: Some(resources),
            verbs,
            ..Default::default()
        })
        .collect();
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            labels: Some(labels("agent")),
            ..Default::default()
        },
        rules: Some(rules),
        ..Default::default()
    }
}

pub fn cluster_role_binding(opts: &InstallOptions) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            labels: Some(labels("agent")),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(opts.namespace.clone()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_grants_exactly_what_the_watchers_need() {
        let role = cluster_role();
        assert_eq!(compare(&role), Vec::<String>::new());
        // The registry's kinds are all there, by their API group.
        let need = needed();
        for (g, r) in [("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes")] {
            assert_eq!(need[&(g.to_string(), r.to_string())], ["list", "watch"], "{g}/{r}");
        }
    }

    #[test]
    fn a_role_missing_or_exceeding_a_grant_is_named() {
        let mut role = cluster_role();
        let rules = role.rules.as_mut().unwrap();
        // Drop "watch" from the first rule, add a write.
        rules[0].verbs.retain(|v| v != "watch");
        rules.push(PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["events".into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        });
        let diff = compare(&role);
        assert!(diff.iter().any(|d| d.starts_with("missing: watch")), "{diff:?}");
        assert!(diff.iter().any(|d| d.starts_with("excess: create events")), "{diff:?}");
    }
}
