//! Following HTTP/2 frame boundaries in the bytes a connection reads.
//!
//! h2 parses every frame, but keeps to itself two things a proxy needs to
//! act on: a client does not learn of a peer's GOAWAY while older streams
//! are open ([`crate::goaway`]), and a server acknowledges SETTINGS frames
//! without limit ([`crate::flood`]). Both watch the frame headers going by
//! in the transport wrapper: a few integer operations per frame and
//! nothing per payload byte. This module only finds the headers; what to
//! do with one is the caller's decision.

/// HTTP/2 frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;
/// The client connection preface, which precedes a client's first frame
/// (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// Frame types the scanners act on.
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const GOAWAY: u8 = 0x7;
/// SETTINGS flag: this frame acknowledges the peer's.
pub(crate) const ACK: u8 = 0x1;

/// What a frame header says that the scanners use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: u8,
    pub flags: u8,
    pub len: usize,
}

/// Finds the frame headers in a connection's bytes, fed in order in reads
/// of any size.
#[derive(Debug)]
pub(crate) struct FrameHeaders {
    /// Preface bytes still to pass before the first frame.
    preface_left: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
}

impl FrameHeaders {
    /// For what a client reads: a server's first bytes are a frame (its
    /// SETTINGS), so scanning starts at byte 0.
    pub(crate) fn from_server() -> FrameHeaders {
        FrameHeaders::after(0)
    }

    /// For what a server reads: the client's preface comes first.
    pub(crate) fn from_client() -> FrameHeaders {
        FrameHeaders::after(PREFACE_LEN)
    }

    fn after(preface_left: usize) -> FrameHeaders {
        FrameHeaders {
            preface_left,
            header: [0; HEADER_LEN],
            have: 0,
            skip: 0,
        }
    }

    /// Feeds bytes just read and calls `on_header` for each frame header
    /// they complete, in order. Stops at the first error `on_header`
    /// returns (the rest of `bytes` is not scanned).
    pub(crate) fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut on_header: impl FnMut(FrameHeader) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = self.preface_left.min(bytes.len());
        self.preface_left -= n;
        bytes = &bytes[n..];
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER_LEN {
                continue;
            }
            let h = &self.header;
            let header = FrameHeader {
                kind: h[3],
                flags: h[4],
                len: (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
            };
            self.skip = header.len;
            self.have = 0;
            on_header(header)?;
        }
        Ok(())
    }
}

/// A frame for the scanners' tests, whose payload reads as GOAWAY headers
/// if a scanner loses its place.
#[cfg(test)]
pub(crate) fn test_frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags, 0, 0, 0, 1]);
    f.extend(std::iter::repeat_n(GOAWAY, len));
    f
}

/// The client connection preface, for the scanners' tests.
#[cfg(test)]
pub(crate) const TEST_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::{test_frame as frame, TEST_PREFACE as PREFACE, *};

    const DATA: u8 = 0x0;
    const PING: u8 = 0x6;

    fn headers(mut scan: FrameHeaders, chunks: &[&[u8]]) -> Vec<FrameHeader> {
        let mut seen = Vec::new();
        for c in chunks {
            scan.feed(c, |h| {
                seen.push(h);
                Ok::<_, Infallible>(())
            })
            .unwrap();
        }
        seen
    }

    fn h(kind: u8, flags: u8, len: usize) -> FrameHeader {
        FrameHeader { kind, flags, len }
    }

    #[test]
    fn headers_are_found_across_any_split() {
        let frames = [
            h(SETTINGS, 0, 18),
            h(SETTINGS, ACK, 0),
            h(DATA, 0, 300),
            h(PING, 0, 8),
            h(GOAWAY, 0, 8),
            h(DATA, 1, 70_000),
        ];
        let body: Vec<u8> = frames
            .iter()
            .flat_map(|f| frame(f.kind, f.flags, f.len))
            .collect();
        let from_client = [PREFACE, &body].concat();
        /// (case, scanner, bytes, headers expected)
        type Case<'a> = (&'a str, fn() -> FrameHeaders, &'a [u8], &'a [FrameHeader]);
        let cases: [Case; 4] = [
            ("server's bytes", FrameHeaders::from_server, &body, &frames),
            (
                "client's bytes",
                FrameHeaders::from_client,
                &from_client,
                &frames,
            ),
            ("nothing", FrameHeaders::from_server, &[], &[]),
            ("a preface only", FrameHeaders::from_client, PREFACE, &[]),
        ];
        for (name, scanner, bytes, want) in cases {
            assert_eq!(headers(scanner(), &[bytes]), want, "{name}: one read");
            // Every split point of the first 400 bytes (the preface, the
            // small frames and a header cut anywhere), then reads of fixed
            // sizes through the 70 kB frame.
            for split in 1..bytes.len().min(400) {
                let (a, b) = bytes.split_at(split);
                assert_eq!(
                    headers(scanner(), &[a, b]),
                    want,
                    "{name}: split at {split}"
                );
            }
            for size in [1, 7, 9, 10, 4096] {
                let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
                assert_eq!(headers(scanner(), &chunks), want, "{name}: reads of {size}");
            }
        }
    }

    #[test]
    fn an_error_stops_the_scan_where_it_is() {
        let bytes = [frame(PING, 0, 8), frame(GOAWAY, 0, 8), frame(PING, 0, 8)].concat();
        let mut scan = FrameHeaders::from_server();
        let mut seen = 0;
        let r = scan.feed(&bytes, |h| {
            seen += 1;
            if h.kind == GOAWAY {
                Err(h)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(h(GOAWAY, 0, 8)));
        assert_eq!(seen, 2, "the frame after the error is not looked at");
    }
}
