//! The waypoint's resilience features end to end: real clients in a pod,
//! node proxies on both sides, a real `trellis-waypoint` fronting service
//! `web`, and l7kit servers that fail, stall or reset on demand. Each test
//! observes the feature where it shows: at the client (status, headers,
//! elapsed time), at the servers (which one got how many requests, how many
//! at once) and in the waypoint's metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use trellis_e2e::cluster::samples;
use trellis_e2e::l7kit::{
    grpc_say, http1_request, ClientError, GrpcMode, GrpcServer, HttpReply, HttpServer, Mode,
};
use trellis_e2e::mesh_kit::{render, use_waypoint, Mesh, MeshBuilder, T};
use trellis_e2e::waypoint_proc::Waypoint;
use trellis_e2e::{wait_for, wait_until};
use trellis_netns::NetNs;

/// The VIP of service `web` (port 80 → 8080 on its endpoints).
fn vip() -> IpAddr {
    "198.19.100.30".parse().unwrap()
}

fn web() -> SocketAddr {
    SocketAddr::new(vip(), 80)
}

const TARGET_PORT: u16 = 8080;

/// An HTTPRoute on `web` with one rule `main` carrying `body` (YAML lines
/// of the rule, indented for it), e.g. `policy: {retry: {attempts: 2}}`.
/// Its key in metrics is `demo/web/main`.
fn one_rule(body: &str) -> String {
    format!(
        "httpRoutes:
- name: web
  namespace: demo
  parentRefs: [{{name: web}}]
  rules:
  - name: main
    backendRefs: [{{name: web, port: 80}}]
    {body}
"
    )
}

const MAIN: &str = "demo/web/main";

/// A mesh: `client` on node1; `pods` (all members, service account web) and
/// the waypoint `wp` on node2; service `web` with `endpoints` behind `wp`;
/// the L7 config `yaml`. `more` adds to the builder (more pods, args).
fn mesh_with(
    pods: &[&str],
    endpoints: &[&str],
    yaml: &str,
    more: impl FnOnce(MeshBuilder) -> MeshBuilder,
) -> Mesh {
    let mut b = Mesh::builder().member("node1", "client", "demo", "client");
    for p in pods {
        b = b.member("node2", p, "demo", "web");
    }
    b = more(b.waypoint("node2", "wp", "demo", "waypoint"))
        .service("web", vip(), &[(80, TARGET_PORT)], endpoints)
        .l7_yaml(yaml)
        .configure(|cfg| {
            let ip = cfg
                .workloads
                .iter()
                .find(|w| w.uid == "wp")
                .expect("the waypoint is a workload")
                .addresses[0];
            use_waypoint(cfg, "web", ip);
        });
    b.start().expect("mesh starts")
}

/// [`mesh_with`] where every pod is an endpoint.
fn mesh(endpoints: &[&str], yaml: &str) -> Mesh {
    mesh_with(endpoints, endpoints, yaml, |b| b)
}

fn http_server(m: &Mesh, pod: &str) -> HttpServer {
    HttpServer::start(Some(&m.netns(pod)), m.addr(pod, TARGET_PORT), pod)
        .unwrap_or_else(|e| panic!("http server in {pod}: {e}"))
}

fn wp(m: &Mesh) -> &Waypoint {
    m.waypoint("wp")
}

/// A request from `ns` to `web` that must get an answer (any status).
fn request(m: &Mesh, ns: &NetNs, method: &str, path: &str, body: &[u8]) -> HttpReply {
    http1_request(Some(ns), web(), method, path, &[], body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {e}\n--- waypoint log ---\n{}",
            wp(m).log()
        )
    })
}

fn get(m: &Mesh, ns: &NetNs, path: &str) -> HttpReply {
    request(m, ns, "GET", path, b"")
}

/// Runs `f(i)` for i in 0..n on n threads released together, so the calls
/// overlap as a burst of concurrent clients would.
fn concurrently<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let start = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (start, f) = (&start, &f);
                s.spawn(move || {
                    start.wait();
                    f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect()
    })
}

/// `n` concurrent GETs of `path` from `ns`; each with its own elapsed time.
fn burst(ns: &NetNs, n: usize, path: &str) -> Vec<(Result<HttpReply, ClientError>, Duration)> {
    concurrently(n, |_| {
        let t = Instant::now();
        let r = http1_request(Some(ns), web(), "GET", path, &[], b"");
        (r, t.elapsed())
    })
}

fn statuses(replies: &[(Result<HttpReply, ClientError>, Duration)]) -> Vec<u16> {
    replies
        .iter()
        .map(|(r, _)| match r {
            Ok(r) => r.status,
            Err(e) => panic!("a client got no answer: {e}"),
        })
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Sum of a waypoint metric over samples with all of `labels`.
fn metric(m: &Mesh, name: &str, labels: &[(&str, &str)]) -> f64 {
    wp(m).metric(name, labels)
}

/// The waypoint's samples of `name`, for failure messages.
fn dump(m: &Mesh, name: &str) -> String {
    samples(&wp(m).metrics_text().unwrap_or_default(), name).join("\n")
}

/// Waits until `istio_requests_total` with `labels` reaches `want` (the
/// record of a request is written when its response body ends, which can be
/// a moment after the client has read it).
fn wait_requests(m: &Mesh, labels: &[(&str, &str)], want: f64) {
    let what = format!("istio_requests_total{labels:?} == {want}");
    wait_until(T, &what, || {
        metric(m, "istio_requests_total", labels) == want
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", dump(m, "istio_requests_total")));
}

// ------------------------------------------------------------------ retries

const RETRY_ALL: &str = "retry: {attempts: 2, retryOn: [5xx, reset, connect-failure], \
                         budget: {percent: 100, minRetriesPerSecond: 1000}}";

#[test]
fn retries_hide_an_endpoint_that_answers_503_or_resets() {
    if !trellis_e2e::require_root() {
        return;
    }
    // Round robin sends every other first attempt to the failing endpoint.
    let m = mesh(
        &["e1", "e2"],
        &one_rule(&format!(
            "policy: {{{RETRY_ALL}, loadBalancer: {{algorithm: RoundRobin}}}}"
        )),
    );
    let good = http_server(&m, "e1");
    let bad = http_server(&m, "e2");
    let ns = m.netns("client");
    for mode in [Mode::Status(503), Mode::Reset] {
        bad.set_mode(mode);
        bad.reset_count();
        let retries_before = metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]);
        for i in 0..50 {
            let r = get(&m, &ns, &format!("/r{i}"));
            assert_eq!(r.status, 200, "{mode:?}: request {i}: {}", r.body);
            assert_eq!(r.server().as_deref(), Some("e1"), "{mode:?}: {}", r.body);
        }
        let failed = bad.count() as f64;
        assert!(
            failed >= 10.0,
            "{mode:?}: e2 got only {failed} of 50 first attempts"
        );
        let retries =
            metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]) - retries_before;
        assert_eq!(
            retries, failed,
            "{mode:?}: every attempt that failed on e2 is retried once"
        );
    }
    assert!(good.count() >= 100);
}

#[test]
fn retries_on_connect_failure_hide_an_endpoint_with_no_server() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1", "e2"],
        &one_rule(
            "policy: {retry: {attempts: 2, retryOn: [connect-failure], \
             budget: {percent: 100, minRetriesPerSecond: 1000}}, \
             loadBalancer: {algorithm: RoundRobin}}",
        ),
    );
    let good = http_server(&m, "e1");
    // Nothing listens on e2:8080.
    let ns = m.netns("client");
    for i in 0..50 {
        let r = get(&m, &ns, &format!("/c{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.server().as_deref(), Some("e1"));
    }
    assert_eq!(good.count(), 50);
    let retries = metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]);
    assert!(
        retries >= 10.0,
        "round robin sent about half the first attempts to e2 and each was retried: {retries}\n{}",
        dump(&m, "trellis_waypoint_retries_total")
    );
}

#[test]
fn grpc_retries_on_unavailable_hide_an_unavailable_endpoint() {
    if !trellis_e2e::require_root() {
        return;
    }
    let yaml = "grpcRoutes:
- name: echo
  namespace: demo
  parentRefs: [{name: web}]
  rules:
  - name: say
    backendRefs: [{name: web, port: 80}]
    policy: {retry: {attempts: 2, retryOn: [grpc-unavailable], budget: {percent: 100, minRetriesPerSecond: 1000}}, loadBalancer: {algorithm: RoundRobin}}
";
    let m = mesh(&["g1", "g2"], yaml);
    let g1 = GrpcServer::start(Some(&m.netns("g1")), m.addr("g1", TARGET_PORT), "g1").unwrap();
    let g2 = GrpcServer::start(Some(&m.netns("g2")), m.addr("g2", TARGET_PORT), "g2").unwrap();
    g2.set_mode(GrpcMode::Unavailable);
    let ns = m.netns("client");
    for i in 0..30 {
        let reply = grpc_say(Some(&ns), web(), &format!("hello {i}"))
            .unwrap_or_else(|s| panic!("call {i}: {s:?}\n{}", wp(&m).log()));
        assert_eq!(reply.server, "g1");
        assert_eq!(reply.message, format!("hello {i}"));
    }
    assert_eq!(g1.count(), 30);
    assert!(g2.count() >= 5, "g2 got only {} first attempts", g2.count());
    let retries = metric(
        &m,
        "trellis_waypoint_retries_total",
        &[("rule", "demo/echo/say")],
    );
    assert_eq!(retries, g2.count() as f64);
}

#[test]
fn a_body_over_max_body_bytes_is_not_retried_and_a_small_one_is_replayed_whole() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1", "e2"],
        &one_rule(
            "policy: {retry: {attempts: 2, retryOn: [5xx], maxBodyBytes: 64, \
             budget: {percent: 100, minRetriesPerSecond: 1000}}, \
             loadBalancer: {algorithm: RoundRobin}}",
        ),
    );
    let _good = http_server(&m, "e1");
    let bad = http_server(&m, "e2");
    bad.set_mode(Mode::Status(503));
    let ns = m.netns("client");

    let big = "x".repeat(4096);
    let mut failed = 0;
    for i in 0..20 {
        let r = request(&m, &ns, "POST", &format!("/big{i}"), big.as_bytes());
        match r.status {
            // e2's own answer: the body could not be kept, so no retry.
            503 => {
                assert_eq!(r.server().as_deref(), Some("e2"), "{}", r.body);
                failed += 1;
            }
            200 => {
                assert_eq!(r.server().as_deref(), Some("e1"));
                assert_eq!(r.json()["body"].as_str().map(str::len), Some(big.len()));
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    assert!(failed >= 5, "e2's 503s reach the client: {failed} of 20");
    assert_eq!(
        metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]),
        0.0,
        "no request with a body over maxBodyBytes is retried"
    );

    let small = "0123456789abcdef";
    bad.reset_count();
    for i in 0..20 {
        let r = request(&m, &ns, "POST", &format!("/small{i}"), small.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["body"], small, "the retry sends the whole body");
    }
    assert!(bad.count() >= 5);
    assert_eq!(
        metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]),
        bad.count() as f64
    );
}

#[test]
fn the_retry_budget_caps_retries_to_an_all_failing_service() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1", "e2"],
        &one_rule(
            "policy: {retry: {attempts: 2, retryOn: [5xx], \
             budget: {percent: 0, minRetriesPerSecond: 1}}}",
        ),
    );
    let e1 = http_server(&m, "e1");
    let e2 = http_server(&m, "e2");
    e1.set_mode(Mode::Status(503));
    e2.set_mode(Mode::Status(503));
    let ns = m.netns("client");
    let started = Instant::now();
    let replies = burst(&ns, 20, "/");
    let elapsed = started.elapsed();
    let st = statuses(&replies);
    assert_eq!(count(&st, 503), 20, "{st:?}");
    let retries = metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]);
    // One retry per one-second window; the burst spans at most this many.
    let windows = elapsed.as_secs_f64().ceil() + 1.0;
    assert!(
        (1.0..=windows).contains(&retries),
        "{retries} retries in {elapsed:?}; the budget allows 1 per second\n{}",
        dump(&m, "trellis_waypoint_retries_total")
    );
    let attempts = (e1.count() + e2.count()) as f64;
    assert_eq!(attempts, 20.0 + retries, "every attempt reached a server");
}

// ------------------------------------------------------------------ timeouts

#[test]
fn a_request_timeout_answers_504_long_before_a_slow_backend() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(&["e1"], &one_rule("timeouts: {request: 200ms}"));
    let slow = http_server(&m, "e1");
    slow.set_mode(Mode::Delay(Duration::from_secs(2)));
    let ns = m.netns("client");
    let t = Instant::now();
    let r = get(&m, &ns, "/slow");
    let elapsed = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}"
    );
    assert_eq!(slow.count(), 1);
    wait_requests(
        &m,
        &[("response_code", "504"), ("response_flags", "UT")],
        1.0,
    );
}

#[test]
fn a_request_timeout_cuts_a_response_whose_body_stalls() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(&["e1"], &one_rule("timeouts: {request: 300ms}"));
    let server = http_server(&m, "e1");
    // The head comes at once, the body only after 3s.
    server.set_mode(Mode::SlowBody(Duration::from_secs(3)));
    let ns = m.netns("client");
    let t = Instant::now();
    let result = http1_request(Some(&ns), web(), "GET", "/stalls", &[], b"");
    let elapsed = t.elapsed();
    match result {
        Err(e) => assert!(e.is_aborted(), "{e}"),
        Ok(r) => panic!("got the whole {} answer after {elapsed:?}", r.status),
    }
    assert!(
        elapsed < Duration::from_millis(1500),
        "cut after {elapsed:?}"
    );
    wait_requests(
        &m,
        &[("response_code", "200"), ("response_flags", "UT")],
        1.0,
    );
}

#[test]
fn a_per_try_timeout_retries_a_stalled_endpoint_on_the_fast_one() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1", "e2"],
        &one_rule(
            "timeouts: {backendRequest: 100ms}
    policy: {retry: {attempts: 2, retryOn: [gateway-error], backoff: 10ms, \
             budget: {percent: 100, minRetriesPerSecond: 1000}}, \
             loadBalancer: {algorithm: RoundRobin}}",
        ),
    );
    let slow = http_server(&m, "e1");
    slow.set_mode(Mode::Delay(Duration::from_secs(2)));
    let fast = http_server(&m, "e2");
    let ns = m.netns("client");
    for i in 0..10 {
        let t = Instant::now();
        let r = get(&m, &ns, &format!("/t{i}"));
        let elapsed = t.elapsed();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.server().as_deref(), Some("e2"));
        assert!(
            elapsed < Duration::from_millis(1500),
            "request {i} took {elapsed:?}: the try on e1 was not cut at 100ms"
        );
    }
    assert_eq!(fast.count(), 10);
    assert!(slow.count() >= 3, "e1 was tried {} times", slow.count());
    assert_eq!(
        metric(&m, "trellis_waypoint_retries_total", &[("rule", MAIN)]),
        slow.count() as f64
    );
}

// ------------------------------------------------------------------ rate limits

#[test]
fn a_route_rate_limit_answers_429_with_retry_after_and_spares_the_other_route() {
    if !trellis_e2e::require_root() {
        return;
    }
    let yaml = "httpRoutes:
- name: web
  namespace: demo
  parentRefs: [{name: web}]
  rules:
  - name: limited
    matches: [{path: {type: PathPrefix, value: /limited}}]
    backendRefs: [{name: web, port: 80}]
    policy: {rateLimit: {requestsPerSecond: 5, burst: 5}}
  - name: free
    matches: [{path: {type: PathPrefix, value: /free}}]
    backendRefs: [{name: web, port: 80}]
";
    let m = mesh(&["e1"], yaml);
    let server = http_server(&m, "e1");
    let ns = m.netns("client");

    let replies = burst(&ns, 20, "/limited");
    let st = statuses(&replies);
    let limited = count(&st, 429);
    assert!(limited >= 10, "{st:?}");
    assert_eq!(limited + count(&st, 200), 20, "{st:?}");
    for (r, _) in &replies {
        let r = r.as_ref().expect("answered");
        if r.status == 429 {
            let after: u64 = r
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("429 without a numeric retry-after: {:?}", r.headers));
            assert!(after >= 1);
        }
    }
    assert_eq!(
        server.count(),
        20 - limited,
        "a 429 never reaches the server"
    );

    let free = statuses(&burst(&ns, 20, "/free"));
    assert_eq!(
        count(&free, 200),
        20,
        "the other route has no limit: {free:?}"
    );

    assert_eq!(
        metric(
            &m,
            "trellis_waypoint_rate_limited_total",
            &[("rule", "demo/web/limited"), ("limit", "route")]
        ),
        limited as f64
    );
    wait_requests(
        &m,
        &[("response_code", "429"), ("response_flags", "RL")],
        limited as f64,
    );
}

#[test]
fn a_per_caller_rate_limit_gives_each_caller_its_own_bucket() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh_with(
        &["e1"],
        &["e1"],
        &one_rule("policy: {perCallerRateLimit: {requestsPerSecond: 0.2, burst: 3}}"),
        |b| b.member("node1", "client2", "demo", "client2"),
    );
    let _server = http_server(&m, "e1");
    let first = statuses(&burst(&m.netns("client"), 8, "/"));
    // Burst 3, plus at most one more token refilled during the burst.
    let passed = count(&first, 200);
    assert!((3..=4).contains(&passed), "client: {first:?}");
    assert_eq!(count(&first, 429), 8 - passed);

    // The first caller's bucket is empty; the second caller's is full.
    let second = statuses(&burst(&m.netns("client2"), 8, "/"));
    let passed2 = count(&second, 200);
    assert!((3..=4).contains(&passed2), "client2: {second:?}");
    assert_eq!(
        metric(
            &m,
            "trellis_waypoint_rate_limited_total",
            &[("rule", MAIN), ("limit", "caller")]
        ),
        (16 - passed - passed2) as f64
    );
}

#[test]
fn a_caller_over_its_own_limit_does_not_use_up_the_route_limit_of_others() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh_with(
        &["e1"],
        &["e1"],
        &one_rule(
            "policy: {perCallerRateLimit: {requestsPerSecond: 0.2, burst: 2}, \
             rateLimit: {requestsPerSecond: 0.2, burst: 6}}",
        ),
        |b| b.member("node1", "client2", "demo", "client2"),
    );
    let _server = http_server(&m, "e1");
    // One caller floods: its own limit stops all but two.
    let flood = statuses(&burst(&m.netns("client"), 10, "/"));
    assert_eq!(count(&flood, 200), 2, "{flood:?}");
    // Its rejected requests took nothing from the route's bucket of six.
    let other = statuses(&burst(&m.netns("client2"), 2, "/"));
    assert_eq!(
        count(&other, 200),
        2,
        "the flood used up the route limit: {other:?}"
    );
    let limited = |limit: &str| {
        metric(
            &m,
            "trellis_waypoint_rate_limited_total",
            &[("rule", MAIN), ("limit", limit)],
        )
    };
    assert_eq!(limited("caller"), 8.0);
    assert_eq!(limited("route"), 0.0);
}

#[test]
fn a_total_rate_limit_caps_the_waypoint_across_routes() {
    if !trellis_e2e::require_root() {
        return;
    }
    let yaml = "waypoints:
- name: wp
  namespace: demo
  totalRateLimit: {requestsPerSecond: 0.2, burst: 4}
httpRoutes:
- name: web
  namespace: demo
  parentRefs: [{name: web}]
  rules:
  - name: a
    matches: [{path: {value: /a}}]
    backendRefs: [{name: web, port: 80}]
  - name: b
    matches: [{path: {value: /b}}]
    backendRefs: [{name: web, port: 80}]
";
    let m = mesh(&["e1"], yaml);
    let server = http_server(&m, "e1");
    let ns = m.netns("client");
    let a = statuses(&burst(&ns, 6, "/a"));
    let b = statuses(&burst(&ns, 6, "/b"));
    let passed = count(&a, 200) + count(&b, 200);
    // Burst 4, plus at most one refilled while the bursts ran.
    assert!((4..=5).contains(&passed), "/a {a:?} /b {b:?}");
    assert!(
        count(&b, 429) >= 4,
        "/a drained the bucket /b shares: /a {a:?} /b {b:?}"
    );
    assert_eq!(server.count(), passed);
    let total = |rule: &str| {
        metric(
            &m,
            "trellis_waypoint_rate_limited_total",
            &[("rule", rule), ("limit", "total")],
        )
    };
    assert_eq!(total("demo/web/a"), count(&a, 429) as f64);
    assert_eq!(total("demo/web/b"), count(&b, 429) as f64);
}

// ------------------------------------------------------------------ overload

#[test]
fn adaptive_concurrency_sheds_requests_above_its_limit_with_503_uo() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule("policy: {adaptiveConcurrency: {initialLimit: 2, minLimit: 1, maxLimit: 4}}"),
    );
    let server = http_server(&m, "e1");
    server.set_mode(Mode::Delay(Duration::from_secs(1)));
    let ns = m.netns("client");
    let st = statuses(&burst(&ns, 20, "/"));
    let (ok, shed) = (count(&st, 200), count(&st, 503));
    assert_eq!(ok + shed, 20, "{st:?}");
    assert!(ok >= 1, "{st:?}");
    assert!(shed >= 10, "{st:?}");
    assert!(
        server.peak_in_flight() <= 4,
        "the server had {} requests at once; maxLimit is 4",
        server.peak_in_flight()
    );
    assert_eq!(
        metric(
            &m,
            "trellis_waypoint_overloaded_total",
            &[("rule", MAIN), ("cause", "adaptive")]
        ),
        shed as f64
    );
    wait_requests(
        &m,
        &[("response_code", "503"), ("response_flags", "UO")],
        shed as f64,
    );
    let text = wp(&m).metrics_text().unwrap();
    let gauge = samples(&text, "trellis_waypoint_adaptive_concurrency_limit");
    let limit: f64 = gauge
        .iter()
        .find(|l| l.contains(MAIN))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no adaptive limit gauge for {MAIN}: {gauge:?}"));
    assert!((1.0..=4.0).contains(&limit), "{gauge:?}");
}

#[test]
fn a_circuit_breaker_without_a_queue_caps_requests_in_flight_and_rejects_at_once() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule("policy: {circuitBreaker: {maxRequests: 2, maxPending: 0}}"),
    );
    let server = http_server(&m, "e1");
    server.set_mode(Mode::Delay(Duration::from_secs(2)));
    let ns = m.netns("client");
    let replies = burst(&ns, 10, "/");
    let st = statuses(&replies);
    let (ok, shed) = (count(&st, 200), count(&st, 503));
    assert_eq!(ok + shed, 10, "{st:?}");
    assert!(ok >= 1 && shed >= 5, "{st:?}");
    assert!(
        server.peak_in_flight() <= 2,
        "the server had {} requests at once; maxRequests is 2",
        server.peak_in_flight()
    );
    for (r, elapsed) in &replies {
        if r.as_ref().is_ok_and(|r| r.status == 503) {
            assert!(
                *elapsed < Duration::from_millis(1500),
                "a rejected request waited {elapsed:?}, though maxPending is 0"
            );
        }
    }
    assert_eq!(
        metric(
            &m,
            "trellis_waypoint_overloaded_total",
            &[("rule", MAIN), ("cause", "circuit_breaker")]
        ),
        shed as f64
    );
    wait_requests(
        &m,
        &[("response_code", "503"), ("response_flags", "UO")],
        shed as f64,
    );
}

#[test]
fn a_circuit_breaker_queues_up_to_max_pending_and_still_caps_requests_in_flight() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule("policy: {circuitBreaker: {maxRequests: 2, maxPending: 4, pendingTimeout: 5s}}"),
    );
    let server = http_server(&m, "e1");
    server.set_mode(Mode::Delay(Duration::from_millis(300)));
    let ns = m.netns("client");
    let started = Instant::now();
    let st = statuses(&burst(&ns, 6, "/"));
    let elapsed = started.elapsed();
    assert_eq!(count(&st, 200), 6, "{st:?}");
    assert!(server.peak_in_flight() <= 2, "{}", server.peak_in_flight());
    // Six requests two at a time: three rounds of 300ms.
    assert!(elapsed >= Duration::from_millis(850), "{elapsed:?}");
}

#[test]
fn a_request_timeout_covers_the_wait_for_a_circuit_breaker_slot() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule(
            "timeouts: {request: 400ms}
    policy: {circuitBreaker: {maxRequests: 1, maxPending: 4, pendingTimeout: 10s}}",
        ),
    );
    let server = http_server(&m, "e1");
    server.set_mode(Mode::Delay(Duration::from_secs(3)));
    let ns = m.netns("client");
    // One request holds the only slot; the others queue behind it.
    let replies = burst(&ns, 3, "/");
    assert_eq!(count(&statuses(&replies), 504), 3);
    for (_, elapsed) in &replies {
        assert!(
            *elapsed < Duration::from_millis(750),
            "a queued request answered after {elapsed:?}, beyond its 400ms timeout"
        );
    }
    assert_eq!(server.peak_in_flight(), 1);
}

// ------------------------------------------------------------------ outlier detection

#[test]
fn outlier_detection_ejects_a_failing_endpoint_for_the_ejection_time_only() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1", "e2"],
        &one_rule(
            "policy: {outlierDetection: {consecutive5xx: 3, baseEjectionTime: 3s, \
             maxEjectionPercent: 50}, loadBalancer: {algorithm: RoundRobin}}",
        ),
    );
    let good = http_server(&m, "e1");
    let bad = http_server(&m, "e2");
    bad.set_mode(Mode::Status(503));
    let ns = m.netns("client");
    let ejections = || {
        metric(
            &m,
            "trellis_waypoint_outlier_ejections_total",
            &[("rule", MAIN)],
        )
    };

    // Round robin: e2 gets every other request until its third 503.
    let mut seen_503 = 0;
    for i in 0..40 {
        if get(&m, &ns, &format!("/o{i}")).status == 503 {
            seen_503 += 1;
        }
        if ejections() > 0.0 {
            break;
        }
    }
    let ejected_at = Instant::now();
    assert_eq!(ejections(), 1.0, "{}", dump(&m, "trellis_waypoint_outlier"));
    assert_eq!(seen_503, 3, "ejected on the third consecutive 5xx");
    assert_eq!(bad.count(), 3);

    // Ejected: every request goes to e1.
    let before = (good.count(), bad.count());
    for i in 0..20 {
        let r = get(&m, &ns, &format!("/ejected{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let burst_took = ejected_at.elapsed();
    assert!(
        burst_took < Duration::from_millis(2500),
        "the burst took {burst_took:?}, too close to the 3s ejection to tell"
    );
    assert_eq!(bad.count(), before.1, "the ejected endpoint got requests");
    assert_eq!(good.count(), before.0 + 20);

    // After the ejection time, e2 is picked again.
    wait_until(Duration::from_secs(10), "e2 back in service", || {
        get(&m, &ns, "/later");
        bad.count() > before.1
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", wp(&m).log()));
    let back_after = ejected_at.elapsed();
    assert!(
        back_after >= Duration::from_millis(2900),
        "e2 was back after {back_after:?}, before the 3s ejection ended"
    );
}

// ------------------------------------------------------------------ balancing

/// How many of `n` sequential GETs each server answered.
fn spread(m: &Mesh, ns: &NetNs, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = get(m, ns, &format!("/s{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
        *by.entry(r.server().unwrap_or_default()).or_insert(0) += 1;
    }
    by
}

#[test]
fn peak_ewma_balancing_prefers_the_faster_endpoint() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(&["e1", "e2"], &one_rule("policy: {}"));
    let _fast = http_server(&m, "e1");
    let slow = http_server(&m, "e2");
    slow.set_mode(Mode::Delay(Duration::from_millis(50)));
    let by = spread(&m, &m.netns("client"), 100);
    let fast = by.get("e1").copied().unwrap_or(0);
    assert!(fast > 70, "the fast endpoint got {fast} of 100: {by:?}");
}

#[test]
fn round_robin_balancing_spreads_requests_evenly() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1", "e2"],
        &one_rule("policy: {loadBalancer: {algorithm: RoundRobin}}"),
    );
    let _s1 = http_server(&m, "e1");
    let s2 = http_server(&m, "e2");
    // Even with one much slower: round robin does not look at latency.
    s2.set_mode(Mode::Delay(Duration::from_millis(20)));
    let by = spread(&m, &m.netns("client"), 100);
    for e in ["e1", "e2"] {
        let n = by.get(e).copied().unwrap_or(0);
        assert!((40..=60).contains(&n), "{e} got {n} of 100: {by:?}");
    }
}

#[test]
fn slow_start_gives_an_endpoint_added_by_reload_a_small_share_that_ramps_up() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = mesh_with(
        &["e1", "e2", "e3"],
        &["e1", "e2"],
        &one_rule("policy: {loadBalancer: {algorithm: RoundRobin, slowStart: 4s}}"),
        |b| b,
    );
    let servers: Vec<HttpServer> = ["e1", "e2", "e3"]
        .iter()
        .map(|p| http_server(&m, p))
        .collect();
    let ns = m.netns("client");
    // The balancer's first picks make e1 and e2 the warm, established endpoints.
    spread(&m, &ns, 10);
    m.reload(|cfg| {
        let web = cfg.services.iter_mut().find(|s| s.name == "web").unwrap();
        web.endpoints.push("e3".into());
    })
    .unwrap();
    let added = Instant::now();
    for s in &servers {
        s.reset_count();
    }
    spread(&m, &ns, 60);
    let early = added.elapsed();
    let [c1, c2, c3] = [0, 1, 2].map(|i| servers[i].count());
    assert!(
        early < Duration::from_secs(3),
        "60 requests took {early:?}: too slow to see the ramp"
    );
    assert!(
        c3 * 2 < c1 && c3 * 2 < c2,
        "in its first {early:?} the new endpoint got {c3}, the old ones {c1} and {c2}"
    );

    // As the window passes, e3 ramps up to a full third (20 of 60).
    wait_until(Duration::from_secs(15), "e3 to get a full share", || {
        for s in &servers {
            s.reset_count();
        }
        spread(&m, &ns, 60);
        servers[2].count() >= 17
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: last round {:?}",
            servers.iter().map(HttpServer::count).collect::<Vec<_>>()
        )
    });
}

// ------------------------------------------------------------------ fault injection

#[test]
fn an_abort_fault_at_100_percent_answers_every_request_without_forwarding() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule("policy: {fault: {abort: {httpStatus: 503, percent: 100}}}"),
    );
    let server = http_server(&m, "e1");
    let ns = m.netns("client");
    for i in 0..20 {
        let r = get(&m, &ns, &format!("/f{i}"));
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("fault filter abort"), "{}", r.body);
    }
    assert_eq!(server.count(), 0);
    wait_requests(
        &m,
        &[("response_code", "503"), ("response_flags", "FI")],
        20.0,
    );
}

#[test]
fn a_delay_fault_holds_every_request_for_the_fixed_delay() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule("policy: {fault: {delay: {fixedDelay: 300ms, percent: 100}}}"),
    );
    let server = http_server(&m, "e1");
    let ns = m.netns("client");
    for i in 0..5 {
        let t = Instant::now();
        let r = get(&m, &ns, &format!("/d{i}"));
        let elapsed = t.elapsed();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    }
    assert_eq!(server.count(), 5);
    wait_requests(
        &m,
        &[("response_code", "200"), ("response_flags", "DI")],
        5.0,
    );
}

#[test]
fn an_abort_fault_at_50_percent_aborts_about_half_the_requests() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(
        &["e1"],
        &one_rule("policy: {fault: {abort: {httpStatus: 418, percent: 50}}}"),
    );
    let server = http_server(&m, "e1");
    let ns = m.netns("client");
    let n = 200;
    let mut aborted = 0;
    for i in 0..n {
        match get(&m, &ns, &format!("/h{i}")).status {
            418 => aborted += 1,
            200 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    // Binomial(200, 0.5): mean 100, sd 7.1; +-5 sd fails about once in 3.5 million runs.
    assert!((65..=135).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(server.count(), n - aborted);
}

// ------------------------------------------------------------------ config

#[test]
fn a_broken_waypoint_config_is_rejected_and_the_last_good_routing_stays() {
    if !trellis_e2e::require_root() {
        return;
    }
    let yaml = "httpRoutes:
- name: web
  namespace: demo
  parentRefs: [{name: web}]
  rules:
  - name: teapot
    matches: [{path: {value: /teapot}}]
    backendRefs: [{name: web, port: 80}]
    policy: {fault: {abort: {httpStatus: 418, percent: 100}}}
  - name: main
    backendRefs: [{name: web, port: 80}]
";
    let mut m = mesh(&["e1"], yaml);
    let _server = http_server(&m, "e1");
    let ns = m.netns("client");
    let routed = |m: &Mesh| {
        assert_eq!(get(m, &ns, "/teapot").status, 418);
        assert_eq!(get(m, &ns, "/other").status, 200);
    };
    routed(&m);
    let version = wp(&m).config_version();
    assert!(version > 0);

    let good = render(m.config()).unwrap();
    let mut unknown: serde_yaml_ng::Value = serde_yaml_ng::from_str(&good).unwrap();
    unknown["httpRoutes"][0]["rules"][0]["policy"]["retryEverything"] = true.into();
    let broken = [
        ("invalid yaml", "httpRoutes: [ {name: web\n".to_string()),
        ("unknown field", serde_yaml_ng::to_string(&unknown).unwrap()),
    ];
    for (i, (what, text)) in broken.iter().enumerate() {
        m.files.write_config("waypoint.yaml", text).unwrap();
        let failures = (i + 1) as f64;
        wait_until(T, &format!("the waypoint to reject the {what}"), || {
            metric(&m, "trellis_config_reloads_total", &[("result", "failure")]) >= failures
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", wp(&m).log()));
        assert_eq!(
            wp(&m).config_version(),
            version,
            "{what} changed the version"
        );
        routed(&m);
    }

    // A valid change applies: the teapot rule now forwards.
    m.reload(|cfg| cfg.http_routes[0].rules[0].policy = None)
        .unwrap();
    assert!(wp(&m).config_version() > version);
    let r = get(&m, &ns, "/teapot");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.server().as_deref(), Some("e1"));
}

// ------------------------------------------------------------------ drain

#[test]
fn sigterm_lets_a_request_in_flight_finish_while_readiness_fails_then_exits() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = mesh_with(&["e1"], &["e1"], &one_rule("policy: {}"), |b| {
        b.waypoint_args(&["--drain-deadline", "10s"])
    });
    let server = http_server(&m, "e1");
    server.set_mode(Mode::Delay(Duration::from_secs(2)));
    let ns = m.netns("client");
    assert!(wp(&m).ready().unwrap());
    let (reply, elapsed) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            let t = Instant::now();
            let r = http1_request(Some(&ns), web(), "GET", "/in-flight", &[], b"");
            (r, t.elapsed())
        });
        wait_until(T, "the request to reach the server", || {
            server.in_flight() == 1
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", wp(&m).log()));
        wp(&m).sigterm();
        let readiness = wait_for(T, "readiness to fail while draining", || {
            match wp(&m).ready() {
                Ok(false) => Some(true),
                Ok(true) => None,
                // Exited already: the request cannot have finished yet.
                Err(_) => Some(false),
            }
        });
        assert_eq!(
            readiness.ok(),
            Some(true),
            "readiness did not answer 503 while a request was in flight\n{}",
            wp(&m).log()
        );
        assert_eq!(server.in_flight(), 1, "the request is still being served");
        call.join().expect("client thread")
    });
    let reply =
        reply.unwrap_or_else(|e| panic!("the in-flight request failed: {e}\n{}", wp(&m).log()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(elapsed >= Duration::from_secs(2));
    let status = m
        .waypoint_mut("wp")
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|| panic!("the waypoint did not exit after draining\n{}", wp(&m).log()));
    assert!(status.success(), "{status}");
}

// ------------------------------------------------------------------ upstream connections

#[test]
fn pooled_upstream_connections_keep_each_callers_source_address() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh_with(&["e1"], &["e1"], &one_rule("policy: {}"), |b| {
        b.member("node1", "client2", "demo", "client2")
    });
    let _server = http_server(&m, "e1");
    let callers = [
        ("client", m.netns("client")),
        ("client2", m.netns("client2")),
    ];
    // Alternate callers, so a connection pooled for one is free for the other.
    for i in 0..6 {
        let (pod, ns) = &callers[i % 2];
        let r = get(&m, ns, "/peer");
        assert_eq!(r.status, 200, "{}", r.body);
        let peer: SocketAddr = r.json()["peer"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            peer.ip(),
            m.ip(pod),
            "request {i} from {pod} reached the server from another caller's address"
        );
    }
}

#[test]
fn sequential_http1_requests_reuse_one_upstream_connection() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh_with(&["e1"], &["e1"], &one_rule("policy: {}"), |b| b);
    let server = http_server(&m, "e1");
    let ns = m.netns("client");
    // Each request is its own downstream connection; the waypoint's
    // upstream HTTP/1.1 connection must go back to its pool when a response
    // ends, so every request after the first arrives on the same one.
    for i in 0..5 {
        let r = get(&m, &ns, "/");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert_eq!(server.count(), 5);
    assert_eq!(
        server.connections(),
        1,
        "5 sequential requests from one caller reached the server on {} connections: the waypoint did not reuse its upstream connection",
        server.connections()
    );
}
