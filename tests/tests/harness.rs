//! The netns harness itself: connectivity through the topology, isolation
//! from the outside, and cleanup of every namespace it makes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use trellis_e2e::topology::{owner_pid, NETNS_DIR};
use trellis_e2e::{
    ask_identity, assert_eventually, cleanup_stale_namespaces, echo_roundtrip, require_root,
    wait_until, TestServer, Topology, TopologyError,
};
use trellis_netns::NetNs;

const T: Duration = Duration::from_secs(5);

fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Interface names in the calling thread's network namespace
/// (/proc/thread-self/net follows the thread, not the process).
fn ifaces() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    let mut v: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect();
    v.sort();
    v
}

fn three_pods() -> Topology {
    Topology::builder()
        .node("node1")
        .pod("node1", "a")
        .pod("node1", "b")
        .pod("node2", "c")
        .build()
        .expect("building the topology")
}

#[test]
fn pods_reach_each_other_on_the_same_node_and_across_nodes() {
    if !require_root() {
        return;
    }
    let topo = three_pods();
    let (a, b, c) = (
        topo.pod("a").unwrap(),
        topo.pod("b").unwrap(),
        topo.pod("c").unwrap(),
    );
    assert_eq!(a.ip, IpAddr::from([198, 18, 1, 2]));
    assert_eq!(b.ip, IpAddr::from([198, 18, 1, 3]));
    assert_eq!(c.ip, IpAddr::from([198, 18, 2, 2]));
    assert_eq!(
        topo.node("node2").unwrap().uplink_ip,
        IpAddr::from([198, 19, 255, 2])
    );

    let b_echo = TestServer::echo(Some(&b.netns().unwrap()), SocketAddr::new(b.ip, 7)).unwrap();
    let c_echo = TestServer::echo(Some(&c.netns().unwrap()), SocketAddr::new(c.ip, 7)).unwrap();
    let a_ns = a.netns().unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    for server in [&b_echo, &c_echo] {
        let back = echo_roundtrip(Some(&a_ns), server.addr(), &payload, T).unwrap();
        assert!(
            back == payload,
            "echo via {} returned {} bytes",
            server.addr(),
            back.len()
        );
        assert_eq!(server.peers().len(), 1);
        // Plain routing, no NAT: the server sees the pod's own address.
        assert_eq!(server.peers()[0].ip(), a.ip);
    }

    // And back the other way, across nodes, with the identity server.
    let a_id = TestServer::identity(Some(&a_ns), SocketAddr::new(a.ip, 80)).unwrap();
    let seen = ask_identity(Some(&c.netns().unwrap()), a_id.addr(), T).unwrap();
    assert_eq!(seen.peer.ip(), c.ip);
    assert_eq!(seen.local, a_id.addr());
}

#[test]
fn a_host_reaches_pods_and_the_control_node_through_its_node_alone() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .pod("node1", "a")
        .pod("node2", "c")
        .node("cp")
        .host("node1", "vm")
        .build()
        .expect("building the topology");
    let vm = topo.host("vm").unwrap();
    assert_eq!(vm.ip, IpAddr::from([198, 19, 1, 2]));
    assert_eq!(vm.gateway, IpAddr::from([198, 19, 1, 1]));
    assert_eq!(topo.ip_of("vm").unwrap(), vm.ip);
    let routes = topo.exec("vm", &["ip", "-4", "route", "show"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert!(
        routes.contains("198.18.0.0/15 via 198.19.1.1 dev eth0"),
        "{routes}"
    );
    // On no pod bridge: its only link is its own, to node1.
    let links = topo.exec("vm", &["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 2, "lo and eth0 only:\n{links}");

    let vm_ns = vm.netns().unwrap();
    let vm_id = topo
        .serve(trellis_e2e::ServerKind::Identity, "vm", 80)
        .unwrap();
    // Both ways with a pod on its node and with one across nodes, and to
    // the control node's uplink (where a controller listens), no NAT.
    for pod in ["a", "c"] {
        let p = topo.pod(pod).unwrap();
        let seen = ask_identity(Some(&p.netns().unwrap()), vm_id.addr(), T).unwrap();
        assert_eq!(seen.peer.ip(), p.ip, "{pod} -> vm");
        let echo = topo.serve(trellis_e2e::ServerKind::Echo, pod, 7).unwrap();
        let back = echo_roundtrip(Some(&vm_ns), echo.addr(), b"from the vm", T).unwrap();
        assert_eq!(back, b"from the vm");
        assert_eq!(echo.peers()[0].ip(), vm.ip, "vm -> {pod}");
    }
    let cp = topo.node("cp").unwrap();
    let cp_echo =
        TestServer::echo(Some(&cp.netns().unwrap()), SocketAddr::new(cp.uplink_ip, 7)).unwrap();
    let back = echo_roundtrip(Some(&vm_ns), cp_echo.addr(), b"to cp", T).unwrap();
    assert_eq!(back, b"to cp");
    let outside = SocketAddr::from(([192, 0, 2, 1], 80));
    let err = trellis_e2e::connect(Some(&vm_ns), outside, T).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
}

#[test]
fn pods_have_no_route_out_of_the_topology() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder().pod("node1", "a").build().unwrap();
    let a = topo.pod("a").unwrap();
    let routes = topo.exec("a", &["ip", "-4", "route", "show"]).unwrap();
    assert!(
        !routes.contains("default"),
        "pod has a default route:\n{routes}"
    );
    assert!(
        routes.contains("198.18.0.0/15 via 198.18.1.1 dev eth0"),
        "{routes}"
    );
    for node in topo.nodes() {
        let routes = topo
            .exec(&node.name, &["ip", "-4", "route", "show"])
            .unwrap();
        assert!(
            !routes.contains("default"),
            "node has a default route:\n{routes}"
        );
    }

    // TEST-NET-1 (RFC 5737): no route, so the kernel refuses before sending anything.
    let outside = SocketAddr::from(([192, 0, 2, 1], 80));
    let started = Instant::now();
    let err = trellis_e2e::connect(Some(&a.netns().unwrap()), outside, T).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn drop_removes_every_namespace_and_kills_spawned_processes() {
    if !require_root() {
        return;
    }
    let topo = three_pods();
    let names = topo.netns_names();
    assert_eq!(
        names.len(),
        1 + 2 + 3,
        "fabric, two nodes, three pods: {names:?}"
    );
    for n in &names {
        assert!(n.starts_with(topo.prefix()) && netns_exists(n), "{n}");
        assert_eq!(owner_pid(n), Some(std::process::id()));
    }
    let mut sleeper = topo.spawn("c", &["sleep", "60"]).unwrap();
    let pid = sleeper.pid();
    assert!(
        sleeper.try_status().is_none(),
        "sleep exited early: {}",
        sleeper.log()
    );
    drop(topo);
    for n in &names {
        assert!(!netns_exists(n), "{n} still exists after drop");
    }
    // Killed by the topology even though its guard is still alive.
    let status = sleeper.wait_exit(T).unwrap();
    assert!(!status.success(), "{status}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !require_root() {
        return;
    }
    let mut names = vec![];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::builder().pod("node1", "a").build().unwrap();
        names = topo.netns_names();
        panic!("test failure while the topology is alive");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 3);
    for n in &names {
        assert!(!netns_exists(n), "{n} survived the panic");
    }
}

#[test]
fn namespaces_of_dead_test_processes_are_cleaned_up() {
    if !require_root() {
        return;
    }
    // A PID that surely belongs to nobody now: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("trl{dead}-0-p-left");
    trellis_e2e::process::run("ip", &["netns", "add", &stale], T).unwrap();
    let live = Topology::builder().pod("node1", "a").build().unwrap();
    // build() cleans up too; an explicit call must find nothing more to do, and
    // never touch namespaces of a live process.
    let removed_later = cleanup_stale_namespaces();
    assert!(
        !netns_exists(&stale),
        "stale namespace {stale} was not removed"
    );
    assert!(!removed_later.iter().any(|n| n.starts_with(live.prefix())));
    for n in live.netns_names() {
        assert!(netns_exists(&n), "{n} of a live topology was removed");
    }
}

#[test]
fn mtu_and_pod_addresses_are_tunable() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder()
        .mtu(9000)
        .pod_with_ip("node1", "a", Ipv4Addr::new(198, 18, 1, 50))
        .pod("node1", "b")
        .build()
        .unwrap();
    assert_eq!(topo.pod("a").unwrap().ip, IpAddr::from([198, 18, 1, 50]));
    assert_eq!(topo.pod("b").unwrap().ip, IpAddr::from([198, 18, 1, 2]));
    let link = topo.exec("a", &["ip", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("mtu 9000"), "{link}");
    let bridge = topo.exec("node1", &["ip", "link", "show", "br0"]).unwrap();
    assert!(bridge.contains("mtu 9000"), "{bridge}");
    let b = topo.pod("b").unwrap();
    let server = TestServer::echo(Some(&b.netns().unwrap()), SocketAddr::new(b.ip, 7)).unwrap();
    let big = vec![7u8; 8000];
    let back = echo_roundtrip(
        Some(&topo.pod("a").unwrap().netns().unwrap()),
        server.addr(),
        &big,
        T,
    )
    .unwrap();
    assert_eq!(back, big);
}

#[test]
fn bad_topologies_are_refused_before_anything_is_created() {
    // No root needed: validation happens first.
    let e = Topology::builder()
        .pod("node1", "bad name")
        .build()
        .err()
        .unwrap();
    assert!(matches!(e, TopologyError::BadName(_)), "{e}");
    let e = Topology::builder()
        .pod("node1", "x")
        .pod("node2", "x")
        .build()
        .err()
        .unwrap();
    assert!(matches!(e, TopologyError::Duplicate(_)), "{e}");
    let e = Topology::builder()
        .pod("fabric", "a")
        .build()
        .err()
        .unwrap();
    assert!(matches!(e, TopologyError::Reserved(_)), "{e}");
    let e = Topology::builder()
        .pod_with_ip("node1", "a", Ipv4Addr::new(198, 18, 2, 5))
        .build()
        .err()
        .unwrap();
    assert!(e.to_string().contains("198.18.1.2-254"), "{e}");
    let e = Topology::builder()
        .pod("node1", "x")
        .host("node1", "x")
        .build()
        .err()
        .unwrap();
    assert!(matches!(e, TopologyError::Duplicate(_)), "{e}");
    let mut b = Topology::builder();
    for i in 0..101 {
        b = b.host("node1", &format!("vm{i}"));
    }
    let e = b.build().err().unwrap();
    assert!(matches!(e, TopologyError::TooManyHosts(100)), "{e}");
}

#[test]
fn run_in_switches_only_the_calling_thread_and_restores_after_a_panic() {
    if !require_root() {
        return;
    }
    let topo = Topology::builder().pod("node1", "a").build().unwrap();
    let a = topo.pod("a").unwrap();
    let ns = a.netns().unwrap();
    let home = ifaces();
    let inside = ns.run_in(ifaces).unwrap();
    assert!(
        inside.contains(&"eth0".to_string()) && inside != home,
        "{inside:?}"
    );
    // A thread that already exists stays where it is while this one is inside
    // (a thread spawned inside would start in the pod's netns, like any clone).
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let (tell, told) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        while asked.recv().is_ok() {
            let _ = tell.send(ifaces());
        }
    });
    let seen_by_other = ns
        .run_in(|| {
            ask.send(()).unwrap();
            told.recv_timeout(T).unwrap()
        })
        .unwrap();
    assert_eq!(seen_by_other, home);
    drop(ask);
    other.join().unwrap();
    // Nested: back to the pod's netns, not the thread's home, after the inner call.
    let node = topo.node("node1").unwrap().netns().unwrap();
    let (inner, after_inner) = ns
        .run_in(|| (node.run_in(ifaces).unwrap(), ifaces()))
        .unwrap();
    assert!(inner.contains(&"up0".to_string()), "{inner:?}");
    assert_eq!(after_inner, inside);
    assert_eq!(ifaces(), home);

    let caught = std::panic::catch_unwind(|| ns.run_in(|| panic!("inside the pod netns")));
    assert!(caught.is_err());
    assert_eq!(
        ifaces(),
        home,
        "thread was left in the pod's namespace after a panic"
    );
    assert_eq!(NetNs::open(a.netns_path()).unwrap().path(), a.netns_path());
}

#[test]
fn waits_report_what_they_waited_for() {
    let start = Instant::now();
    let mut n = 0;
    wait_until(T, "counter to reach 3", || {
        n += 1;
        n >= 3
    })
    .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    let e = wait_until(
        Duration::from_millis(30),
        "a condition that never holds",
        || false,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("a condition that never holds"),
        "{e}"
    );
    assert!(e.waited >= Duration::from_millis(30));
    let caught =
        std::panic::catch_unwind(|| assert_eventually!(Duration::from_millis(10), 1 + 1 == 3));
    let msg = caught.unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("1 + 1 == 3"), "{msg}");
}

/// Set in the child process of the signal test.
const SIGNAL_CHILD: &str = "TRELLIS_SIGNAL_TEST_CHILD";

#[test]
fn a_signal_removes_the_namespaces_and_what_runs_in_them() {
    if std::env::var_os(SIGNAL_CHILD).is_some() {
        // The child: a topology with a process in it, the clean-up
        // installed, then wait to be signalled.
        let topo = three_pods();
        let sleeper = topo.spawn("c", &["sleep", "60"]).unwrap();
        trellis_e2e::cleanup::cleanup_on_signal().unwrap();
        // Straight to fd 1, flushed: the test harness captures print!.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "READY {} {}",
            sleeper.pid(),
            topo.netns_names().join(" ")
        )
        .unwrap();
        out.flush().unwrap();
        drop(out);
        std::thread::sleep(Duration::from_secs(60));
        panic!("no signal came within 60 s");
    }
    if !require_root() {
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_signal_removes_the_namespaces_and_what_runs_in_them",
            "--exact",
            "--test-threads=1",
        ])
        .env(SIGNAL_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // If this test fails before signalling, the child ends itself after
    // 60 s, and its topology's Drop removes what it made.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        // libtest's "test <name> ... " comes first on the same line.
        .find_map(|l| l.find("READY ").map(|at| l[at..].to_string()))
        .expect("the child never said READY");
    let mut words = ready.split_whitespace().skip(1);
    let sleeper: i32 = words.next().unwrap().parse().unwrap();
    let names: Vec<String> = words.map(String::from).collect();
    assert_eq!(names.len(), 6, "{ready}");
    assert!(names.iter().all(|n| netns_exists(n)), "{ready}");
    assert!(Path::new(&format!("/proc/{sleeper}")).exists());

    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    for n in &names {
        assert!(!netns_exists(n), "{n} is left after the signal");
    }
    // The sleeper was SIGKILLed; init reaps it once its parent is gone.
    assert_eventually!(
        T,
        std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z")),
        "the process in the pod ({sleeper}) is gone"
    );
}
