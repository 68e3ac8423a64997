//! Label selectors (`metav1.LabelSelector`) as NetworkPolicy reads them:
//! matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist), ANDed;
//! an empty selector selects everything. Validated once into [`Selector`]
//! (a bad operator or values list is an error naming the field), matched
//! many times.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated label selector: every requirement must hold.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector(Vec<Req>);

impl Selector {
    /// Selects everything (an empty `{}` selector).
    pub fn all() -> Self {
        Selector(Vec::new())
    }

    /// Validates `sel` (at `field` of the object, for errors: the field
    /// inside the selector and what is wrong).
    pub fn parse(sel: &LabelSelector, field: &str) -> Result<Self, (String, String)> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Req::Equals(k.clone(), v.clone()));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            if key.is_empty() {
                return Err((format!("{at}.key"), "missing".into()));
            }
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("must be non-empty with operator {}", e.operator),
                    ))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("must be empty with operator {}", e.operator),
                    ))
                }
                "In" => Req::In(key, values),
                "NotIn" => Req::NotIn(key, values),
                "Exists" => Req::Exists(key),
                "DoesNotExist" => Req::DoesNotExist(key),
                other => {
                    return Err((
                        format!("{at}.operator"),
                        format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                    ))
                }
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Equals(k, v) => labels.get(k) == Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // NotIn holds for a missing key (apimachinery's semantics).
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn empty_selects_everything_match_labels_all_must_hold() {
        let all = Selector::parse(&LabelSelector::default(), "s").unwrap();
        assert!(all.matches(&labels(&[])) && all.is_all());
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "fe")])),
            match_expressions: None,
        };
        let s = Selector::parse(&sel, "s").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn expressions_in_notin_exists_doesnotexist() {
        let m = |sel: LabelSelector, l: &[(&str, &str)]| {
            Selector::parse(&sel, "s").unwrap().matches(&labels(l))
        };
        assert!(m(expr("pod", "In", &["a", "b"]), &[("pod", "b")]));
        assert!(!m(expr("pod", "In", &["a", "b"]), &[("pod", "c")]));
        assert!(!m(expr("pod", "In", &["a"]), &[]));
        assert!(m(expr("pod", "NotIn", &["a"]), &[("pod", "b")]));
        assert!(m(expr("pod", "NotIn", &["a"]), &[]), "NotIn holds without the key");
        assert!(!m(expr("pod", "NotIn", &["a"]), &[("pod", "a")]));
        assert!(m(expr("pod", "Exists", &[]), &[("pod", "")]));
        assert!(!m(expr("pod", "Exists", &[]), &[]));
        assert!(m(expr("pod", "DoesNotExist", &[]), &[("x", "y")]));
        assert!(!m(expr("pod", "DoesNotExist", &[]), &[("pod", "a")]));
    }

    #[test]
    fn bad_expressions_name_the_field() {
        let e = Selector::parse(&expr("pod", "Near", &["a"]), "spec.podSelector").unwrap_err();
        assert_eq!(e.0, "spec.podSelector.matchExpressions[0].operator");
        let e = Selector::parse(&expr("pod", "In", &[]), "p").unwrap_err();
        assert_eq!(
            e,
            ("p.matchExpressions[0].values".into(), "must be non-empty with operator In".into())
        );
        let e = Selector::parse(&expr("pod", "Exists", &["a"]), "p").unwrap_err();
        assert_eq!(e.0, "p.matchExpressions[0].values");
    }
}
