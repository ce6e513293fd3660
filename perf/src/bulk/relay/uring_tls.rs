//! Mode `uring-tls`: rustls between the ring's receives and sends. The
//! handshake is done on the tokio side (as mode `tls` does it); the
//! established connection then comes here, and each receive is turned into
//! what to send: ciphertext into plaintext towards the app, plaintext into
//! records towards the peer relay.
//!
//! What this does not do: answer a TLS message that needs a reply (a
//! KeyUpdate with update_requested) on its own; the reply leaves with the
//! next records sent the other way. Bulk flows always send more soon;
//! neither rustls nor the relays request key updates within a run.

use std::io::{self, Read, Write};

use super::uring_flow::Done;

/// The TLS state of one io_uring connection.
pub struct TlsState {
    conn: rustls::Connection,
    /// Which socket (0: accepted, 1: connected upstream) speaks TLS.
    side: usize,
    /// What each direction sends next; a direction's buffer is not touched
    /// while its send is in flight.
    pub out: [Vec<u8>; 2],
    close_sent: bool,
    /// Ciphertext the handshake read past its end, for the first decrypt.
    leftover: Vec<u8>,
    /// Plaintext bytes per direction (what the app sent and got).
    pub plain: [u64; 2],
}

impl TlsState {
    /// `leftover`: ciphertext read past the handshake, not yet given to rustls.
    pub fn new(conn: rustls::Connection, side: usize, leftover: Vec<u8>) -> TlsState {
        TlsState {
            conn,
            side,
            out: [Vec::new(), Vec::new()],
            close_sent: false,
            leftover,
            plain: [0, 0],
        }
    }

    /// What direction `dir` has to send before its first receive
    /// (plaintext that came with the handshake, or records rustls still
    /// holds), as the [`Done`] to start it with.
    pub fn pending(&mut self, dir: usize) -> Result<Done, String> {
        let leftover = match dir == self.side {
            true => std::mem::take(&mut self.leftover),
            false => Vec::new(),
        };
        self.received(dir, &leftover, false)
    }

    /// Turns what direction `dir` received (`eof`: the socket said EOF)
    /// into its buffer in [`Self::out`]; the [`Done`] to feed its
    /// [`OneWay`](super::uring_flow::OneWay).
    pub fn received(&mut self, dir: usize, input: &[u8], eof: bool) -> Result<Done, String> {
        if dir == self.side {
            // From the peer relay: records in, plaintext out.
            if eof {
                return Ok(Done::Recv(0));
            }
            let closed = self.decrypt(dir, input)?;
            let n = self.out[dir].len();
            self.plain[dir] += n as u64;
            Ok(match (n, closed) {
                (0, true) => Done::Recv(0),
                (0, false) => Done::Empty,
                (n, _) => Done::Recv(n as i32),
            })
        } else {
            // From the app: plaintext in, records out; at EOF, close_notify
            // first, then (on the next, empty receive) the half-close.
            if eof {
                if self.close_sent {
                    return Ok(Done::Recv(0));
                }
                self.close_sent = true;
                self.conn.send_close_notify();
            }
            self.encrypt(dir, input)?;
            self.plain[dir] += input.len() as u64;
            Ok(match self.out[dir].len() {
                0 if eof => Done::Recv(0),
                0 => Done::Empty,
                n => Done::Recv(n as i32),
            })
        }
    }

    /// Records in `input` to plaintext in `out[dir]`; whether the peer sent close_notify.
    fn decrypt(&mut self, dir: usize, mut input: &[u8]) -> Result<bool, String> {
        let out = &mut self.out[dir];
        out.clear();
        loop {
            // rustls takes a few KiB per call and refuses more while its
            // plaintext buffer is full, so drain it each time round.
            if !input.is_empty() {
                self.conn
                    .read_tls(&mut input)
                    .map_err(|e| format!("reading TLS records: {e}"))?;
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| format!("TLS from the peer relay: {e}"))?;
            let k = state.plaintext_bytes_to_read();
            if k > 0 {
                let at = out.len();
                out.resize(at + k, 0);
                self.conn
                    .reader()
                    .read_exact(&mut out[at..])
                    .map_err(|e| format!("reading TLS plaintext: {e}"))?;
            }
            if input.is_empty() {
                return Ok(state.peer_has_closed());
            }
        }
    }

    /// Plaintext `input` to records in `out[dir]` (with whatever rustls
    /// had waiting to be sent).
    fn encrypt(&mut self, dir: usize, mut input: &[u8]) -> Result<(), String> {
        let out = &mut self.out[dir];
        out.clear();
        loop {
            let took = match input.is_empty() {
                true => 0,
                false => self
                    .conn
                    .writer()
                    .write(input)
                    .map_err(|e| format!("encrypting: {e}"))?,
            };
            input = &input[took..];
            let mut wrote = false;
            while self.conn.wants_write() {
                self.conn
                    .write_tls(out)
                    .map_err(|e: io::Error| format!("writing TLS records: {e}"))?;
                wrote = true;
            }
            if input.is_empty() {
                return Ok(());
            }
            if took == 0 && !wrote {
                return Err("rustls takes no more plaintext and has nothing to send".into());
            }
        }
    }
}
