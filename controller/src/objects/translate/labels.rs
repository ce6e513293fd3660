//! Label decisions: enrollment and the waypoint a workload or service uses.

use std::collections::BTreeMap;

use trellis_api::config::Protocol;

use super::TranslateOptions;

pub(crate) const USE_WAYPOINT: &str = "trellis.dev/use-waypoint";
pub(crate) const ISTIO_USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub(crate) const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

pub(crate) type Labels = BTreeMap<String, String>;

/// HBONE when the object or its namespace says ambient, unless the object
/// itself says none: `trellis_kube::labels::enrolled`, the rule the CNI
/// agent captures by.
pub(crate) fn protocol(
    ns: Option<&Labels>,
    obj: Option<&Labels>,
    opts: &TranslateOptions,
) -> Protocol {
    if trellis_kube::labels::enrolled(ns, obj, opts.istio_labels) {
        Protocol::Hbone
    } else {
        Protocol::Tcp
    }
}

/// What the labels ask for: a waypoint by name, none, or nothing said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UseWaypoint {
    Named { name: String, label: &'static str },
    None,
}

/// The most specific label wins: the object's, else its namespace's.
/// `none` on the object opts it out of the namespace's waypoint.
pub(crate) fn use_waypoint(
    ns: Option<&Labels>,
    obj: Option<&Labels>,
    opts: &TranslateOptions,
) -> UseWaypoint {
    let pick = |l: Option<&Labels>| -> Option<UseWaypoint> {
        let l = l?;
        let (v, label) = match l.get(USE_WAYPOINT) {
            Some(v) => (v, USE_WAYPOINT),
            None if opts.istio_labels => (l.get(ISTIO_USE_WAYPOINT)?, ISTIO_USE_WAYPOINT),
            None => return None,
        };
        Some(if v == "none" || v.is_empty() {
            UseWaypoint::None
        } else {
            UseWaypoint::Named {
                name: v.clone(),
                label,
            }
        })
    };
    pick(obj).or_else(|| pick(ns)).unwrap_or(UseWaypoint::None)
}

/// A selector's labels all present with equal values. An empty selector
/// matches nothing here: callers treat "no selector" on their own.
pub(crate) fn selects(selector: &Labels, labels: Option<&Labels>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}
