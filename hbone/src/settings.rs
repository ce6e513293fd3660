//! HTTP/2 tuning shared by the HBONE client and server.

use std::time::Duration;

use crate::error::HboneError;

/// Largest flow-control window HTTP/2 allows (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Smallest and largest SETTINGS_MAX_FRAME_SIZE HTTP/2 allows (RFC 9113 §6.5.2).
const MIN_FRAME: u32 = 1 << 14;
const MAX_FRAME: u32 = (1 << 24) - 1;

/// Data h2 may buffer per stream before it stops granting send capacity.
/// Two relay chunks: the copy loop hands h2 a new chunk while the last one
/// is still queued, and with h2's default (400 KiB) a 256 KiB chunk was cut
/// to the 144 KiB left, so strace of a bulk tunnel showed DATA frames and
/// TLS `writev`s of every multiple of 16 KiB instead of one per chunk. The
/// copy loop reads no more while a chunk waits, so a stream holds at most
/// this plus one chunk.
const STREAM_SEND_BUFFER: usize = 2 * crate::copy::CHUNK;

/// HTTP/2 settings for HBONE connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Settings {
    /// Per-stream receive window in bytes (default 4 MiB).
    pub stream_window: u32,
    /// Whole-connection receive window in bytes (default 16 MiB).
    pub connection_window: u32,
    /// Largest DATA frame we accept, 16 KiB..=16 MiB-1 (default 1 MiB).
    pub max_frame_size: u32,
    /// Streams the peer may open towards us at once (default 100).
    pub max_concurrent_streams: u32,
    /// How often to PING the peer; zero disables keep-alive (default 10 s).
    pub keepalive_interval: Duration,
    /// How long to wait for a PONG before closing the connection (default 20 s).
    pub keepalive_timeout: Duration,
    /// Largest request/response header block we accept (default 16 KiB).
    pub max_header_list_size: u32,
    /// Server side: how long a peer that finished TLS has to send the
    /// HTTP/2 preface (default 10 s, the TLS handshake's deadline). Without
    /// it a peer that never sends, or dribbles, the preface holds its
    /// connection forever: keep-alive only starts after the preface.
    pub handshake_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            // 4 MiB per stream lets one tunnel fill a ~3 Gbit/s path with 10 ms RTT
            // (window / RTT) without waiting on WINDOW_UPDATEs.
            stream_window: 4 << 20,
            // 16 MiB shared: a few streams can run at full speed while the total
            // memory a peer can make us buffer per connection stays bounded.
            connection_window: 16 << 20,
            // 1 MiB frames: a sender can put a whole read chunk in one frame,
            // so per-frame header and wake-up overhead is negligible; it is well
            // inside the protocol limit and matches what ztunnel advertises.
            max_frame_size: 1 << 20,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            max_header_list_size: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl H2Settings {
    /// Checks every value is within what HTTP/2 (and the h2 crate) accepts.
    pub fn validate(&self) -> Result<(), HboneError> {
        let bad = |msg: String| Err(HboneError::InvalidSettings(msg));
        if self.stream_window == 0 || self.stream_window > MAX_WINDOW {
            return bad(format!(
                "stream_window {} must be between 1 and {MAX_WINDOW}",
                self.stream_window
            ));
        }
        if self.connection_window == 0 || self.connection_window > MAX_WINDOW {
            return bad(format!(
                "connection_window {} must be between 1 and {MAX_WINDOW}",
                self.connection_window
            ));
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&self.max_frame_size) {
            return bad(format!(
                "max_frame_size {} must be between {MIN_FRAME} and {MAX_FRAME}",
                self.max_frame_size
            ));
        }
        if self.max_concurrent_streams == 0 {
            return bad("max_concurrent_streams must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout must be non-zero".into());
        }
        if !self.keepalive_interval.is_zero() && self.keepalive_timeout.is_zero() {
            return bad("keepalive_timeout must be non-zero when keep-alive is enabled".into());
        }
        Ok(())
    }

    /// An h2 client builder with these settings applied.
    pub(crate) fn client_builder(&self) -> Result<h2::client::Builder, HboneError> {
        self.validate()?;
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buffer_size(STREAM_SEND_BUFFER)
            // HBONE never uses server push; refusing it removes a code path a peer could abuse.
            .enable_push(false);
        Ok(b)
    }

    /// An h2 server builder with these settings applied.
    pub(crate) fn server_builder(&self) -> Result<h2::server::Builder, HboneError> {
        self.validate()?;
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buffer_size(STREAM_SEND_BUFFER);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_rejected() {
        assert!(H2Settings::default().validate().is_ok());
        let cases = [
            H2Settings {
                max_frame_size: 1024,
                ..Default::default()
            },
            H2Settings {
                max_frame_size: 1 << 24,
                ..Default::default()
            },
            H2Settings {
                stream_window: 0,
                ..Default::default()
            },
            H2Settings {
                connection_window: u32::MAX,
                ..Default::default()
            },
            H2Settings {
                max_concurrent_streams: 0,
                ..Default::default()
            },
            H2Settings {
                keepalive_timeout: Duration::ZERO,
                ..Default::default()
            },
            H2Settings {
                handshake_timeout: Duration::ZERO,
                ..Default::default()
            },
        ];
        for s in cases {
            let err = s.validate().expect_err("must be rejected");
            assert!(
                err.to_string().starts_with("invalid http/2 settings"),
                "{err}"
            );
            assert!(s.client_builder().is_err() && s.server_builder().is_err());
        }
    }

    /// The copy loop hands h2 a new chunk while the last one is still queued;
    /// the stream must then have room for all of it, or the chunk leaves as
    /// two DATA frames and two TLS writes (h2's default buffer left 144 KiB).
    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_with_a_chunk_queued_has_room_for_a_whole_next_chunk() {
        use crate::copy::CHUNK;
        use bytes::Bytes;
        let (mut send, _recv, server) =
            crate::test_h2::stream(false, |_body| std::future::pending::<()>()).await;
        send.reserve_capacity(CHUNK);
        assert_eq!(send.capacity(), CHUNK, "room for the first chunk");
        // Not flushed: the connection task does not run until this test awaits.
        send.send_data(Bytes::from(vec![0u8; CHUNK]), false)
            .expect("queue a chunk");
        send.reserve_capacity(CHUNK);
        assert_eq!(send.capacity(), CHUNK, "room for a whole second chunk");
        send.send_data(Bytes::from(vec![0u8; CHUNK]), false)
            .expect("queue a second chunk");
        send.reserve_capacity(CHUNK);
        assert_eq!(
            send.capacity(),
            0,
            "no room for a third: the buffer stays bounded"
        );
        server.abort();
    }
}
