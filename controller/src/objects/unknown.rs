//! Finds fields a deserializer dropped: every key of the raw document that
//! is missing after a typed round trip was not understood.

use serde_json::Value;

/// Bounds the walk on hostile input; real manifests are far shallower.
const MAX_DEPTH: usize = 64;

/// Paths (`spec.nodeNmae`, `spec.containers[0].imagePullPolcy`) of keys in
/// `raw` that `back` does not have. Null values are ignored: they mean
/// "unset" and are not serialized back.
pub(super) fn unknown_fields(raw: &Value, back: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(raw, back, "", 0, &mut out);
    out
}

fn walk(raw: &Value, back: &Value, path: &str, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    match (raw, back) {
        (Value::Object(r), Value::Object(b)) => {
            for (k, v) in r {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => walk(v, bv, &p, depth + 1, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(r), Value::Array(b)) => {
            for (i, (rv, bv)) in r.iter().zip(b).enumerate() {
                walk(rv, bv, &format!("{path}[{i}]"), depth + 1, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_dropped_keys_at_any_depth() {
        let raw = json!({"a": 1, "b": {"c": 1, "typo": 2}, "l": [{"x": 1, "y": 2}], "n": null});
        let back = json!({"a": 1, "b": {"c": 1}, "l": [{"x": 1}]});
        assert_eq!(unknown_fields(&raw, &back), vec!["b.typo", "l[0].y"]);
        assert!(unknown_fields(&back, &back).is_empty());
    }
}
