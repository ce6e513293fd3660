//! Kubernetes objects for the controller, as YAML: what a test writes into
//! the controller's manifests folder, or applies to a real API server.
//! Rendering is pure (tested below); [`ManifestsDir`] does the file I/O.
//!
//! Pods carry `spec.nodeName` and, for the manifests folder,
//! `status.podIP`: there is no kubelet, so the test states where each pod
//! runs and which address it has (the topology's pod IP).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The label that enrolls a namespace in the mesh.
pub const AMBIENT_LABEL: &str = "trellis.dev/dataplane-mode";
/// Istio's label for the same, honoured when the controller runs with
/// `--istio-labels`.
pub const ISTIO_AMBIENT_LABEL: &str = "istio.io/dataplane-mode";
/// The label that sends a service's traffic through a waypoint (by name).
pub const USE_WAYPOINT_LABEL: &str = "trellis.dev/use-waypoint";
/// The label that marks a pod as the one running a Gateway (a waypoint).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The Gateway class of Trellis's waypoints.
pub const WAYPOINT_CLASS: &str = "trellis-waypoint";
/// The trust domain of every identity in these tests.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A pod as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub node: String,
    pub ip: IpAddr,
    /// `app: <value>`, what services and policies select on.
    pub app: String,
    /// The waypoint Gateway this pod runs, if it runs one.
    pub gateway: Option<String>,
    /// Further labels (such as `version`), after `app`.
    pub labels: Vec<(String, String)>,
}

impl PodDef {
    /// The workload uid the controller gives the pod, and what the node
    /// proxy enrolls it as (`<cluster id>//Pod/<namespace>/<name>`).
    pub fn uid(&self) -> String {
        format!("Kubernetes//Pod/{}/{}", self.namespace, self.name)
    }

    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> String {
        spiffe_id(&self.namespace, &self.service_account)
    }

    /// `cluster.local/ns/<ns>/sa/<sa>`, as a policy names the principal.
    pub fn principal(&self) -> String {
        format!(
            "{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// An Istio WorkloadEntry: a VM or bare host outside the cluster, with the
/// identity of its service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadEntryDef {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// The host's address (`spec.address`).
    pub ip: IpAddr,
    /// `app: <value>` in `spec.labels`, what services select on.
    pub app: String,
}

impl WorkloadEntryDef {
    /// The workload uid the controller gives the entry, and what the
    /// host's dedicated node proxy serves
    /// (`<cluster id>//WorkloadEntry/<namespace>/<name>`).
    pub fn uid(&self) -> String {
        format!("Kubernetes//WorkloadEntry/{}/{}", self.namespace, self.name)
    }

    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> String {
        spiffe_id(&self.namespace, &self.service_account)
    }
}

/// A ClusterIP Service selecting `app: <app>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub app: String,
    /// (port, targetPort).
    pub ports: Vec<(u16, u16)>,
    /// The waypoint (Gateway name) its traffic goes through, if any.
    pub waypoint: Option<String>,
}

/// A Gateway API HTTPRoute attached to a Service port (GAMMA), with one
/// rule that splits requests over weighted backend services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRouteDef {
    pub namespace: String,
    pub name: String,
    pub parent_service: String,
    pub parent_port: u16,
    /// (service, port, weight).
    pub backends: Vec<(String, u16, u32)>,
}

/// An L4 AuthorizationPolicy on the pods labelled `app: <selector_app>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDef {
    pub namespace: String,
    pub name: String,
    /// `ALLOW` or `DENY`.
    pub action: String,
    pub selector_app: String,
    /// `cluster.local/ns/<ns>/sa/<sa>` principals of the one `from` rule.
    pub from_principals: Vec<String>,
}

/// A Namespace; in the mesh when `ambient_label` (a key such as
/// [`AMBIENT_LABEL`]) is given, set to `ambient`.
pub fn namespace(name: &str, ambient_label: Option<&str>) -> String {
    let labels = ambient_label
        .map(|l| format!("\n  labels:\n    {l}: ambient"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n")
}

/// A ServiceAccount (the API server's admission wants it before a pod uses it).
pub fn service_account(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    )
}

/// A Pod; with `with_status` its status too (Running, Ready, the pod IP),
/// as the manifests folder needs. The API server ignores a status sent on
/// create: there it is patched afterwards (see `KubeApiServer::pod_status`).
pub fn pod(p: &PodDef, with_status: bool) -> String {
    let mut labels = p
        .gateway
        .as_ref()
        .map(|g| format!("\n    {GATEWAY_NAME_LABEL}: {g}"))
        .unwrap_or_default();
    for (k, v) in &p.labels {
        // Quoted: a value such as "1" must stay a string.
        let _ = write!(labels, "\n    {k}: \"{v}\"");
    }
    let mut s = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n    app: {}{labels}\n\
         spec:\n  serviceAccountName: {}\n  nodeName: {}\n  containers:\n    - name: app\n      image: registry.invalid/trellis-test\n",
        p.name, p.namespace, p.app, p.service_account, p.node
    );
    if with_status {
        let _ = write!(
            s,
            "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n    - ip: {ip}\n  conditions:\n    - type: Ready\n      status: \"True\"\n",
            ip = p.ip
        );
    }
    s
}

/// A WorkloadEntry (networking.istio.io/v1). Services select it by its
/// `spec.labels`, as they select pods by theirs.
pub fn workload_entry(w: &WorkloadEntryDef) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  namespace: {}\n\
         spec:\n  address: {}\n  serviceAccount: {}\n  labels:\n    app: {}\n",
        w.name, w.namespace, w.ip, w.service_account, w.app
    )
}

/// A Service (with the waypoint label when it has a waypoint).
pub fn service(d: &ServiceDef) -> String {
    let labels = d
        .waypoint
        .as_ref()
        .map(|w| format!("\n  labels:\n    {USE_WAYPOINT_LABEL}: {w}"))
        .unwrap_or_default();
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}{labels}\n\
         spec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  selector:\n    app: {}\n  ports:\n",
        d.name,
        d.namespace,
        d.app,
        ip = d.cluster_ip
    );
    for (port, target) in &d.ports {
        let _ = writeln!(
            s,
            "    - name: tcp-{port}\n      port: {port}\n      targetPort: {target}"
        );
    }
    s
}

/// A waypoint: a Gateway of Trellis's waypoint class with its HBONE listener.
pub fn waypoint_gateway(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  gatewayClassName: {WAYPOINT_CLASS}\n  listeners:\n    - name: mesh\n      port: 15008\n      protocol: HBONE\n"
    )
}

/// An HTTPRoute (gateway.networking.k8s.io/v1).
pub fn http_route(r: &HttpRouteDef) -> String {
    let mut s = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {}\n  namespace: {}\n\
         spec:\n  parentRefs:\n    - group: \"\"\n      kind: Service\n      name: {}\n      port: {}\n  rules:\n    - name: split\n      backendRefs:\n",
        r.name, r.namespace, r.parent_service, r.parent_port
    );
    for (service, port, weight) in &r.backends {
        let _ = writeln!(
            s,
            "        - name: {service}\n          port: {port}\n          weight: {weight}"
        );
    }
    s
}

/// An Istio AuthorizationPolicy (security.istio.io/v1).
pub fn authorization_policy(p: &PolicyDef) -> String {
    let principals = p
        .from_principals
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {}\n  namespace: {}\n\
         spec:\n  selector:\n    matchLabels:\n      app: {}\n  action: {}\n  rules:\n    - from:\n        - source:\n            principals: [{principals}]\n",
        p.name, p.namespace, p.selector_app, p.action
    )
}

/// Who holds a bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenHolder {
    /// The node proxy of this node.
    NodeProxy(String),
    /// A waypoint with this SPIFFE identity.
    Waypoint(String),
}

/// The controller's bootstrap token file.
pub fn token_file(entries: &[(String, TokenHolder)]) -> String {
    let mut s = String::from("tokens:\n");
    for (token, holder) in entries {
        let who = match holder {
            TokenHolder::NodeProxy(node) => format!("nodeProxy: {{ node: {node} }}"),
            TokenHolder::Waypoint(id) => format!("waypoint: {{ spiffeId: \"{id}\" }}"),
        };
        let _ = writeln!(s, "  - token: \"{token}\"\n    {who}");
    }
    s
}

/// Several objects as one YAML stream.
pub fn stream(docs: &[String]) -> String {
    docs.join("---\n")
}

/// The folder the controller watches (`run --manifests DIR`).
pub struct ManifestsDir {
    root: PathBuf,
}

impl ManifestsDir {
    /// Creates `root` if needed.
    pub fn create(root: &Path) -> std::io::Result<ManifestsDir> {
        std::fs::create_dir_all(root)?;
        Ok(ManifestsDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `file` (relative to the root) as an editor should: a hidden
    /// temp file (the controller skips hidden files), then a rename, so a
    /// scan never reads half a file.
    pub fn write(&self, file: &str, text: &str) -> std::io::Result<()> {
        let path = self.root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }

    /// Removes `file`; the controller drops its objects on the next scan.
    pub fn remove(&self, file: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.root.join(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(yaml: &str) -> Value {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}:\n{yaml}"))
    }

    fn server() -> PodDef {
        PodDef {
            namespace: "demo".into(),
            name: "server".into(),
            service_account: "server-sa".into(),
            node: "node2".into(),
            ip: "198.18.2.2".parse().unwrap(),
            app: "server".into(),
            gateway: None,
            labels: vec![("version".into(), "1".into())],
        }
    }

    fn vm_def() -> WorkloadEntryDef {
        WorkloadEntryDef {
            namespace: "demo".into(),
            name: "vm".into(),
            service_account: "vm-sa".into(),
            ip: "198.19.1.2".parse().unwrap(),
            app: "vm".into(),
        }
    }

    fn vm() -> String {
        workload_entry(&vm_def())
    }

    fn route() -> String {
        http_route(&HttpRouteDef {
            namespace: "demo".into(),
            name: "web".into(),
            parent_service: "web".into(),
            parent_port: 80,
            backends: vec![("web-v1".into(), 80, 100), ("web-v2".into(), 80, 0)],
        })
    }

    fn echo(waypoint: Option<&str>) -> String {
        service(&ServiceDef {
            namespace: "demo".into(),
            name: "echo".into(),
            cluster_ip: "198.19.128.10".parse().unwrap(),
            app: "server".into(),
            ports: vec![(80, 8080), (81, 9090)],
            waypoint: waypoint.map(str::to_string),
        })
    }

    #[test]
    fn rendered_objects_carry_the_fields_the_controller_reads() {
        let policy = PolicyDef {
            namespace: "demo".into(),
            name: "deny-client".into(),
            action: "DENY".into(),
            selector_app: "server".into(),
            from_principals: vec!["cluster.local/ns/demo/sa/client".into()],
        };
        // (object, JSON pointer, expected value)
        let cases: Vec<(String, &str, Value)> = vec![
            (
                namespace("demo", Some(AMBIENT_LABEL)),
                "/metadata/labels/trellis.dev~1dataplane-mode",
                json!("ambient"),
            ),
            (namespace("plain", None), "/metadata/labels", Value::Null),
            (
                service_account("demo", "client"),
                "/metadata/namespace",
                json!("demo"),
            ),
            (pod(&server(), true), "/spec/nodeName", json!("node2")),
            (
                pod(&server(), true),
                "/spec/serviceAccountName",
                json!("server-sa"),
            ),
            (
                pod(&server(), true),
                "/metadata/labels/app",
                json!("server"),
            ),
            (pod(&server(), true), "/status/podIP", json!("198.18.2.2")),
            (
                pod(&server(), true),
                "/status/conditions/0/status",
                json!("True"),
            ),
            (pod(&server(), false), "/status", Value::Null),
            (
                pod(&server(), false),
                "/metadata/labels/version",
                json!("1"),
            ),
            (echo(None), "/spec/ports/1/targetPort", json!(9090)),
            (echo(None), "/spec/clusterIP", json!("198.19.128.10")),
            (echo(None), "/metadata/labels", Value::Null),
            (
                echo(Some("wp")),
                "/metadata/labels/trellis.dev~1use-waypoint",
                json!("wp"),
            ),
            (
                pod(
                    &PodDef {
                        gateway: Some("wp".into()),
                        ..server()
                    },
                    true,
                ),
                "/metadata/labels/gateway.networking.k8s.io~1gateway-name",
                json!("wp"),
            ),
            (vm(), "/apiVersion", json!("networking.istio.io/v1")),
            (vm(), "/spec/address", json!("198.19.1.2")),
            (vm(), "/spec/serviceAccount", json!("vm-sa")),
            (vm(), "/spec/labels/app", json!("vm")),
            (route(), "/spec/parentRefs/0/kind", json!("Service")),
            (route(), "/spec/parentRefs/0/group", json!("")),
            (route(), "/spec/parentRefs/0/port", json!(80)),
            (route(), "/spec/rules/0/backendRefs/1/name", json!("web-v2")),
            (route(), "/spec/rules/0/backendRefs/1/weight", json!(0)),
            (
                waypoint_gateway("demo", "wp"),
                "/spec/gatewayClassName",
                json!("trellis-waypoint"),
            ),
            (
                waypoint_gateway("demo", "wp"),
                "/spec/listeners/0/protocol",
                json!("HBONE"),
            ),
            (authorization_policy(&policy), "/spec/action", json!("DENY")),
            (
                authorization_policy(&policy),
                "/spec/selector/matchLabels/app",
                json!("server"),
            ),
            (
                authorization_policy(&policy),
                "/spec/rules/0/from/0/source/principals/0",
                json!("cluster.local/ns/demo/sa/client"),
            ),
            (
                token_file(&[
                    ("t1".into(), TokenHolder::NodeProxy("node1".into())),
                    ("t2".into(), TokenHolder::NodeProxy("node2".into())),
                ]),
                "/tokens/1/nodeProxy/node",
                json!("node2"),
            ),
            (
                token_file(&[(
                    "t3".into(),
                    TokenHolder::Waypoint("spiffe://cluster.local/ns/demo/sa/wp".into()),
                )]),
                "/tokens/0/waypoint/spiffeId",
                json!("spiffe://cluster.local/ns/demo/sa/wp"),
            ),
        ];
        for (yaml, pointer, want) in cases {
            let v = parse(&yaml);
            assert_eq!(
                v.pointer(pointer).cloned().unwrap_or(Value::Null),
                want,
                "{pointer} in\n{yaml}"
            );
        }
    }

    #[test]
    fn pod_names_identity_uid_and_principal() {
        let p = server();
        assert_eq!(p.uid(), "Kubernetes//Pod/demo/server");
        assert_eq!(p.spiffe_id(), "spiffe://cluster.local/ns/demo/sa/server-sa");
        assert_eq!(p.principal(), "cluster.local/ns/demo/sa/server-sa");
        let v = vm_def();
        assert_eq!(v.uid(), "Kubernetes//WorkloadEntry/demo/vm");
        assert_eq!(v.spiffe_id(), "spiffe://cluster.local/ns/demo/sa/vm-sa");
    }

    #[test]
    fn a_stream_holds_every_document() {
        let s = stream(&[
            namespace("demo", Some(AMBIENT_LABEL)),
            service_account("demo", "a"),
        ]);
        let docs: Vec<Value> = s.split("---\n").map(parse).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "ServiceAccount");
    }

    #[test]
    fn writes_are_atomic_renames_and_removals_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ManifestsDir::create(&tmp.path().join("m")).unwrap();
        dir.write("pods/a.yaml", "x: 1\n").unwrap();
        dir.write("pods/a.yaml", "x: 2\n").unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.root().join("pods"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml"], "no temp file left behind");
        assert_eq!(
            std::fs::read_to_string(dir.root().join("pods/a.yaml")).unwrap(),
            "x: 2\n"
        );
        dir.remove("pods/a.yaml").unwrap();
        assert!(!dir.root().join("pods/a.yaml").exists());
    }
}
