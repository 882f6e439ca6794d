//! The JSON contract (docs/json.md): every document has `"format": 1`, `"ok"` and
//! `"exit_code"`, the same top-level fields for one database and for several clusters, every
//! tenant object carrying its `cluster`, and the per-cluster details in a `clusters` list.
//! Commands hand in one [`Part`] per cluster; [`document`] merges them.

use serde_json::{json, Map, Value};

/// The version of the JSON contract.
pub const FORMAT: u32 = 1;

/// One cluster's share of a command's JSON document.
#[derive(Debug, Default, Clone)]
pub struct Part {
    /// Fields that are the same on every cluster (`command`, `latest_version`, …): the
    /// first cluster's are kept.
    pub top: Map<String, Value>,
    /// Lists concatenated over the clusters (`tenants`, `runs`, …); each item gets `cluster`.
    pub lists: Vec<(&'static str, Vec<Value>)>,
    /// Counts summed over the clusters.
    pub counts: Vec<(&'static str, i64)>,
    /// This cluster's own entry in `clusters` (besides `cluster`, `ok`, `exit_code`).
    pub cluster: Map<String, Value>,
}

impl Part {
    pub fn top(mut self, key: &str, value: Value) -> Part {
        self.top.insert(key.into(), value);
        self
    }

    pub fn list(mut self, key: &'static str, items: Vec<Value>) -> Part {
        self.lists.push((key, items));
        self
    }

    pub fn count(mut self, key: &'static str, n: impl Into<i64>) -> Part {
        self.counts.push((key, n.into()));
        self
    }

    pub fn cluster(mut self, key: &str, value: Value) -> Part {
        self.cluster.insert(key.into(), value);
        self
    }
}

/// How one cluster did: its part (moved into the document, not copied: at 50,000 tenants
/// a copy of every tenant's object is most of the memory), or the error that stopped it there.
pub struct ClusterResult<'a> {
    pub name: &'a str,
    pub code: i32,
    pub outcome: Result<Part, &'a anyhow::Error>,
}

/// The document of a command over its clusters (one, or several). Lists named `summary`
/// are merged by `version`, summing `tenants`; other lists are concatenated.
pub fn document(results: Vec<ClusterResult<'_>>, code: i32) -> Value {
    let mut doc = Map::new();
    doc.insert("format".into(), json!(FORMAT));
    doc.insert("ok".into(), json!(code == 0));
    doc.insert("exit_code".into(), json!(code));
    doc.insert("error".into(), Value::Null);
    if let Some(first) = results.iter().find_map(|r| r.outcome.as_ref().ok()) {
        for (k, v) in &first.top {
            doc.insert(k.clone(), v.clone());
        }
    }
    let mut lists: Vec<(&str, Vec<Value>)> = Vec::new();
    let mut counts: Vec<(&str, i64)> = Vec::new();
    let mut clusters = Vec::new();
    for r in results {
        let mut entry = Map::new();
        entry.insert("cluster".into(), json!(r.name));
        entry.insert("ok".into(), json!(r.code == 0));
        entry.insert("exit_code".into(), json!(r.code));
        entry.insert("error".into(), Value::Null);
        match r.outcome {
            Ok(part) => {
                for (key, items) in part.lists {
                    let slot = match lists.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v,
                        None => {
                            lists.push((key, Vec::new()));
                            &mut lists.last_mut().expect("just pushed").1
                        }
                    };
                    slot.reserve(items.len());
                    slot.extend(items.into_iter().map(|item| with_cluster(r.name, item)));
                }
                for (key, n) in part.counts {
                    match counts.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, total)) => *total += n,
                        None => counts.push((key, n)),
                    }
                }
                for (k, v) in part.cluster {
                    entry.insert(k, v);
                }
            }
            Err(e) => {
                entry.insert("error".into(), error_object(e));
            }
        }
        clusters.push(Value::Object(entry));
    }
    for (key, items) in lists {
        let merged = match key {
            "summary" => merge_summary(items),
            "waves" => merge_waves(items),
            _ => items,
        };
        doc.insert(key.into(), Value::Array(merged));
    }
    if !counts.is_empty() {
        let map: Map<String, Value> = counts
            .into_iter()
            .map(|(k, n)| (k.into(), json!(n)))
            .collect();
        doc.insert("counts".into(), Value::Object(map));
    }
    doc.insert("clusters".into(), Value::Array(clusters));
    Value::Object(doc)
}

/// An item of a list as the document holds it: `cluster` first, then the item's fields.
pub fn with_cluster(cluster: &str, item: Value) -> Value {
    let mut with = Map::new();
    with.insert("cluster".into(), json!(cluster));
    if let Value::Object(fields) = item {
        with.extend(fields);
    }
    Value::Object(with)
}

/// A document whose list `key` is printed item by item as it is read: the text before that
/// list's items (ending in `"key":[`) and the text after them (from its `]`), exactly as
/// the whole document would print. Items go between, comma-separated, each
/// [`with_cluster`]. None when the document has no such list.
pub fn framed(doc: &Value, key: &str) -> Option<(String, String)> {
    let map = doc.as_object()?;
    let at = map.keys().position(|k| k == key)?;
    let field = |k: &String, v: &Value| format!("{}:{v}", Value::String(k.clone()));
    let before: Vec<String> = map.iter().take(at).map(|(k, v)| field(k, v)).collect();
    let after: Vec<String> = map.iter().skip(at + 1).map(|(k, v)| field(k, v)).collect();
    let mut head = format!("{{{}", before.join(","));
    if at > 0 {
        head.push(',');
    }
    head.push_str(&format!("{}:[", Value::String(key.to_string())));
    let mut tail = "]".to_string();
    for f in after {
        tail.push(',');
        tail.push_str(&f);
    }
    tail.push('}');
    Some((head, tail))
}

/// A fleet-wide summary by version from the clusters' summaries.
fn merge_summary(items: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for mut item in items {
        if let Some(map) = item.as_object_mut() {
            map.shift_remove("cluster");
        }
        let found = out
            .iter_mut()
            .find(|o| o.get("version") == item.get("version"));
        match found {
            Some(o) => {
                let sum =
                    o["tenants"].as_i64().unwrap_or(0) + item["tenants"].as_i64().unwrap_or(0);
                o["tenants"] = json!(sum);
            }
            None => out.push(item),
        }
    }
    // Highest version first, nothing applied last (as the text table).
    out.sort_by_key(|v| std::cmp::Reverse(v["version"].as_i64().map_or(i64::MIN, |n| n)));
    out
}

/// A rollout's waves over the clusters: counts summed by wave; a wave halted anywhere is
/// halted.
fn merge_waves(items: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for mut item in items {
        if let Some(map) = item.as_object_mut() {
            map.shift_remove("cluster");
        }
        match out.iter_mut().find(|o| o["wave"] == item["wave"]) {
            Some(o) => {
                for key in ["tenants", "succeeded", "failed", "not_started"] {
                    let sum = o[key].as_i64().unwrap_or(0) + item[key].as_i64().unwrap_or(0);
                    o[key] = json!(sum);
                }
                if item["state"] == "halted" || o["state"] == "done" {
                    o["state"] = item["state"].clone();
                }
            }
            None => out.push(item),
        }
    }
    out.sort_by_key(|w| w["wave"].as_i64());
    out
}

/// `{"kind": …, "message": …}` for an error.
pub fn error_object(err: &anyhow::Error) -> Value {
    json!({
        "kind": crate::exit::Kind::of(err).as_str(),
        "message": format!("{err:#}"),
    })
}

/// The document printed for a command that failed as a whole (`command` as far as the
/// command line was understood).
pub fn error_document(err: &anyhow::Error, command: Option<&str>) -> Value {
    json!({
        "format": FORMAT,
        "ok": false,
        "exit_code": crate::exit::code_for(err),
        "error": error_object(err),
        "command": command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framed document with its items between prints exactly as the whole document.
    #[test]
    fn a_framed_document_prints_as_the_whole_one() {
        let items = vec![json!({"id": "a", "n": 1}), json!({"id": "b\"", "n": null})];
        let mut whole = Map::new();
        whole.insert("format".into(), json!(1));
        whole.insert(
            "tenants".into(),
            json!(items
                .iter()
                .map(|i| with_cluster("c1", i.clone()))
                .collect::<Vec<_>>()),
        );
        whole.insert("clusters".into(), json!([{"cluster": "c1"}]));
        let whole = Value::Object(whole);
        let mut empty = whole.clone();
        empty["tenants"] = json!([]);
        let (head, tail) = framed(&empty, "tenants").expect("a list");
        let body: Vec<String> = items
            .into_iter()
            .map(|i| with_cluster("c1", i).to_string())
            .collect();
        assert_eq!(format!("{head}{}{tail}", body.join(",")), whole.to_string());
        let (head, tail) = framed(&empty, "format").expect("first key");
        assert!(head.starts_with("{\"format\":["), "{head}");
        assert!(tail.starts_with("],\"tenants\":[]"), "{tail}");
        assert!(framed(&empty, "missing").is_none());
    }
}
