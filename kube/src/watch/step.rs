//! Pure decisions of a watch: what one watch line means. No I/O here; the
//! loop in [`super`] does what these return.

use serde_json::Value;

/// What one watch line asks of the watcher.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// ADDED or MODIFIED: the object's new state.
    Upsert { object: Value, rv: Option<String> },
    /// DELETED: its last state (for the key).
    Delete { object: Value, rv: Option<String> },
    /// Only a newer resourceVersion to resume from.
    Bookmark { rv: String },
    /// The resourceVersion is too old (410 Gone, "Expired"): list again.
    Relist { message: String },
    /// A watch error or an unreadable line: watch again from the same
    /// resourceVersion, after a backoff.
    Restart { message: String },
}

/// Reads one watch line, `{"type": ..., "object": ...}`.
pub fn classify(line: &[u8]) -> Step {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Step::Restart {
                message: format!("unreadable watch event: {e}"),
            }
        }
    };
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    let Some(object) = v.get("object").cloned().filter(Value::is_object) else {
        return Step::Restart {
            message: format!("watch event {ty:?} has no object"),
        };
    };
    let rv = resource_version(&object);
    match ty {
        "ADDED" | "MODIFIED" => Step::Upsert { object, rv },
        "DELETED" => Step::Delete { object, rv },
        "BOOKMARK" => match rv {
            Some(rv) => Step::Bookmark { rv },
            None => Step::Restart {
                message: "bookmark without a resourceVersion".into(),
            },
        },
        "ERROR" => {
            let code = object.get("code").and_then(Value::as_u64);
            let reason = object.get("reason").and_then(Value::as_str).unwrap_or("");
            let message = object
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            if code == Some(410) || matches!(reason, "Expired" | "Gone") {
                Step::Relist { message }
            } else {
                Step::Restart {
                    message: format!("watch error {}: {message}", code.unwrap_or(0)),
                }
            }
        }
        other => Step::Restart {
            message: format!("unknown watch event type {other:?}"),
        },
    }
}

pub fn resource_version(object: &Value) -> Option<String> {
    object
        .get("metadata")?
        .get("resourceVersion")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests;
