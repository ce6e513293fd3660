//! The waypoint's L7 features end to end: a client pod's request goes through
//! its node proxy, over HBONE to a real `trellis-waypoint` process, and from
//! there to the endpoints' node proxy. Every check is made with the l7kit
//! clients and servers and the waypoint's own metrics: weighted splits, L7
//! authorization, routing and filters, trace propagation, gRPC, upgrades,
//! TCP fallback, and hostile input (malformed HTTP/1, header floods, HTTP/2
//! rapid reset and CONTINUATION floods).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::Code;
use trellis_e2e::h2frames::{self, flag, kind, Frame, FrameReader};
use trellis_e2e::l7kit::{
    grpc_say, grpc_stream, http1_keepalive, http1_request, http2_request, upgrade_echo, GrpcMode,
    GrpcServer, HttpReply, HttpServer,
};
use trellis_e2e::mesh_kit::{
    add_l7, is_closed_by_peer, l7_snippet, principal, use_waypoint_pod, Attempt, Mesh, MeshBuilder,
    T,
};
use trellis_e2e::wait_until;
use trellis_netns::SocketOpts;

// ---------------------------------------------------------------- shared setup

const CLIENT: &str = "client";
const WP: &str = "wp";
/// Service VIPs: inside 198.18.0.0/15, outside every pod subnet.
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 10);
const WEB_V1_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 11);
const WEB_V2_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 12);
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 20);
const ECHO_SAY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 21);
const ECHO_REST_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 22);
const TCP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 110, 30);
const HTTP_PORT: u16 = 80;
const APP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 50051;
const TCP_PORT: u16 = 9000;

/// Growth of the waypoint's RSS an attack may cause; far above what a
/// bounded request costs, far below what an unbounded buffer would.
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;

/// Request headers as the l7kit clients take them.
type Headers<'a> = &'a [(&'a str, &'a str)];

fn web() -> SocketAddr {
    SocketAddr::new(WEB_VIP.into(), HTTP_PORT)
}

fn vip(ip: Ipv4Addr) -> IpAddr {
    ip.into()
}

/// The client (sa client) on node1; endpoints v1 and v2 (sa web) and the
/// waypoint `wp` on node2. Service `web` (v1 and v2) goes through the
/// waypoint; `web-v1` and `web-v2` have one endpoint each and are what
/// routes send to.
fn web_mesh() -> MeshBuilder {
    Mesh::builder()
        .member("node1", CLIENT, "demo", "client")
        .member("node2", "v1", "demo", "web")
        .member("node2", "v2", "demo", "web")
        .waypoint("node2", WP, "demo", "waypoint")
        .service("web", vip(WEB_VIP), &[(HTTP_PORT, APP_PORT)], &["v1", "v2"])
        .service("web-v1", vip(WEB_V1_VIP), &[(HTTP_PORT, APP_PORT)], &["v1"])
        .service("web-v2", vip(WEB_V2_VIP), &[(HTTP_PORT, APP_PORT)], &["v2"])
        .configure(|cfg| use_waypoint_pod(cfg, "web", WP))
}

fn start(b: MeshBuilder) -> Mesh {
    b.start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"))
}

/// The HTTP servers on v1 and v2, named after their pods.
struct Backends {
    v1: HttpServer,
    v2: HttpServer,
}

impl Backends {
    fn start(m: &Mesh) -> Backends {
        let server = |pod: &str| {
            HttpServer::start(Some(&m.netns(pod)), m.addr(pod, APP_PORT), pod)
                .unwrap_or_else(|e| panic!("http server in {pod}: {e}"))
        };
        Backends {
            v1: server("v1"),
            v2: server("v2"),
        }
    }

    fn count(&self) -> usize {
        self.v1.count() + self.v2.count()
    }
}

/// An HTTP/1.1 request from `from` to the `web` VIP; panics with the
/// waypoint's log if no answer comes.
fn call(m: &Mesh, from: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    http1_request(Some(&m.netns(from)), web(), method, path, headers, b"").unwrap_or_else(|e| {
        panic!(
            "{method} {path} from {from}: {e}\n--- waypoint log ---\n{}",
            m.waypoint(WP).log()
        )
    })
}

/// `istio_requests_total` as reported by the waypoint, for samples with all of `labels`.
fn requests(m: &Mesh, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("reporter", "waypoint")];
    all.extend_from_slice(labels);
    m.waypoint(WP).metric("istio_requests_total", &all)
}

/// Waits until the waypoint has counted exactly `want` requests with `labels`
/// (records are written when a response's last byte is out, so just after
/// the client has it).
fn wait_requests(m: &Mesh, labels: &[(&str, &str)], want: f64) {
    let what = format!("istio_requests_total{labels:?} == {want}");
    if let Err(e) = wait_until(T, &what, || requests(m, labels) == want) {
        let wp = m.waypoint(WP);
        panic!(
            "{e} (last: {})\n{}\n--- waypoint log ---\n{}",
            requests(m, labels),
            trellis_e2e::cluster::samples(
                &wp.metrics_text().unwrap_or_default(),
                "istio_requests_total"
            )
            .join("\n"),
            wp.log()
        );
    }
}

// ---------------------------------------------------------------- abuse helpers

/// Resident memory of a process in KiB, from /proc/<pid>/status.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

/// After an attack: the waypoint process is alive, its RSS grew by less
/// than [`MAX_RSS_GROWTH_KIB`] since `rss_before`, it is ready, and it
/// serves a normal request.
fn assert_still_serving(m: &mut Mesh, rss_before: u64, attack: &str) {
    if let Some(status) = m.waypoint_mut(WP).wait_exit(Duration::ZERO) {
        panic!(
            "the waypoint exited ({status}) after {attack}\n--- waypoint log ---\n{}",
            m.waypoint(WP).log()
        );
    }
    let wp = m.waypoint(WP);
    let rss_after = rss_kib(wp.pid());
    assert!(
        rss_after.saturating_sub(rss_before) < MAX_RSS_GROWTH_KIB,
        "{attack}: waypoint RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    wait_until(T, "waypoint readiness after the attack", || {
        wp.ready().unwrap_or(false)
    })
    .unwrap_or_else(|e| panic!("{attack}: {e}\n{}", wp.log()));
    let r = call(m, CLIENT, "GET", "/after-attack", &[]);
    assert_eq!(r.status, 200, "{attack}: a normal request after it: {r:?}");
}

/// What came back on a raw connection.
#[derive(Debug)]
enum RawReply {
    /// Bytes, then a close (EOF or reset).
    Answer(String),
    /// Closed (EOF or reset) without a byte.
    Closed,
}

/// Writes `bytes` from `from` to `dst` on a plain TCP connection and reads
/// until the peer closes; a timeout is an error.
fn raw_exchange(m: &Mesh, from: &str, dst: SocketAddr, bytes: &[u8]) -> io::Result<RawReply> {
    let mut s = trellis_e2e::connect(Some(&m.netns(from)), dst, T)?;
    // The peer may close while we write; what we read decides.
    let _ = s.write_all(bytes);
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + T;
    loop {
        if Instant::now() > until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{dst} kept the connection open for {T:?}"),
            ));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) if is_closed_by_peer(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(if back.is_empty() {
        RawReply::Closed
    } else {
        RawReply::Answer(String::from_utf8_lossy(&back).into_owned())
    })
}

/// A current-thread runtime for the async HTTP/2 attack clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A TCP connection from `from`'s netns to `dst`, for the `h2` crate client.
async fn dial(m: &Mesh, from: &str, dst: SocketAddr) -> tokio::net::TcpStream {
    let opts = SocketOpts {
        nodelay: true,
        ..SocketOpts::default()
    };
    trellis_e2e::connect_async(Some(&m.netns(from)), dst, opts, T)
        .await
        .unwrap_or_else(|e| panic!("connect from {from} to {dst}: {e}"))
}

/// `GET /` to `authority`: static-table pseudo-headers plus a literal
/// `:authority` (without indexing, indexed name 1).
fn hpack_get(authority: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86, 0x84];
    h2frames::hpack_int(&mut out, 0x00, 4, 1);
    h2frames::hpack_string(&mut out, authority.as_bytes());
    out
}

/// One frame, by itself.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    h2frames::frame(&mut out, kind, flags, stream, payload);
    out
}

/// How the server ended a raw HTTP/2 connection, as the client saw it.
#[derive(Debug, Default)]
struct H2End {
    /// GOAWAY error code, if one came.
    goaway: Option<u32>,
    /// (stream, error code) of each RST_STREAM.
    resets: Vec<(u32, u32)>,
    /// Streams the server sent response headers on.
    answered: Vec<u32>,
    /// The connection was closed (EOF or reset) by the server side.
    closed: bool,
    /// Frames of the attack written before the writer stopped.
    frames_written: usize,
}

/// Opens a plain TCP connection from `from` to `dst`, sends the HTTP/2
/// preface and an empty SETTINGS, then the `attack` frames one by one while
/// reading what the server sends. Stops writing when the server ends the
/// connection or a write fails; reading stops at close or after `deadline`.
fn raw_h2_attack(
    m: &Mesh,
    from: &str,
    dst: SocketAddr,
    attack: impl Iterator<Item = Vec<u8>>,
    deadline: Duration,
) -> H2End {
    let s = trellis_e2e::connect(Some(&m.netns(from)), dst, T)
        .unwrap_or_else(|e| panic!("connect from {from} to {dst}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = s.try_clone().expect("clone the socket");
    let mut writer = s;
    let ended = AtomicBool::new(false);
    let until = Instant::now() + deadline;
    std::thread::scope(|scope| {
        let ended = &ended;
        let read = scope.spawn(move || {
            let mut end = H2End::default();
            let mut frames = FrameReader::default();
            let mut chunk = [0u8; 16 * 1024];
            while Instant::now() < until {
                match reader.read(&mut chunk) {
                    Ok(0) => {
                        end.closed = true;
                        break;
                    }
                    Ok(n) => frames.push(&chunk[..n]),
                    Err(e) if is_closed_by_peer(&e) => {
                        end.closed = true;
                        break;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => panic!("reading the server's frames: {e}"),
                }
                while let Some(f) = frames.next_frame() {
                    end.note(&f);
                }
            }
            ended.store(true, Ordering::SeqCst);
            end
        });
        let mut written = 0;
        let mut write = |bytes: &[u8]| writer.write_all(bytes).is_ok();
        let mut hello = h2frames::PREFACE.to_vec();
        h2frames::settings(&mut hello, &[]);
        if write(&hello) {
            for f in attack {
                if ended.load(Ordering::SeqCst) || Instant::now() >= until || !write(&f) {
                    break;
                }
                written += 1;
            }
        }
        let mut end = read.join().expect("reader thread");
        end.frames_written = written;
        end
    })
}

impl H2End {
    /// Notes what matters of a frame the server sent.
    fn note(&mut self, f: &Frame) {
        match f.kind {
            kind::GOAWAY => self.goaway = f.error_code().map(|(_, code)| code),
            kind::RST_STREAM => self
                .resets
                .push((f.stream, f.error_code().map_or(0, |(_, code)| code))),
            kind::HEADERS if f.stream != 0 => self.answered.push(f.stream),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- 1. weighted split

#[test]
fn weighted_backend_refs_send_about_a_fifth_of_requests_to_the_canary() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = start(web_mesh().l7_yaml(
        "
httpRoutes:
- name: canary
  namespace: demo
  parentRefs: [{name: web}]
  rules:
  - backendRefs:
    - {name: web-v1, weight: 80}
    - {name: web-v2, weight: 20}
",
    ));
    let b = Backends::start(&m);
    const N: usize = 200;
    const P: f64 = 0.2;
    let replies = http1_keepalive(Some(&m.netns(CLIENT)), web(), "GET", "/", &[], N)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).log()));
    assert_eq!(replies.len(), N);
    let mut v2 = 0usize;
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        match r.server().as_deref() {
            Some("v1") => {}
            Some("v2") => v2 += 1,
            other => panic!("answered by {other:?}: {r:?}"),
        }
    }
    let n = N as f64;
    let sd = (n * P * (1.0 - P)).sqrt();
    let (lo, hi) = (n * P - 4.5 * sd, n * P + 4.5 * sd);
    assert!(
        (lo..=hi).contains(&(v2 as f64)),
        "v2 got {v2} of {N} requests; weight 20/100 allows {lo:.1}..={hi:.1}"
    );
    assert!(v2 > 0 && v2 < N, "both backends must be hit: v2 got {v2}");
    assert_eq!(b.v2.count(), v2, "v2's own count");
    assert_eq!(b.v1.count(), N - v2, "v1's own count");
}

// ---------------------------------------------------------------- 2. L7 authorization

#[test]
fn l7_policies_answer_403_by_path_method_header_and_caller_principal() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = start(
        web_mesh()
            .member("node1", "other", "demo", "other")
            .l7_yaml(
                r#"
authorizationPolicies:
- name: deny-admin
  namespace: demo
  targetRefs: [{kind: Service, name: web}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
- name: deny-delete
  namespace: demo
  targetRefs: [{kind: Service, name: web}]
  action: DENY
  rules:
  - to: [{operation: {methods: ["DELETE"]}}]
- name: deny-blocked
  namespace: demo
  targetRefs: [{kind: Service, name: web}]
  action: DENY
  rules:
  - when: [{key: "request.headers[x-block]", values: ["yes"]}]
- name: allow-client
  namespace: demo
  targetRefs: [{kind: Service, name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
"#,
            ),
    );
    let b = Backends::start(&m);
    // (caller, method, path, headers, expected status)
    let cases: &[(&str, &str, &str, Headers, u16)] = &[
        (CLIENT, "GET", "/public", &[], 200),
        (CLIENT, "GET", "/admin", &[], 403),
        (CLIENT, "GET", "/admin/users", &[], 403),
        (CLIENT, "POST", "/public", &[], 200),
        (CLIENT, "DELETE", "/public", &[], 403),
        (CLIENT, "GET", "/public", &[("x-block", "yes")], 403),
        (CLIENT, "GET", "/public", &[("x-block", "no")], 200),
        ("other", "GET", "/public", &[], 403),
    ];
    for (from, method, path, headers, want) in cases {
        let r = call(&m, from, method, path, headers);
        assert_eq!(
            r.status, *want,
            "{method} {path} {headers:?} from {from}: {r:?}"
        );
        if *want == 403 {
            assert!(r.body.contains("RBAC: access denied"), "{r:?}");
            assert_eq!(r.header("server"), Some("trellis-waypoint"), "{r:?}");
        }
    }
    let allowed = cases.iter().filter(|c| c.4 == 200).count();
    let denied = cases.len() - allowed;
    wait_requests(&m, &[("response_code", "403")], denied as f64);
    wait_requests(&m, &[("response_code", "200")], allowed as f64);
    let other = format!("spiffe://{}", principal("demo", "other"));
    wait_requests(
        &m,
        &[
            ("response_code", "403"),
            ("source_principal", other.as_str()),
        ],
        1.0,
    );
    assert_eq!(
        b.count(),
        allowed,
        "denied requests must not reach a backend"
    );
}

// ---------------------------------------------------------------- 3. routing

/// Routes on `web`: `/app` to v1 unless a more specific match sends it to
/// v2; `/mod` with header modifiers; `/old` redirected; `/api` rewritten.
/// Nothing else matches.
const ROUTES: &str = "
httpRoutes:
- name: routing
  namespace: demo
  parentRefs: [{name: web}]
  rules:
  - name: base
    matches: [{path: {type: PathPrefix, value: /app}}]
    backendRefs: [{name: web-v1}]
  - name: exact
    matches: [{path: {type: Exact, value: /app/special}}]
    backendRefs: [{name: web-v2}]
  - name: by-header
    matches: [{path: {type: PathPrefix, value: /app}, headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: web-v2}]
  - name: by-query
    matches: [{path: {type: PathPrefix, value: /app}, queryParams: [{name: flavour, value: v2}]}]
    backendRefs: [{name: web-v2}]
  - name: by-method
    matches: [{path: {type: PathPrefix, value: /app}, method: PUT}]
    backendRefs: [{name: web-v2}]
  - name: by-baggage
    matches: [{path: {type: PathPrefix, value: /app}, baggage: [{name: color, value: blue}]}]
    backendRefs: [{name: web-v2}]
  - name: modify
    matches: [{path: {type: PathPrefix, value: /mod}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: by-waypoint}]
        add: [{name: x-add, value: added}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: from-waypoint}]
        remove: [x-server]
    backendRefs: [{name: web-v1}]
  - name: redirect
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: new.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 302
  - name: rewrite
    matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /internal}
    backendRefs: [{name: web-v1}]
";

#[test]
fn route_matches_pick_backends_by_path_header_query_method_and_baggage() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = start(web_mesh().l7_yaml(ROUTES));
    let b = Backends::start(&m);
    // (method, path, headers, the backend that must answer)
    let cases: &[(&str, &str, Headers, &str)] = &[
        ("GET", "/app", &[], "v1"),
        ("GET", "/app/other", &[], "v1"),
        // Exact beats a prefix, though the prefix rule comes first.
        ("GET", "/app/special", &[], "v2"),
        ("GET", "/app", &[("x-version", "v2")], "v2"),
        ("GET", "/app", &[("x-version", "v3")], "v1"),
        ("GET", "/app?flavour=v2", &[], "v2"),
        ("GET", "/app?flavour=v1", &[], "v1"),
        ("PUT", "/app", &[], "v2"),
        ("POST", "/app", &[], "v1"),
        ("GET", "/app", &[("baggage", "user=alice,color=blue")], "v2"),
        ("GET", "/app", &[("baggage", "color=red")], "v1"),
    ];
    for (method, path, headers, want) in cases {
        let r = call(&m, CLIENT, method, path, headers);
        assert_eq!(r.status, 200, "{method} {path} {headers:?}: {r:?}");
        assert_eq!(
            r.server().as_deref(),
            Some(*want),
            "{method} {path} {headers:?}: {}",
            r.body
        );
        assert_eq!(
            r.json()["path"],
            *path,
            "the path reaches the backend as sent"
        );
    }
    // Element-wise prefixes: /application is not under /app, and no rule matches it.
    for path in ["/application", "/nothing", "/"] {
        let r = call(&m, CLIENT, "GET", path, &[]);
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    assert_eq!(b.count(), cases.len(), "404s must not reach a backend");
    wait_requests(
        &m,
        &[("response_code", "404"), ("response_flags", "NR")],
        3.0,
    );
}

#[test]
fn route_filters_modify_headers_redirect_and_rewrite_the_path() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = start(web_mesh().l7_yaml(ROUTES));
    let b = Backends::start(&m);

    // RequestHeaderModifier: what the backend sees; ResponseHeaderModifier:
    // what the client sees.
    let r = call(
        &m,
        CLIENT,
        "GET",
        "/mod/x",
        &[
            ("x-set", "from-client"),
            ("x-add", "from-client"),
            ("x-remove", "gone"),
            ("x-keep", "kept"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-set"], "by-waypoint", "set replaces: {h}");
    assert_eq!(h["x-add"], "from-client, added", "add appends: {h}");
    assert!(h.get("x-remove").is_none(), "remove removes: {h}");
    assert_eq!(h["x-keep"], "kept", "{h}");
    assert_eq!(r.header("x-resp"), Some("from-waypoint"), "{r:?}");
    assert_eq!(
        r.header("x-server"),
        None,
        "removed from the response: {r:?}"
    );
    assert_eq!(r.json()["server"], "v1");

    // RequestRedirect: answered by the waypoint, nothing forwarded.
    let before = b.count();
    let r = call(&m, CLIENT, "GET", "/old/page?x=1", &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("http://new.example/new/page?x=1"),
        "{r:?}"
    );
    assert_eq!(b.count(), before, "a redirect must not reach a backend");

    // URLRewrite ReplacePrefixMatch: the backend sees the new path, query kept.
    let r = call(&m, CLIENT, "GET", "/api/items?q=1", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/internal/items?q=1", "{}", r.body);
    assert_eq!(r.server().as_deref(), Some("v1"));

    // The same over HTTP/2, where the request carries an absolute URI.
    let h2 = |path: &str, headers: &[(&str, &str)]| {
        http2_request(Some(&m.netns(CLIENT)), web(), "GET", path, headers, b"")
            .unwrap_or_else(|e| panic!("h2 GET {path}: {e}\n{}", m.waypoint(WP).log()))
    };
    let r = h2("/api/items?q=2", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/2.0", "{}", r.body);
    assert_eq!(r.json()["path"], "/internal/items?q=2", "{}", r.body);
    let r = h2("/mod/y", &[("x-set", "from-client"), ("x-remove", "gone")]);
    let h = &r.json()["headers"];
    assert_eq!(h["x-set"], "by-waypoint", "{h}");
    assert_eq!(h["x-add"], "added", "{h}");
    assert!(h.get("x-remove").is_none(), "{h}");
    assert_eq!(r.header("x-resp"), Some("from-waypoint"), "{r:?}");
    let r = h2("/old/page", &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("http://new.example/new/page"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------- 4. propagation

#[test]
fn request_id_and_trace_context_are_propagated_and_baggage_passes_unchanged() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = start(web_mesh());
    let _b = Backends::start(&m);
    let seen = |headers: &[(&str, &str)]| -> serde_json::Value {
        let r = call(&m, CLIENT, "GET", "/trace", headers);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["headers"].clone()
    };

    // x-request-id: kept when sent, created (a UUID, new per request) when not.
    let h = seen(&[("x-request-id", "req-abc-123")]);
    assert_eq!(h["x-request-id"], "req-abc-123", "{h}");
    let made: Vec<String> = (0..2)
        .map(|_| {
            let h = seen(&[]);
            h["x-request-id"]
                .as_str()
                .unwrap_or_else(|| panic!("no x-request-id created: {h}"))
                .to_string()
        })
        .collect();
    for id in &made {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "not a UUID: {id}");
    }
    assert_ne!(made[0], made[1], "each request gets its own id");

    // traceparent: same trace id and flags, the waypoint's own span as parent.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let sent = format!("00-{trace_id}-{parent}-01");
    let baggage = "color=red,user=alice;prop=1";
    let h = seen(&[
        ("traceparent", &sent),
        ("tracestate", "vendor=abc"),
        ("baggage", baggage),
    ]);
    let tp = h["traceparent"].as_str().unwrap_or_default();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00", "version: {tp}");
    assert_eq!(parts[1], trace_id, "trace id kept: {tp}");
    assert_eq!(parts[2].len(), 16, "parent id: {tp}");
    assert!(
        parts[2].bytes().all(|c| c.is_ascii_hexdigit()),
        "parent id: {tp}"
    );
    assert_ne!(
        parts[2], parent,
        "the waypoint's span is the new parent: {tp}"
    );
    assert_eq!(parts[3], "01", "flags kept: {tp}");
    assert_eq!(h["tracestate"], "vendor=abc", "{h}");
    assert_eq!(h["baggage"], baggage, "baggage passes unchanged: {h}");

    // Without a traceparent the waypoint starts a trace.
    let h = seen(&[]);
    let tp = h["traceparent"].as_str().unwrap_or_default();
    assert!(tp.starts_with("00-") && tp.len() == 55, "{h}");
}

// ---------------------------------------------------------------- 5. gRPC

#[test]
fn grpc_route_sends_say_to_one_service_and_the_rest_to_another() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = start(
        web_mesh()
            .service(
                "echo",
                vip(ECHO_VIP),
                &[(GRPC_PORT, GRPC_PORT)],
                &["v1", "v2"],
            )
            .service(
                "echo-say",
                vip(ECHO_SAY_VIP),
                &[(GRPC_PORT, GRPC_PORT)],
                &["v1"],
            )
            .service(
                "echo-rest",
                vip(ECHO_REST_VIP),
                &[(GRPC_PORT, GRPC_PORT)],
                &["v2"],
            )
            .configure(|cfg| use_waypoint_pod(cfg, "echo", WP))
            .l7_yaml(
                "
grpcRoutes:
- name: echo
  namespace: demo
  parentRefs: [{name: echo}]
  rules:
  - name: say
    matches: [{method: {service: trellis.test.Echo, method: Say}}]
    backendRefs: [{name: echo-say}]
  - name: rest
    backendRefs: [{name: echo-rest}]
",
            ),
    );
    let say = GrpcServer::start(Some(&m.netns("v1")), m.addr("v1", GRPC_PORT), "say").unwrap();
    let rest = GrpcServer::start(Some(&m.netns("v2")), m.addr("v2", GRPC_PORT), "rest").unwrap();
    let dst = SocketAddr::new(vip(ECHO_VIP), GRPC_PORT);
    let ns = m.netns(CLIENT);
    let log = || m.waypoint(WP).log();

    let reply = grpc_say(Some(&ns), dst, "hello").unwrap_or_else(|s| panic!("{s:?}\n{}", log()));
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.server, "say", "Say goes to echo-say");
    assert!(
        reply.headers.contains_key("x-request-id"),
        "{:?}",
        reply.headers
    );

    let (replies, trailers) =
        grpc_stream(Some(&ns), dst, "tick", 5).unwrap_or_else(|s| panic!("{s:?}\n{}", log()));
    let got: Vec<(&str, &str)> = replies
        .iter()
        .map(|r| (r.message.as_str(), r.server.as_str()))
        .collect();
    let want: Vec<String> = (0..5).map(|i| format!("tick {i}")).collect();
    let want: Vec<(&str, &str)> = want.iter().map(|s| (s.as_str(), "rest")).collect();
    assert_eq!(
        got, want,
        "Stream goes to echo-rest, every message in order"
    );
    assert_eq!(
        trailers.get("x-trailer").and_then(|v| v.to_str().ok()),
        Some("done"),
        "the streaming trailer reaches the client: {trailers:?}"
    );
    assert_eq!((say.count(), rest.count()), (1, 1));

    // A failing call keeps its status end to end and in the metrics.
    say.set_mode(GrpcMode::Fail(Code::PermissionDenied));
    let status = grpc_say(Some(&ns), dst, "no").expect_err("the server fails the call");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let grpc = [("request_protocol", "grpc"), ("response_code", "200")];
    let ok = [grpc[0], grpc[1], ("grpc_response_status", "0")];
    let denied = [grpc[0], grpc[1], ("grpc_response_status", "7")];
    wait_requests(&m, &ok, 2.0);
    wait_requests(&m, &denied, 1.0);

    // The waypoint's own refusal reaches a gRPC caller as a gRPC status too.
    let policy = l7_snippet(
        r#"
authorizationPolicies:
- name: no-streams
  namespace: demo
  targetRefs: [{kind: Service, name: echo}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/trellis.test.Echo/Stream"]}}]
"#,
    );
    m.reload(|cfg| add_l7(cfg, policy))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = grpc_stream(Some(&m.netns(CLIENT)), dst, "tock", 1)
        .expect_err("the waypoint denies the stream");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(rest.count(), 1, "the denied call never reaches the backend");
    wait_requests(&m, &denied, 2.0);
}

// ---------------------------------------------------------------- 6. upgrade

#[test]
fn websocket_style_upgrade_passes_through_and_echoes_bytes() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = start(web_mesh());
    let _b = Backends::start(&m);
    let payload: Vec<u8> = (0..32 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (head, back) = upgrade_echo(Some(&m.netns(CLIENT)), web(), "/ws", &[], &payload)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).log()));
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(
        head.header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket"),
        "{head:?}"
    );
    assert!(
        head.header("x-server")
            .is_some_and(|s| s == "v1" || s == "v2"),
        "{head:?}"
    );
    assert!(back == payload, "the upgraded connection echoes every byte");
    wait_requests(&m, &[("response_code", "101")], 1.0);
}

// ---------------------------------------------------------------- 7. TCP fallback

#[test]
fn non_http_bytes_are_relayed_as_tcp_and_an_http_only_allow_policy_denies_them() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = start(
        web_mesh()
            .service("tcp", vip(TCP_VIP), &[(TCP_PORT, TCP_PORT)], &["v1"])
            .configure(|cfg| use_waypoint_pod(cfg, "tcp", WP)),
    );
    let echo = m.echo("v1", TCP_PORT);
    let dst = SocketAddr::new(vip(TCP_VIP), TCP_PORT);
    let payload = b"\x00\x01binary";
    let got = m
        .attempt_echo(CLIENT, dst, payload)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).log()));
    assert_eq!(got, Attempt::Echoed(payload.to_vec()));
    assert_eq!(echo.accepted(), 1);
    wait_until(T, "the waypoint counted the tcp stream", || {
        m.waypoint(WP).metric(
            "istio_tcp_connections_closed_total",
            &[("reporter", "waypoint")],
        ) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).metrics_text().unwrap_or_default()));

    // Istio semantics: an ALLOW rule with HTTP fields never matches TCP, so
    // with this the only ALLOW policy, the stream is denied.
    let policy = l7_snippet(
        r#"
authorizationPolicies:
- name: only-get
  namespace: demo
  targetRefs: [{kind: Service, name: tcp}]
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/only"]}}]
"#,
    );
    m.reload(|cfg| add_l7(cfg, policy))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let got = m
        .attempt_echo(CLIENT, dst, payload)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).log()));
    assert_eq!(got, Attempt::Closed, "the denied stream gets no echo");
    assert_eq!(
        echo.accepted(),
        1,
        "the denied stream never reaches the server"
    );
}

// ---------------------------------------------------------------- 8. hostile input

#[test]
fn malformed_http1_request_gets_400_or_a_close_and_the_waypoint_keeps_serving() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = start(web_mesh());
    let b = Backends::start(&m);
    let rss = rss_kib(m.waypoint(WP).pid());
    let reply = raw_exchange(
        &m,
        CLIENT,
        web(),
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("no answer nor close: {e}\n{}", m.waypoint(WP).log()));
    eprintln!("malformed request: {reply:?}");
    match &reply {
        RawReply::Answer(a) => assert!(a.starts_with("HTTP/1.1 400 "), "{a:?}"),
        RawReply::Closed => {}
    }
    assert_eq!(b.count(), 0, "a malformed request must not reach a backend");
    assert_still_serving(&mut m, rss, "a malformed request line");
}

#[test]
fn oversized_http1_header_gets_431_or_a_close_and_the_waypoint_keeps_serving() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = start(web_mesh());
    let b = Backends::start(&m);
    let rss = rss_kib(m.waypoint(WP).pid());
    let big = "a".repeat(100 * 1024);
    let reply = http1_request(
        Some(&m.netns(CLIENT)),
        web(),
        "GET",
        "/big",
        &[("x-big", &big)],
        b"",
    );
    eprintln!("100 KiB header: {:?}", reply.as_ref().map(|r| r.status));
    match reply {
        Ok(r) => assert_eq!(r.status, 431, "{r:?}"),
        Err(e) => assert!(e.is_aborted(), "neither 431 nor a close: {e}"),
    }
    assert_eq!(
        b.count(),
        0,
        "an oversized request must not reach a backend"
    );
    assert_still_serving(&mut m, rss, "a 100 KiB header");
}

#[test]
fn h2_rapid_reset_burst_is_cut_off_and_the_waypoint_keeps_serving() {
    if !trellis_e2e::require_root() {
        return;
    }
    const STREAMS: usize = 1000;
    let mut m = start(web_mesh());
    let b = Backends::start(&m);
    let rss = rss_kib(m.waypoint(WP).pid());
    let rt = runtime();
    let (opened, ended) = rt.block_on(async {
        let tcp = dial(&m, CLIENT, web()).await;
        let (client, conn): (h2::client::SendRequest<Bytes>, _) = h2::client::handshake(tcp)
            .await
            .unwrap_or_else(|e| panic!("h2 handshake through the mesh: {e}"));
        let conn = tokio::spawn(conn);
        let mut opened = 0;
        let burst = async {
            let mut ready = client;
            for i in 0..STREAMS {
                // Not ready: the server ended the connection.
                let Ok(mut client) = ready.ready().await else {
                    return None;
                };
                let req = http::Request::get(format!("http://{}/rapid/{i}", web()))
                    .body(())
                    .expect("valid request");
                let Ok((_response, mut body)) = client.send_request(req, false) else {
                    return None;
                };
                // Let the connection task write the HEADERS first: h2 drops
                // the frames of a stream reset before they went out.
                tokio::task::yield_now().await;
                body.send_reset(h2::Reason::CANCEL);
                opened += 1;
                ready = client;
            }
            Some(ready)
        };
        let handle = tokio::time::timeout(T, burst)
            .await
            .unwrap_or_else(|_| panic!("the burst of {STREAMS} streams stalled"));
        // Our handle keeps the connection up: only the server can end it.
        let ended = tokio::time::timeout(T, conn)
            .await
            .ok()
            .map(|r| r.expect("connection task"));
        drop(handle);
        (opened, ended)
    });
    // The waypoint's h2 server allows 50 streams reset before it accepted
    // them, then sends GOAWAY ENHANCE_YOUR_CALM and closes. The client sees
    // the GOAWAY, or (when the close overtakes it) a failed write.
    eprintln!("rapid reset: {opened} streams reset, connection ended with {ended:?}");
    let cut_off = match &ended {
        Some(Err(e)) if e.is_go_away() => {
            e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        }
        Some(Err(e)) => e.get_io().is_some_and(is_closed_by_peer),
        Some(Ok(())) | None => false,
    };
    assert!(
        cut_off,
        "after {opened} of {STREAMS} reset streams the connection ended with {ended:?} \
         (None: still open), not with the server's GOAWAY or close\n{}",
        m.waypoint(WP).log()
    );
    assert!(
        b.count() < STREAMS / 10,
        "{} of the reset requests reached a backend",
        b.count()
    );
    assert_still_serving(&mut m, rss, "a rapid-reset burst");
}

/// One HTTP/2 request from `from` to `web` carrying `count` distinct headers
/// of about 100 bytes each, on its own connection: the answer's status, or
/// how the stream or connection failed.
fn h2_header_flood(m: &Mesh, from: &str, count: usize) -> Result<u16, h2::Error> {
    runtime().block_on(async {
        let tcp = dial(m, from, web()).await;
        let (client, conn) = h2::client::handshake(tcp)
            .await
            .unwrap_or_else(|e| panic!("h2 handshake through the mesh: {e}"));
        let conn = tokio::spawn(conn);
        let mut client: h2::client::SendRequest<Bytes> =
            client.ready().await.expect("a fresh connection is ready");
        let mut req = http::Request::get(format!("http://{}/flood", web()))
            .body(())
            .expect("valid request");
        // '~' has a 13-bit Huffman code, so HPACK cannot shrink the values.
        let value = http::HeaderValue::from_str(&"~".repeat(90)).expect("valid value");
        for i in 0..count {
            let name = http::HeaderName::from_bytes(format!("x-flood-{i}").as_bytes())
                .expect("valid name");
            req.headers_mut().insert(name, value.clone());
        }
        let outcome = match client.send_request(req, true) {
            Ok((response, _)) => tokio::time::timeout(T, response)
                .await
                .unwrap_or_else(|_| panic!("no answer to a flood of {count} headers"))
                .map(|r| r.status().as_u16()),
            Err(e) => Err(e),
        };
        drop(client);
        let _ = tokio::time::timeout(T, conn).await;
        outcome
    })
}

#[test]
fn h2_header_flood_is_refused_and_the_waypoint_keeps_serving() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = start(web_mesh());
    let b = Backends::start(&m);
    let rss = rss_kib(m.waypoint(WP).pid());

    // ~86 KB of header list (HPACK counts 32 bytes per entry) in a block
    // that fits the allowed CONTINUATION frames: the request is refused.
    let over = h2_header_flood(&m, CLIENT, 650);
    match &over {
        Ok(status) => assert_eq!(*status, 431, "headers over the limit got {status}"),
        Err(e) => assert!(
            e.is_remote() && e.is_reset(),
            "headers over the limit ended with {e:?}, not 431 or a reset"
        ),
    }

    // ~260 KB: far more frames than a 64 KiB list needs; the connection goes.
    let flood = h2_header_flood(&m, CLIENT, 2000);
    eprintln!("header flood: just over the limit: {over:?}; far over: {flood:?}");
    match &flood {
        Ok(status) => assert_eq!(*status, 431, "the flood got {status}"),
        Err(e) => assert!(
            e.is_remote() && (e.is_go_away() || e.is_reset()),
            "the flood ended with {e:?}, not a GOAWAY or reset from the server"
        ),
    }
    assert_eq!(b.count(), 0, "a flood must not reach a backend");
    assert_still_serving(&mut m, rss, "an HTTP/2 header flood");
}

#[test]
fn h2_endless_continuation_frames_get_goaway_and_the_waypoint_keeps_serving() {
    if !trellis_e2e::require_root() {
        return;
    }
    // Bounds for the attacker: 64 MiB of CONTINUATION frames or 10 s.
    const MAX_FRAMES: usize = 64 * 1024;
    let mut m = start(web_mesh());
    let b = Backends::start(&m);
    let rss = rss_kib(m.waypoint(WP).pid());
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end
    // the block, each holding a complete, valid literal header.
    let head = frame(
        kind::HEADERS,
        flag::END_STREAM,
        1,
        &hpack_get(&web().to_string()),
    );
    let continuation = |i: usize| {
        let mut block = Vec::with_capacity(1100);
        h2frames::hpack_literal(&mut block, format!("x-c{i}").as_bytes(), &[b'c'; 1000]);
        frame(kind::CONTINUATION, 0, 1, &block)
    };
    let attack = std::iter::once(head).chain((0..MAX_FRAMES).map(continuation));
    let end = raw_h2_attack(&m, CLIENT, web(), attack, Duration::from_secs(10));
    eprintln!("continuation flood: {end:?}");
    assert!(
        end.goaway.is_some() || end.closed,
        "the server neither sent GOAWAY nor closed: {end:?}\n{}",
        m.waypoint(WP).log()
    );
    if let Some(code) = end.goaway {
        assert_ne!(code, 0, "GOAWAY must carry an error code: {end:?}");
    }
    assert!(
        end.frames_written < MAX_FRAMES,
        "the server let the whole flood in: {end:?}"
    );
    assert!(
        end.answered.is_empty(),
        "an unfinished header block got an answer: {end:?}"
    );
    assert_eq!(b.count(), 0, "the flood must not reach a backend");
    assert_still_serving(&mut m, rss, "an endless CONTINUATION sequence");
}

// ------------------------------------------------- HTTP/2 end of stream and trailers

/// What the raw HTTP/2 server in `v1` hands the test for each request: did
/// the client ask for trailers, and the stream's send half, left open after
/// a head with `content-length: 5` and the 5 bytes.
type HeldStream = (bool, h2::SendStream<Bytes>);

/// Serves HTTP/2 on `listener` (in the v1 pod) and answers every request
/// with its whole body but no end of stream, as HTTP/2 servers that send the
/// end in a frame of its own do; the test ends each stream itself.
async fn hold_ends_server(
    listener: tokio::net::TcpListener,
    held: tokio::sync::mpsc::UnboundedSender<HeldStream>,
) {
    let Ok((tcp, _)) = listener.accept().await else {
        return;
    };
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let te = req.headers().contains_key(http::header::TE);
        let head = http::Response::builder()
            .header(http::header::CONTENT_LENGTH, "5")
            .body(())
            .expect("response head");
        let Ok(mut send) = respond.send_response(head, false) else {
            continue;
        };
        if send.send_data(Bytes::from_static(b"hello"), false).is_ok() {
            let _ = held.send((te, send));
        }
    }
}

/// The next request v1 got, within the test deadline.
async fn next_held(held: &mut tokio::sync::mpsc::UnboundedReceiver<HeldStream>) -> HeldStream {
    tokio::time::timeout(T, held.recv())
        .await
        .expect("request reached v1 in time")
        .expect("server running")
}

/// An HTTP/2 GET from the client pod to `web`, optionally asking for trailers.
async fn h2_get(client: &mut h2::client::SendRequest<Bytes>, te_trailers: bool) -> h2::RecvStream {
    let mut req = http::Request::builder().uri(format!("http://{}/", web()));
    if te_trailers {
        req = req.header(http::header::TE, "trailers");
    }
    let (resp, _) = client
        .send_request(req.body(()).expect("request"), true)
        .expect("send request");
    let resp = tokio::time::timeout(T, resp)
        .await
        .expect("response head in time")
        .expect("response head");
    assert_eq!(resp.status(), 200);
    resp.into_body()
}

/// Reads the body's next DATA frame, within the test deadline.
async fn next_data(body: &mut h2::RecvStream) -> Option<Bytes> {
    let d = tokio::time::timeout(T, body.data())
        .await
        .expect("body in time");
    d.map(|d| {
        let d = d.expect("body data");
        let _ = body.flow_control().release_capacity(d.len());
        d
    })
}

/// A body whose `content-length` is met reaches the client with its end of
/// stream at once, not one read later when the upstream's own end arrives
/// (a frame, a record and a write per request saved), and the upstream
/// stream is still ended cleanly rather than reset. A client that asked for
/// trailers waits for the upstream's end and gets them.
#[test]
fn h2_body_ends_at_its_content_length_unless_the_client_wants_trailers() {
    let m = start(
        Mesh::builder()
            .member("node1", CLIENT, "demo", "client")
            .member("node2", "v1", "demo", "web")
            .waypoint("node2", WP, "demo", "waypoint")
            .service("web", vip(WEB_VIP), &[(HTTP_PORT, APP_PORT)], &["v1"])
            .configure(|cfg| use_waypoint_pod(cfg, "web", WP)),
    );
    let listener = m
        .netns("v1")
        .run_in(|| std::net::TcpListener::bind(m.addr("v1", APP_PORT)))
        .expect("enter v1")
        .expect("bind in v1");
    listener.set_nonblocking(true).expect("nonblocking");
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(hold_ends_server(listener, tx));
        let tcp = dial(&m, CLIENT, web()).await;
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("client ready");

        // 1. No trailers wanted: the whole response, end included, while the
        // upstream still holds its end of stream back.
        let mut body = h2_get(&mut client, false).await;
        let (te, mut first) = next_held(&mut held).await;
        assert!(!te);
        assert_eq!(next_data(&mut body).await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(next_data(&mut body).await, None, "ended at its length");

        // 2. The next request on the same connections: a reset of the first
        // stream, had the waypoint dropped it, would have reached v1 before
        // this request (one upstream connection, in order).
        let mut body2 = h2_get(&mut client, false).await;
        let (_, mut second) = next_held(&mut held).await;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            first.poll_reset(&mut cx).is_pending(),
            "the waypoint reset the upstream stream instead of reading its end"
        );
        first
            .send_data(Bytes::new(), true)
            .expect("end the first stream");
        second
            .send_data(Bytes::new(), true)
            .expect("end the second stream");
        assert_eq!(next_data(&mut body2).await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(next_data(&mut body2).await, None);

        // 3. Trailers wanted: the body does not end at its length; the
        // upstream's trailers come through.
        let mut body3 = h2_get(&mut client, true).await;
        let (te, mut third) = next_held(&mut held).await;
        assert!(te, "te: trailers reached the upstream");
        assert_eq!(next_data(&mut body3).await.as_deref(), Some(&b"hello"[..]));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-done", http::HeaderValue::from_static("1"));
        third.send_trailers(trailers).expect("send trailers");
        assert_eq!(next_data(&mut body3).await, None);
        let got = tokio::time::timeout(T, body3.trailers())
            .await
            .expect("trailers in time")
            .expect("trailers");
        assert_eq!(
            got.as_ref()
                .and_then(|t| t.get("x-done"))
                .map(|v| v.as_bytes()),
            Some(&b"1"[..]),
            "trailers lost: {got:?}"
        );
    });
}
