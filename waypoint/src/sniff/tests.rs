use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::*;

use Sniffed::{Http1, Http2, NeedMore, Tcp};

#[test]
fn table() {
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], Sniffed)] = &[
        ("empty", b"", NeedMore),
        // HTTP/2 prior knowledge.
        ("full preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2),
        ("preface and a frame", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", Http2),
        ("preface prefix", b"PRI * HTTP/2.0\r\n\r\nSM\r\n", NeedMore),
        ("preface first byte", b"P", NeedMore),
        ("PRI as an http/1 method", b"PRI * HTTP/1.1\r\n", Http1),
        ("preface with a wrong tail", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", Http1),
        // Known methods decide on the space.
        ("GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Http1),
        ("GET and space", b"GET ", Http1),
        ("GET without space", b"GET", NeedMore),
        ("G", b"G", NeedMore),
        ("HEAD", b"HEAD /", Http1),
        ("POST", b"POST /x HTTP/1.1", Http1),
        ("PUT", b"PUT ", Http1),
        ("DELETE", b"DELETE ", Http1),
        ("CONNECT authority form", b"CONNECT example.com:443 HTTP/1.1", Http1),
        ("OPTIONS", b"OPTIONS * HTTP/1.1", Http1),
        ("TRACE", b"TRACE ", Http1),
        ("PATCH", b"PATCH ", Http1),
        ("lower-case method", b"get / HTTP/1.1", Tcp),
        ("method then tab", b"GET\t/", Tcp),
        ("leading space", b" GET /", Tcp),
        // Leading empty lines, which HTTP/1 servers skip.
        ("leading crlf", b"\r\nGET / HTTP/1.1", Http1),
        ("leading lf lines", b"\n\n\nPOST /", Http1),
        ("only newlines", b"\r\n\r\n", NeedMore),
        ("newlines up to the limit", &[b'\n'; MAX_SNIFF], Tcp),
        // Other methods need a request target.
        ("PROPFIND origin form", b"PROPFIND /dav HTTP/1.1", Http1),
        ("VERSION-CONTROL", b"VERSION-CONTROL /x", Http1),
        ("unknown method asterisk", b"FOO *", Http1),
        ("unknown method absolute uri", b"FOO http://a/", Http1),
        ("unknown method absolute https upper-case", b"FOO HTTPS://a/", Http1),
        ("unknown method, scheme incomplete", b"FOO htt", NeedMore),
        ("unknown method, target not yet sent", b"MKCOL ", NeedMore),
        ("redis inline SET", b"SET hello world\r\n", Tcp),
        ("redis inline PING", b"PING\r\n", Tcp),
        ("redis RESP", b"*1\r\n$4\r\nPING\r\n", Tcp),
        ("20-letter method", b"ABCDEFGHIJKLMNOPQRST /", Http1),
        ("21-letter method", b"ABCDEFGHIJKLMNOPQRSTU /", Tcp),
        ("21 letters, no space yet", b"ABCDEFGHIJKLMNOPQRSTU", Tcp),
        ("dash first", b"-X /", Tcp),
        // Everything else.
        ("tls client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Tcp),
        ("ssh banner", b"SSH-2.0-OpenSSH_9.6\r\n", Tcp),
        ("postgres startup", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Tcp),
        ("binary zero", b"\x00", Tcp),
    ];
    for (name, prefix, want) in cases {
        assert_eq!(
            sniff(prefix),
            *want,
            "{name}: {:?}",
            String::from_utf8_lossy(prefix)
        );
    }
}

/// Every proper prefix of an HTTP start is `NeedMore` or already the final
/// verdict, so reading in any chunking reaches the same answer.
#[test]
fn prefixes_never_contradict_the_whole() {
    let wholes: &[&[u8]] = &[
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\n",
        b"\r\nOPTIONS * HTTP/1.1\r\n",
        b"PROPFIND /x HTTP/1.1\r\n",
        b"FOO https://a/ HTTP/1.1\r\n",
    ];
    for whole in wholes {
        let verdict = sniff(whole);
        assert_ne!(verdict, NeedMore);
        for n in 0..whole.len() {
            let got = sniff(&whole[..n]);
            assert!(
                got == NeedMore || got == verdict,
                "{:?}: prefix of {n} bytes gave {got:?}, the whole {verdict:?}",
                String::from_utf8_lossy(whole)
            );
        }
    }
}

/// The promise callers rely on to bound their buffer.
#[test]
fn decides_by_max_sniff() {
    let mut rng = fastrand::Rng::with_seed(3);
    let alphabets: &[&[u8]] = &[b"\r\n", b"ABCZ -", b"PRI * HTTP/2.0\r\nSM", b"h/ Ttps:"];
    for _ in 0..2000 {
        let alphabet = alphabets[rng.usize(..alphabets.len())];
        let bytes: Vec<u8> = (0..MAX_SNIFF)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        assert_ne!(
            sniff(&bytes),
            NeedMore,
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

const WAIT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(30);

#[tokio::test]
async fn peek_reads_until_decided_and_returns_the_bytes() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut r = &req[..];
    let (verdict, bytes) = peek(&mut r, WAIT).await.unwrap();
    assert_eq!(verdict, Http1);
    assert_eq!(
        &bytes[..],
        &req[..],
        "a slice is read in one go and replayed whole"
    );
}

#[tokio::test]
async fn peek_waits_for_a_split_preface() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        client.write_all(b"\x00\x00\x00\x04").await.unwrap();
        client
    });
    let (verdict, bytes) = peek(&mut server, WAIT).await.unwrap();
    assert_eq!(verdict, Http2);
    assert!(bytes.starts_with(H2_PREFACE), "{bytes:?}");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn peek_tcp_on_first_bytes() {
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"\x16\x03\x01\x00").await.unwrap();
    let (verdict, bytes) = peek(&mut server, WAIT).await.unwrap();
    assert_eq!((verdict, &bytes[..]), (Tcp, &b"\x16\x03\x01\x00"[..]));
}

#[tokio::test]
async fn peek_silence_is_a_server_first_protocol() {
    let (_client, mut server) = tokio::io::duplex(64);
    let (verdict, bytes) = peek(&mut server, SHORT).await.unwrap();
    assert_eq!(verdict, Tcp);
    assert!(bytes.is_empty());
}

#[tokio::test]
async fn peek_eof_is_tcp() {
    for sent in [&b""[..], b"GE"] {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(sent).await.unwrap();
        drop(client);
        let (verdict, bytes) = peek(&mut server, WAIT).await.unwrap();
        assert_eq!((verdict, &bytes[..]), (Tcp, sent));
    }
}

#[tokio::test]
async fn peek_stall_after_an_http_like_start_is_an_error() {
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"GE").await.unwrap();
    let err = peek(&mut server, SHORT).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("skip L7 policy"), "{err}");
    drop(client);
}
