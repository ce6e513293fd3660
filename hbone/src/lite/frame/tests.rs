use super::*;

/// What a parse should give: the frame, or which scope of error with
/// which code (the detail text is the operator's, not the contract).
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Frame(Frame),
    Conn(Reason),
    Stream(u32, Reason),
}

fn outcome(r: Result<Frame, FrameError>) -> Want {
    match r {
        Ok(f) => Want::Frame(f),
        Err(FrameError::Connection(reason, detail)) => {
            assert!(!detail.is_empty());
            Want::Conn(reason)
        }
        Err(FrameError::Stream(stream, reason, detail)) => {
            assert!(!detail.is_empty());
            Want::Stream(stream, reason)
        }
    }
}

fn parse_one(kind: u8, flags: u8, stream: u32, payload: &[u8], max_frame: u32) -> Want {
    let head = Head {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    };
    outcome(parse(&head, payload, max_frame))
}

/// One SETTINGS entry.
fn entry(id: u16, value: u32) -> Vec<u8> {
    let mut e = id.to_be_bytes().to_vec();
    e.extend_from_slice(&value.to_be_bytes());
    e
}

fn settings(s: Settings) -> Want {
    Want::Frame(Frame::Settings(s))
}

const PROTOCOL: Reason = Reason::PROTOCOL_ERROR;
const SIZE: Reason = Reason::FRAME_SIZE_ERROR;

#[test]
fn frames_parse_as_the_rfc_says() {
    let ping = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut goaway = 7u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&u32::from(Reason::ENHANCE_YOUR_CALM).to_be_bytes());
    let mut goaway_debug = goaway.clone();
    goaway_debug.extend_from_slice(b"bye");
    // The reserved bit of GOAWAY's last stream id is ignored.
    let mut goaway_reserved = goaway.clone();
    goaway_reserved[0] |= 0x80;
    // Priority fields (5 bytes) then the fragment; padded: pad length
    // first, then priority, fragment, padding.
    let headers_priority = [0, 0, 0, 3, 16, 0xaa, 0xbb];
    let headers_padded_priority = [2, 0, 0, 0, 3, 16, 0xaa, 0, 0];
    let big = vec![0u8; MIN_MAX_FRAME as usize + 1];
    // (name, type, flags, stream, payload, outcome)
    type Case<'a> = (&'a str, u8, u8, u32, &'a [u8], Want);
    let cases: Vec<Case> = vec![
        // DATA
        (
            "data",
            DATA,
            0,
            1,
            b"abc",
            Want::Frame(Frame::Data {
                stream: 1,
                data: 0..3,
                flow: 3,
                end_stream: false,
            }),
        ),
        (
            "data end_stream, empty",
            DATA,
            END_STREAM,
            3,
            b"",
            Want::Frame(Frame::Data {
                stream: 3,
                data: 0..0,
                flow: 0,
                end_stream: true,
            }),
        ),
        (
            "data padded: flow counts the padding",
            DATA,
            PADDED,
            1,
            &[2, b'a', b'b', 0, 0],
            Want::Frame(Frame::Data {
                stream: 1,
                data: 1..3,
                flow: 5,
                end_stream: false,
            }),
        ),
        (
            "data padded with only padding",
            DATA,
            PADDED,
            1,
            &[3, 0, 0, 0],
            Want::Frame(Frame::Data {
                stream: 1,
                data: 1..1,
                flow: 4,
                end_stream: false,
            }),
        ),
        (
            "data padded, pad length alone",
            DATA,
            PADDED,
            1,
            &[0],
            Want::Frame(Frame::Data {
                stream: 1,
                data: 1..1,
                flow: 1,
                end_stream: false,
            }),
        ),
        ("data on stream 0", DATA, 0, 0, b"abc", Want::Conn(PROTOCOL)),
        (
            "data padded without its pad length",
            DATA,
            PADDED,
            1,
            b"",
            Want::Conn(SIZE),
        ),
        (
            "data padding as long as the payload",
            DATA,
            PADDED,
            1,
            &[4, 0, 0, 0],
            Want::Conn(PROTOCOL),
        ),
        (
            "data padding longer than the payload",
            DATA,
            PADDED,
            1,
            &[200, 1],
            Want::Conn(PROTOCOL),
        ),
        // HEADERS
        (
            "headers",
            HEADERS,
            END_HEADERS,
            1,
            &[0x82, 0x84],
            Want::Frame(Frame::Headers {
                stream: 1,
                fragment: 0..2,
                end_stream: false,
                end_headers: true,
            }),
        ),
        (
            "headers end_stream without end_headers",
            HEADERS,
            END_STREAM,
            5,
            &[0x82],
            Want::Frame(Frame::Headers {
                stream: 5,
                fragment: 0..1,
                end_stream: true,
                end_headers: false,
            }),
        ),
        (
            "headers with priority",
            HEADERS,
            END_HEADERS | PRIORITY_FLAG,
            1,
            &headers_priority,
            Want::Frame(Frame::Headers {
                stream: 1,
                fragment: 5..7,
                end_stream: false,
                end_headers: true,
            }),
        ),
        (
            "headers padded with priority",
            HEADERS,
            END_HEADERS | PRIORITY_FLAG | PADDED,
            1,
            &headers_padded_priority,
            Want::Frame(Frame::Headers {
                stream: 1,
                fragment: 6..7,
                end_stream: false,
                end_headers: true,
            }),
        ),
        (
            "headers on stream 0",
            HEADERS,
            END_HEADERS,
            0,
            &[0x82],
            Want::Conn(PROTOCOL),
        ),
        (
            "headers too short for priority",
            HEADERS,
            END_HEADERS | PRIORITY_FLAG,
            1,
            &[0, 0, 0, 3],
            Want::Conn(SIZE),
        ),
        (
            "headers padded, too short for priority after padding",
            HEADERS,
            END_HEADERS | PRIORITY_FLAG | PADDED,
            1,
            &[2, 0, 0, 0, 0, 0, 0],
            Want::Conn(SIZE),
        ),
        (
            "headers padding as long as the payload",
            HEADERS,
            END_HEADERS | PADDED,
            1,
            &[3, 0x82, 0],
            Want::Conn(PROTOCOL),
        ),
        // CONTINUATION
        (
            "continuation",
            CONTINUATION,
            END_HEADERS,
            1,
            &[0x84],
            Want::Frame(Frame::Continuation {
                stream: 1,
                end_headers: true,
            }),
        ),
        (
            "continuation, more to come",
            CONTINUATION,
            0,
            1,
            &[0x84],
            Want::Frame(Frame::Continuation {
                stream: 1,
                end_headers: false,
            }),
        ),
        (
            "continuation on stream 0",
            CONTINUATION,
            END_HEADERS,
            0,
            &[0x84],
            Want::Conn(PROTOCOL),
        ),
        // PRIORITY
        (
            "priority",
            PRIORITY,
            0,
            3,
            &[0, 0, 0, 1, 16],
            Want::Frame(Frame::Ignored),
        ),
        (
            "priority on stream 0",
            PRIORITY,
            0,
            0,
            &[0, 0, 0, 1, 16],
            Want::Conn(PROTOCOL),
        ),
        (
            "priority of 4 bytes",
            PRIORITY,
            0,
            3,
            &[0, 0, 0, 1],
            Want::Stream(3, SIZE),
        ),
        (
            "priority of 6 bytes",
            PRIORITY,
            0,
            3,
            &[0; 6],
            Want::Stream(3, SIZE),
        ),
        // RST_STREAM
        (
            "rst_stream",
            RST_STREAM,
            0,
            1,
            &[0, 0, 0, 8],
            Want::Frame(Frame::Reset {
                stream: 1,
                reason: Reason::CANCEL,
            }),
        ),
        (
            "rst_stream with an unknown code",
            RST_STREAM,
            0,
            1,
            &[0, 0, 1, 0],
            Want::Frame(Frame::Reset {
                stream: 1,
                reason: Reason::from(256),
            }),
        ),
        (
            "rst_stream on stream 0",
            RST_STREAM,
            0,
            0,
            &[0, 0, 0, 8],
            Want::Conn(PROTOCOL),
        ),
        (
            "rst_stream of 3 bytes",
            RST_STREAM,
            0,
            1,
            &[0, 0, 8],
            Want::Conn(SIZE),
        ),
        (
            "rst_stream of 5 bytes",
            RST_STREAM,
            0,
            1,
            &[0, 0, 0, 8, 0],
            Want::Conn(SIZE),
        ),
        // SETTINGS (values are in their own table below)
        (
            "settings, empty",
            SETTINGS,
            0,
            0,
            b"",
            settings(Settings::default()),
        ),
        (
            "settings ack",
            SETTINGS,
            ACK,
            0,
            b"",
            Want::Frame(Frame::SettingsAck),
        ),
        (
            "settings ack with a payload",
            SETTINGS,
            ACK,
            0,
            &[0; 6],
            Want::Conn(SIZE),
        ),
        (
            "settings on a stream",
            SETTINGS,
            0,
            1,
            b"",
            Want::Conn(PROTOCOL),
        ),
        (
            "settings ack on a stream",
            SETTINGS,
            ACK,
            1,
            b"",
            Want::Conn(PROTOCOL),
        ),
        (
            "settings of 5 bytes",
            SETTINGS,
            0,
            0,
            &[0; 5],
            Want::Conn(SIZE),
        ),
        (
            "settings of 7 bytes",
            SETTINGS,
            0,
            0,
            &[0; 7],
            Want::Conn(SIZE),
        ),
        // PUSH_PROMISE: never enabled, so always a connection error.
        (
            "push_promise",
            PUSH_PROMISE,
            END_HEADERS,
            1,
            &[0, 0, 0, 2, 0x82],
            Want::Conn(PROTOCOL),
        ),
        (
            "push_promise on stream 0",
            PUSH_PROMISE,
            0,
            0,
            b"",
            Want::Conn(PROTOCOL),
        ),
        // PING
        (
            "ping",
            PING,
            0,
            0,
            &ping,
            Want::Frame(Frame::Ping {
                ack: false,
                payload: ping,
            }),
        ),
        (
            "ping ack",
            PING,
            ACK,
            0,
            &ping,
            Want::Frame(Frame::Ping {
                ack: true,
                payload: ping,
            }),
        ),
        ("ping on a stream", PING, 0, 1, &ping, Want::Conn(PROTOCOL)),
        ("ping of 7 bytes", PING, 0, 0, &ping[..7], Want::Conn(SIZE)),
        ("ping of 9 bytes", PING, 0, 0, &[0; 9], Want::Conn(SIZE)),
        // GOAWAY
        (
            "goaway",
            GOAWAY,
            0,
            0,
            &goaway,
            Want::Frame(Frame::GoAway {
                last_stream: 7,
                reason: Reason::ENHANCE_YOUR_CALM,
                debug: 8..8,
            }),
        ),
        (
            "goaway with debug data",
            GOAWAY,
            0,
            0,
            &goaway_debug,
            Want::Frame(Frame::GoAway {
                last_stream: 7,
                reason: Reason::ENHANCE_YOUR_CALM,
                debug: 8..11,
            }),
        ),
        (
            "goaway with the reserved bit set",
            GOAWAY,
            0,
            0,
            &goaway_reserved,
            Want::Frame(Frame::GoAway {
                last_stream: 7,
                reason: Reason::ENHANCE_YOUR_CALM,
                debug: 8..8,
            }),
        ),
        (
            "goaway on a stream",
            GOAWAY,
            0,
            1,
            &goaway,
            Want::Conn(PROTOCOL),
        ),
        (
            "goaway of 7 bytes",
            GOAWAY,
            0,
            0,
            &goaway[..7],
            Want::Conn(SIZE),
        ),
        // WINDOW_UPDATE
        (
            "window_update on the connection",
            WINDOW_UPDATE,
            0,
            0,
            &[0, 0, 1, 0],
            Want::Frame(Frame::WindowUpdate {
                stream: 0,
                increment: 256,
            }),
        ),
        (
            "window_update on a stream, largest increment",
            WINDOW_UPDATE,
            0,
            5,
            &[0x7f, 0xff, 0xff, 0xff],
            Want::Frame(Frame::WindowUpdate {
                stream: 5,
                increment: MAX_WINDOW,
            }),
        ),
        (
            "window_update: the reserved bit is not part of the increment",
            WINDOW_UPDATE,
            0,
            5,
            &[0x80, 0, 0, 1],
            Want::Frame(Frame::WindowUpdate {
                stream: 5,
                increment: 1,
            }),
        ),
        (
            "window_update of 0 on the connection",
            WINDOW_UPDATE,
            0,
            0,
            &[0, 0, 0, 0],
            Want::Conn(PROTOCOL),
        ),
        (
            "window_update of 0 on a stream",
            WINDOW_UPDATE,
            0,
            5,
            &[0, 0, 0, 0],
            Want::Stream(5, PROTOCOL),
        ),
        (
            "window_update of only the reserved bit on a stream",
            WINDOW_UPDATE,
            0,
            5,
            &[0x80, 0, 0, 0],
            Want::Stream(5, PROTOCOL),
        ),
        (
            "window_update of 3 bytes",
            WINDOW_UPDATE,
            0,
            0,
            &[0, 0, 1],
            Want::Conn(SIZE),
        ),
        (
            "window_update of 5 bytes",
            WINDOW_UPDATE,
            0,
            5,
            &[0, 0, 0, 1, 0],
            Want::Conn(SIZE),
        ),
        // Unknown types are ignored, whatever their flags, stream or payload.
        (
            "unknown type 0xa",
            0xa,
            0,
            0,
            b"",
            Want::Frame(Frame::Ignored),
        ),
        (
            "unknown type 0xff on a stream",
            0xff,
            0xff,
            3,
            b"whatever",
            Want::Frame(Frame::Ignored),
        ),
        // Larger than what we advertised: refused whatever the type.
        ("data over max_frame", DATA, 0, 1, &big, Want::Conn(SIZE)),
        (
            "unknown type over max_frame",
            0xa,
            0,
            0,
            &big,
            Want::Conn(SIZE),
        ),
    ];
    for (name, kind, flags, stream, payload, want) in cases {
        let got = parse_one(kind, flags, stream, payload, MIN_MAX_FRAME);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn max_frame_is_the_advertised_limit() {
    let payload = vec![7u8; 20_000];
    let data = |max| parse_one(DATA, 0, 1, &payload, max);
    assert_eq!(data(19_999), Want::Conn(SIZE));
    assert_eq!(
        data(20_000),
        Want::Frame(Frame::Data {
            stream: 1,
            data: 0..20_000,
            flow: 20_000,
            end_stream: false,
        })
    );
}

#[test]
fn settings_values_are_checked() {
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "header_table_size",
            entry(SETTINGS_HEADER_TABLE_SIZE, 0),
            settings(Settings {
                header_table_size: Some(0),
                ..Settings::default()
            }),
        ),
        (
            "enable_push 0",
            entry(SETTINGS_ENABLE_PUSH, 0),
            settings(Settings {
                enable_push: Some(false),
                ..Settings::default()
            }),
        ),
        (
            "enable_push 1",
            entry(SETTINGS_ENABLE_PUSH, 1),
            settings(Settings {
                enable_push: Some(true),
                ..Settings::default()
            }),
        ),
        (
            "enable_push 2",
            entry(SETTINGS_ENABLE_PUSH, 2),
            Want::Conn(PROTOCOL),
        ),
        (
            "max_concurrent_streams 0 is allowed",
            entry(SETTINGS_MAX_CONCURRENT_STREAMS, 0),
            settings(Settings {
                max_concurrent_streams: Some(0),
                ..Settings::default()
            }),
        ),
        (
            "initial_window_size 2^31-1",
            entry(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW),
            settings(Settings {
                initial_window_size: Some(MAX_WINDOW),
                ..Settings::default()
            }),
        ),
        (
            "initial_window_size 2^31",
            entry(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW + 1),
            Want::Conn(Reason::FLOW_CONTROL_ERROR),
        ),
        (
            "max_frame_size floor",
            entry(SETTINGS_MAX_FRAME_SIZE, MIN_MAX_FRAME),
            settings(Settings {
                max_frame_size: Some(MIN_MAX_FRAME),
                ..Settings::default()
            }),
        ),
        (
            "max_frame_size ceiling",
            entry(SETTINGS_MAX_FRAME_SIZE, MAX_MAX_FRAME),
            settings(Settings {
                max_frame_size: Some(MAX_MAX_FRAME),
                ..Settings::default()
            }),
        ),
        (
            "max_frame_size below the floor",
            entry(SETTINGS_MAX_FRAME_SIZE, MIN_MAX_FRAME - 1),
            Want::Conn(PROTOCOL),
        ),
        (
            "max_frame_size above the ceiling",
            entry(SETTINGS_MAX_FRAME_SIZE, MAX_MAX_FRAME + 1),
            Want::Conn(PROTOCOL),
        ),
        (
            "max_header_list_size",
            entry(SETTINGS_MAX_HEADER_LIST_SIZE, 1 << 20),
            settings(Settings {
                max_header_list_size: Some(1 << 20),
                ..Settings::default()
            }),
        ),
        (
            "enable_connect_protocol 1",
            entry(SETTINGS_ENABLE_CONNECT_PROTOCOL, 1),
            settings(Settings {
                enable_connect_protocol: Some(true),
                ..Settings::default()
            }),
        ),
        (
            "enable_connect_protocol 2",
            entry(SETTINGS_ENABLE_CONNECT_PROTOCOL, 2),
            Want::Conn(PROTOCOL),
        ),
        (
            "unknown id 0x7 ignored",
            entry(0x7, 99),
            settings(Settings::default()),
        ),
        (
            "unknown id 0xffff ignored",
            entry(0xffff, u32::MAX),
            settings(Settings::default()),
        ),
        (
            "the last of a repeated setting wins",
            [
                entry(SETTINGS_INITIAL_WINDOW_SIZE, 1),
                entry(SETTINGS_INITIAL_WINDOW_SIZE, 2),
            ]
            .concat(),
            settings(Settings {
                initial_window_size: Some(2),
                ..Settings::default()
            }),
        ),
        (
            "unknown between known",
            [
                entry(SETTINGS_MAX_CONCURRENT_STREAMS, 10),
                entry(0x10, 1),
                entry(SETTINGS_MAX_FRAME_SIZE, 1 << 20),
            ]
            .concat(),
            settings(Settings {
                max_concurrent_streams: Some(10),
                max_frame_size: Some(1 << 20),
                ..Settings::default()
            }),
        ),
        (
            "a bad value after good ones",
            [
                entry(SETTINGS_MAX_CONCURRENT_STREAMS, 10),
                entry(SETTINGS_ENABLE_PUSH, 7),
            ]
            .concat(),
            Want::Conn(PROTOCOL),
        ),
    ];
    for (name, payload, want) in cases {
        assert_eq!(
            parse_one(SETTINGS, 0, 0, &payload, MIN_MAX_FRAME),
            want,
            "{name}"
        );
    }
}

/// Parses every frame in `b`, which must hold whole frames only.
fn parse_all(mut b: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(h) = b.first_chunk::<HEAD_LEN>() {
        let head = Head::parse(h);
        let end = HEAD_LEN + head.len as usize;
        frames.push(parse(&head, &b[HEAD_LEN..end], MAX_MAX_FRAME).expect("valid frame"));
        b = &b[end..];
    }
    assert!(b.is_empty(), "trailing bytes");
    frames
}

#[test]
fn settings_put_then_parse_round_trips() {
    let full = Settings {
        header_table_size: Some(0),
        enable_push: Some(false),
        max_concurrent_streams: Some(100),
        initial_window_size: Some(MAX_WINDOW),
        max_frame_size: Some(MAX_MAX_FRAME),
        max_header_list_size: Some(16 << 10),
        enable_connect_protocol: Some(true),
    };
    let cases = [
        ("none", Settings::default(), 0),
        (
            "one",
            Settings {
                max_frame_size: Some(MIN_MAX_FRAME),
                ..Settings::default()
            },
            6,
        ),
        (
            "flags set to true",
            Settings {
                enable_push: Some(true),
                enable_connect_protocol: Some(false),
                ..Settings::default()
            },
            12,
        ),
        ("all", full, 42),
    ];
    for (name, s, len) in cases {
        let mut out = BytesMut::new();
        s.put(&mut out);
        assert_eq!(out.len(), HEAD_LEN + len, "{name}");
        let head = Head::parse(out[..HEAD_LEN].try_into().unwrap());
        assert_eq!(
            head,
            Head {
                len: len as u32,
                kind: SETTINGS,
                flags: 0,
                stream: 0
            },
            "{name}"
        );
        assert_eq!(parse_all(&out), vec![Frame::Settings(s)], "{name}");
    }
}

#[test]
fn head_bytes_round_trip() {
    let cases = [
        Head {
            len: 0,
            kind: DATA,
            flags: 0,
            stream: 0,
        },
        Head {
            len: 0x0a0b0c,
            kind: 0xfe,
            flags: 0xff,
            stream: 0x0102_0304,
        },
        Head {
            len: MAX_MAX_FRAME,
            kind: HEADERS,
            flags: END_HEADERS | END_STREAM,
            stream: MAX_WINDOW,
        },
    ];
    for head in cases {
        let b = head.bytes();
        assert_eq!(Head::parse(&b), head);
        let mut out = BytesMut::new();
        head.put(&mut out);
        assert_eq!(&out[..], &b[..]);
    }
}

#[test]
fn head_parse_reads_the_wire_order_and_ignores_the_reserved_bit() {
    let cases = [
        (
            [0, 0, 4, 8, 0, 0, 0, 0, 0],
            Head {
                len: 4,
                kind: WINDOW_UPDATE,
                flags: 0,
                stream: 0,
            },
        ),
        (
            [1, 2, 3, 1, 0x25, 0x80, 0, 0, 1],
            Head {
                len: 0x010203,
                kind: HEADERS,
                flags: 0x25,
                stream: 1,
            },
        ),
        (
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            Head {
                len: MAX_MAX_FRAME,
                kind: 0xff,
                flags: 0xff,
                stream: MAX_WINDOW,
            },
        ),
    ];
    for (bytes, want) in cases {
        let head = Head::parse(&bytes);
        assert_eq!(head, want);
        // Written back, the reserved bit is clear.
        let mut back = bytes;
        back[5] &= 0x7f;
        assert_eq!(head.bytes(), back);
    }
}

#[test]
fn writers_make_frames_that_parse_back() {
    let mut out = BytesMut::new();
    put_window_update(&mut out, 0, 1 << 20);
    put_window_update(&mut out, 3, 1);
    put_reset(&mut out, 3, Reason::REFUSED_STREAM);
    put_goaway(&mut out, 9, Reason::PROTOCOL_ERROR, b"why");
    put_frame(&mut out, PING, ACK, 0, &[9; 8]);
    put_frame(&mut out, DATA, END_STREAM, 5, b"tail");
    assert_eq!(
        parse_all(&out),
        vec![
            Frame::WindowUpdate {
                stream: 0,
                increment: 1 << 20,
            },
            Frame::WindowUpdate {
                stream: 3,
                increment: 1,
            },
            Frame::Reset {
                stream: 3,
                reason: Reason::REFUSED_STREAM,
            },
            Frame::GoAway {
                last_stream: 9,
                reason: Reason::PROTOCOL_ERROR,
                debug: 8..11,
            },
            Frame::Ping {
                ack: true,
                payload: [9; 8],
            },
            Frame::Data {
                stream: 5,
                data: 0..4,
                flow: 4,
                end_stream: true,
            },
        ]
    );
    // The GOAWAY's debug data is where the range says.
    let goaway_at = 2 * 13 + 13;
    assert_eq!(
        &out[goaway_at + HEAD_LEN + 8..goaway_at + HEAD_LEN + 11],
        b"why"
    );
}
