use http::{HeaderMap, StatusCode};

use super::*;
use crate::lite::head;
use crate::request::ConnectRequest;

const CONNECT: &[(&[u8], &[u8])] = &[(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:8080")];
const OK: &[(&[u8], &[u8])] = &[(b":status", b"200")];

/// Small windows, so that tests reach the thresholds with few bytes.
fn limits() -> Limits {
    Limits {
        stream_window: 1000,
        connection_window: 65_535,
        max_frame_size: frame::MIN_MAX_FRAME,
        max_concurrent_streams: 10,
        max_header_list_size: 4096,
    }
}

/// One end of the connection, with what it was sent and what it reported.
struct Peer {
    conn: Conn,
    input: BytesMut,
    events: Vec<Event>,
}

impl Peer {
    fn new(role: Role, limits: Limits) -> Peer {
        Peer {
            conn: Conn::new(role, limits),
            input: BytesMut::new(),
            events: Vec::new(),
        }
    }

    /// Appends `bytes` to the input and polls until no event is left.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.input.extend_from_slice(bytes);
        while let Some(e) = self.conn.poll_event(&mut self.input)? {
            self.events.push(e);
        }
        Ok(())
    }

    /// What it queued, taken as the driver writes it.
    fn take_out(&mut self) -> Vec<u8> {
        let out = self.conn.out().split().to_vec();
        self.conn.output_drained();
        out
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// A client and a server wired to each other.
struct Pair {
    client: Peer,
    server: Peer,
    /// Every byte moved each way, for looking at the frames.
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

impl Pair {
    fn new(client: Limits, server: Limits) -> Pair {
        Pair {
            client: Peer::new(Role::Client, client),
            server: Peer::new(Role::Server, server),
            to_server: Vec::new(),
            to_client: Vec::new(),
        }
    }

    /// Handshaken, with the handshake's events and bytes forgotten.
    fn connected(client: Limits, server: Limits) -> Pair {
        let mut p = Pair::new(client, server);
        p.pump();
        p.forget();
        p
    }

    fn forget(&mut self) {
        self.client.events.clear();
        self.server.events.clear();
        self.to_server.clear();
        self.to_client.clear();
    }

    /// Moves bytes both ways until neither side has more to say.
    fn pump(&mut self) {
        loop {
            let c2s = self.client.take_out();
            let s2c = self.server.take_out();
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
            self.to_server.extend_from_slice(&c2s);
            self.to_client.extend_from_slice(&s2c);
            self.server.feed(&c2s).expect("server: no connection error");
            self.client.feed(&s2c).expect("client: no connection error");
        }
    }

    /// The client opens a stream and the server sees its request.
    fn open(&mut self) -> u32 {
        let id = self.client.conn.open(CONNECT).expect("open");
        self.pump();
        let events = self.server.take_events();
        assert!(
            matches!(&events[..], [Event::Headers { stream, end_stream: false, .. }] if *stream == id),
            "{events:?}"
        );
        id
    }

    /// A stream opened and answered 200, both sides' events consumed.
    fn tunnel(&mut self) -> u32 {
        let id = self.open();
        assert!(self.server.conn.respond(id, OK, false));
        self.pump();
        assert_eq!(
            self.client.take_events(),
            vec![Event::Headers {
                stream: id,
                fields: fields(&[(":status", "200")]),
                end_stream: false,
            }]
        );
        self.forget();
        id
    }
}

/// A frame as sent, without the byte ranges of [`Frame`].
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Settings(Settings),
    SettingsAck,
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
    },
    Data {
        stream: u32,
        len: usize,
        end_stream: bool,
    },
    Reset(u32, Reason),
    Ping(bool, [u8; 8]),
    GoAway(u32, Reason),
    WindowUpdate(u32, u32),
}

/// The frames in `b`, after the preface if `b` starts with it.
fn sent(b: &[u8]) -> Vec<Sent> {
    let mut b = b.strip_prefix(&frame::PREFACE[..]).unwrap_or(b);
    let mut out = Vec::new();
    while let Some(h) = b.first_chunk::<HEAD_LEN>() {
        let head = Head::parse(h);
        let end = HEAD_LEN + head.len as usize;
        let f = frame::parse(&head, &b[HEAD_LEN..end], frame::MAX_MAX_FRAME).expect("valid frame");
        out.push(match f {
            Frame::Data {
                stream,
                data,
                end_stream,
                ..
            } => Sent::Data {
                stream,
                len: data.len(),
                end_stream,
            },
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                ..
            } => Sent::Headers {
                stream,
                end_stream,
                end_headers,
            },
            Frame::Continuation {
                stream,
                end_headers,
            } => Sent::Continuation {
                stream,
                end_headers,
            },
            Frame::Reset { stream, reason } => Sent::Reset(stream, reason),
            Frame::Settings(s) => Sent::Settings(s),
            Frame::SettingsAck => Sent::SettingsAck,
            Frame::Ping { ack, payload } => Sent::Ping(ack, payload),
            Frame::GoAway {
                last_stream,
                reason,
                ..
            } => Sent::GoAway(last_stream, reason),
            Frame::WindowUpdate { stream, increment } => Sent::WindowUpdate(stream, increment),
            Frame::Ignored => panic!("we never send ignored frames"),
        });
        b = &b[end..];
    }
    assert!(b.is_empty(), "a partial frame");
    out
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::put_frame(&mut out, kind, flags, stream, payload);
    out.to_vec()
}

/// A header block of literals without indexing (no HPACK state), each
/// name and value shorter than 127 bytes.
fn block(list: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in list {
        b.push(0);
        for s in [n, v] {
            assert!(s.len() < 127);
            b.push(s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

fn request_block(stream_note: &str) -> Vec<u8> {
    block(&[
        (":method", "CONNECT"),
        (":authority", "10.0.0.1:8080"),
        ("x-note", stream_note),
    ])
}

fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    raw(frame::HEADERS, flags, stream, block)
}

fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    raw(frame::DATA, flags, stream, data)
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    raw(frame::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

fn settings_frame(s: Settings) -> Vec<u8> {
    let mut out = BytesMut::new();
    s.put(&mut out);
    out.to_vec()
}

fn goaway_frame(last: u32, reason: Reason) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::put_goaway(&mut out, last, reason, b"");
    out.to_vec()
}

fn rst_frame(stream: u32, reason: Reason) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::put_reset(&mut out, stream, reason);
    out.to_vec()
}

#[test]
fn handshake_exchanges_settings_acks_and_connection_windows() {
    // (server's connection window, server's stream window, server's max
    // frame, the client's first stream may send at once)
    let cases = [
        (
            "default connection window",
            65_535,
            200_000,
            1 << 20,
            65_535,
        ),
        (
            "larger connection window",
            100_000,
            200_000,
            1 << 20,
            100_000,
        ),
        (
            "connection window below the default",
            1_000,
            200_000,
            1 << 20,
            65_535,
        ),
        ("stream window smallest", 100_000, 30_000, 1 << 20, 30_000),
        (
            "max frame smallest",
            100_000,
            200_000,
            frame::MIN_MAX_FRAME,
            16_384,
        ),
    ];
    for (name, connection_window, stream_window, max_frame_size, capacity) in cases {
        let server_limits = Limits {
            stream_window,
            connection_window,
            max_frame_size,
            ..limits()
        };
        let mut p = Pair::new(limits(), server_limits);
        p.pump();
        let settings = |push| Settings {
            enable_push: push,
            max_concurrent_streams: Some(10),
            max_header_list_size: Some(4096),
            ..Settings::default()
        };
        assert!(p.to_server.starts_with(frame::PREFACE), "{name}");
        assert_eq!(
            sent(&p.to_server),
            vec![
                Sent::Settings(Settings {
                    initial_window_size: Some(1000),
                    max_frame_size: Some(frame::MIN_MAX_FRAME),
                    ..settings(Some(false))
                }),
                Sent::SettingsAck,
            ],
            "{name}"
        );
        let mut to_client = vec![Sent::Settings(Settings {
            initial_window_size: Some(stream_window),
            max_frame_size: Some(max_frame_size),
            ..settings(None)
        })];
        let mut client_events = vec![Event::WindowOpened];
        if connection_window > frame::DEFAULT_WINDOW {
            to_client.push(Sent::WindowUpdate(
                0,
                connection_window - frame::DEFAULT_WINDOW,
            ));
            client_events.push(Event::WindowOpened);
        }
        to_client.push(Sent::SettingsAck);
        assert_eq!(sent(&p.to_client), to_client, "{name}");
        assert_eq!(p.client.take_events(), client_events, "{name}");
        assert_eq!(p.server.take_events(), vec![Event::WindowOpened], "{name}");
        let id = p.client.conn.open(CONNECT).expect("open");
        assert_eq!(id, 1);
        assert_eq!(p.client.conn.send_capacity(id), capacity, "{name}");
        assert_eq!(
            p.client.conn.windows(id),
            Some((i64::from(stream_window), 1000)),
            "{name}"
        );
    }
}

#[test]
fn preface_and_first_frame() {
    let settings = settings_frame(Settings::default());
    let preface_then = |b: &[u8]| [&frame::PREFACE[..], b].concat();
    // (name, bytes the server reads, Ok(events) or Err(words in the error))
    let cases: Vec<(&str, Vec<u8>, Result<usize, &str>)> = vec![
        ("nothing yet", vec![], Ok(0)),
        ("half the preface", frame::PREFACE[..10].to_vec(), Ok(0)),
        ("preface alone", frame::PREFACE.to_vec(), Ok(0)),
        ("preface and SETTINGS", preface_then(&settings), Ok(1)),
        (
            "http/1.1",
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            Err("preface"),
        ),
        ("a wrong first byte", b"X".to_vec(), Err("preface")),
        (
            "the preface with a wrong last byte",
            [&frame::PREFACE[..23], b"X"].concat(),
            Err("preface"),
        ),
        (
            "TLS instead of h2",
            vec![0x16, 0x03, 0x01, 0x00, 0xa5],
            Err("preface"),
        ),
        (
            "PING first",
            preface_then(&raw(frame::PING, 0, 0, &[0; 8])),
            Err("first frame is not SETTINGS"),
        ),
        (
            "SETTINGS ack first",
            preface_then(&raw(frame::SETTINGS, frame::ACK, 0, &[])),
            Err("first frame is not SETTINGS"),
        ),
        (
            "WINDOW_UPDATE first",
            preface_then(&window_update(0, 1)),
            Err("first frame is not SETTINGS"),
        ),
        (
            "HEADERS first",
            preface_then(&headers_frame(1, frame::END_HEADERS, &request_block("a"))),
            Err("first frame is not SETTINGS"),
        ),
        (
            "a malformed PRIORITY first",
            preface_then(&raw(frame::PRIORITY, 0, 1, &[0; 4])),
            Err("first frame is not SETTINGS"),
        ),
        (
            "a stream's WINDOW_UPDATE of 0 first",
            preface_then(&window_update(1, 0)),
            Err("first frame is not SETTINGS"),
        ),
    ];
    for (name, bytes, want) in cases {
        let mut server = Peer::new(Role::Server, limits());
        let got = server.feed(&bytes).map(|()| server.events.len());
        match (got, want) {
            (Ok(n), Ok(m)) => assert_eq!(n, m, "{name}"),
            (Err(e), Err(words)) => {
                assert_eq!(e.reason, Reason::PROTOCOL_ERROR, "{name}");
                assert!(e.to_string().contains(words), "{name}: {e}");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
        // Nothing is answered to a peer that did not start right.
        let out = server.take_out();
        assert!(
            !sent(&out).contains(&Sent::SettingsAck) || name == "preface and SETTINGS",
            "{name}"
        );
    }
}

#[test]
fn preface_and_settings_in_one_byte_pieces() {
    let mut server = Peer::new(Role::Server, limits());
    let bytes = [
        &frame::PREFACE[..],
        &settings_frame(Settings::default()),
        &raw(frame::PING, 0, 0, &[7; 8]),
    ]
    .concat();
    for b in &bytes {
        server.feed(&[*b]).expect("valid so far");
    }
    assert!(server.input.is_empty());
    assert_eq!(server.take_events(), vec![Event::WindowOpened]);
    let out = server.take_out();
    assert_eq!(
        sent(&out)[1..],
        [Sent::SettingsAck, Sent::Ping(true, [7; 8])]
    );
}

#[test]
fn the_client_expects_settings_first_too() {
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("SETTINGS", settings_frame(Settings::default()), true),
        ("PING", raw(frame::PING, 0, 0, &[0; 8]), false),
        ("GOAWAY", goaway_frame(0, Reason::NO_ERROR), false),
    ];
    for (name, bytes, ok) in cases {
        let mut client = Peer::new(Role::Client, limits());
        let r = client.feed(&bytes);
        assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
    }
}

/// One step of a stream's life, and what the other side then reports.
enum Step {
    /// DATA from the client (true) or the server (false).
    Data(bool, &'static [u8], bool),
    /// The server's response head, with END_STREAM or not.
    Respond(bool),
    /// A reset from the client (true) or the server (false).
    Reset(bool, Reason),
}

#[test]
fn streams_carry_data_both_ways_and_close_when_both_ends_end() {
    use Step::*;
    // Each step, then the streams open on (client, server) after it.
    type Case = (&'static str, Vec<(Step, (u32, u32))>);
    let cases: Vec<Case> = vec![
        (
            "client ends first",
            vec![
                (Respond(false), (1, 1)),
                (Data(true, b"ping", false), (1, 1)),
                (Data(false, b"pong", false), (1, 1)),
                (Data(true, b"", true), (1, 1)),
                (Data(false, b"more", false), (1, 1)),
                (Data(false, b"bye", true), (0, 0)),
            ],
        ),
        (
            "server ends first",
            vec![
                (Respond(false), (1, 1)),
                (Data(false, b"hello", true), (1, 1)),
                (Data(true, b"late", false), (1, 1)),
                (Data(true, b"", true), (0, 0)),
            ],
        ),
        (
            "both end with their last bytes",
            vec![
                (Respond(false), (1, 1)),
                (Data(true, b"a", true), (1, 1)),
                (Data(false, b"b", true), (0, 0)),
            ],
        ),
        (
            "refused with END_STREAM on the response, then the client ends",
            vec![(Respond(true), (1, 1)), (Data(true, b"", true), (0, 0))],
        ),
        (
            "the client resets",
            vec![
                (Respond(false), (1, 1)),
                (Reset(true, Reason::CANCEL), (0, 0)),
            ],
        ),
        (
            "the server resets before answering",
            vec![(Reset(false, Reason::REFUSED_STREAM), (0, 0))],
        ),
        (
            "the server resets after ending its side",
            vec![
                (Respond(false), (1, 1)),
                (Data(false, b"x", true), (1, 1)),
                (Reset(false, Reason::NO_ERROR), (0, 0)),
            ],
        ),
    ];
    for (name, steps) in cases {
        let mut p = Pair::connected(limits(), limits());
        let id = p.open();
        for (i, (step, open)) in steps.into_iter().enumerate() {
            let (receiver_is_client, want) = match step {
                Data(from_client, bytes, end) => {
                    let from = if from_client {
                        &mut p.client
                    } else {
                        &mut p.server
                    };
                    assert!(from.conn.send_capacity(id) >= bytes.len(), "{name} {i}");
                    from.conn.send_data(id, bytes, end);
                    let want = Event::Data {
                        stream: id,
                        data: Bytes::from_static(bytes),
                        end_stream: end,
                    };
                    (!from_client, want)
                }
                Respond(end) => {
                    assert!(p.server.conn.respond(id, OK, end), "{name} {i}");
                    let want = Event::Headers {
                        stream: id,
                        fields: fields(&[(":status", "200")]),
                        end_stream: end,
                    };
                    (true, want)
                }
                Reset(from_client, reason) => {
                    let from = if from_client {
                        &mut p.client
                    } else {
                        &mut p.server
                    };
                    from.conn.reset(id, reason);
                    let want = Event::Reset {
                        stream: id,
                        reason,
                        by_peer: true,
                    };
                    (!from_client, want)
                }
            };
            p.pump();
            let (to, other) = if receiver_is_client {
                (&mut p.client, &mut p.server)
            } else {
                (&mut p.server, &mut p.client)
            };
            assert_eq!(to.take_events(), vec![want], "{name} step {i}");
            assert_eq!(other.take_events(), vec![], "{name} step {i}");
            assert_eq!(
                (p.client.conn.open_streams(), p.server.conn.open_streams()),
                open,
                "{name} step {i}"
            );
        }
        assert!(!p.client.conn.is_open(id), "{name}");
        assert!(!p.server.conn.is_open(id), "{name}");
        assert_eq!(p.client.conn.send_capacity(id), 0, "{name}");
        // A closed stream cannot be answered again.
        assert!(!p.server.conn.respond(id, OK, false), "{name}");
    }
}

#[test]
fn connect_heads_survive_hpack_on_many_streams() {
    let mut p = Pair::connected(limits(), limits());
    let req = ConnectRequest {
        forwarded_for: Some("10.0.0.2:40000".parse().expect("addr")),
        forwarded_host: Some("svc.ns.svc.cluster.local".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..ConnectRequest::new("10.0.0.1:8080".parse().expect("addr"))
    };
    let req_fields = head::request_fields(&req).expect("sendable");
    let mut baggage = HeaderMap::new();
    baggage.insert("baggage", "k8s.pod.name=p".parse().expect("value"));
    let resp_fields = head::response_fields(StatusCode::OK, &baggage);
    // The same heads again and again: an encoder that indexed them would
    // refer to entries of a table the peer's decoder does not hold.
    for round in 0..5 {
        let id = p
            .client
            .conn
            .open(&head::borrow(&req_fields))
            .expect("open");
        p.pump();
        let Some(Event::Headers { stream, fields, .. }) = p.server.take_events().pop() else {
            panic!("round {round}: no request");
        };
        assert_eq!(stream, id);
        assert_eq!(head::request(&fields), Ok(Ok(req.clone())), "round {round}");
        assert!(p
            .server
            .conn
            .respond(id, &head::borrow(&resp_fields), false));
        p.pump();
        let Some(Event::Headers { fields, .. }) = p.client.take_events().pop() else {
            panic!("round {round}: no response");
        };
        assert_eq!(
            head::response(&fields),
            Ok((StatusCode::OK, baggage.clone())),
            "round {round}"
        );
    }
    // Only the first block of each side starts with the table size update.
    let blocks = |b: &[u8]| -> Vec<u8> {
        let mut b = b.strip_prefix(&frame::PREFACE[..]).unwrap_or(b);
        let mut firsts = Vec::new();
        while let Some(h) = b.first_chunk::<HEAD_LEN>() {
            let head = Head::parse(h);
            if head.kind == frame::HEADERS {
                firsts.push(b[HEAD_LEN]);
            }
            b = &b[HEAD_LEN + head.len as usize..];
        }
        firsts
    };
    for wire in [&p.to_server, &p.to_client] {
        let firsts = blocks(wire);
        assert_eq!(firsts.len(), 5);
        assert_eq!(firsts[0], 0x20);
        assert!(firsts[1..].iter().all(|b| *b != 0x20), "{firsts:x?}");
    }
}

#[test]
fn send_capacity_shrinks_and_release_gives_credit_back_per_half_window() {
    let mut p = Pair::connected(limits(), limits());
    let id = p.tunnel();
    let cap = |p: &Pair| p.client.conn.send_capacity(id);
    assert_eq!(cap(&p), 1000);
    // (bytes the client sends, bytes the server then releases, the
    // WINDOW_UPDATEs the server sends, the client's capacity after)
    let steps: Vec<(usize, usize, Vec<Sent>, usize)> = vec![
        // 600 >= 500: an update for the stream at once.
        (600, 600, vec![Sent::WindowUpdate(id, 600)], 1000),
        // 400 < 500: credit gathers.
        (400, 400, vec![], 600),
        // 400 + 200 >= 500: one update for both.
        (200, 200, vec![Sent::WindowUpdate(id, 600)], 1000),
        // Released late: nothing until enough is delivered.
        (1000, 0, vec![], 0),
        (0, 499, vec![], 0),
        (0, 501, vec![Sent::WindowUpdate(id, 1000)], 1000),
    ];
    for (i, (send, release, updates, after)) in steps.into_iter().enumerate() {
        if send > 0 {
            let before = cap(&p);
            p.client.conn.send_data(id, &vec![b'x'; send], false);
            assert_eq!(cap(&p), before - send, "step {i}");
            p.pump();
            let (_, recv) = p.server.conn.windows(id).expect("open");
            assert!(recv <= 1000 - send as i64, "step {i}");
            let events = p.server.take_events();
            assert!(
                matches!(&events[..], [Event::Data { data, .. }] if data.len() == send),
                "step {i}: {events:?}"
            );
        }
        p.server.conn.release(id, release);
        let out = p.server.take_out();
        assert_eq!(sent(&out), updates, "step {i}");
        p.client.feed(&out).expect("valid");
        let opened = !updates.is_empty();
        assert_eq!(
            p.client.take_events(),
            if opened {
                vec![Event::WindowOpened]
            } else {
                vec![]
            },
            "step {i}"
        );
        assert_eq!(cap(&p), after, "step {i}");
    }
    assert_eq!(p.server.conn.windows(id), Some((1000, 1000)));
}

#[test]
fn the_connection_window_is_given_back_per_half_window() {
    // Streams of 40,000, a connection of 65,535 (updates from 32,767).
    let big = Limits {
        stream_window: 40_000,
        max_frame_size: 1 << 20,
        ..limits()
    };
    let mut p = Pair::connected(big, big);
    let a = p.tunnel();
    let b = p.tunnel();
    let cases: Vec<(u32, usize, Vec<Sent>)> = vec![
        (a, 16_000, vec![]),
        (b, 16_000, vec![]),
        // 32,800 delivered: the connection's update; b's 16,800 < 20,000.
        (b, 800, vec![Sent::WindowUpdate(0, 32_800)]),
        // a reaches 20,000: the stream's update alone.
        (a, 4_000, vec![Sent::WindowUpdate(a, 20_000)]),
    ];
    for (i, (stream, n, updates)) in cases.into_iter().enumerate() {
        p.client.conn.send_data(stream, &vec![0; n], false);
        p.pump();
        p.server.take_events();
        p.server.conn.release(stream, n);
        let out = p.server.take_out();
        assert_eq!(sent(&out), updates, "step {i}");
        p.client.feed(&out).expect("valid");
    }
    // a: 40,000 - 20,000 + 20,000; b: 40,000 - 16,800; the connection:
    // 65,535 - 36,800 + 32,800 = 61,535.
    assert_eq!(p.client.conn.send_capacity(a), 40_000);
    assert_eq!(p.client.conn.send_capacity(b), 23_200);
    p.client.conn.send_data(a, &vec![0; 40_000], false);
    assert_eq!(p.client.conn.send_capacity(b), 21_535);
}

#[test]
fn padding_counts_against_windows_and_is_given_back_at_once() {
    let mut p = Pair::connected(limits(), limits());
    let id = p.tunnel();
    // Pad length 10, five bytes of data, ten of padding: 16 bytes of flow.
    let mut payload = vec![10];
    payload.extend_from_slice(b"hello");
    payload.extend_from_slice(&[0; 10]);
    p.server
        .feed(&data_frame(id, frame::PADDED, &payload))
        .expect("valid");
    assert_eq!(
        p.server.take_events(),
        vec![Event::Data {
            stream: id,
            data: Bytes::from_static(b"hello"),
            end_stream: false,
        }]
    );
    // The pad length byte and the padding (11) are given back at once.
    assert_eq!(p.server.conn.windows(id), Some((1000, 1000 - 16 + 11)));
    // No update for 11 bytes of credit.
    assert_eq!(sent(&p.server.take_out()), vec![]);
}

#[test]
fn a_peer_beyond_its_windows_is_stopped() {
    let big_streams = Limits {
        stream_window: 1 << 20,
        max_frame_size: 1 << 20,
        ..limits()
    };
    enum Want {
        /// The stream is reset with FLOW_CONTROL_ERROR.
        Reset,
        /// The connection fails with FLOW_CONTROL_ERROR.
        Fail,
    }
    // (name, the server's limits, DATA frame sizes on stream 1)
    let cases: Vec<(&str, Limits, Vec<usize>, Want)> = vec![
        (
            "one byte over the stream window",
            limits(),
            vec![1001],
            Want::Reset,
        ),
        (
            "over the stream window in two frames",
            limits(),
            vec![999, 2],
            Want::Reset,
        ),
        (
            "one byte over the connection window",
            big_streams,
            vec![65_536],
            Want::Fail,
        ),
        (
            "over the connection window in frames",
            big_streams,
            vec![30_000, 30_000, 5_536],
            Want::Fail,
        ),
    ];
    for (name, server_limits, sizes, want) in cases {
        let mut p = Pair::connected(limits(), server_limits);
        let id = p.tunnel();
        let bytes: Vec<u8> = sizes
            .iter()
            .flat_map(|n| data_frame(id, 0, &vec![0; *n]))
            .collect();
        let r = p.server.feed(&bytes);
        match want {
            Want::Reset => {
                r.expect("a stream error only");
                let events = p.server.take_events();
                assert_eq!(
                    events.last(),
                    Some(&Event::Reset {
                        stream: id,
                        reason: Reason::FLOW_CONTROL_ERROR,
                        by_peer: false,
                    }),
                    "{name}"
                );
                assert_eq!(
                    sent(&p.server.take_out()),
                    vec![Sent::Reset(id, Reason::FLOW_CONTROL_ERROR)],
                    "{name}"
                );
                assert_eq!(p.server.conn.open_streams(), 0, "{name}");
                // Whatever was in flight is dropped without error.
                p.server.feed(&data_frame(id, 0, &[0; 10])).expect(name);
                assert_eq!(p.server.take_events(), vec![], "{name}");
            }
            Want::Fail => {
                let e = r.expect_err(name);
                assert_eq!(e.reason, Reason::FLOW_CONTROL_ERROR, "{name}");
                assert!(e.detail.contains("connection window"), "{name}");
            }
        }
    }
}

#[test]
fn new_initial_window_settings_move_open_streams_windows() {
    let mut p = Pair::connected(limits(), limits());
    let id = p.tunnel();
    p.client.conn.send_data(id, &[0; 600], false);
    assert_eq!(p.client.conn.windows(id).map(|w| w.0), Some(400));
    // The server lowers its streams' window to 100: 400 - 900 = -500.
    let lower = settings_frame(Settings {
        initial_window_size: Some(100),
        ..Settings::default()
    });
    p.client.feed(&lower).expect("valid");
    assert_eq!(p.client.conn.windows(id).map(|w| w.0), Some(-500));
    assert_eq!(p.client.conn.send_capacity(id), 0);
    p.client.feed(&window_update(id, 600)).expect("valid");
    assert_eq!(p.client.conn.send_capacity(id), 100);
    // New streams start at the new value.
    let next = p.client.conn.open(CONNECT).expect("open");
    assert_eq!(p.client.conn.send_capacity(next), 100);
    // A value that pushes an open stream above 2^31-1 ends the connection:
    // at 101 against an initial 100, the largest initial window is one too
    // many.
    p.client.feed(&window_update(id, 1)).expect("valid");
    let e = p
        .client
        .feed(&settings_frame(Settings {
            initial_window_size: Some(frame::MAX_WINDOW),
            ..Settings::default()
        }))
        .expect_err("stream window over 2^31-1");
    assert_eq!(e.reason, Reason::FLOW_CONTROL_ERROR);
}

#[test]
fn max_concurrent_streams_is_enforced_both_ways() {
    let two = Limits {
        max_concurrent_streams: 2,
        ..limits()
    };
    let mut p = Pair::connected(limits(), two);
    let a = p.open();
    let b = p.open();
    assert_eq!(p.client.conn.open(CONNECT), Err(OpenError::AtLimit));
    assert_eq!(p.server.conn.open_streams(), 2);
    // A client that ignores the limit is refused, stream by stream.
    let extra = [
        headers_frame(5, frame::END_HEADERS, &request_block("5")),
        headers_frame(7, frame::END_HEADERS, &request_block("7")),
    ]
    .concat();
    p.server
        .feed(&extra)
        .expect("refusing is no connection error");
    assert_eq!(p.server.take_events(), vec![]);
    assert_eq!(p.server.conn.unsent_answers(), 2);
    assert_eq!(
        sent(&p.server.take_out()),
        vec![
            Sent::Reset(5, Reason::REFUSED_STREAM),
            Sent::Reset(7, Reason::REFUSED_STREAM),
        ]
    );
    assert_eq!(p.server.conn.open_streams(), 2);
    // Once a stream ends both ways, the client may open another.
    assert!(p.server.conn.respond(a, OK, true));
    p.client.conn.send_data(a, b"", true);
    p.pump();
    assert_eq!(p.server.conn.open_streams(), 1);
    assert_eq!(p.client.conn.open_streams(), 1);
    assert!(p.client.conn.is_open(b));
    assert!(p.client.conn.open(CONNECT).is_ok(), "below the limit again");
}

#[test]
fn a_new_stream_after_one_closed_is_served() {
    let one = Limits {
        max_concurrent_streams: 1,
        ..limits()
    };
    let mut p = Pair::connected(limits(), one);
    let a = p.tunnel();
    assert_eq!(p.client.conn.open(CONNECT), Err(OpenError::AtLimit));
    p.client.conn.reset(a, Reason::CANCEL);
    p.pump();
    assert_eq!(
        p.server.take_events(),
        vec![Event::Reset {
            stream: a,
            reason: Reason::CANCEL,
            by_peer: true,
        }]
    );
    assert_eq!(p.server.conn.open_streams(), 0);
    let b = p.open();
    assert_eq!(b, 3);
    assert_eq!(p.server.conn.open_streams(), 1);
}

#[test]
fn goaway_refuses_the_streams_above_its_last_id() {
    // (GOAWAY's last stream id, streams the client must forget)
    let cases: Vec<(u32, Vec<u32>)> = vec![
        (0, vec![1, 3, 5]),
        (1, vec![3, 5]),
        (3, vec![5]),
        (5, vec![]),
        (frame::MAX_WINDOW, vec![]),
    ];
    for (last, want) in cases {
        let mut p = Pair::connected(limits(), limits());
        for _ in 0..3 {
            p.open();
        }
        p.client
            .feed(&goaway_frame(last, Reason::NO_ERROR))
            .expect("valid");
        assert_eq!(
            p.client.take_events(),
            vec![Event::GoAway {
                last_stream: last,
                reason: Reason::NO_ERROR,
            }]
        );
        assert!(p.client.conn.going_away());
        let mut refused = p.client.conn.refused_by_goaway();
        refused.sort_unstable();
        assert_eq!(refused, want, "last {last}");
        for id in [1, 3, 5] {
            assert_eq!(
                p.client.conn.is_open(id),
                !want.contains(&id),
                "last {last}"
            );
        }
        assert_eq!(p.client.conn.open_streams(), 3 - want.len() as u32);
        // Refused streams are reported once.
        assert_eq!(p.client.conn.refused_by_goaway(), Vec::<u32>::new());
        assert_eq!(p.client.conn.open(CONNECT), Err(OpenError::GoingAway));
    }
}

#[test]
fn a_later_goaway_cannot_raise_the_last_id() {
    let mut p = Pair::connected(limits(), limits());
    for _ in 0..3 {
        p.open();
    }
    let goaways = [
        goaway_frame(3, Reason::NO_ERROR),
        goaway_frame(5, Reason::NO_ERROR),
    ]
    .concat();
    p.client.feed(&goaways).expect("valid");
    assert_eq!(
        p.client.take_events(),
        vec![
            Event::GoAway {
                last_stream: 3,
                reason: Reason::NO_ERROR,
            },
            Event::GoAway {
                last_stream: 3,
                reason: Reason::NO_ERROR,
            },
        ]
    );
    assert_eq!(p.client.conn.refused_by_goaway(), vec![5]);
}

#[test]
fn after_our_goaway_new_streams_are_ignored() {
    let mut p = Pair::connected(limits(), limits());
    let a = p.tunnel();
    let b = p.open();
    p.server.conn.goaway(Reason::NO_ERROR, b"draining");
    p.server.conn.goaway(Reason::INTERNAL_ERROR, b"twice");
    assert!(p.server.conn.going_away());
    assert_eq!(
        sent(&p.server.conn.out().clone()),
        vec![Sent::GoAway(b, Reason::NO_ERROR)]
    );
    p.pump();
    assert_eq!(
        p.client.take_events(),
        vec![Event::GoAway {
            last_stream: b,
            reason: Reason::NO_ERROR,
        }]
    );
    assert_eq!(p.client.conn.refused_by_goaway(), Vec::<u32>::new());
    assert_eq!(p.client.conn.open(CONNECT), Err(OpenError::GoingAway));
    // A stream the client opened before it saw the GOAWAY: ignored, its
    // DATA dropped, and no frame answers either.
    let late = [
        headers_frame(7, frame::END_HEADERS, &request_block("late")),
        data_frame(7, 0, b"dropped"),
    ]
    .concat();
    p.server.feed(&late).expect("no connection error");
    assert_eq!(p.server.take_events(), vec![]);
    assert_eq!(sent(&p.server.take_out()), vec![]);
    // The streams below the last id go on.
    p.client.conn.send_data(a, b"still here", false);
    p.pump();
    assert_eq!(p.server.take_events().len(), 1);
    assert_eq!(p.server.conn.open_streams(), 2);
}

#[test]
fn ping_is_answered_and_the_answer_reported() {
    let mut p = Pair::connected(limits(), limits());
    p.client.conn.ping(*b"keepaliv");
    p.pump();
    assert_eq!(sent(&p.to_server), vec![Sent::Ping(false, *b"keepaliv")]);
    assert_eq!(sent(&p.to_client), vec![Sent::Ping(true, *b"keepaliv")]);
    assert_eq!(p.server.take_events(), vec![]);
    assert_eq!(p.client.take_events(), vec![Event::Pong(*b"keepaliv")]);
    // And the other way.
    p.server.conn.ping([1; 8]);
    p.pump();
    assert_eq!(p.server.take_events(), vec![Event::Pong([1; 8])]);
}

#[test]
fn header_blocks_split_across_continuations() {
    let whole = request_block("split");
    let n = whole.len();
    // Where the block is cut: each piece after the first is a CONTINUATION.
    let cuts: Vec<(&str, Vec<usize>)> = vec![
        ("in one HEADERS", vec![]),
        ("after one byte", vec![1]),
        ("in three", vec![5, 20]),
        ("in every byte", (1..n).collect()),
        ("empty HEADERS, all in CONTINUATION", vec![0]),
        ("an empty CONTINUATION last", vec![n]),
    ];
    for (name, at) in cuts {
        let mut p = Pair::connected(limits(), limits());
        let mut bounds = vec![0];
        bounds.extend(&at);
        bounds.push(n);
        let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &whole[w[0]..w[1]]).collect();
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let kind = if i == 0 {
                frame::HEADERS
            } else {
                frame::CONTINUATION
            };
            let flags = if i + 1 == pieces.len() {
                frame::END_HEADERS
            } else {
                0
            };
            bytes.extend(raw(kind, flags, 1, piece));
        }
        p.server.feed(&bytes).expect(name);
        assert_eq!(
            p.server.take_events(),
            vec![Event::Headers {
                stream: 1,
                fields: fields(&[
                    (":method", "CONNECT"),
                    (":authority", "10.0.0.1:8080"),
                    ("x-note", "split"),
                ]),
                end_stream: false,
            }],
            "{name}"
        );
    }
}

#[test]
fn our_large_heads_are_split_into_continuations() {
    let roomy = Limits {
        max_header_list_size: 64 << 10,
        ..limits()
    };
    let mut p = Pair::connected(roomy, roomy);
    let big = "v".repeat(40_000);
    let head: &[(&[u8], &[u8])] = &[
        (b":method", b"CONNECT"),
        (b":authority", b"10.0.0.1:8080"),
        (b"x-big", big.as_bytes()),
    ];
    let id = p.client.conn.open(head).expect("open");
    p.pump();
    let frames: Vec<Sent> = sent(&p.to_server)
        .into_iter()
        .filter(|f| !matches!(f, Sent::Settings(_) | Sent::SettingsAck))
        .collect();
    assert_eq!(
        frames,
        vec![
            Sent::Headers {
                stream: id,
                end_stream: false,
                end_headers: false,
            },
            Sent::Continuation {
                stream: id,
                end_headers: false,
            },
            Sent::Continuation {
                stream: id,
                end_headers: true,
            },
        ]
    );
    let events = p.server.take_events();
    assert!(
        matches!(&events[..], [Event::Headers { fields, .. }] if fields[2].1.len() == 40_000),
        "{events:?}"
    );
}

#[test]
fn header_lists_over_the_limit() {
    // Our limit 200: :method and :authority count 46 + 55, x-pad 37 + its
    // value (RFC 9113 §6.5.2: name, value and 32 each), so a 62-byte value
    // is the largest that fits.
    let small = Limits {
        max_header_list_size: 200,
        ..limits()
    };
    let cases = [(62, true), (63, false), (1000, false)];
    for (len, fits) in cases {
        let mut p = Pair::connected(limits(), small);
        let pad = "p".repeat(len);
        let head: &[(&[u8], &[u8])] = &[
            (b":method", b"CONNECT"),
            (b":authority", b"10.0.0.1:8080"),
            (b"x-pad", pad.as_bytes()),
        ];
        let id = p.client.conn.open(head).expect("open");
        p.pump();
        let events = p.server.take_events();
        if fits {
            assert_eq!(events.len(), 1, "{len}");
            assert_eq!(p.server.conn.open_streams(), 1, "{len}");
            continue;
        }
        assert_eq!(events, vec![], "{len}");
        assert_eq!(p.server.conn.open_streams(), 0, "{len}");
        assert_eq!(
            sent(&p.to_client),
            vec![Sent::Reset(id, Reason::PROTOCOL_ERROR)],
            "{len}"
        );
        assert_eq!(
            p.client.take_events(),
            vec![Event::Reset {
                stream: id,
                reason: Reason::PROTOCOL_ERROR,
                by_peer: true,
            }],
            "{len}"
        );
        assert_eq!(p.client.conn.open_streams(), 0, "{len}");
    }
}

#[test]
fn a_response_over_the_clients_limit_resets_the_stream() {
    let small = Limits {
        max_header_list_size: 100,
        ..limits()
    };
    let mut p = Pair::connected(small, limits());
    let id = p.open();
    let big = "b".repeat(100);
    assert!(p.server.conn.respond(
        id,
        &[(b":status", b"200"), (b"baggage", big.as_bytes())],
        false
    ));
    p.pump();
    assert_eq!(
        p.client.take_events(),
        vec![Event::Reset {
            stream: id,
            reason: Reason::PROTOCOL_ERROR,
            by_peer: false,
        }]
    );
    assert_eq!(
        p.server.take_events(),
        vec![Event::Reset {
            stream: id,
            reason: Reason::PROTOCOL_ERROR,
            by_peer: true,
        }]
    );
    assert_eq!(
        p.client.conn.open_streams() + p.server.conn.open_streams(),
        0
    );
}

#[test]
fn a_header_block_that_keeps_growing_ends_the_connection() {
    // Our limit 1000: a block still open at more than that many bytes.
    let small = Limits {
        max_header_list_size: 1000,
        ..limits()
    };
    let cases = [
        ("in the HEADERS frame", 1001, 0),
        ("in CONTINUATIONs", 600, 401),
    ];
    for (name, first, second) in cases {
        let mut server = Pair::connected(limits(), small).server;
        let mut bytes = raw(frame::HEADERS, 0, 1, &vec![0; first]);
        if second > 0 {
            bytes.extend(raw(frame::CONTINUATION, 0, 1, &vec![0; second]));
        }
        let e = server.feed(&bytes).expect_err(name);
        assert_eq!(e.reason, Reason::ENHANCE_YOUR_CALM, "{name}");
    }
}

/// What feeding raw bytes to one side of a connection with streams 1
/// (answered) and 3 (not answered) open must give.
#[derive(Debug)]
enum Want {
    /// A connection error with this code, its detail naming these words.
    Error(Reason, &'static str),
    /// These events, and these frames queued.
    Events(Vec<Event>, Vec<Sent>),
}

fn ok(events: Vec<Event>, frames: Vec<Sent>) -> Want {
    Want::Events(events, frames)
}

fn reset(stream: u32, reason: Reason) -> Want {
    Want::Events(
        vec![Event::Reset {
            stream,
            reason,
            by_peer: false,
        }],
        vec![Sent::Reset(stream, reason)],
    )
}

fn check(name: &str, peer: &mut Peer, bytes: &[u8], want: Want) {
    let got = peer.feed(bytes);
    match (got, want) {
        (Err(e), Want::Error(reason, words)) => {
            assert_eq!(e.reason, reason, "{name}: {e}");
            assert!(e.detail.contains(words), "{name}: {e}");
        }
        (Ok(()), Want::Events(events, frames)) => {
            assert_eq!(peer.take_events(), events, "{name}");
            assert_eq!(sent(&peer.take_out()), frames, "{name}");
        }
        (got, want) => panic!("{name}: got {got:?} and {:?}, want {want:?}", peer.events),
    }
}

fn two_streams() -> Pair {
    let mut p = Pair::connected(limits(), limits());
    assert_eq!(p.tunnel(), 1);
    assert_eq!(p.open(), 3);
    p.forget();
    p
}

const PROTOCOL: Reason = Reason::PROTOCOL_ERROR;

#[test]
fn what_a_server_does_with_each_client_frame() {
    let hpack_ok = request_block("x");
    let interrupted = |next: Vec<u8>| [headers_frame(5, 0, &hpack_ok[..4]), next].concat();
    let mut padded_priority = vec![3, 0, 0, 0, 0, 16];
    padded_priority.extend_from_slice(&hpack_ok);
    padded_priority.extend_from_slice(&[0; 3]);
    let request5 = |end_stream| Event::Headers {
        stream: 5,
        fields: fields(&[
            (":method", "CONNECT"),
            (":authority", "10.0.0.1:8080"),
            ("x-note", "x"),
        ]),
        end_stream,
    };
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        // Stream states
        (
            "DATA on a stream the client has not opened",
            data_frame(5, 0, b"x"),
            Want::Error(PROTOCOL, "idle"),
        ),
        (
            "RST_STREAM on an idle stream",
            rst_frame(5, Reason::CANCEL),
            Want::Error(PROTOCOL, "idle"),
        ),
        (
            "WINDOW_UPDATE on an idle stream",
            window_update(5, 1),
            Want::Error(PROTOCOL, "idle"),
        ),
        (
            "WINDOW_UPDATE of 0 on an idle stream",
            window_update(5, 0),
            Want::Error(PROTOCOL, "WINDOW_UPDATE"),
        ),
        (
            "HEADERS on an even stream",
            headers_frame(2, frame::END_HEADERS, &hpack_ok),
            Want::Error(PROTOCOL, "may not open"),
        ),
        (
            "HEADERS reusing a closed stream id",
            [
                headers_frame(7, frame::END_HEADERS, &hpack_ok),
                headers_frame(5, frame::END_HEADERS, &hpack_ok),
            ]
            .concat(),
            Want::Error(Reason::STREAM_CLOSED, "closed stream id"),
        ),
        (
            "a new stream",
            headers_frame(5, frame::END_HEADERS, &hpack_ok),
            ok(vec![request5(false)], vec![]),
        ),
        (
            "a new stream with END_STREAM",
            headers_frame(5, frame::END_HEADERS | frame::END_STREAM, &hpack_ok),
            ok(vec![request5(true)], vec![]),
        ),
        (
            "a new stream with padding and priority",
            headers_frame(
                5,
                frame::END_HEADERS | frame::PADDED | frame::PRIORITY_FLAG,
                &padded_priority,
            ),
            ok(vec![request5(false)], vec![]),
        ),
        (
            "DATA",
            data_frame(1, 0, b"abc"),
            ok(
                vec![Event::Data {
                    stream: 1,
                    data: Bytes::from_static(b"abc"),
                    end_stream: false,
                }],
                vec![],
            ),
        ),
        (
            "DATA after END_STREAM",
            [
                data_frame(1, frame::END_STREAM, b"a"),
                data_frame(1, 0, b"b"),
            ]
            .concat(),
            ok(
                vec![
                    Event::Data {
                        stream: 1,
                        data: Bytes::from_static(b"a"),
                        end_stream: true,
                    },
                    Event::Reset {
                        stream: 1,
                        reason: Reason::STREAM_CLOSED,
                        by_peer: false,
                    },
                ],
                vec![Sent::Reset(1, Reason::STREAM_CLOSED)],
            ),
        ),
        (
            "trailers ending the stream",
            headers_frame(
                1,
                frame::END_HEADERS | frame::END_STREAM,
                &block(&[("x-t", "1")]),
            ),
            ok(
                vec![Event::Data {
                    stream: 1,
                    data: Bytes::new(),
                    end_stream: true,
                }],
                vec![],
            ),
        ),
        (
            "trailers without END_STREAM",
            headers_frame(1, frame::END_HEADERS, &block(&[("x-t", "1")])),
            reset(1, PROTOCOL),
        ),
        (
            "HEADERS after END_STREAM",
            [
                data_frame(3, frame::END_STREAM, b""),
                headers_frame(
                    3,
                    frame::END_HEADERS | frame::END_STREAM,
                    &block(&[("x-t", "1")]),
                ),
            ]
            .concat(),
            ok(
                vec![
                    Event::Data {
                        stream: 3,
                        data: Bytes::new(),
                        end_stream: true,
                    },
                    Event::Reset {
                        stream: 3,
                        reason: Reason::STREAM_CLOSED,
                        by_peer: false,
                    },
                ],
                vec![Sent::Reset(3, Reason::STREAM_CLOSED)],
            ),
        ),
        (
            "RST_STREAM",
            rst_frame(1, Reason::CANCEL),
            ok(
                vec![Event::Reset {
                    stream: 1,
                    reason: Reason::CANCEL,
                    by_peer: true,
                }],
                vec![],
            ),
        ),
        // Header blocks
        (
            "CONTINUATION without a block",
            raw(frame::CONTINUATION, frame::END_HEADERS, 1, &hpack_ok),
            Want::Error(PROTOCOL, "CONTINUATION without"),
        ),
        (
            "CONTINUATION after a finished block",
            [
                headers_frame(5, frame::END_HEADERS, &hpack_ok),
                raw(frame::CONTINUATION, frame::END_HEADERS, 5, &[]),
            ]
            .concat(),
            Want::Error(PROTOCOL, "CONTINUATION without"),
        ),
        (
            "a block interrupted by PING",
            interrupted(raw(frame::PING, 0, 0, &[0; 8])),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block interrupted by DATA on its stream",
            interrupted(data_frame(1, 0, b"x")),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block interrupted by HEADERS on another stream",
            interrupted(headers_frame(7, frame::END_HEADERS, &hpack_ok)),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block continued on another stream",
            interrupted(raw(
                frame::CONTINUATION,
                frame::END_HEADERS,
                7,
                &hpack_ok[4..],
            )),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block interrupted by an unknown frame type",
            interrupted(raw(0xb, 0, 0, b"")),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block interrupted by PRIORITY",
            interrupted(raw(frame::PRIORITY, 0, 5, &[0, 0, 0, 1, 16])),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block interrupted by a malformed PRIORITY",
            interrupted(raw(frame::PRIORITY, 0, 1, &[0; 4])),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "a block interrupted by a stream's WINDOW_UPDATE of 0",
            interrupted(window_update(1, 0)),
            Want::Error(PROTOCOL, "interrupted"),
        ),
        (
            "HPACK: index 0",
            headers_frame(5, frame::END_HEADERS, &[0x80]),
            Want::Error(Reason::COMPRESSION_ERROR, "HPACK"),
        ),
        (
            "HPACK: a literal cut short",
            headers_frame(5, frame::END_HEADERS, &[0x00, 0x05, b'a']),
            Want::Error(Reason::COMPRESSION_ERROR, "HPACK"),
        ),
        (
            "HPACK: a table larger than ours",
            headers_frame(5, frame::END_HEADERS, &[0x3f, 0xe2, 0x1f, 0x82]),
            Want::Error(Reason::COMPRESSION_ERROR, "HPACK"),
        ),
        (
            "HPACK: an index past the tables",
            headers_frame(5, frame::END_HEADERS, &[0xff, 0x00]),
            Want::Error(Reason::COMPRESSION_ERROR, "HPACK"),
        ),
        // Frames that need no stream
        (
            "PING",
            raw(frame::PING, 0, 0, b"12345678"),
            ok(vec![], vec![Sent::Ping(true, *b"12345678")]),
        ),
        (
            "PING ack",
            raw(frame::PING, frame::ACK, 0, b"12345678"),
            ok(vec![Event::Pong(*b"12345678")], vec![]),
        ),
        (
            "SETTINGS",
            settings_frame(Settings {
                max_concurrent_streams: Some(1),
                ..Settings::default()
            }),
            ok(vec![Event::WindowOpened], vec![Sent::SettingsAck]),
        ),
        (
            "SETTINGS ack",
            raw(frame::SETTINGS, frame::ACK, 0, &[]),
            ok(vec![], vec![]),
        ),
        (
            "SETTINGS ENABLE_PUSH=2",
            raw(frame::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            Want::Error(PROTOCOL, "ENABLE_PUSH"),
        ),
        (
            "SETTINGS INITIAL_WINDOW_SIZE over 2^31-1",
            raw(frame::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            Want::Error(Reason::FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE"),
        ),
        (
            "SETTINGS MAX_FRAME_SIZE below 2^14",
            raw(frame::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x3f, 0xff]),
            Want::Error(PROTOCOL, "MAX_FRAME_SIZE"),
        ),
        (
            "GOAWAY",
            goaway_frame(0, Reason::NO_ERROR),
            ok(
                vec![Event::GoAway {
                    last_stream: 0,
                    reason: Reason::NO_ERROR,
                }],
                vec![],
            ),
        ),
        (
            "PRIORITY",
            raw(frame::PRIORITY, 0, 9, &[0, 0, 0, 1, 16]),
            ok(vec![], vec![]),
        ),
        (
            "a malformed PRIORITY on an open stream",
            raw(frame::PRIORITY, 0, 1, &[0; 4]),
            reset(1, Reason::FRAME_SIZE_ERROR),
        ),
        (
            "an unknown frame type",
            raw(0xb, 0xff, 1, b"?"),
            ok(vec![], vec![]),
        ),
        (
            "PUSH_PROMISE",
            raw(
                frame::PUSH_PROMISE,
                frame::END_HEADERS,
                1,
                &[0, 0, 0, 2, 0x82],
            ),
            Want::Error(PROTOCOL, "PUSH_PROMISE"),
        ),
        (
            "a frame over our max frame size",
            Head {
                len: frame::MIN_MAX_FRAME + 1,
                kind: frame::DATA,
                flags: 0,
                stream: 1,
            }
            .bytes()
            .to_vec(),
            Want::Error(Reason::FRAME_SIZE_ERROR, "MAX_FRAME_SIZE"),
        ),
        // Windows
        (
            "WINDOW_UPDATE of 0 on an open stream",
            window_update(1, 0),
            reset(1, PROTOCOL),
        ),
        (
            "WINDOW_UPDATE of 0 on the connection",
            window_update(0, 0),
            Want::Error(PROTOCOL, "increment of 0"),
        ),
        (
            "WINDOW_UPDATE on a stream",
            window_update(1, 10),
            ok(vec![Event::WindowOpened], vec![]),
        ),
        (
            "stream window over 2^31-1",
            window_update(1, frame::MAX_WINDOW),
            reset(1, Reason::FLOW_CONTROL_ERROR),
        ),
        (
            "connection window over 2^31-1",
            window_update(0, frame::MAX_WINDOW),
            Want::Error(Reason::FLOW_CONTROL_ERROR, "connection window"),
        ),
        (
            "new SETTINGS push an open stream over 2^31-1",
            [
                window_update(1, 10),
                raw(frame::SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]),
            ]
            .concat(),
            Want::Error(Reason::FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE"),
        ),
    ];
    for (name, bytes, want) in cases {
        let mut p = two_streams();
        check(name, &mut p.server, &bytes, want);
    }
}

#[test]
fn what_a_client_does_with_each_server_frame() {
    let status = block(&[(":status", "200")]);
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "the response",
            headers_frame(3, frame::END_HEADERS, &status),
            ok(
                vec![Event::Headers {
                    stream: 3,
                    fields: fields(&[(":status", "200")]),
                    end_stream: false,
                }],
                vec![],
            ),
        ),
        (
            "DATA before the response",
            data_frame(3, 0, b"early"),
            reset(3, PROTOCOL),
        ),
        (
            "HEADERS on an even stream",
            headers_frame(2, frame::END_HEADERS, &status),
            Want::Error(PROTOCOL, "may not open"),
        ),
        (
            "HEADERS on a stream not opened yet",
            headers_frame(5, frame::END_HEADERS, &status),
            Want::Error(PROTOCOL, "may not open"),
        ),
        (
            "DATA on a stream not opened yet",
            data_frame(5, 0, b"x"),
            Want::Error(PROTOCOL, "idle"),
        ),
        (
            "PUSH_PROMISE",
            raw(
                frame::PUSH_PROMISE,
                frame::END_HEADERS,
                1,
                &[0, 0, 0, 2, 0x82],
            ),
            Want::Error(PROTOCOL, "PUSH_PROMISE"),
        ),
        (
            "RST_STREAM",
            rst_frame(3, Reason::REFUSED_STREAM),
            ok(
                vec![Event::Reset {
                    stream: 3,
                    reason: Reason::REFUSED_STREAM,
                    by_peer: true,
                }],
                vec![],
            ),
        ),
        (
            "SETTINGS MAX_FRAME_SIZE of 2^24",
            raw(frame::SETTINGS, 0, 0, &[0, 5, 1, 0, 0, 0]),
            Want::Error(PROTOCOL, "MAX_FRAME_SIZE"),
        ),
        (
            "GOAWAY",
            goaway_frame(1, Reason::ENHANCE_YOUR_CALM),
            ok(
                vec![Event::GoAway {
                    last_stream: 1,
                    reason: Reason::ENHANCE_YOUR_CALM,
                }],
                vec![],
            ),
        ),
    ];
    for (name, bytes, want) in cases {
        let mut p = two_streams();
        check(name, &mut p.client, &bytes, want);
    }
}

#[test]
fn a_reset_stream_forgets_the_frames_in_flight() {
    let mut p = Pair::connected(limits(), limits());
    let id = p.tunnel();
    // The server sends while the client resets: each side's frames cross.
    p.server.conn.send_data(id, &[1; 100], false);
    p.client.conn.reset(id, Reason::CANCEL);
    assert_eq!(p.client.conn.open_streams(), 0);
    p.pump();
    assert_eq!(p.client.take_events(), vec![]);
    assert_eq!(
        p.server.take_events(),
        vec![Event::Reset {
            stream: id,
            reason: Reason::CANCEL,
            by_peer: true,
        }]
    );
    assert_eq!(p.server.conn.open_streams(), 0);
    // Resetting a stream that is gone sends nothing.
    p.server.conn.reset(id, Reason::CANCEL);
    assert!(p.server.conn.out().is_empty());
    // A late response on a stream the client reset is ignored.
    p.client
        .feed(&headers_frame(
            id,
            frame::END_HEADERS,
            &block(&[(":status", "200")]),
        ))
        .expect("ignored");
    assert_eq!(p.client.take_events(), vec![]);
}

#[test]
fn unsent_answers_count_frames_queued_in_answer() {
    let over_limit = Limits {
        max_concurrent_streams: 2,
        ..limits()
    };
    let ping = raw(frame::PING, 0, 0, &[0; 8]);
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("nothing", vec![], 0),
        ("a PING", ping.clone(), 1),
        ("three PINGs", ping.repeat(3), 3),
        ("a PING ack", raw(frame::PING, frame::ACK, 0, &[0; 8]), 0),
        ("SETTINGS", settings_frame(Settings::default()), 1),
        ("SETTINGS ack", raw(frame::SETTINGS, frame::ACK, 0, &[]), 0),
        ("a stream error", window_update(1, 0), 1),
        (
            "a refused stream",
            headers_frame(5, frame::END_HEADERS, &request_block("r")),
            1,
        ),
        ("DATA", data_frame(1, 0, b"x"), 0),
        ("a connection WINDOW_UPDATE", window_update(0, 1), 0),
        (
            "a mix",
            [
                ping.clone(),
                data_frame(1, 0, b"x"),
                ping,
                settings_frame(Settings::default()),
            ]
            .concat(),
            3,
        ),
    ];
    for (name, bytes, answers) in cases {
        let mut p = Pair::connected(limits(), over_limit);
        p.tunnel();
        p.open();
        p.forget();
        assert_eq!(p.server.conn.unsent_answers(), 0, "{name}");
        p.server.feed(&bytes).expect(name);
        assert_eq!(p.server.conn.unsent_answers(), answers, "{name}");
        // Answers pile up until the output is written.
        p.server.feed(&raw(frame::PING, 0, 0, &[1; 8])).expect(name);
        assert_eq!(p.server.conn.unsent_answers(), answers + 1, "{name}");
        assert!(!p.server.conn.out().is_empty(), "{name}");
        p.server.conn.output_drained();
        assert_eq!(p.server.conn.unsent_answers(), 0, "{name}");
    }
}

#[test]
fn open_after_the_ids_run_out_fails() {
    let mut p = Pair::connected(limits(), limits());
    p.client.conn.next_local = frame::MAX_WINDOW;
    assert_eq!(p.client.conn.open(CONNECT), Ok(frame::MAX_WINDOW));
    assert_eq!(p.client.conn.open(CONNECT), Err(OpenError::Exhausted));
}

#[test]
fn partial_frames_wait_for_the_rest() {
    let mut p = Pair::connected(limits(), limits());
    let id = p.tunnel();
    let frame = data_frame(id, 0, b"split across reads");
    for cut in [1, HEAD_LEN - 1, HEAD_LEN, HEAD_LEN + 3] {
        p.server.feed(&frame[..cut]).expect("partial");
        assert_eq!(p.server.take_events(), vec![], "cut at {cut}");
        assert_eq!(p.server.input.len(), cut, "cut at {cut}");
        p.server.feed(&frame[cut..]).expect("whole");
        assert_eq!(
            p.server.take_events(),
            vec![Event::Data {
                stream: id,
                data: Bytes::from_static(b"split across reads"),
                end_stream: false,
            }],
            "cut at {cut}"
        );
        assert!(p.server.input.is_empty());
        p.server.conn.release(id, 18);
    }
    // Two frames in one read give two events.
    let two = [data_frame(id, 0, b"a"), data_frame(id, 0, b"b")].concat();
    p.server.feed(&two).expect("valid");
    assert_eq!(p.server.take_events().len(), 2);
}
