//! The operator's part of a waypoint's Deployment and Service: a template
//! (`deploy/daemonset/base/controller/waypoint-template.yaml`, or the file
//! given to `--waypoint-template`) that the controller's part is laid over.
//!
//! Why a template: resources, probes, tolerations and security contexts
//! differ per cluster, and an operator should change them in a file, not
//! in the controller's code. Why laid *under* the controller's part: the
//! fields the controller sets (names, labels, selector, owner, args,
//! volumes) are what make the waypoint work and be cleaned up; a template
//! cannot break them.

use serde::Deserialize;
use serde_json::{Map, Value};

/// The template shipped in deploy/, the default without the flag.
pub const DEFAULT_TEMPLATE: &str =
    include_str!("../../../deploy/daemonset/base/controller/waypoint-template.yaml");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("cannot read the waypoint template {path}: {message}")]
    Read { path: String, message: String },
    #[error("waypoint template {source_name}: not YAML: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("waypoint template {source_name}: document {index} is {found}; the template holds one apps/v1 Deployment and one v1 Service")]
    Kind {
        source_name: String,
        index: usize,
        found: String,
    },
    #[error("waypoint template {source_name}: two {kind} documents; give one")]
    Twice { source_name: String, kind: String },
    #[error("waypoint template {source_name}: {field} is set; the controller names, owns and selects each waypoint's objects, so leave it out")]
    Reserved { source_name: String, field: String },
}

/// The parsed template: the bases of the Deployment and the Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaypointTemplate {
    pub deployment: Value,
    pub service: Value,
}

impl WaypointTemplate {
    /// The shipped template. It is tested to parse, so this cannot fail.
    pub fn shipped() -> WaypointTemplate {
        Self::parse("(built in)", DEFAULT_TEMPLATE).expect("the shipped waypoint template parses")
    }

    /// The file given to `--waypoint-template`, or the shipped one.
    pub fn load(path: Option<&std::path::Path>) -> Result<WaypointTemplate, TemplateError> {
        let Some(path) = path else {
            return Ok(Self::shipped());
        };
        let text = std::fs::read_to_string(path).map_err(|e| TemplateError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses a template file: YAML documents, one Deployment and one
    /// Service, either may be left out. `source_name` names it in errors.
    pub fn parse(source_name: &str, text: &str) -> Result<WaypointTemplate, TemplateError> {
        let mut t = WaypointTemplate::default();
        let name = || source_name.to_string();
        for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| TemplateError::Yaml {
                source_name: name(),
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue; // an empty document (comments only)
            }
            let api = value.get("apiVersion").and_then(Value::as_str);
            let kind = value.get("kind").and_then(Value::as_str);
            let slot = match (api, kind) {
                (Some("apps/v1"), Some("Deployment")) => &mut t.deployment,
                (Some("v1"), Some("Service")) => &mut t.service,
                _ => {
                    return Err(TemplateError::Kind {
                        source_name: name(),
                        index: index + 1,
                        found: format!(
                            "{} {}",
                            api.unwrap_or("(no apiVersion)"),
                            kind.unwrap_or("(no kind)")
                        ),
                    })
                }
            };
            if !slot.is_null() {
                return Err(TemplateError::Twice {
                    source_name: name(),
                    kind: kind.unwrap_or_default().into(),
                });
            }
            // What names, owns and selects the waypoint's pods: merged with
            // a template's, a selector would stop matching them.
            for field in [
                "metadata.name",
                "metadata.namespace",
                "metadata.generateName",
                "metadata.ownerReferences",
                "spec.selector",
            ] {
                if value
                    .pointer(&format!("/{}", field.replace('.', "/")))
                    .is_some()
                {
                    return Err(TemplateError::Reserved {
                        source_name: name(),
                        field: field.into(),
                    });
                }
            }
            *slot = value;
        }
        Ok(t)
    }
}

/// `ours` laid over `base`: objects merge key by key, a list of objects
/// that all have a `name` (containers, ports, volumes, env) merges item
/// by item on it, keeping the base's other items; anything else in `ours`
/// replaces the base's value.
pub fn overlay(base: &Value, ours: Value) -> Value {
    match (base, ours) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out: Map<String, Value> = b.clone();
            for (k, v) in o {
                let merged = match out.get(&k) {
                    Some(bv) => overlay(bv, v),
                    None => v,
                };
                out.insert(k, merged);
            }
            Value::Object(out)
        }
        (Value::Array(b), Value::Array(o)) if named(b) && named(&o) => {
            let mut out = b.clone();
            for item in o {
                let name = item.get("name").cloned();
                match out.iter_mut().find(|x| x.get("name") == name.as_ref()) {
                    Some(slot) => *slot = overlay(slot, item),
                    None => out.push(item),
                }
            }
            Value::Array(out)
        }
        (_, o) => o,
    }
}

fn named(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests;
