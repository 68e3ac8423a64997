//! Label and field selectors as the API server parses them from `labelSelector` and
//! `fieldSelector`: `k=v`, `k==v`, `k!=v`, and for labels also `k`, `!k`, `k in (a,b)`,
//! `k notin (a,b)`; requirements are comma-separated and all must hold.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// Which part of an object a selector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `metadata.labels`
    Labels,
    /// A dotted path into the object, e.g. `metadata.name` or `spec.nodeName`.
    Fields,
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    target: Target,
    reqs: Vec<Requirement>,
}

impl Selector {
    #[cfg(test)]
    pub fn everything() -> Self {
        Selector { target: Target::Labels, reqs: Vec::new() }
    }

    pub fn labels(s: &str) -> Result<Self, String> {
        parse(s, Target::Labels)
    }

    pub fn fields(s: &str) -> Result<Self, String> {
        parse(s, Target::Fields)
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let value = match self.target {
                Target::Labels => obj
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(&r.key))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                Target::Fields => field(obj, &r.key),
            };
            match (&r.op, value) {
                (Op::Eq(want), Some(v)) => *want == v,
                (Op::Eq(_), None) => false,
                // Field selectors compare against the empty string when a field is unset.
                (Op::NotEq(want), v) => v.as_deref() != Some(want.as_str()),
                (Op::In(set), Some(v)) => set.contains(&v),
                (Op::In(_), None) => false,
                (Op::NotIn(set), v) => v.is_none_or(|v| !set.contains(&v)),
                (Op::Exists, v) => v.is_some(),
                (Op::NotExists, v) => v.is_none(),
            }
        })
    }
}

fn field(obj: &Value, path: &str) -> Option<String> {
    let v = path.split('.').try_fold(obj, |v, seg| v.get(seg))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse(s: &str, target: Target) -> Result<Selector, String> {
    let mut reqs = Vec::new();
    for part in split_top(s).into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        reqs.push(parse_requirement(part, target)?);
    }
    Ok(Selector { target, reqs })
}

fn parse_requirement(part: &str, target: Target) -> Result<Requirement, String> {
    let req = |key: &str, op| Requirement { key: key.trim().to_string(), op };
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(req(k, Op::NotEq(v.trim().to_string())));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(req(k, Op::Eq(v.trim().to_string())));
    }
    if target == Target::Fields {
        return Err(format!(
            "invalid field selector requirement {part:?}: want key=value or key!=value"
        ));
    }
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner =
            rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
                format!("invalid label selector requirement {part:?}: set must be in parentheses")
            })?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [k, rest] if rest.trim_start().starts_with("notin") => {
            Ok(req(k, Op::NotIn(set(&rest.trim_start()["notin".len()..])?)))
        }
        [k, rest] if rest.trim_start().starts_with("in") => {
            Ok(req(k, Op::In(set(&rest.trim_start()["in".len()..])?)))
        }
        [k] if k.starts_with('!') => Ok(req(&k[1..], Op::NotExists)),
        [k] => Ok(req(k, Op::Exists)),
        _ => Err(format!("invalid label selector requirement {part:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}});
        let yes = [
            "app=web",
            "app==web",
            "app",
            "!missing",
            "app in (db, web)",
            "tier notin (be)",
            "app=web,tier=fe",
            "x!=y",
        ];
        for s in yes {
            assert!(Selector::labels(s).unwrap().matches(&obj), "{s} should match");
        }
        let no = [
            "app=db",
            "app!=web",
            "missing",
            "!app",
            "app in (db)",
            "app notin (web,db)",
            "app=web,tier=be",
        ];
        for s in no {
            assert!(!Selector::labels(s).unwrap().matches(&obj), "{s} should not match");
        }
        assert!(Selector::labels("").unwrap().is_empty());
        assert!(Selector::labels("app in web").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        assert!(Selector::fields("metadata.name=a,metadata.namespace=ns").unwrap().matches(&obj));
        assert!(Selector::fields("spec.nodeName!=n2").unwrap().matches(&obj));
        assert!(!Selector::fields("spec.nodeName=n2").unwrap().matches(&obj));
        assert!(Selector::fields("metadata.name").is_err());
    }
}
