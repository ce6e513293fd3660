//! The labels that put a workload in the mesh. One rule, read by the
//! controller (a workload's protocol: HBONE or plain TCP) and by the CNI
//! agent (whether a new pod's traffic is captured): if the two ever
//! disagreed, a pod would be captured while its peers dial it in plain
//! TCP, or the reverse.

use std::collections::BTreeMap;

pub const DATAPLANE_MODE: &str = "trellis.dev/dataplane-mode";
pub const ISTIO_DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

pub type Labels = BTreeMap<String, String>;

/// What a label set says about enrollment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `ambient`: in the mesh.
    Ambient,
    /// `none`: out, even in an ambient namespace.
    Excluded,
    /// Nothing said (no label, or another value).
    Unset,
}

/// The dataplane mode a label set asks for; the Trellis key wins over
/// Istio's, which is read only with `istio_labels`.
pub fn mode(labels: Option<&Labels>, istio_labels: bool) -> Mode {
    let Some(l) = labels else {
        return Mode::Unset;
    };
    let v = l.get(DATAPLANE_MODE).or_else(|| {
        if istio_labels {
            l.get(ISTIO_DATAPLANE_MODE)
        } else {
            None
        }
    });
    match v.map(String::as_str) {
        Some("ambient") => Mode::Ambient,
        Some("none") => Mode::Excluded,
        _ => Mode::Unset,
    }
}

/// In the mesh when the object or its namespace says `ambient`, unless the
/// object itself says `none`.
pub fn enrolled(namespace: Option<&Labels>, object: Option<&Labels>, istio_labels: bool) -> bool {
    match mode(object, istio_labels) {
        Mode::Ambient => true,
        Mode::Excluded => false,
        Mode::Unset => mode(namespace, istio_labels) == Mode::Ambient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (name, namespace labels, object labels, istio_labels, enrolled)
    type Case<'a> = (&'a str, Option<&'a Labels>, Option<&'a Labels>, bool, bool);

    #[test]
    fn enrollment_table() {
        let amb = l(&[(DATAPLANE_MODE, "ambient")]);
        let none = l(&[(DATAPLANE_MODE, "none")]);
        let istio_amb = l(&[(ISTIO_DATAPLANE_MODE, "ambient")]);
        let istio_none = l(&[(ISTIO_DATAPLANE_MODE, "none")]);
        let both = l(&[(DATAPLANE_MODE, "none"), (ISTIO_DATAPLANE_MODE, "ambient")]);
        let other = l(&[(DATAPLANE_MODE, "sidecar")]);
        let empty = Labels::new();
        let cases: &[Case] = &[
            ("namespace ambient", Some(&amb), None, false, true),
            (
                "namespace ambient, object unlabelled",
                Some(&amb),
                Some(&empty),
                false,
                true,
            ),
            ("object opts out", Some(&amb), Some(&none), false, false),
            ("object opts in", Some(&empty), Some(&amb), false, true),
            ("nothing", Some(&empty), Some(&empty), false, false),
            ("no namespace known", None, None, false, false),
            ("another value is unset", Some(&other), None, false, false),
            (
                "istio label ignored by default",
                Some(&istio_amb),
                None,
                false,
                false,
            ),
            ("istio label honoured", Some(&istio_amb), None, true, true),
            (
                "istio none opts out",
                Some(&amb),
                Some(&istio_none),
                true,
                false,
            ),
            ("trellis key wins", Some(&empty), Some(&both), true, false),
        ];
        for (name, ns, obj, istio, want) in cases {
            assert_eq!(enrolled(*ns, *obj, *istio), *want, "{name}");
        }
    }
}
